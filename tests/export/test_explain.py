"""`export --explain`: each head graph also outputs the post's modality share (image vs text) from the guided
cross-attention gates and, for a Differential Attention head, the weight of each word of the post (the text
encoder then also outputs every token's feature and the word mask); both are parity-gated like any output, match
the torch reference, and reach every output line as `tasks.<task>.explain` (`image`, `text`, `words`). A bundle
exported without it has no such output (no cost)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torch")

from crisis_tool.runtime.bundle import Bundle  # noqa: E402
from crisis_tool.runtime.predictor import Predictor  # noqa: E402
from crisis_tool.runtime.records import Record  # noqa: E402


@pytest.fixture(scope="module")
def explain_bundle(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory, cli) -> Path:
    out = tmp_path_factory.mktemp("explain") / "b"
    assert cli(["export", "--model", tiny_run, "--out", out, "--explain"]) == 0
    return out


def _records(tmp_path: Path) -> list[Record]:
    rng = np.random.default_rng(3)
    out = []
    for i in range(5):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (36, 44, 3), dtype=np.uint8)).save(path)
        out.append(Record(f"r{i}", f"bridge down near exit {i}" if i % 2 else "ok", str(path)))
    return out


def test_explain_is_an_extra_gated_output(explain_bundle: Path, tiny_bundle: Path) -> None:
    manifest = json.loads((explain_bundle / "manifest.json").read_text())
    (head,) = manifest["spec"]["heads"]
    assert head["explain"] is True
    assert head["explain_tokens"] is True  # the tiny run's head is guided-diff: it weighs words
    graphs = manifest["graphs"]["fp32"]
    assert [o["name"] for o in graphs[head["graph"]]["outputs"]] == ["logits", "probs", "modality_share",
                                                                     "token_weights"]
    assert [i["name"] for i in graphs[head["graph"]]["inputs"]] == ["image_embeds", "text_embeds",
                                                                    "text_token_embeds", "token_mask"]
    assert [o["name"] for o in graphs["text_encoder"]["outputs"]] == ["text_embeds", "text_token_embeds",
                                                                      "token_mask"]
    parity = manifest["parity"]["fp32"]
    entry = parity[head["graph"]]
    assert entry["passed"] and entry["max_abs_modality_share"] <= entry["limits"]["max_abs_modality_share"] == 1e-4
    assert entry["max_abs_token_weights"] <= entry["limits"]["max_abs_token_weights"] == 1e-4
    assert parity["text_encoder"]["max_abs_token_mask"] == 0.0  # which positions are words: exact
    end_to_end = parity["end_to_end:informative"]
    assert end_to_end["passed"] and end_to_end["max_abs_token_weights"] <= 1e-4
    plain = Bundle.load(tiny_bundle).spec
    assert plain.heads[0].graph_spec().output_names == ["logits", "probs"]  # without --explain: no extra output
    assert plain.text_graph.output_names == ["text_embeds"]


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_explain_matches_torch_and_sums_to_one(backend: str, explain_bundle: Path, tmp_path: Path) -> None:
    from crisis_tool.runtime.backends import backend_unavailable_reason

    if backend_unavailable_reason(backend):
        pytest.skip(backend_unavailable_reason(backend))
    records = _records(tmp_path)
    with Predictor.from_bundle(explain_bundle, backend=backend, groups=False) as ours, \
            Predictor.from_bundle(explain_bundle, backend="torch", groups=False) as ref:
        got, want = ours.predict(records), ref.predict(records)
    for a, b in zip(got, want, strict=True):
        (task,) = a.tasks
        share, ref_share = a.tasks[task].explain, b.tasks[task].explain
        assert share is not None and ref_share is not None
        assert share["image"] + share["text"] == pytest.approx(1.0, abs=1e-6)
        assert 0.0 <= share["image"] <= 1.0
        assert share["image"] == pytest.approx(ref_share["image"], abs=1e-4)
        words, ref_words = share["words"], ref_share["words"]
        assert [w for w, _ in words] == [w for w, _ in ref_words]  # the same words, in the same order
        np.testing.assert_allclose([x for _, x in words], [x for _, x in ref_words], atol=1e-4)
        assert [x for _, x in words] == sorted((x for _, x in words), reverse=True)
        text = records[int(a.id[1:])].text.lower()
        assert words and all(w in text for w, _ in words)  # words of the post, never SOT/EOT/padding


def test_explain_reaches_the_output_line(explain_bundle: Path, tmp_path: Path, cli) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": r.id, "text": r.text, "image": r.image}) + "\n"
                           for r in _records(tmp_path)))
    out = tmp_path / "out.jsonl"
    assert cli(["predict", "--bundle", explain_bundle, "--input", src, "--output", out, "--backend",
                "onnxruntime"]) == 0
    for line in map(json.loads, out.read_text().splitlines()):
        explain = line["tasks"]["informative"]["explain"]
        assert set(explain) == {"image", "text", "words"}
        assert explain["image"] + explain["text"] == pytest.approx(1.0, abs=1e-6)
        assert 1 <= len(explain["words"]) <= 5 and all(isinstance(w, str) for w, _ in explain["words"])


def test_word_weights_do_not_depend_on_batch_mates(explain_bundle: Path, tmp_path: Path) -> None:
    records = _records(tmp_path) + [Record("long", "water " * 60 + "rescue boat needed", _records(tmp_path)[0].image)]
    with Predictor.from_bundle(explain_bundle, groups=False, cache_size=0) as predictor:
        together = predictor.predict(records)
        alone = [predictor.predict([r])[0] for r in records]
    for a, b in zip(together, alone, strict=True):
        assert a.tasks["informative"].explain["words"] == b.tasks["informative"].explain["words"]


def test_padding_and_masked_positions_change_no_weight(explain_bundle: Path) -> None:
    """The head graph itself: extra zero-feature, mask-0 positions leave every word's weight unchanged."""
    from crisis_tool.runtime.backends import create_backend

    bundle = Bundle.load(explain_bundle)
    backend = create_backend("onnxruntime", bundle)
    rng = np.random.default_rng(0)
    d = bundle.spec.heads[0]
    dim = backend.encode_text(np.array([[49406, 320, 49407]])).shape[1]
    image, text = rng.standard_normal((2, dim)).astype(np.float32), rng.standard_normal((2, dim)).astype(np.float32)
    tokens = rng.standard_normal((2, 4, dim)).astype(np.float32)
    mask = np.array([[0, 1, 1, 0], [0, 1, 0, 0]], np.float32)
    short = backend.run_head_outputs(image, text, d.task, {"text_token_embeds": tokens, "token_mask": mask})
    padded_tokens = np.concatenate([tokens, rng.standard_normal((2, 5, dim)).astype(np.float32)], axis=1)
    padded_mask = np.concatenate([mask, np.zeros((2, 5), np.float32)], axis=1)
    long = backend.run_head_outputs(image, text, d.task, {"text_token_embeds": padded_tokens,
                                                           "token_mask": padded_mask})
    np.testing.assert_allclose(long["token_weights"][:, :4], short["token_weights"], atol=1e-6)
    assert not long["token_weights"][:, 4:].any() and not short["token_weights"][mask == 0].any()
    np.testing.assert_array_equal(long["logits"], short["logits"])  # the words never change the answer
