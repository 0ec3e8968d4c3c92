"""`bench --max-drop` at its edges: no fp32 reference row is a failure (not a pass), a drop just past the
threshold fails and one at or just under it passes, for each metric; and the metric columns it reads come from
the reference row with the same batch size, text length and decode mode."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from typing import Any

import pytest

from crisis_tool.runtime.bench.labelled_records import LabelledSet
from crisis_tool.runtime.bench.rows import Row
from crisis_tool.runtime.bench.task_metrics import (
    METRIC_KEYS,
    MetricDropError,
    attach_task_metrics,
    check_max_drop,
    row_name,
    score,
)
from crisis_tool.runtime.predictor import Prediction, TaskPrediction
from crisis_tool.runtime.records import Record, RecordError

CLASSES = ("a", "b")
BUNDLE = SimpleNamespace(spec=SimpleNamespace(tasks=("t",)))  # what attach_task_metrics reads of a bundle


def ok_row(choice: str = "onnxruntime-int8", batch: int = 8, **diffs: float) -> dict[str, Any]:
    row = {"status": "ok", "choice": choice, "batch_size": batch, "text_tokens": None, "decode": "exact",
           "accuracy": 0.9, "macro_f1": 0.8, "weighted_f1": 0.85, "metric_error": None}
    for m in ("accuracy", "macro_f1", "weighted_f1"):
        row[f"{m}_diff"] = diffs.get(m, 0.0)
    return row


def result(*rows: dict[str, Any], reference: str | None = "onnxruntime") -> dict[str, Any]:
    return {"header": {"metric_reference": reference}, "rows": list(rows)}


def test_no_reference_row_fails_instead_of_passing() -> None:
    with pytest.raises(MetricDropError, match=r"^onnxruntime-int8 batch 8: no reference row to compare with "
                                              r"\(torch or onnxruntime fp32\)$"):
        check_max_drop(result(ok_row(), reference=None), 0.05)


def test_a_row_without_its_difference_fails() -> None:
    row = ok_row()
    row["accuracy_diff"] = None
    with pytest.raises(MetricDropError, match="no reference row to compare with"):
        check_max_drop(result(row), 0.05)


@pytest.mark.parametrize(("metric", "name"), [("accuracy", "accuracy"), ("macro_f1", "macro-F1"),
                                              ("weighted_f1", "weighted-F1")])
def test_threshold_for_each_metric_just_above_at_and_below(metric: str, name: str) -> None:
    max_drop = 0.02
    check_max_drop(result(ok_row(**{metric: -0.0199})), max_drop)  # just below: passes
    check_max_drop(result(ok_row(**{metric: -0.02})), max_drop)  # at the threshold: passes (not "more than")
    check_max_drop(result(ok_row(**{metric: +0.5})), max_drop)  # better than the reference: passes
    with pytest.raises(MetricDropError, match=rf"^onnxruntime-int8 batch 8: {name} "):
        check_max_drop(result(ok_row(**{metric: -0.0201})), max_drop)  # just above: fails


def test_drop_message_names_row_metric_values_and_the_others() -> None:
    rows = (ok_row(accuracy=-0.25), ok_row("openvino-int8", 4, macro_f1=-0.5))
    with pytest.raises(MetricDropError) as info:
        check_max_drop(result(*rows), 0.1)
    assert str(info.value) == ("onnxruntime-int8 batch 8: accuracy 0.9000 is 0.2500 below the reference "
                               "onnxruntime (1.1500), more than --max-drop 0.1 (and 1 more)")


def test_rows_without_metrics_fail_and_failed_rows_are_skipped() -> None:
    broken = ok_row()
    broken["metric_error"] = "RuntimeError: boom"
    with pytest.raises(MetricDropError, match=r"^onnxruntime-int8 batch 8: no task metric \(RuntimeError: boom\)$"):
        check_max_drop(result(broken), 0.05)
    unscored = ok_row()
    unscored["accuracy"] = None
    with pytest.raises(MetricDropError, match=r"no task metric \(no record scored\)$"):
        check_max_drop(result(unscored), 0.05)
    skipped = {**ok_row(accuracy=-1.0), "status": "unavailable: no GPU"}
    check_max_drop(result(skipped, ok_row()), 0.05)


def test_row_name_shows_text_and_decode_only_when_not_default() -> None:
    row = ok_row()
    assert row_name(row) == "onnxruntime-int8 batch 8"
    assert row_name({**row, "text_tokens": "real", "decode": "exact"}) == "onnxruntime-int8 batch 8"
    assert row_name({**row, "text_tokens": 77, "decode": "fast"}) == "onnxruntime-int8 batch 8 text 77 decode fast"


# --------------------------------------------------------------------------- score and attach_task_metrics
def prediction(label: str | None) -> Prediction:
    if label is None:
        return Prediction.failed("x", "record x: bad image")
    return Prediction("x", {"t": TaskPrediction(label, 0.9, {c: 0.5 for c in CLASSES})})


def labelled_set(labels: list[str | None]) -> LabelledSet:
    items: list[Record | RecordError] = []
    known: dict[int, str] = {}
    for i, label in enumerate(labels):
        if label is None:
            items.append(RecordError(None, f"line {i + 2} is broken", i + 2))
        else:
            items.append(Record(str(i), "t", "x.jpg", line_no=i + 2))
            known[i] = label
    return LabelledSet(items, known, CLASSES, "mem")


def test_score_counts_scored_and_failed_records() -> None:
    labelled = labelled_set(["a", "a", "b", "b", None])
    out = score([prediction("a"), prediction("b"), prediction("b"), prediction(None), prediction("a")], labelled)
    assert (out["scored"], out["failed"]) == (3, 2)
    assert out["accuracy"] == pytest.approx(2 / 3, abs=1e-6)
    assert out["macro_f1"] == pytest.approx((2 / 3 + 2 / 3) / 2, abs=1e-6)
    nothing = score([prediction(None)], labelled_set(["a"]))
    assert (nothing["scored"], nothing["failed"], nothing["accuracy"]) == (0, 1, None)
    with pytest.raises(RuntimeError, match="1 predictions for 2 records"):
        score([prediction("a")], labelled_set(["a", "b"]))


@dataclass
class FakePredictor:
    labels: list[str | None]
    batch_size: int = 0
    decode_mode: str = ""
    calls: list[int] = field(default_factory=list)

    def predict(self, items: list[Any]) -> list[Prediction]:
        self.calls.append(len(items))
        if not self.labels:
            raise RuntimeError("boom\nsecond line")
        return [prediction(label) for label in self.labels]


@dataclass
class FakeSubject:
    predictor: FakePredictor
    backend: object = "backend"


def rows_and_results(specs: list[tuple[FakeSubject, int, str]]) -> tuple[list[Row], list[dict[str, Any]]]:
    rows = [Row(subject, batch, decode=decode) for subject, batch, decode in specs]  # type: ignore[arg-type]
    results = [{"status": "ok", "batch_size": batch, "text_tokens": None, "decode": decode}
               for _, batch, decode in specs]
    return rows, results


def test_differences_come_from_the_matching_reference_row() -> None:
    labelled = labelled_set(["a", "b", "a", "b"])
    reference = FakeSubject(FakePredictor(["a", "b", "a", "b"]))
    worse = FakeSubject(FakePredictor(["a", "a", "a", "a"]))
    rows, results = rows_and_results([(reference, 1, "exact"), (reference, 4, "exact"), (worse, 4, "exact"),
                                      (worse, 2, "fast")])
    reference.predictor.labels = ["a", "b", "a", "b"]
    attach_task_metrics(results, rows, labelled, BUNDLE, rows[0])  # type: ignore[arg-type]
    assert results[2]["accuracy"] == 0.5 and results[2]["accuracy_diff"] == -0.5
    assert results[3]["accuracy_diff"] == -0.5  # no batch-2 reference: the first one
    assert results[1]["accuracy_diff"] == 0.0 and results[0]["macro_f1_diff"] == 0.0
    assert worse.predictor.batch_size == 2 and worse.predictor.decode_mode == "fast"  # set per row


def test_a_reference_row_at_another_batch_with_other_numbers_is_not_used_when_one_matches() -> None:
    labelled = labelled_set(["a", "b", "a", "b"])
    ref_rows = FakeSubject(FakePredictor(["a", "b", "a", "b"]))
    other = FakeSubject(FakePredictor(["a", "b", "a", "a"]))
    rows, results = rows_and_results([(ref_rows, 1, "exact"), (ref_rows, 4, "exact"), (other, 4, "exact")])
    calls = iter([["a", "a", "a", "a"], ["a", "b", "a", "b"]])  # the batch-1 reference row scores worse

    def predict(items: list[Any]) -> list[Prediction]:
        return [prediction(label) for label in next(calls)]

    ref_rows.predictor.predict = predict  # type: ignore[method-assign]
    attach_task_metrics(results, rows, labelled, BUNDLE, rows[0])  # type: ignore[arg-type]
    assert results[0]["accuracy"] == 0.5 and results[1]["accuracy"] == 1.0
    assert results[2]["accuracy_diff"] == -0.25  # against the batch-4 reference (1.0), not batch 1 (0.5)


def test_failed_rows_get_empty_columns_and_a_broken_predictor_says_why() -> None:
    labelled = labelled_set(["a", "b"])
    good = FakeSubject(FakePredictor(["a", "b"]))
    broken = FakeSubject(FakePredictor([]))
    absent = FakeSubject(FakePredictor(["a", "b"]), backend=None)
    rows, results = rows_and_results([(good, 1, "exact"), (broken, 1, "exact"), (absent, 1, "exact"),
                                      (good, 2, "exact")])
    results[3]["status"] = "failed: RuntimeError: x"
    attach_task_metrics(results, rows, labelled, BUNDLE, None)  # type: ignore[arg-type]
    assert results[0]["accuracy"] == 1.0 and results[0]["accuracy_diff"] is None  # no reference: no diffs
    assert results[1]["metric_error"] == "RuntimeError: boom" and results[1]["accuracy"] is None
    assert all(results[i][k] is None for i in (2, 3) for k in METRIC_KEYS)
    assert absent.predictor.calls == [] and good.predictor.calls == [2]


def test_metrics_and_differences_are_rounded_to_six_places() -> None:
    labelled = labelled_set(["a", "b", "a"])
    reference = FakeSubject(FakePredictor(["a", "b", "a"]))
    worse = FakeSubject(FakePredictor(["a", "b", "b"]))
    rows, results = rows_and_results([(reference, 1, "exact"), (worse, 1, "exact")])
    attach_task_metrics(results, rows, labelled, BUNDLE, rows[0])  # type: ignore[arg-type]
    assert results[1]["accuracy"] == 0.666667 and results[1]["accuracy_diff"] == -0.333333


def test_a_reference_without_metrics_gives_no_differences() -> None:
    labelled = labelled_set(["a", "b"])
    reference = FakeSubject(FakePredictor([]))  # the reference row cannot classify the set
    other = FakeSubject(FakePredictor(["a", "b"]))
    rows, results = rows_and_results([(reference, 1, "exact"), (other, 1, "exact")])
    attach_task_metrics(results, rows, labelled, BUNDLE, rows[0])  # type: ignore[arg-type]
    assert results[1]["accuracy"] == 1.0 and results[1]["accuracy_diff"] is None
    with pytest.raises(MetricDropError, match="no reference row to compare with"):
        check_max_drop({"header": {"metric_reference": "onnxruntime"},
                        "rows": [{**results[1], "choice": "x"}]}, 0.1)


def test_results_and_rows_must_pair_up() -> None:
    subject = FakeSubject(FakePredictor(["a"]))
    rows, results = rows_and_results([(subject, 1, "exact")])
    with pytest.raises(ValueError):
        attach_task_metrics(results + [dict(results[0])], rows, labelled_set(["a"]), BUNDLE, None)  # type: ignore


def test_the_metric_predictor_is_made_cache_free_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from crisis_tool.runtime.bench import task_metrics

    made: list[dict[str, Any]] = []

    class RecordingPredictor(FakePredictor):
        def __init__(self, bundle: Any, backend: Any, batch_size: int, cache_size: int) -> None:
            super().__init__(["a"])
            made.append({"backend": backend, "batch_size": batch_size, "cache_size": cache_size})

    monkeypatch.setattr(task_metrics, "Predictor", RecordingPredictor)
    subject = FakeSubject(None, backend="be")  # type: ignore[arg-type]
    first = task_metrics.metric_predictor(Row(subject, 4), None)  # type: ignore[arg-type]
    second = task_metrics.metric_predictor(Row(subject, 2, decode="fast"), None)  # type: ignore[arg-type]
    assert first is second and made == [{"backend": "be", "batch_size": 4, "cache_size": 0}]
    assert (second.batch_size, second.decode_mode) == (2, "fast")
    with pytest.raises(RuntimeError, match="row has no backend"):
        task_metrics.metric_predictor(Row(FakeSubject(None, backend=None), 1), None)  # type: ignore[arg-type]


def answer(label: str, probs: dict[str, float], review: bool | None = None) -> TaskPrediction:
    return TaskPrediction(label, max(probs.values()), probs, review)


def test_ece_uses_fifteen_bins_of_the_calibrated_confidence() -> None:
    # confidences 0.52 (right) and 0.55 (wrong): separate bins of 15 -> (0.48 + 0.55) / 2; one bin of 16 would
    # give |0.5 - 0.535|
    predictions = [Prediction("0", {"t": answer("a", {"a": 0.52, "b": 0.48})}),
                   Prediction("1", {"t": answer("a", {"a": 0.55, "b": 0.45})})]
    out = score(predictions, labelled_set(["a", "b"]))
    assert out["ece"] == 0.515 and out["accuracy"] == 0.5


def test_review_share_and_the_accuracy_of_the_unflagged() -> None:
    labelled = labelled_set(["a", "b", "a", "b"])
    flagged = [Prediction("0", {"t": answer("a", {"a": 0.9, "b": 0.1}, False)}),  # right
               Prediction("1", {"t": answer("a", {"a": 0.6, "b": 0.4}, True)}),  # wrong, flagged
               Prediction("2", {"t": answer("b", {"a": 0.3, "b": 0.7}, False)}),  # wrong
               Prediction("3", {"t": answer("b", {"a": 0.2, "b": 0.8}, False)})]  # right
    out = score(flagged, labelled)
    assert out["review_share"] == 0.25 and out["unflagged_accuracy"] == 0.666667
    everything = [Prediction(p.id, {"t": replace(p.tasks["t"], needs_review=True)}) for p in flagged]
    out = score(everything, labelled)
    assert out["review_share"] == 1.0 and out["unflagged_accuracy"] is None
    unknown = [flagged[0], Prediction("1", {"t": answer("a", {"a": 0.6, "b": 0.4}, None)}), *flagged[2:]]
    assert "review_share" not in score(unknown, labelled)  # no threshold for some record: no review columns


def test_each_head_is_scored_on_its_own_set() -> None:
    both = [Prediction(str(i), {"t": answer("a", {"a": 0.9, "b": 0.1}), "u": answer("b", {"a": 0.2, "b": 0.8})})
            for i in range(2)]
    t_set, u_set = labelled_set(["a", "b"]), labelled_set(["b", "b"])
    u_set = replace(u_set, task="u")
    subject = FakeSubject(FakePredictor([]))
    subject.predictor.predict = lambda items: both  # type: ignore[method-assign]
    rows, results = rows_and_results([(subject, 1, "exact")])
    attach_task_metrics(results, rows, [t_set, u_set], BUNDLE, None)  # type: ignore[arg-type]
    assert results[0]["accuracy"] == 0.5 and list(results[0]["tasks"]) == ["t", "u"]
    assert results[0]["tasks"]["u"]["accuracy"] == 1.0 and results[0]["tasks"]["t"]["accuracy"] == 0.5
    assert score(both, u_set)["accuracy"] == 1.0 and score(both, t_set)["accuracy"] == 0.5  # by task, not first
    rows, results = rows_and_results([(subject, 1, "exact")])
    attach_task_metrics(results, rows, t_set, BUNDLE, None)  # type: ignore[arg-type]
    assert "tasks" not in results[0]
