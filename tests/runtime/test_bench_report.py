"""The bench table as a person sees it: 80 terminal columns, every default column with values, no '…', and a
Markdown file that a real parser (markdown-it-py) reads as a well-formed table."""

from __future__ import annotations

import re
from typing import Any

import pytest
from rich.console import Console

from crisis_tool.runtime.bench.report import markdown, render_table
from crisis_tool.runtime.bench.report_lines import bench_columns, with_reference
from crisis_tool.runtime.table_columns import shown_columns

HEADER = {"cpu": "Intel(R) Xeon(R) Platinum 8480+", "cpu_count": 2, "threads": 2, "gpu": None, "os": "Linux",
          "python": "3.11.7", "load_average": "1.00/1.00/1.00", "versions": {"onnxruntime": "1.31.1"},
          "bundle": "/tmp/bundle", "workload": "e2e", "inputs": "generated", "warmup": 2, "seconds_per_row": 3.0,
          "timing": "wall clock", "parity_reference": "torch", "engine_peaks": None}


def _row(choice: str, precision: str, batch: int, ips: float, p50: float, p99: float, **extra: Any) -> dict:
    row = {"choice": choice, "backend": choice.split("-")[0], "precision": precision,
           "provider": "CPUExecutionProvider", "batch_size": batch, "text_tokens": "real", "decode": "exact",
           "status": "ok", "model_mb": 605.123,
           "p50_ms": p50, "p90_ms": (p50 + p99) / 2, "p99_ms": p99, "items_per_s": ips,
           "max_abs_diff": 3.1e-3, "cosine": 0.9998765, "top1_agreement": 0.996, "gflops": 812.5,
           "roofline_pct": 41.2, "cold_start_s": 2.31, "stages_ms": None, "speedup_vs_torch": None}
    row.update(extra)
    return row


def worst_case_result(with_metrics: bool = True) -> dict:
    """Long backend names, 4-digit rates and latencies, a failed row whose status holds a '|'."""
    rows = []
    for choice, precision, scale in (("torch", "fp32", 1.0), ("onnxruntime", "fp32", 2.1),
                                     ("onnxruntime-int8", "int8", 3.4), ("openvino-bf16", "bf16", 5.2),
                                     ("tensorrt-fp16", "fp16", 40.0)):
        for batch in (1, 32, 256):
            ips = 12.345 * scale * batch ** 0.6
            metrics = {"accuracy": 0.8123, "macro_f1": 0.7712 - 0.01 * scale / 40, "weighted_f1": 0.8001,
                       "accuracy_diff": -0.0012, "macro_f1_diff": -0.0031, "weighted_f1_diff": 0.0,
                       "failed": 3} if with_metrics else {}
            rows.append(_row(choice, precision, batch, ips, 1000 * batch / ips, 1500 * batch / ips, **metrics))
    rows.append({**_row("tensorrt-int8", "int8", 1, 0, 0, 0), "status": "failed: ValueError: shape a|b",
                 "items_per_s": None, "p50_ms": None, "p99_ms": None, "max_abs_diff": None, "cosine": None,
                 "top1_agreement": None})
    return {"header": dict(HEADER), "rows": rows}


def _render(result: dict, width: int = 80, wide: bool = False) -> str:
    console = Console(width=width, record=True, color_system=None)
    console.print(render_table(result, wide=wide))
    return console.export_text()


def _table_lines(text: str) -> tuple[list[str], list[list[str]]]:
    """The header cells and the cells of each body row of the rendered table (cells are 2+ spaces apart)."""
    lines = text.splitlines()
    rule = next(i for i, line in enumerate(lines) if set(line.strip()) == {"─"})
    header = re.split(r"\s{2,}", lines[rule - 1].strip())
    body = []
    for line in lines[rule + 1:]:
        if not line.strip():
            break
        body.append(re.split(r"\s{2,}", line.strip()))
    return header, body


@pytest.mark.parametrize("with_metrics", [True, False])
def test_default_table_fits_80_columns_with_every_cell_filled(with_metrics: bool) -> None:
    result = worst_case_result(with_metrics)
    text = _render(result)
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "…" not in text
    header, body = _table_lines(text)
    expected = ["backend", "batch", "posts/s", "p50 ms", "p99 ms", "vs ref", "parity"]
    assert header == expected + (["macro-F1"] if with_metrics else [])
    ran = [r for r in result["rows"] if r["status"] == "ok"]
    assert len(body) == len(ran)  # one line per row that ran: no cell wrapped onto a second line
    for cells, row in zip(body, ran, strict=True):
        assert len(cells) == len(header) and "-" not in cells, cells
        assert cells[0] == (row["choice"] if row["choice"].endswith(row["precision"])
                            else f"{row['choice']} {row['precision']}")
        assert cells[1] == str(row["batch_size"])
    # the reference row says so; the others carry their ratio and top-1 agreement
    torch_1 = body[0]
    assert torch_1[5] == "1.00x" and torch_1[6] == "ref"
    ort_1 = body[3]
    assert ort_1[5] == "2.10x" and ort_1[6] == "top1 100%"
    assert "tensorrt-int8: failed: ValueError: shape a|b" in text  # the row that did not run, below the table


def test_wide_table_shows_every_column_unsqueezed() -> None:
    result = worst_case_result()
    text = _render(result, width=400, wide=True)
    header, body = _table_lines(text)
    labels = [c.label for c in shown_columns(bench_columns(result["rows"]), result["rows"], wide=True)]
    assert header == labels and {"provider", "status", "max abs diff", "GFLOP/s", "cold s"} <= set(header)
    assert "…" not in text and len(body) == len(result["rows"])


def test_vs_ref_falls_back_to_the_first_variant_without_torch() -> None:
    result = worst_case_result(with_metrics=False)
    result["rows"] = [r for r in result["rows"] if r["choice"] != "torch"]
    result["header"]["parity_reference"] = None
    rows = with_reference(result)
    ort = next(r for r in rows if r["choice"] == "onnxruntime" and r["batch_size"] == 32)
    int8 = next(r for r in rows if r["choice"] == "onnxruntime-int8" and r["batch_size"] == 32)
    assert ort["_is_reference"] and ort["_vs_reference"] == pytest.approx(1.0)
    assert int8["_vs_reference"] == pytest.approx(3.4 / 2.1)


def _parse_markdown_tables(text: str) -> list[list[list[str]]]:
    """Every table in `text` as rows of cell sources, read by markdown-it-py's GFM table rule."""
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    tables: list[list[list[str]]] = []
    for token in tokens:
        if token.type == "table_open":
            tables.append([])
        elif token.type == "tr_open":
            tables[-1].append([])
        elif token.type == "inline" and tables and tables[-1] and token.level >= 3:
            tables[-1][-1].append(token.content)
    return tables


def test_markdown_is_one_well_formed_table() -> None:
    pytest.importorskip("markdown_it")
    result = worst_case_result()
    text = markdown(result)
    tables = _parse_markdown_tables(text)
    assert len(tables) == 1
    header, *body = tables[0]
    labels = [c.label for c in shown_columns(bench_columns(result["rows"]), result["rows"], wide=True)]
    assert header == labels
    assert len(body) == len(result["rows"])
    for cells in body:
        assert len(cells) == len(header)
    # in the source, every pipe inside a cell is escaped: each table line has exactly the delimiting pipes
    lines = [line for line in text.splitlines() if line.startswith("|")]
    assert len(lines) == 2 + len(body)
    for line in lines:
        assert len(re.findall(r"(?<!\\)\|", line)) == len(header) + 1, line
    status = body[-1][header.index("status")]
    assert status == "failed: ValueError: shape a|b"  # escaped in the file, read back as one cell


def test_markdown_parser_check_catches_a_raw_pipe() -> None:
    """The check above can fail: a header cell with a raw '|' splits into two cells."""
    pytest.importorskip("markdown_it")
    broken = "| backend | max|diff| |\n|---|---|\n| torch | 0.1 |\n"
    assert _parse_markdown_tables(broken) == []  # header and delimiter row disagree: no table at all
    fixed = "| backend | max\\|diff\\| |\n|---|---|\n| torch | 0.1 |\n"
    assert _parse_markdown_tables(fixed) == [[["backend", "max|diff|"], ["torch", "0.1"]]]
