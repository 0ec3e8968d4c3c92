"""Readers yield one Record or RecordError per input record, in order, and never stop on a bad one."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from crisis_tool.runtime.errors import DataError, UsageError
from crisis_tool.runtime.records import Record, RecordError, read_records

HEADER9 = "event_name\ttweet_id\timage_id\ttweet_text\timage\tlabel\tlabel_text\tlabel_image\tlabel_text_image"


def _row9(tweet_id: str, image_id: str, text: str) -> str:
    return f"ev\t{tweet_id}\t{image_id}\t{text}\tdata_image/ev/{image_id}.jpg\tinformative\tx\tx\tx"


def test_tsv_uses_image_id_and_keeps_quotes(tmp_path: Path) -> None:
    tsv = tmp_path / "split.tsv"
    lines = [HEADER9, _row9("1", "1_0", 'He said "help'), _row9("1", "1_1", "second image"),
             "too\tfew\tcolumns", _row9("2", "1_0", "dup image id")]
    tsv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    items = list(read_records(tsv, image_root=tmp_path))
    assert [type(i) for i in items] == [Record, Record, RecordError, RecordError]
    assert items[0].id == "1_0" and items[0].text == 'He said "help'
    assert items[0].image == str(tmp_path / "data_image/ev/1_0.jpg") and items[0].line_no == 2
    assert "line 4 has 3 columns" in items[2].error
    assert items[3].error == "duplicate id 1_0, first seen on line 2"


def test_tsv_llava_column_and_six_columns(tmp_path: Path) -> None:
    tsv = tmp_path / "damage.tsv"
    tsv.write_text("event_name\ttweet_id\timage_id\ttweet_text\timage\tlabel\tLLaVA_text\n"
                   "ev\t5\t5_0\tflood\ta.jpg\tmild_damage\tA flooded street.\n", encoding="utf-8")
    (item,) = read_records(tsv, image_root=tmp_path)
    assert item.llava_text == "A flooded street." and item.text == "flood"


def test_tsv_header_and_image_root_are_checked(tmp_path: Path) -> None:
    tsv = tmp_path / "bad.tsv"
    tsv.write_text("a\tb\n1\t2\n", encoding="utf-8")
    with pytest.raises(DataError, match="header lacks tweet_id"):
        list(read_records(tsv, image_root=tmp_path))
    with pytest.raises(UsageError, match="--image-root"):
        read_records(tsv)


def test_real_crisismmd_tsv_reads_every_row(real_splits: Path, tmp_path: Path) -> None:
    path = real_splits / "task_informative_text_img_dev.tsv"
    n_rows = sum(1 for _ in open(path, "rb")) - 1
    items = list(read_records(path, image_root=tmp_path))
    assert len(items) == n_rows
    assert all(isinstance(i, Record) for i in items)
    assert len({i.id for i in items}) == n_rows


def test_jsonl_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    rows = [
        json.dumps({"id": "a", "text": "t", "image": "img/a.jpg"}).encode(),
        b'{"id": "b", "text": "broken',
        b'{"id": "c", "text": "caf\xe9", "image": "x.jpg"}',
        b"",
        json.dumps({"id": "a", "text": "again", "image": "a.jpg"}).encode(),
        json.dumps([1, 2]).encode(),
        json.dumps({"text": "no id"}).encode(),
        json.dumps({"id": 7, "text": 3, "image": "x.jpg"}).encode(),
        json.dumps({"id": "z", "text": "t", "image": "/abs/z.png", "llava_text": "cap"}).encode(),
    ]
    path.write_bytes(b"\n".join(rows) + b"\n")
    items = list(read_records(path))
    assert len(items) == 8  # the blank line is not a record
    assert items[0].image == str(tmp_path / "img/a.jpg")
    assert "malformed JSON on line 2" in items[1].error and items[1].id is None
    assert "invalid UTF-8 on line 3" in items[2].error and items[2].id == "c"
    assert items[3].error == "duplicate id a, first seen on line 1" and items[3].line_no == 5
    assert "line 6 is not a JSON object" in items[4].error
    assert "line 7 has no usable field 'id'" in items[5].error
    assert items[6].id == "7" and "field 'text' must be a string" in items[6].error
    assert items[7] == Record("z", "t", "/abs/z.png", "cap", 9, str(path))


def test_jsonl_image_root_overrides_file_folder(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"id": "a", "text": "t", "image": "a.jpg"}) + "\n", encoding="utf-8")
    root = tmp_path / "imgs"
    root.mkdir()
    (item,) = read_records(path, image_root=root)
    assert item.image == str(root / "a.jpg")


def test_stdin_is_read_lazily(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    data = b'{"id": "1", "text": "a", "image": "a.jpg"}\nnot json\n'
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data)))
    monkeypatch.chdir(tmp_path)
    items = list(read_records("-"))
    assert items[0].image == str(tmp_path / "a.jpg")
    assert "<stdin>: malformed JSON on line 2" in items[1].error


def test_folder_sorted_with_optional_text(tmp_path: Path) -> None:
    for name in ("b.png", "a.jpg", "c.gif", "notes.md"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "a.txt").write_text("caption of a", encoding="utf-8")
    (tmp_path / "c.txt").write_bytes(b"\xff\xfe bad")
    items = list(read_records(tmp_path))
    assert [i.id for i in items] == ["a.jpg", "b.png", "c.gif"]
    assert items[0].text == "caption of a" and items[1].text is None
    assert isinstance(items[2], RecordError) and "c.txt is not valid UTF-8" in items[2].error


def test_unsupported_or_missing_source(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="input not found"):
        read_records(tmp_path / "nope.jsonl")
    other = tmp_path / "x.csv"
    other.write_text("a,b\n")
    with pytest.raises(UsageError, match="unsupported input"):
        read_records(other)


def test_stdin_descriptor_lines_survive_any_chunking() -> None:
    from crisis_tool.runtime.line_reader import fd_lines

    data = b'{"id": "1"}\n\n' + b"x" * 1000 + b"\nlast line without newline"
    for chunk in (1, 7, 64, 1 << 16):
        read_fd, write_fd = os.pipe()
        os.write(write_fd, data)
        os.close(write_fd)
        lines = list(fd_lines(read_fd, chunk=chunk))
        os.close(read_fd)
        assert lines == data.splitlines(keepends=True)
