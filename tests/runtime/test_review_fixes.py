"""Inputs a review found that escaped the one-line / one-record-per-input rules, each pinned here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crisis_tool.runtime.atomic_files import atomic_output
from crisis_tool.runtime.errors import BundleError, UsageError
from crisis_tool.runtime.file_guard import UnsafeFileError, read_capped
from crisis_tool.runtime.records import RecordError, read_records


def test_hostile_jsonl_lines_are_record_errors_not_tracebacks(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    lines = ["[" * 200_000, json.dumps({"id": "home", "text": "t", "image": "~nosuchuser_xyz/x.jpg"}),
             json.dumps({"id": "ok", "text": "t", "image": "a.jpg"})]
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    items = list(read_records(src))
    assert len(items) == 3
    assert isinstance(items[0], RecordError) and "malformed JSON on line 1" in items[0].error
    assert not isinstance(items[1], RecordError) and "nosuchuser_xyz" in str(items[1].image)


def test_a_nul_byte_in_a_path_is_an_unsafe_file() -> None:
    with pytest.raises(UnsafeFileError, match="not a valid file name"):
        read_capped("a\x00b", 10)


def test_an_unreadable_input_is_a_usage_error_before_any_output(tmp_path: Path, monkeypatch) -> None:
    import crisis_tool.runtime.records as records

    src = tmp_path / "in.jsonl"
    src.write_text('{"id": "a"}\n', encoding="utf-8")

    def denied(path, *args, **kwargs):  # chmod 000 does not stop root, so the refusal is simulated
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(records, "open", denied, raising=False)
    with pytest.raises(UsageError, match="cannot read input .*Permission denied"):
        read_records(src)


def test_an_error_reading_another_file_inside_atomic_output_is_not_called_a_write_error(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    with pytest.raises(FileNotFoundError), atomic_output(out):
        open(tmp_path / "missing.txt")
    assert not out.exists() and not list(tmp_path.glob(".*partial"))


def test_a_manifest_number_without_canonical_form_fails_verify_in_one_line(tiny_bundle: Path, tmp_path) -> None:
    import shutil

    from crisis_tool.runtime.bundle import Bundle

    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    text = (copy / "manifest.json").read_text(encoding="utf-8")
    (copy / "manifest.json").write_text(text.replace('"format_version"', '"x": 1e400, "format_version"', 1),
                                        encoding="utf-8")
    with pytest.raises(BundleError, match="altered"):
        Bundle.load(copy)
