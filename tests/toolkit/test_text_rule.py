"""One text rule for training and serving: `record_text`, checked on its own and on every real settingA row.

The identity test reads each real split TSV twice, the way each side reads it: the training path
(`read_split_tsv` -> `example_texts`, what `FeatureCache.encode_split` encodes) and the runtime path
(`read_tsv` -> `Predictor._text_of`, what predict encodes), with one caption map that leaves some rows without a
caption and gives others blank, URL-only or messy captions. The texts must be identical for every row and source.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from crisis_tool.data.crisismmd import read_split_tsv, resolve_task
from crisis_tool.features import example_texts
from crisis_tool.runtime.errors import UsageError
from crisis_tool.runtime.model_spec import ModelSpec
from crisis_tool.runtime.predictor import Predictor
from crisis_tool.runtime.record_text import RecordText, record_text
from crisis_tool.runtime.records import Record, read_tsv
from crisis_tool.runtime.text_clean import TEXT_SOURCES
from crisis_tool.runtime.tokenizer import ClipTokenizer

REAL_ROWS = 19_505  # settingA, all eight TSVs (the damage test split is held out)
CAPTION_KINDS = (
    None,  # no caption for this image
    "",
    "   \n ",
    "https://t.co/only-a-link",
    "A flooded street with #cars and  a\nboat.",
    "Weâ€™re seeing smoke over the RT hills &amp; houses",
)


def caption_map(image_ids: list[str]) -> dict[str, str]:
    """A deterministic mix: a third of the images get no entry at all, the rest one of CAPTION_KINDS."""
    captions = {}
    for image_id in image_ids:
        h = int(hashlib.sha256(image_id.encode()).hexdigest(), 16)
        kind = CAPTION_KINDS[h % len(CAPTION_KINDS)]
        if kind is not None:
            captions[image_id] = f"{kind} ({image_id[-3:]})" if h % 7 == 0 and kind.strip() else kind
    return captions


def stub_predictor(source: str) -> Predictor:
    """A real Predictor whose backend is never called (only `_text_of` is used)."""
    vocab = Path(pytest.importorskip("open_clip.tokenizer").default_bpe())
    tok = ClipTokenizer(vocab, 77)
    bundle = SimpleNamespace(
        labels=["a", "b"], text_source=source, spec=ModelSpec.for_tasks([("informative", ["a", "b"])]),
        root=vocab.parent, preprocess_config={},
        tokenizer_config={"vocab_file": vocab.name, "context_length": 77, "sot_token_id": tok.sot_token_id,
                          "eot_token_id": tok.eot_token_id},
    )
    return Predictor(bundle, SimpleNamespace(close=lambda: None), workers=1)  # type: ignore[arg-type]


def test_training_and_runtime_texts_are_identical_on_every_real_row(
    real_splits: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    predictors = {source: stub_predictor(source) for source in TEXT_SOURCES}
    rows = missing = with_caption = 0
    caplog.set_level(logging.WARNING)
    for path in sorted(real_splits.glob("task_*_text_img_*.tsv")):
        task = resolve_task(re.match(r"task_(\w+?)_text_img_", path.name).group(1))
        examples = read_split_tsv(path, task)
        records = list(read_tsv(path, image_root=tmp_path))
        assert all(isinstance(r, Record) for r in records), path
        assert [r.id for r in records] == [ex.image_id for ex in examples], path
        captions = caption_map([ex.image_id for ex in examples])
        runtime_records = [dataclasses.replace(r, llava_text=captions.get(r.id)) for r in records]
        for source in TEXT_SOURCES:
            training = example_texts(examples, captions, source)
            runtime = [predictors[source]._text_of(r) for r in runtime_records]
            for ex, train_text, run_text in zip(examples, training, runtime, strict=True):
                assert train_text.text == run_text, (path.name, ex.image_id, source)
            if source == "llava":
                missing += sum(t.caption_missing for t in training)
                with_caption += sum(not t.caption_missing for t in training)
        rows += len(examples)
    for predictor in predictors.values():
        predictor.close()
    assert rows == REAL_ROWS
    assert missing > REAL_ROWS // 3 and with_caption > REAL_ROWS // 4  # both branches of the rule ran
    assert "no llava_text" in caplog.text  # the runtime warns about the fallback


@pytest.mark.parametrize(
    ("tweet", "caption", "source", "expected"),
    [
        ("RT @fema: Flood #Houston http://t.co/x", "A flooded road.", "tweet", RecordText("@fema: Flood Houston")),
        ("Flood #Houston", "A flooded road.", "llava", RecordText("A flooded road.")),
        ("Flood #Houston", "A flooded road.", "tweet+llava", RecordText("Flood Houston A flooded road.")),
        ("Flood", None, "llava", RecordText("Flood", caption_missing=True)),
        ("Flood", "  ", "tweet+llava", RecordText("Flood", caption_missing=True)),
        ("Flood", "https://t.co/abc", "llava", RecordText("Flood", caption_missing=True)),
        ("http://t.co/abc", None, "tweet", RecordText("")),  # cleans to "", still input
        (None, None, "tweet", RecordText("", empty_input=True)),
        ("  ", None, "tweet+llava", RecordText("", caption_missing=True, empty_input=True)),
        (None, "A road.", "tweet+llava", RecordText("A road.")),
        (None, "A road.", "tweet", RecordText("", empty_input=True)),
    ],
)
def test_record_text_rule(tweet: str | None, caption: str | None, source: str, expected: RecordText) -> None:
    assert record_text(tweet, caption, source) == expected


def test_unknown_text_source_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="unknown text source 'image'"):
        record_text("a", "b", "image")


def test_example_texts_prefer_the_caption_map_over_the_tsv_column() -> None:
    from crisis_tool.data.crisismmd import Example

    examples = [Example("1", "i1", "tweet one", "a.jpg", "x", "e", llava_text="column caption"),
                Example("2", "i2", "tweet two", "b.jpg", "x", "e", llava_text="column caption")]
    texts = example_texts(examples, {"i1": "map caption"}, "llava")
    assert [t.text for t in texts] == ["map caption", "column caption"]
