"""One mixed JSONL of every kind of bad (and awkward but good) record: one output line per input line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from crisis_tool.cli import run
from crisis_tool.runtime.predictor import Predictor
from crisis_tool.runtime.records import Record

GOOD = "Flooded houses near the river #Harvey"


def _images(root: Path) -> dict[str, Path]:
    root.mkdir()
    p = {name: root / name for name in (
        "ok.png", "corrupt.jpg", "truncated.jpg", "zero.png", "notes.jpg", "bomb.png", "anim.gif", "frame0.png",
        "cmyk.jpg", "16bit.png", "palette.png", "la.png", "rgba.png", "exif.jpg", "exif_ref.png")}
    gradient = np.linspace(0, 255, 80 * 60 * 3).reshape(60, 80, 3).astype(np.uint8)
    Image.fromarray(gradient).save(p["ok.png"])
    p["corrupt.jpg"].write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 10)
    Image.fromarray(gradient).save(root / "full.jpg", quality=90)
    data = (root / "full.jpg").read_bytes()
    p["truncated.jpg"].write_bytes(data[: len(data) // 2])
    p["zero.png"].write_bytes(b"")
    p["notes.jpg"].write_text("just some text, not an image\n")
    Image.new("1", (8200, 8200)).save(p["bomb.png"])  # 67 megapixels, above MAX_PIXELS, tiny file
    frames = [Image.new("RGB", (40, 40), c) for c in ((200, 30, 30), (30, 30, 200))]
    frames[0].save(p["anim.gif"], save_all=True, append_images=frames[1:], duration=100, loop=0)
    Image.open(p["anim.gif"]).convert("RGB").save(p["frame0.png"])
    Image.new("CMYK", (50, 40), (10, 200, 30, 5)).save(p["cmyk.jpg"])
    Image.fromarray((np.arange(40 * 50).reshape(40, 50) * 30).astype(np.uint16)).save(p["16bit.png"])
    Image.fromarray(gradient).convert("P").save(p["palette.png"])
    Image.new("LA", (30, 30), (120, 200)).save(p["la.png"])
    Image.new("RGBA", (30, 30), (10, 120, 240, 100)).save(p["rgba.png"])
    img = Image.fromarray(gradient)
    exif = img.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    img.save(p["exif.jpg"], exif=exif, quality=95)
    ImageOps.exif_transpose(Image.open(p["exif.jpg"])).convert("RGB").save(p["exif_ref.png"])
    return p


def _line(rid: str, image: str | None, text: str | None = GOOD, **extra) -> bytes:
    obj = {"id": rid, "text": text, **extra}
    if image is not None:
        obj["image"] = image
    return json.dumps(obj).encode()


# (line bytes, expected: None = success, or a substring of the error)
def _cases(p: dict[str, Path]) -> list[tuple[bytes, str | None]]:
    return [
        (_line("ok", str(p["ok.png"])), None),
        (_line("corrupt", str(p["corrupt.jpg"])), "record corrupt: bad image (field 'image'"),
        (_line("truncated", str(p["truncated.jpg"])), "record truncated: bad image (field 'image'"),
        (_line("zero", str(p["zero.png"])), "empty (0 bytes)"),
        (_line("missing", str(p["ok.png"].parent / "nope.jpg")), "record missing: bad image (field 'image'"),
        (_line("notimage", str(p["notes.jpg"])), "not a recognised image format"),
        (_line("bomb", str(p["bomb.png"])), "above the limit"),
        (_line("anim", str(p["anim.gif"])), None),
        (_line("cmyk", str(p["cmyk.jpg"])), None),
        (_line("16bit", str(p["16bit.png"])), None),
        (_line("palette", str(p["palette.png"])), None),
        (_line("la", str(p["la.png"])), None),
        (_line("rgba", str(p["rgba.png"])), None),
        (_line("exif", str(p["exif.jpg"])), None),
        (_line("emptytext", str(p["ok.png"]), ""), "record emptytext: empty text (field 'text')"),
        (_line("spaces", str(p["ok.png"]), " \t\n "), "record spaces: empty text (field 'text')"),
        (_line("huge", str(p["ok.png"]), "flood water " * 9000), None),
        (b'{"id": "latin1", "text": "caf\xe9", "image": "x.png"}', "invalid UTF-8 on line 18"),
        (b'{"id": "broken", "text": ', "malformed JSON on line 19"),
        (_line("ok", str(p["rgba.png"])), "duplicate id ok, first seen on line 1"),
        (_line("noimage", None), "record noimage: no image (field 'image')"),
        (_line("notext", str(p["ok.png"]), None), "record notext: empty text (field 'text')"),
    ]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[bytes, str | None]], dict]:
    root = tmp_path_factory.mktemp("bad_input")
    paths = _images(root / "img")
    cases = _cases(paths)
    path = root / "mixed.jsonl"
    path.write_bytes(b"\n".join(line for line, _ in cases) + b"\n")
    return path, cases, paths


def test_every_line_answered_in_order(tiny_bundle: Path, mixed, tmp_path: Path) -> None:
    path, cases, paths = mixed
    out = tmp_path / "out.jsonl"
    assert run(["predict", "--bundle", str(tiny_bundle), "--input", str(path), "--output", str(out),
                "--batch-size", "4"]) == 3
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(path.read_bytes().splitlines()) == len(cases)
    rows = [json.loads(line) for line in lines]
    for n, (row, (raw, expected)) in enumerate(zip(rows, cases, strict=True), start=1):
        if expected is None:
            assert row["error"] is None, (n, row)
            assert row["label"] in row["probs"] and row["confidence"] == max(row["probs"].values())
        else:
            assert row["label"] is None and row["probs"] == {}
            assert expected in row["error"], (n, row["error"])
        if n not in (18, 19):  # those lines cannot name their record
            assert row["id"] == json.loads(raw)["id"]

    # Batch independence: each good record predicted alone (fresh predictor, no cache) gives the same answer.
    good = {row["id"]: row for row, (_, exp) in zip(rows[:17], cases[:17], strict=True) if exp is None}
    by_id = {json.loads(raw)["id"]: json.loads(raw) for raw, exp in cases[:17] if exp is None}
    with Predictor.from_bundle(tiny_bundle, batch_size=1, cache_size=0) as alone:
        for rid, row in good.items():
            obj = by_id[rid]
            (pred,) = alone.predict([Record(rid, obj["text"], obj["image"])])
            np.testing.assert_allclose(list(pred.probs.values()), list(row["probs"].values()), atol=1e-5)
        # the animated GIF is its first frame; the EXIF JPEG is classified upright
        for rid, reference in (("anim", paths["frame0.png"]), ("exif", paths["exif_ref.png"])):
            (ref,) = alone.predict([Record(rid, GOOD, str(reference))])
            np.testing.assert_allclose(list(ref.probs.values()), list(good[rid]["probs"].values()), atol=1e-4)


def test_clean_file_exits_zero_and_stdout(tiny_bundle: Path, mixed, tmp_path: Path, capsys) -> None:
    _, _, paths = mixed
    clean = tmp_path / "clean.jsonl"
    clean.write_bytes(b"\n".join([_line("a", str(paths["ok.png"])), _line("b", str(paths["cmyk.jpg"]))]) + b"\n")
    assert run(["predict", "--bundle", str(tiny_bundle), "--input", str(clean), "--output", "-"]) == 0
    captured = capsys.readouterr()
    assert [json.loads(x)["id"] for x in captured.out.splitlines()] == ["a", "b"]
    assert "2 records, 0 errors" in captured.err and "backend auto" in captured.err  # the default, and its choice
    assert captured.err.startswith("backend auto: ")  # what auto chose and why, in one line, first


def test_usage_errors_exit_two(tiny_bundle: Path, mixed, tmp_path: Path, capsys) -> None:
    path, _, _ = mixed
    out = str(tmp_path / "o.jsonl")
    assert run(["predict", "--bundle", str(tmp_path / "nope"), "--input", str(path), "--output", out]) == 2
    assert "bundle not found" in capsys.readouterr().err
    assert run(["predict", "--bundle", str(tmp_path), "--input", str(path), "--output", out]) == 2
    assert run(["predict", "--bundle", str(tiny_bundle), "--input", str(tmp_path / "x.jsonl"),
                "--output", out]) == 2
    assert "input not found" in capsys.readouterr().err
