"""`crisis-tool caption` with a tiny random-weight LLaVA built here (no hub access, no real weights)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from crisis_tool import caption as cap
from crisis_tool.data.llava_text import read_llava_file
from crisis_tool.runtime.errors import CrisisToolError, DataError, UsageError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

HEADER = "event_name tweet_id image_id tweet_text image label label_text label_image label_text_image".split()
WORDS = "USER: ASSISTANT: the a image flood fire damage house road water people tweet describe help".split()
COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 40), (120, 40, 160), (10, 10, 10)]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def build_tiny_llava(path: Path) -> Path:
    """Save a random-weight LLaVA (tiny CLIP vision tower + tiny Llama) and its processor to `path`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    vocab = {w: i for i, w in enumerate(["<unk>", "<pad>", "<s>", "</s>", "<image>", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    vision = CLIPVisionConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
    )
    text = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=3,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=vocab["<image>"], image_seq_length=16
    )
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(path)
    processor.save_pretrained(path)
    return path


def split_tsv(root: Path, task: str, split: str) -> Path:
    """Where crisis_tool.data.crisismmd.load_split(root, task, split) reads a settingA split."""
    return root / "crisismmd_datasplit_settingA" / f"task_{task}_text_img_{split}.tsv"


def write_crisismmd(root: Path, rows: list[tuple[str, str]], split: str = "train") -> None:
    """A tiny informative-task CrisisMMD folder: rows are (tweet_id, image_id); each image a small JPEG."""
    from PIL import Image

    lines = ["\t".join(HEADER)]
    for k, (tweet_id, image_id) in enumerate(rows):
        rel = f"data_image/demo_event/1_1_2017/{image_id}.jpg"
        img = root / rel
        if not img.exists():
            img.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (40 + 4 * k, 36), COLOURS[k % len(COLOURS)]).save(img)
        label = "informative" if k % 2 == 0 else "not_informative"
        tweet = f"flood damage near the road {k} https://t.co/x <image>"
        lines.append(
            "\t".join(["demo_event", tweet_id, image_id, tweet, rel, label, label, label, "Positive"])
        )
    path = split_tsv(root, "informative", split)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llava(tmp_path_factory.mktemp("tiny_llava"))


@pytest.fixture()
def data_root(tmp_path: Path) -> Path:
    """5 unique images; the sixth tweet shares image 100_0 (captioned once)."""
    root = tmp_path / "crisismmd"
    write_crisismmd(root, [(f"{100 + i}", f"{100 + i}_0") for i in range(5)] + [("100", "100_0")])
    return root


def invoke(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the CLI in-process: crisis_tool.cli.run if every command module exists, else this command alone."""
    try:
        from crisis_tool.cli import run
    except ImportError:
        run = _run_caption_only
    capsys.readouterr()
    code = run(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _run_caption_only(argv: list[str]) -> int:
    import sys

    import typer

    from crisis_tool.commands.caption_cmd import register

    app = typer.Typer(pretty_exceptions_enable=False)
    app.callback()(lambda: None)
    register(app)
    try:
        app(args=argv, prog_name="crisis-tool")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0
    except CrisisToolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def caption_argv(root: Path, model: Path, out: Path, *extra: str) -> list[str]:
    base = ["caption", "--data", str(root), "--task", "informative", "--model", str(model), "--out", str(out)]
    return [*base, "--batch-size", "2", "--max-new-tokens", "4", "--device", "cpu", *extra]


def test_default_prompt_is_llava15_chat_and_hashed() -> None:
    prompt = cap.load_prompt()
    assert prompt.template.startswith("USER: <image>\n") and prompt.template.endswith("ASSISTANT:")
    assert "{tweet}" in prompt.template
    assert prompt.sha256 == hashlib.sha256(cap.DEFAULT_PROMPT_FILE.read_bytes()).hexdigest()
    text = prompt.render("water\nrising <image> fast")
    assert '"water rising image fast"' in text and text.count("<image>") == 1


def test_prompt_without_image_token_is_a_usage_error(tmp_path: Path) -> None:
    bad = tmp_path / "p.txt"
    bad.write_text("USER: describe {tweet} ASSISTANT:", encoding="utf-8")
    with pytest.raises(UsageError, match="<image>"):
        cap.load_prompt(bad)


def test_cli_batches_dedups_and_writes_schema(
    tiny_llava: Path, data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "llava.jsonl"
    code, stdout, err = invoke(caption_argv(data_root, tiny_llava, out), capsys)
    assert code == 0, err
    rows = read_rows(out)
    assert [r["image_id"] for r in rows] == [f"{100 + i}_0" for i in range(5)]
    sha = hashlib.sha256(cap.DEFAULT_PROMPT_FILE.read_bytes()).hexdigest()
    for row in rows:
        assert list(row) == ["image_id", "llava_text", "model", "prompt_sha256", "error"]
        assert isinstance(row["llava_text"], str) and row["error"] is None
        assert row["model"] == str(tiny_llava) and row["prompt_sha256"] == sha
    assert "5 captioned" in stdout
    assert read_llava_file(out) == {r["image_id"]: r["llava_text"] for r in rows}

    code, stdout, err = invoke(caption_argv(data_root, tiny_llava, out), capsys)  # rerun: nothing left to do
    assert code == 0 and "nothing to do" in stdout, err
    assert read_rows(out) == rows


def test_generation_is_deterministic(
    tiny_llava: Path, data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert invoke(caption_argv(data_root, tiny_llava, a), capsys)[0] == 0
    assert invoke(caption_argv(data_root, tiny_llava, b), capsys)[0] == 0
    assert read_llava_file(a) == read_llava_file(b)
    assert any(read_llava_file(a).values())  # random weights still emit some words


def test_resume_after_interrupt_generates_only_missing(
    tiny_llava: Path, data_root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "llava.jsonl"
    items = cap.collect_items(data_root, "informative")
    prompt = cap.load_prompt()
    captioner = cap.load_captioner(str(tiny_llava), device="cpu", max_new_tokens=4)

    def crash(n_batches: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cap.caption_items(items, captioner, out, str(tiny_llava), prompt, batch_size=2, on_batch=crash)
    first = read_rows(out)
    assert [r["image_id"] for r in first] == ["100_0", "101_0"]

    with out.open("a", encoding="utf-8") as fh:  # a crash in the middle of writing a line
        fh.write('{"image_id": "102_0", "llava_te')
    seen: list[str] = []
    generate = captioner.generate
    captioner.generate = lambda images, prompts: (seen.extend(prompts), generate(images, prompts))[1]
    summary = cap.caption_items(items, captioner, out, str(tiny_llava), prompt, batch_size=2, progress=False)
    assert (summary.already_done, summary.generated, summary.errors) == (2, 3, 0)
    assert len(seen) == 3
    rows = read_rows(out)
    assert rows[:2] == first
    assert sorted(r["image_id"] for r in rows) == sorted(it.image_id for it in items)
    assert all(r["error"] is None for r in rows)


def test_unreadable_images_become_error_rows_then_retried(
    tiny_llava: Path, data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = data_root / "data_image/demo_event/1_1_2017/101_0.jpg"
    good_bytes = broken.read_bytes()
    broken.write_bytes(b"definitely not a jpeg")
    (data_root / "data_image/demo_event/1_1_2017/103_0.jpg").unlink()
    out = tmp_path / "llava.jsonl"
    code, stdout, err = invoke(caption_argv(data_root, tiny_llava, out), capsys)
    assert code == 0, err
    rows = {r["image_id"]: r for r in read_rows(out)}
    assert len(rows) == 5 and "3 captioned, 2 errors" in stdout
    for bad in ("101_0", "103_0"):
        assert rows[bad]["llava_text"] is None and isinstance(rows[bad]["error"], str) and rows[bad]["error"]
    assert set(read_llava_file(out)) == {"100_0", "102_0", "104_0"}

    broken.write_bytes(good_bytes)  # fixed: the rerun retries only the errored images
    code, stdout, _ = invoke(caption_argv(data_root, tiny_llava, out), capsys)
    assert code == 0 and "3 already done, 1 captioned, 1 errors" in stdout
    after = read_rows(out)
    assert sorted(r["image_id"] for r in after) == sorted(rows)
    assert {r["image_id"] for r in after if r["error"] is None} == {"100_0", "101_0", "102_0", "104_0"}


def test_custom_prompt_hash_recorded_and_mixing_refused(
    tiny_llava: Path, data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text("USER: <image>\nthe {tweet} image ASSISTANT:\n", encoding="utf-8")
    out = tmp_path / "llava.jsonl"
    code, _, err = invoke(caption_argv(data_root, tiny_llava, out, "--prompt-file", str(prompt_file)), capsys)
    assert code == 0, err
    sha = hashlib.sha256(prompt_file.read_bytes()).hexdigest()
    assert {r["prompt_sha256"] for r in read_rows(out)} == {sha}
    code, _, err = invoke(caption_argv(data_root, tiny_llava, out), capsys)  # default prompt, same --out
    assert code == 2 and "prompt_sha256" in err and str(out) in err


@pytest.mark.parametrize(
    ("model", "hints"),
    [
        ("nobody-here/no-such-llava-model", ("Hugging Face cache", "HF_HUB_OFFLINE=1", "--model PATH")),
        ("/no/such/llava/dir", ("config.json",)),
    ],
)
def test_missing_model_is_one_clear_line(
    model: str, hints: tuple[str, ...], data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "llava.jsonl"
    argv = ["caption", "--data", str(data_root), "--task", "informative", "--model", model, "--out", str(out)]
    code, _, err = invoke([*argv, "--device", "cpu"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in err
    assert model in lines[0] and all(h in lines[0] for h in hints)
    assert not out.exists()


def test_read_llava_file_jsonl_and_tsv(tmp_path: Path) -> None:
    jsonl = tmp_path / "l.jsonl"
    rows = [cap.make_row("1_0", "a flooded road", "m", "s", None), cap.make_row("2_0", None, "m", "s", "bad")]
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert read_llava_file(jsonl) == {"1_0": "a flooded road"}

    tsv = tmp_path / "authors.tsv"
    tsv.write_text(
        'event_name\timage_id\tLLaVA_text\nx\t1_0\tsmoke "over" hills\nx\t2_0\t\n', encoding="utf-8"
    )
    assert read_llava_file(tsv) == {"1_0": 'smoke "over" hills', "2_0": ""}

    with pytest.raises(DataError, match="nope.tsv"):
        read_llava_file(tmp_path / "nope.tsv")
    no_col = tmp_path / "no_col.tsv"
    no_col.write_text("image_id\ttweet_text\n1_0\thi\n", encoding="utf-8")
    with pytest.raises(DataError, match="no_col.tsv"):
        read_llava_file(no_col)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image_id": "1_0"}\n', encoding="utf-8")
    with pytest.raises(DataError, match="bad.jsonl"):
        read_llava_file(bad)
