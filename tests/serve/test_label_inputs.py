"""`label`'s input rows (runtime/serve/label_inputs.py), without Ray: a damaged Parquet row group or file is one
error row naming it and the rest is read; rows are numbered per file, resume skips, and every file ends with
one `end` row holding its record count."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from crisis_tool.runtime.serve.label_inputs import count_records, record_rows

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def write_parquet(path: Path, n: int, group: int) -> Path:
    rows = [{"id": f"q{i}", "text": f"flood {i}", "image": f"img{i % 3}.png"} for i in range(n)]
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=group)
    return path


def corrupt_row_group(path: Path, group: int) -> None:
    """Flip bytes inside the first page of the text column of row group `group` (its header no longer parses)."""
    data = bytearray(path.read_bytes())
    start = pq.ParquetFile(path).metadata.row_group(group).column(1).data_page_offset
    for k in range(start, start + 40):
        data[k] ^= 0xFF
    path.write_bytes(bytes(data))


def rows_of(path: Path, skip: int = 0) -> list[dict[str, Any]]:
    return list(record_rows({"file": 4, "path": str(path), "skip": skip}, image_root=None))


def test_a_corrupt_row_group_is_one_error_row_and_the_rest_is_read(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "posts.parquet", 250, 100)
    corrupt_row_group(path, 1)
    rows = rows_of(path)
    records, end = rows[:-1], rows[-1]
    assert [r["seq"] for r in records] == list(range(151)) and {r["file"] for r in rows} == {4}
    assert end["end"] is True and end["seq"] == 151 and not any(r["end"] for r in records)
    bad = [r for r in records if r["error"]]
    assert len(bad) == 1 and bad[0]["seq"] == 100
    assert f"{path}: Parquet row group 1 (rows 101-200) is unreadable" in bad[0]["error"]
    assert [r["id"] for r in records if not r["error"]] == [f"q{i}" for i in [*range(100), *range(200, 250)]]
    assert records[101]["line_no"] == 201  # rows keep their numbers in the file
    assert records[0]["image"] == str(tmp_path.resolve() / "img0.png")


def test_an_unreadable_parquet_file_is_one_error_row(tmp_path: Path) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 this is not a parquet file")
    rows = rows_of(path)
    assert len(rows) == 2 and rows[1] == {**rows[1], "end": True, "seq": 1}
    assert rows[0]["error"].startswith(f"{path}: unreadable Parquet file, nothing in it was labelled (")
    assert "\n" not in rows[0]["error"]


def test_skip_resumes_after_the_records_already_answered(tmp_path: Path) -> None:
    path = tmp_path / "posts.jsonl"
    path.write_text("".join(json.dumps({"id": f"r{i}", "text": "t", "image": "x.png"}) + "\n" for i in range(5))
                    + "\n{broken\n")
    rows = rows_of(path, skip=3)
    assert [(r["seq"], r["id"], bool(r["error"])) for r in rows[:-1]] == [(3, "r3", False), (4, "r4", False),
                                                                          (5, "", True)]
    assert rows[-1]["end"] and rows[-1]["seq"] == 6
    assert [r["seq"] for r in rows_of(path, skip=6)] == [6]  # all answered: only the end row


def test_a_file_that_vanishes_is_one_error_row(tmp_path: Path) -> None:
    rows = rows_of(tmp_path / "gone.jsonl")
    assert len(rows) == 2 and "gone.jsonl: reading failed after 0 records" in rows[0]["error"]


def test_count_records_for_the_progress_bar(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('{"id": 1}\n\n  \n{"id": 2}\n{"id": 3}')
    assert count_records(tmp_path / "a.jsonl") == 3
    assert count_records(write_parquet(tmp_path / "p.parquet", 42, 10)) == 42
    assert count_records(tmp_path / "missing.jsonl") == 0


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from Linux /proc")
def test_a_small_parquet_of_2m_rows_is_read_in_bounded_memory(tmp_path: Path) -> None:
    """A 38 KB file of 2 million dictionary-encoded rows in one row group decodes to over 1 GB of Python
    objects when the row group is read whole; the reader streams it in batches. The child's peak RSS may grow by
    200 MB at most (its address space is capped 3 GB above its start, so a regression cannot take the
    machine; pyarrow reserves far more address space than it touches, so the cap itself cannot be tight)."""
    n = 2_000_000
    path = tmp_path / "many.parquet"
    table = pa.table({"id": pa.array(["p"] * n), "text": pa.array(["flood water in the street " * 4] * n),
                      "image": pa.array(["a.png"] * n)})
    pq.write_table(table, path, row_group_size=n, compression="zstd")
    assert path.stat().st_size < 1 << 20
    code = textwrap.dedent(f"""
        import itertools, resource
        from pathlib import Path
        from crisis_tool.runtime.serve.label_inputs import iter_parquet_records

        def status(key):
            with open("/proc/self/status") as fh:
                return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(key))

        resource.setrlimit(resource.RLIMIT_AS, (status("VmSize:") + (3 << 30),) * 2)
        start = status("VmHWM:")
        items = list(itertools.islice(iter_parquet_records(Path({str(path)!r}), Path("/")), 3))
        print([type(i).__name__ for i in items], [i.line_no for i in items], (status("VmHWM:") - start) >> 20)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    grew = int(done.stdout.split()[-1])
    assert done.stdout.startswith("['Record', 'RecordError', 'RecordError'] [1, 2, 3]"), done.stdout  # ids repeat
    assert grew <= 200, f"peak RSS grew by {grew} MB"
