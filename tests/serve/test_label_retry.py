"""`label` resumes from its partials when Ray loses part of the cluster, at most CLUSTER_RETRIES times, and
re-raises anything else at once (`cluster_lost` reads the exception and its causes)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("ray")

import ray.exceptions as rex  # noqa: E402

from crisis_tool.runtime.serve import label  # noqa: E402
from crisis_tool.runtime.serve.options import LabelOptions, PredictorOptions  # noqa: E402


def test_cluster_lost_reads_the_cause_chain() -> None:
    assert label.cluster_lost(rex.NodeDiedError("node 1 died"))
    wrapped = RuntimeError("a Ray Data task failed")
    wrapped.__cause__ = rex.NodeDiedError("node 1 died")
    assert label.cluster_lost(wrapped)
    context = ValueError("while writing")
    context.__context__ = rex.WorkerCrashedError()
    assert label.cluster_lost(context)
    assert not label.cluster_lost(ValueError("a bad record"))
    assert not label.cluster_lost(KeyError("x"))


def _run_pending(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failures: list[BaseException]) -> tuple:
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": "a", "text": "t", "image": "x.jpg"}\n')
    calls: list[int] = []

    def fake_write_rows(rows, files, summary, advance):  # noqa: ANN001, ANN202
        calls.append(len(files))
        if failures:
            raise failures.pop(0)

    monkeypatch.setattr(label, "write_rows", fake_write_rows)
    monkeypatch.setattr(label, "predicted_rows", lambda *a, **k: iter(()))
    summary = label.LabelSummary()
    label._label_pending([0], [src], [tmp_path / "in.predictions.jsonl"], PredictorOptions(bundle=tmp_path),
                         LabelOptions(inputs=(str(src),), output=tmp_path), summary, lambda n: None, False)
    return calls, summary


def test_a_lost_node_resumes_and_counts_the_retry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls, summary = _run_pending(tmp_path, monkeypatch, [rex.NodeDiedError("worker node died")])
    assert calls == [1, 1] and summary.retries == 1


def test_gives_up_after_the_retries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lost = [rex.NodeDiedError(f"died {i}") for i in range(label.CLUSTER_RETRIES + 1)]
    with pytest.raises(rex.NodeDiedError):
        _run_pending(tmp_path, monkeypatch, lost)


def test_other_errors_are_not_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError):
        _run_pending(tmp_path, monkeypatch, [ValueError("a bug of ours")])
