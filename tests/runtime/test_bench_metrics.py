"""Task metrics in bench: the formulas against hand-computed values, labelled readers, failed records, and
`--max-drop` on a backend made worse on purpose (registered through the registry)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from crisis_tool.runtime.backends import REGISTRY, register_backend
from crisis_tool.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
from crisis_tool.runtime.bench import BenchOptions, run_bench
from crisis_tool.runtime.bench.inputs import generate_records
from crisis_tool.runtime.bench.labelled_records import LabelledSet, read_labelled
from crisis_tool.runtime.bench.task_metrics import MetricDropError, check_max_drop, score
from crisis_tool.runtime.classification_metrics import classification_report
from crisis_tool.runtime.errors import DataError
from crisis_tool.runtime.predictor import Prediction, TaskPrediction
from crisis_tool.runtime.records import Record, RecordError

CLASSES = ("little_or_no_damage", "mild_damage", "severe_damage")


def test_metric_formulas_match_hand_computed_values() -> None:
    # per class: tp (1, 2, 2), support (2, 2, 3), predicted (2, 3, 2) -> F1 0.5, 0.8, 0.8
    y_true = np.array([0, 0, 1, 1, 2, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 2, 0, 2])
    report = classification_report(y_true, y_pred, ("a", "b", "c", "absent"))
    assert report["accuracy"] == pytest.approx(5 / 7)
    assert report["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.8) / 3)  # the absent class is left out
    assert report["weighted_f1"] == pytest.approx((0.5 * 2 + 0.8 * 2 + 0.8 * 3) / 7)
    assert report["per_class"]["b"]["precision"] == pytest.approx(2 / 3)


def test_toolkit_metrics_are_the_runtime_formulas() -> None:
    from crisis_tool import metrics

    assert metrics.classification_report is classification_report


def _prediction(rid: str, label: str | None) -> Prediction:
    if not label:
        return Prediction.failed(rid, f"record {rid}: bad image")
    probs = {c: (0.9 if c == label else 0.1 / (len(CLASSES) - 1)) for c in CLASSES}
    return Prediction(rid, {"damage": TaskPrediction(label, 0.9, probs)})


def test_score_leaves_failed_records_out_and_counts_them() -> None:
    items: list[Record | RecordError] = [Record(str(i), "t", "x.jpg", line_no=i + 2) for i in range(5)]
    items.append(RecordError(None, "line 8 has 2 columns", 8))
    labelled = LabelledSet(items, {0: CLASSES[0], 1: CLASSES[1], 2: CLASSES[2], 3: CLASSES[2], 4: CLASSES[0]},
                           CLASSES, "mem")
    predictions = [_prediction("0", CLASSES[0]), _prediction("1", CLASSES[0]), _prediction("2", None),
                   _prediction("3", CLASSES[2]), _prediction("4", CLASSES[0]), _prediction("?", None)]
    out = score(predictions, labelled)
    # scored: (0,0) (1,0) (2,2) (0,0): F1 of class 0 = 2*(2/3*1)/(5/3) = 0.8, class 1 = 0, class 2 = 1
    assert (out["scored"], out["failed"]) == (4, 2)
    assert out["accuracy"] == pytest.approx(0.75)
    assert out["macro_f1"] == pytest.approx((0.8 + 0.0 + 1.0) / 3, abs=1e-6)
    assert out["weighted_f1"] == pytest.approx((0.8 * 2 + 0 * 1 + 1.0 * 1) / 4, abs=1e-6)
    # every scored answer says 0.9 and 3 of 4 are right: one bin, |0.75 - 0.9|
    assert out["ece"] == pytest.approx(0.15, abs=1e-6)


TSV_HEADER = "event_name\ttweet_id\timage_id\ttweet_text\timage\tlabel\n"


def test_read_labelled_tsv_applies_the_label_map_and_names_bad_labels(tmp_path: Path) -> None:
    tsv = tmp_path / "split.tsv"
    tsv.write_text(TSV_HEADER + "e\t1\t1_0\tflood\ta.jpg\tmild_damage\n"
                   "e\t2\t2_0\tfire\tb.jpg\tsevere\n"
                   "e\t3\t3_0\ttoo few columns\n")
    labelled = read_labelled(tsv, tmp_path, CLASSES, {"severe": "severe_damage"})
    assert labelled is not None and len(labelled) == 3
    assert [labelled.labels[i] for i in (0, 1)] == ["mild_damage", "severe_damage"]
    assert isinstance(labelled.items[2], RecordError)  # kept: it counts as failed
    assert labelled.records[0].image == str(tmp_path / "a.jpg")
    with pytest.raises(DataError, match=r"record 2_0 \(line 3\): label 'severe' is not one of .*field 'label'"):
        read_labelled(tsv, tmp_path, CLASSES)


def test_read_labelled_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text('{"id": "a", "text": "t", "image": "a.jpg", "label": "mild_damage"}\n'
                    '{"id": "b", "text": "t", "image": "b.jpg"}\n')
    with pytest.raises(DataError, match=r"record b \(line 2\) has no label \(field 'label'\)"):
        read_labelled(path, None, CLASSES)
    path.write_text('{"id": "a", "text": "t", "image": "a.jpg"}\n')
    assert read_labelled(path, None, CLASSES) is None  # no label anywhere: timing only


class RolledHeadBackend(OnnxRuntimeBackend):
    """onnxruntime with every prediction moved to the next class: a bundle made worse on purpose."""

    name = "rolled"

    def run_head(self, image_embeds: np.ndarray, text_embeds: np.ndarray, task: str | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        logits, probs = super().run_head(image_embeds, text_embeds, task)
        return np.roll(logits, 1, axis=1), np.roll(probs, 1, axis=1)


@pytest.fixture
def rolled_backend(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(REGISTRY, "rolled", REGISTRY["onnxruntime"])  # restored after the test
    register_backend("rolled", RolledHeadBackend, precisions=("fp32",))
    return "rolled"


@pytest.fixture(scope="module")
def labelled_jsonl(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 records labelled with onnxruntime's own predictions (its accuracy is 1.0) and one missing image."""
    from crisis_tool.runtime.predictor import Predictor

    folder = tmp_path_factory.mktemp("labelled")
    records = generate_records(6, folder, seed=7)
    with Predictor.from_bundle(tiny_bundle, backend="onnxruntime", cache_size=0) as predictor:
        labels = [p.label for p in predictor.predict(records)]
    lines = [json.dumps({"id": r.id, "text": r.text, "image": Path(str(r.image)).name, "label": label})
             for r, label in zip(records, labels, strict=True)]
    lines.append(json.dumps({"id": "gone", "text": "flood", "image": "missing.jpg", "label": labels[0]}))
    path = folder / "labelled.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_rows_get_metrics_failed_count_and_difference(tiny_bundle: Path, labelled_jsonl: Path,
                                                      rolled_backend: str) -> None:
    opts = BenchOptions(tiny_bundle, backends=("onnxruntime", rolled_backend), batch_sizes=(2,), workload="e2e",
                        seconds=0.1, warmup=1, measure_gemm=False, records=labelled_jsonl)
    result = run_bench(opts)
    ref, worse = result["rows"]
    assert result["header"]["metric_reference"] == "onnxruntime"
    for row in (ref, worse):
        assert row["status"] == "ok" and (row["scored"], row["failed"]) == (6, 1)
    assert (ref["accuracy"], ref["macro_f1"], ref["weighted_f1"]) == (1.0, 1.0, 1.0)
    assert ref["accuracy_diff"] == 0.0
    # every rolled prediction is wrong: accuracy and both F1 are 0, 1.0 below the reference
    assert (worse["accuracy"], worse["macro_f1"], worse["weighted_f1"]) == (0.0, 0.0, 0.0)
    assert worse["accuracy_diff"] == worse["macro_f1_diff"] == worse["weighted_f1_diff"] == -1.0
    with pytest.raises(MetricDropError, match=r"^rolled batch 2: accuracy 0.0000 is 1.0000 below the reference "
                       r"onnxruntime \(1.0000\), more than --max-drop 0.01 \(and 2 more\)$"):
        check_max_drop(result, 0.01)
    result["rows"] = [ref]
    check_max_drop(result, 0.0)  # the reference itself never drops


def test_max_drop_exit_code_and_one_line(tiny_bundle: Path, labelled_jsonl: Path, rolled_backend: str,
                                         tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from crisis_tool.cli import run

    base = ["bench", "--bundle", str(tiny_bundle), "--records", str(labelled_jsonl), "--batch-sizes", "2",
            "--seconds", "0.1", "--warmup", "1", "--no-peak", "--max-drop", "0.01"]
    md = tmp_path / "b.md"
    assert run([*base, "--backends", f"onnxruntime,{rolled_backend}", "--markdown", str(md)]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(err) == 1 and err[0].startswith("error: rolled batch 2: accuracy")
    table = [line for line in md.read_text().splitlines() if line.startswith("|")]
    assert "| acc | Δacc | macro-F1 | ΔmF1 | w-F1 | ΔwF1 | ECE | failed | invariant |" in table[0]
    assert any(line.startswith("| rolled fp32 |") and "| 0.0000 | -1.0000 |" in line for line in table)
    assert run([*base, "--backends", "onnxruntime"]) == 0


def test_speed_against_macro_f1_plot(tiny_bundle: Path, labelled_jsonl: Path, tmp_path: Path) -> None:
    from PIL import Image

    from crisis_tool.runtime.bench.report import write_plot

    opts = BenchOptions(tiny_bundle, backends=("onnxruntime",), batch_sizes=(1, 2), workload="e2e",
                        seconds=0.1, warmup=1, measure_gemm=False, records=labelled_jsonl)
    path = write_plot(run_bench(opts), tmp_path / "speed_f1.png")
    with Image.open(path) as img:
        pixels = np.asarray(img.convert("RGB"))
    # three panels (throughput, latency, speed against macro-F1), onnxruntime's lines in the first colour
    assert pixels.shape[1] == 3 * 520
    assert (np.abs(pixels.astype(int) - (0x1F, 0x77, 0xB4)).sum(axis=2) == 0).sum() > 200


def test_cli_data_task_split_on_a_synthetic_crisismmd_root(tiny_bundle: Path, tmp_path: Path) -> None:
    from crisis_tool.cli import run

    data = tmp_path / "data"
    assert run(["make-demo-data", "--out", str(data), "--n-train", "3", "--n-dev", "3", "--n-test", "5"]) == 0
    out = tmp_path / "b.json"
    assert run(["bench", "--bundle", str(tiny_bundle), "--data", str(data), "--task", "damage", "--split", "test",
                "--backends", "onnxruntime", "--batch-sizes", "2", "--seconds", "0.1", "--warmup", "1",
                "--no-peak", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    tsv = data / "crisismmd_datasplit_settingA" / "task_damage_text_img_test.tsv"
    n = len(tsv.read_text().splitlines()) - 1
    assert result["header"]["labelled"] == {"source": str(tsv), "records": n, "task": "damage",
                                            "tasks": {"damage": str(tsv)}}
    (row,) = result["rows"]
    assert (row["scored"], row["failed"]) == (n, 0) and 0.0 <= row["accuracy"] <= 1.0
    assert run(["bench", "--bundle", str(tiny_bundle), "--data", str(data), "--task", "informative"]) == 2
