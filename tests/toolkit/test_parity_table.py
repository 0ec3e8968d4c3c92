"""The parity table of `export` and `inspect` at 80 columns, and its Markdown form read by markdown-it-py."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
from rich.console import Console

from crisis_tool.parity_table import parity_markdown, parity_table

ENCODER = {"max_abs": 0.0374393, "min_cosine": 0.999881, "n": 36, "batches": [1, 3, 32],
           "limits": {"min_cosine": 0.999}, "passed": True, "chosen": "QUInt8", "calibration": "generated",
           "why": "fastest of 2 passing candidate(s): 3.43 ms vs fp32 2.88 ms at batch 3"}
HEAD = {"max_abs": 0.0207, "min_cosine": 0.999962, "n": 36, "top1_agreement": 0.972222,
        "top1_interval": [0.854713, 0.995083], "batches": [1, 3, 32], "limits": {"min_top1": 0.99},
        "passed": False, "chosen": "QInt8-per-channel", "calibration": "crisismmd:/data task=damage split=dev"}


def _manifest() -> SimpleNamespace:
    graphs = {"image_encoder": ENCODER, "text_encoder": ENCODER, "head_humanitarian": HEAD,
              "end_to_end:humanitarian": HEAD}
    return SimpleNamespace(parity={"fp32": graphs, "int8": graphs, "fp16": {}},
                           validated={"fp32": True, "int8": True, "fp16": "no GPU: fp16 gates need CUDA"})


def test_default_parity_table_fits_80_columns() -> None:
    console = Console(width=80, record=True, color_system=None)
    console.print(parity_table(_manifest()))
    text = console.export_text()
    assert "…" not in text and all(len(line) <= 80 for line in text.splitlines())
    lines = text.splitlines()
    rule = next(i for i, line in enumerate(lines) if set(line.strip()) == {"─"})
    header = re.split(r"\s{2,}", lines[rule - 1].strip())
    assert header == ["prec", "graph", "min cos", "top-1 [95% CI]", "n", "gate"]
    rows = [re.split(r"\s{2,}", line.strip()) for line in lines[rule + 1:rule + 10]]
    assert rows[2] == ["fp32", "head_humanitarian", "0.999962", "0.972 [0.855, 0.995]", "36", "FAIL"]
    assert rows[0][3] == "-" and all(len(r) == len(header) for r in rows[:8])
    assert rows[8][:2] == ["fp16", "-"] and rows[8][-1] == "not run"
    assert "fp16: no GPU: fp16 gates need CUDA" in text  # why, under the table


def test_parity_markdown_parses() -> None:
    markdown_it = pytest.importorskip("markdown_it")
    text = parity_markdown(_manifest())
    tokens = markdown_it.MarkdownIt("commonmark").enable("table").parse(text)
    rows: list[list[str]] = []
    for token in tokens:
        if token.type == "tr_open":
            rows.append([])
        elif token.type == "inline" and rows:
            rows[-1].append(token.content)
    header, *body = rows
    assert header[:6] == ["prec", "graph", "min cos", "top-1 [95% CI]", "n", "gate"]
    assert {"chosen", "max abs", "batches", "limits", "inputs", "why"} <= set(header)
    assert body[2][header.index("chosen")] == "QInt8-per-channel"
    assert len(body) == 9 and all(len(r) == len(header) for r in body)
