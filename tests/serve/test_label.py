"""`label` with Ray Data: 2,000 records in 3 JSONL files (5 bad), one row each; a rerun redoes only what is missing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from serve_helpers import RAY_MISSING, png_bytes

pytest.importorskip("ray", reason=RAY_MISSING)

from crisis_tool.cli import run  # noqa: E402
from crisis_tool.runtime.predictor import Predictor  # noqa: E402
from crisis_tool.runtime.records import read_records  # noqa: E402

SIZES = (700, 700, 600)
BAD = {  # global record index -> what is wrong with it
    5: "malformed JSON line",
    333: "missing image file",
    900: "empty text",
    1401: "corrupt image",
    1999: "text is not a string",
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("label_inputs")
    for i in range(20):
        (root / f"img{i}.png").write_bytes(png_bytes(i))
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n but then nothing useful")
    files, n = [], 0
    for f, size in enumerate(SIZES):
        lines = []
        for _ in range(size):
            record: dict[str, Any] = {"id": f"r{n}", "text": f"flood report {n % 37}", "image": f"img{n % 20}.png"}
            problem = BAD.get(n)
            if problem == "missing image file":
                record["image"] = "gone.png"
            elif problem == "empty text":
                record["text"] = "  "
            elif problem == "corrupt image":
                record["image"] = "corrupt.png"
            elif problem == "text is not a string":
                record["text"] = 42
            line = json.dumps(record)
            lines.append(line[:-3] if problem == "malformed JSON line" else line)
            n += 1
        path = root / f"part{f}.jsonl"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        files.append(path)
    return files


@pytest.fixture(scope="module")
def labelled(local_ray: Any, tiny_bundle: Path, inputs: list[Path], tmp_path_factory) -> tuple[Path, int]:
    out = tmp_path_factory.mktemp("labels")
    code = run(["label", "--bundle", str(tiny_bundle), "--input", str(inputs[0].parent / "part*.jsonl"),
                "--output", str(out), "--batch-size", "64", "--threads", "1"])
    return out, code


def rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_every_record_one_row_with_its_id(labelled: tuple[Path, int], inputs: list[Path]) -> None:
    out, code = labelled
    assert code == 3  # some records failed, as `predict` reports it
    assert sorted(p.name for p in out.iterdir()) == [f"part{f}.predictions.jsonl" for f in range(3)]
    got = [row for f in range(3) for row in rows(out / f"part{f}.predictions.jsonl")]
    assert len(got) == sum(SIZES) == 2000
    for n, row in enumerate(got):
        assert row["id"] == (None if BAD.get(n) == "malformed JSON line" else f"r{n}")
        assert (row["error"] is not None) == (n in BAD), (n, row)
    errors = {n: got[n]["error"] for n in BAD}
    assert "malformed JSON on line 6" in errors[5]
    assert "record r333: bad image" in errors[333] and "gone.png" in errors[333]
    assert "record r900: empty text (field 'text')" in errors[900]
    assert "record r1401: bad image" in errors[1401]
    assert "record r1999" in errors[1999] and "field 'text' must be a string" in errors[1999]


def _groups(lines: list[Any]) -> list[tuple[Any, Any]]:
    return [(x["group"], x["duplicate_of"]) if isinstance(x, dict) else (x.group, x.duplicate_of) for x in lines]


def test_groups_span_the_run_as_predict_over_all_files(labelled: tuple[Path, int], inputs: list[Path],
                                                       tiny_bundle: Path) -> None:
    out, _ = labelled
    got = [row for f in range(3) for row in rows(out / f"part{f}.predictions.jsonl")]
    with Predictor.from_bundle(tiny_bundle) as predictor:  # one input: one streaming pass over every record
        want = predictor.predict([record for path in inputs for record in read_records(path)])
    assert _groups(got) == _groups(want)
    assert {row["group"] for row in got[700:]} & {row["id"] for row in got[:700]}  # later files join part0's


def test_rows_equal_predict(labelled: tuple[Path, int], inputs: list[Path], tiny_bundle: Path) -> None:
    out, _ = labelled
    with Predictor.from_bundle(tiny_bundle) as predictor:
        for f, path in enumerate(inputs):
            want = predictor.predict(read_records(path))
            got = rows(out / f"part{f}.predictions.jsonl")
            assert [r["id"] for r in got] == [p.id for p in want]
            assert [r["label"] for r in got] == [p.label for p in want]
            for row, pred in zip(got, want, strict=True):
                if pred.error is None:
                    np.testing.assert_allclose(list(row["probs"].values()), list(pred.probs.values()), atol=1e-5)


def test_rerun_redoes_only_the_missing_file(labelled: tuple[Path, int], tiny_bundle: Path, inputs: list[Path],
                                            capfd) -> None:
    out, _ = labelled
    kept = {name: (out / name).stat().st_mtime_ns for name in ("part0.predictions.jsonl", "part2.predictions.jsonl")}
    redo = out / "part1.predictions.jsonl"
    before = redo.read_text(encoding="utf-8")
    redo.unlink()
    capfd.readouterr()
    code = run(["label", "--bundle", str(tiny_bundle), "--input", str(inputs[0].parent), "--output", str(out),
                "--threads", "1"])
    assert code == 3  # part1 holds record 900's error
    assert "1 files written, 2 already complete (skipped); 700 records, 1 errors" in capfd.readouterr().err
    assert {name: (out / name).stat().st_mtime_ns for name in kept} == kept
    grouping = ("group", "duplicate_of")
    strip = [{k: v for k, v in row.items() if k not in grouping} for row in rows(redo)]
    assert strip == [{k: v for k, v in json.loads(line).items() if k not in grouping} for line in before.splitlines()]
    with Predictor.from_bundle(tiny_bundle) as predictor:  # a run of one file: groups within it
        assert _groups(rows(redo)) == _groups(predictor.predict(read_records(inputs[1])))


def test_parquet_in_and_out(local_ray: Any, tiny_bundle: Path, inputs: list[Path], labelled, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = [json.loads(line) for line in inputs[2].read_text(encoding="utf-8").splitlines()][:200]
    for record in source:
        record["text"] = str(record["text"])
        record["image"] = str(inputs[2].parent / record["image"])
    pq.write_table(pa.Table.from_pylist(source), tmp_path / "part2.parquet")
    code = run(["label", "--bundle", str(tiny_bundle), "--input", str(tmp_path / "part2.parquet"),
                "--output", str(tmp_path / "out"), "--format", "parquet", "--threads", "1"])
    assert code == 3  # record r1401's corrupt image
    table = pq.read_table(tmp_path / "out" / "part2.predictions.parquet").to_pylist()
    jsonl = rows(labelled[0] / "part2.predictions.jsonl")[:200]
    assert [r["id"] for r in table] == [r["id"] for r in jsonl]
    assert [r["label"] for r in table] == [r["label"] for r in jsonl]
    assert [r["error"] for r in table] == [r["error"] for r in jsonl]
    assert [dict(r["probs"]) for r in table] == [r["probs"] for r in jsonl]  # the same floats, as map columns


def test_user_mistakes_are_one_line(tiny_bundle: Path, inputs: list[Path], tmp_path: Path, capfd) -> None:
    cases = [
        (["--input", str(tmp_path / "nothing.jsonl")], "error: input not found"),
        (["--input", str(tmp_path / "*.jsonl")], "matches no input files"),
        (["--input", str(inputs[0]), "--format", "csv"], "--format must be one of jsonl, parquet"),
        (["--input", str(inputs[0]), "--input", str(inputs[0].parent / "part0.jsonl.copy")], "input not found"),
    ]
    (tmp_path / "t.tsv").write_text("no,header\n", encoding="utf-8")
    cases.append((["--input", str(tmp_path / "t.tsv"), "--image-root", str(tmp_path)], "not a CrisisMMD split TSV"))
    for args, message in cases:
        capfd.readouterr()
        code = run(["label", "--bundle", str(tiny_bundle), "--output", str(tmp_path / "o"), *args])
        err = capfd.readouterr().err
        assert code in (1, 2) and message in err and "Traceback" not in err, (args, err)
        assert len(err.strip().splitlines()) == 1, err


def test_many_blocks_out_of_order_lose_and_repeat_no_row(local_ray: Any, tiny_bundle: Path, inputs: list[Path],
                                                         tmp_path: Path, capfd, monkeypatch) -> None:
    """Ray Data without preserve_order, 12 files in blocks of a few records through 2 actors (blocks of one file
    finish out of order, its end row may come first): ids in == ids out, per file, in order."""
    from crisis_tool.runtime.serve import label

    monkeypatch.setattr(label, "BLOCK_BYTES", 1024)
    source = [record for line in inputs[0].read_text(encoding="utf-8").splitlines()[6:]
              if (record := json.loads(line))["id"] not in {f"r{n}" for n in BAD}]
    folder, expected = tmp_path / "in", {}
    folder.mkdir()
    for f in range(12):
        chunk = source[f * 50: f * 50 + 5 + (f * 37) % 45]
        for record in chunk:
            record["image"] = str(inputs[0].parent / record["image"])
        (folder / f"p{f:02d}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chunk), encoding="utf-8")
        expected[f"p{f:02d}"] = [r["id"] for r in chunk]
    capfd.readouterr()
    code = run(["label", "--bundle", str(tiny_bundle), "--input", str(folder), "--output", str(tmp_path / "out"),
                "--batch-size", "3", "--concurrency", "2", "--cpus-per-actor", "1", "--threads", "1"])
    assert code == 0, capfd.readouterr().err
    got = {name: [row["id"] for row in rows(tmp_path / "out" / f"{name}.predictions.jsonl")] for name in expected}
    assert got == expected
    total = sum(map(len, expected.values()))
    assert f"12 files written, 0 already complete (skipped); {total} records, 0 errors" in capfd.readouterr().err
