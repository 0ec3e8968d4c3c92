"""`label` puts every row in its file, in order, exactly once (runtime/serve/label.py), without starting Ray:
the Ray Data pipeline is driven through a recording stand-in, and the writer is fed rows the way a cluster
delivers them (files interleaved, out of order, some twice after Ray redid work, cut off by Ctrl-C or a lost
node). These tests fail if the writer drops, repeats, reorders or misfiles a row."""

from __future__ import annotations

import json
import random
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crisis_tool.runtime.serve import label
from crisis_tool.runtime.serve.label import Row
from crisis_tool.runtime.serve.label_groups import RunFile, group_run
from crisis_tool.runtime.serve.label_output import PartialOutput, partial_paths, resume_point
from crisis_tool.runtime.serve.options import LabelOptions, PredictorOptions


class FakeDataset:
    """Records the Ray Data calls of `predicted_rows` and hands back the batches it was given."""

    def __init__(self, calls: dict[str, Any], batches: list[dict[str, np.ndarray]]) -> None:
        self.calls, self.batches = calls, batches

    def flat_map(self, fn: Any) -> FakeDataset:
        self.calls["flat_map"] = fn
        return self

    def map_batches(self, cls: Any, **kwargs: Any) -> FakeDataset:
        self.calls["map_batches"] = (cls, kwargs)
        return self

    def iter_batches(self, **kwargs: Any) -> Any:
        self.calls["iter_batches"] = kwargs
        return iter(self.batches)


def fake_ray(batches: list[dict[str, np.ndarray]]) -> tuple[types.ModuleType, dict[str, Any]]:
    calls: dict[str, Any] = {}
    context = types.SimpleNamespace(execution_options=types.SimpleNamespace(preserve_order=True),
                                    enable_progress_bars=True)
    ray = types.ModuleType("ray")
    data = types.SimpleNamespace(
        DataContext=types.SimpleNamespace(get_current=lambda: context),
        from_items=lambda items, override_num_blocks: (calls.update(items=items, blocks=override_num_blocks)
                                                       or FakeDataset(calls, batches)),
        ActorPoolStrategy=lambda size: ("pool", size),
    )
    ray.data = data  # type: ignore[attr-defined]
    calls["context"] = context
    return ray, calls


def batch(file: list[int], seq: list[int], end: list[bool], result: list[str], node: str = "n1") -> dict[str, Any]:
    return {"file": np.array(file), "seq": np.array(seq), "end": np.array(end),
            "result": np.array(result, dtype=object), "failed": np.array([r == "" or "bad" in r for r in result]),
            "node": np.array([node] * len(file), dtype=object)}


def test_predicted_rows_configures_ray_data_and_yields_every_row(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    batches = [batch([1, 0], [0, 0], [False, False], ['{"id":"c"}', '{"id":"a","bad":1}']),
               batch([0, 1, 0], [1, 1, 2], [False, True, True], ['{"id":"b"}', "", ""], node="n2")]
    ray, calls = fake_ray(batches)
    monkeypatch.setitem(sys.modules, "ray", ray)
    inputs = [(0, tmp_path / "a.jsonl", 0), (1, tmp_path / "b.jsonl", 5)]
    options = LabelOptions(inputs=("x",), batch_size=5, concurrency=3, cpus_per_actor=2.0, gpus_per_actor=0.0,
                           image_root=tmp_path)
    rows = list(label.predicted_rows(inputs, PredictorOptions(bundle=tmp_path, batch_size=32), options))
    assert calls["context"].execution_options.preserve_order is False  # the writer restores the order
    assert calls["context"].enable_progress_bars is False
    assert rows == [Row(1, 0, False, '{"id":"c"}', False, "n1"), Row(0, 0, False, '{"id":"a","bad":1}', True, "n1"),
                    Row(0, 1, False, '{"id":"b"}', False, "n2"), Row(1, 1, True, "", True, "n2"),
                    Row(0, 2, True, "", True, "n2")]
    assert calls["items"] == [{"file": 0, "path": str(tmp_path / "a.jsonl"), "skip": 0},
                              {"file": 1, "path": str(tmp_path / "b.jsonl"), "skip": 5}]
    assert calls["blocks"] == 2  # one block per file
    assert calls["flat_map"].keywords == {"image_root": str(tmp_path)}
    actor, kwargs = calls["map_batches"]
    assert actor is label.PredictionActor
    assert kwargs["fn_constructor_kwargs"]["options"].batch_size == 5  # the actor batch, not predict's default
    assert (kwargs["batch_size"], kwargs["compute"], kwargs["num_cpus"], kwargs["num_gpus"]) == (5, ("pool", 3),
                                                                                                  2.0, None)
    list(label.predicted_rows(inputs, PredictorOptions(bundle=tmp_path), LabelOptions(inputs=("x",),
                                                                                      gpus_per_actor=0.5)))
    assert calls["map_batches"][1]["num_gpus"] == 0.5 and calls["flat_map"].keywords == {"image_root": None}


def test_result_columns_of_unequal_length_are_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    broken = batch([0, 0], [0, 1], [False, False], ['{"id":"a"}', '{"id":"b"}'])
    broken["result"] = broken["result"][:1]
    ray, _ = fake_ray([broken])
    monkeypatch.setitem(sys.modules, "ray", ray)
    with pytest.raises(ValueError):
        list(label.predicted_rows([(0, tmp_path / "a.jsonl", 0)], PredictorOptions(bundle=tmp_path),
                                  LabelOptions(inputs=("x",))))


def test_the_actor_answers_one_json_line_per_record_and_passes_end_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    from crisis_tool.runtime.predictor import Prediction, TaskPrediction

    seen: list[list[Any]] = []

    class FakePredictor:
        def predict(self, items: list[Any]) -> list[Prediction]:
            seen.append(items)
            return [Prediction(item.id, {"t": TaskPrediction("café", 0.75, {"café": 0.75, "b": 0.25})})
                    if not hasattr(item, "error") else Prediction.failed(item.id, item.error) for item in items]

    monkeypatch.setattr(PredictorOptions, "load", lambda self: FakePredictor())
    actor = label.PredictionActor(PredictorOptions())
    columns = {"file": np.array([3, 3, 3]), "seq": np.array([0, 1, 2]), "end": np.array([False, False, True]),
               "line_no": np.array([1, 2, 0]), "id": np.array(["a", "b", ""], dtype=object),
               "text": np.array(["t", "", ""], dtype=object), "image": np.array(["x.jpg", "", ""], dtype=object),
               "llava_text": np.array(["", "", ""], dtype=object),
               "error": np.array(["", "line 2: bad", ""], dtype=object)}
    out = actor(columns)
    assert [len(items) for items in seen] == [2]  # the end row is not a record
    assert out["file"].tolist() == [3, 3, 3] and out["seq"].tolist() == [0, 1, 2]
    assert out["end"].tolist() == [False, False, True] and out["failed"].tolist() == [False, True, False]
    first, second = (json.loads(r) for r in out["result"][:2])
    assert first["id"] == "a" and "café" in out["result"][0]  # not \\u-escaped
    assert second["id"] == "b" and second["error"] == "line 2: bad" and out["result"][2] == ""


def rows_for(files: dict[int, int]) -> list[Row]:
    """Rows in input order: `files` maps file index -> record count; every third record failed; end rows."""
    rows = []
    for f, n in files.items():
        rows += [Row(f, r, False, json.dumps({"id": f"f{f}r{r}"}), r % 3 == 2, f"node{r % 2}") for r in range(n)]
        rows.append(Row(f, n, True, "", False, ""))
    return rows


def open_files(tmp_path: Path, counts: dict[int, int], output_format: str = "jsonl",
               done: dict[int, int] | None = None) -> tuple[dict[int, label.FileInOrder], list[Path]]:
    files, outputs = {}, []
    for i in counts:
        source = tmp_path / f"in{i}.jsonl"
        if not source.exists():
            source.write_text("{}\n")
        out = tmp_path / f"in{i}.predictions.{output_format}"
        start = (done or {}).get(i, 0)
        files[i] = label.FileInOrder(PartialOutput(source, out, output_format, start), start)
        outputs.append(out)
    return files, outputs


def ids(path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text(encoding="utf-8").splitlines()]


def finish(outputs: list[Path], output_format: str = "jsonl") -> list[Path]:
    """The run's second pass: every answered partial becomes its output."""
    return group_run([RunFile(out, output_format) for out in outputs])


def test_rows_in_any_order_and_repeated_land_once_each_in_order(tmp_path: Path) -> None:
    counts = {i: (i * 37) % 101 for i in range(40)}  # 40 files, 0..100 rows each (some empty)
    rows = rows_for(counts)
    rows += random.Random(0).sample(rows, 300)  # work Ray redid after a failure arrives twice
    random.Random(1).shuffle(rows)  # what an unordered pipeline of many blocks delivers
    files, outputs = open_files(tmp_path, counts)
    summary, advanced = label.LabelSummary(), []
    label.write_rows(iter(rows), files, summary, advanced.append)
    assert not any(out.exists() for out in outputs)  # answered, sealed; outputs wait for the second pass
    assert finish(outputs) == outputs
    assert summary.rows == sum(advanced) == sum(counts.values())
    assert summary.errors == sum(n // 3 for n in counts.values())
    assert summary.nodes == {"node0": sum((n + 1) // 2 for n in counts.values()),
                             "node1": sum(n // 2 for n in counts.values())}
    for i, out in enumerate(outputs):
        assert ids(out) == [f"f{i}r{r}" for r in range(counts[i])], i
    assert sorted(p.name for p in tmp_path.glob("*.partial*")) == []  # partials became the outputs


def test_rows_ending_before_a_file_is_complete_keep_it_partial(tmp_path: Path) -> None:
    rows = rows_for({0: 3, 1: 3})
    rows = [r for r in rows if (r.file, r.seq) != (1, 1)]  # one row of file 1 never arrives
    files, outputs = open_files(tmp_path, {0: 3, 1: 3})
    with pytest.raises(RuntimeError, match=r"before every record of in1.predictions.jsonl was answered"):
        label.write_rows(iter(rows), files, label.LabelSummary(), lambda n: None)
    files[1].output.keep()
    assert ids(partial_paths(outputs[0])[0]) == ["f0r0", "f0r1", "f0r2"] and not outputs[1].exists()
    assert ids(partial_paths(outputs[1])[0]) == ["f1r0"]  # r2 waited for r1: the partial stays a prefix
    assert resume_point(tmp_path / "in1.jsonl", outputs[1]) == 1


def test_a_row_of_an_unknown_file_is_refused(tmp_path: Path) -> None:
    files, _ = open_files(tmp_path, {0: 2})
    with pytest.raises(RuntimeError, match="a row of file 7 arrived"):
        label.write_rows(iter([*rows_for({0: 2}), Row(7, 0, False, '{"id": "x"}', False, "")]), files,
                         label.LabelSummary(), lambda n: None)


def test_an_interrupt_keeps_a_resumable_partial_and_the_rerun_completes_it(tmp_path: Path) -> None:
    all_rows = rows_for({0: 10, 1: 4})

    def interrupted() -> Iterator[Row]:
        yield from all_rows[:6]
        raise KeyboardInterrupt

    files, outputs = open_files(tmp_path, {0: 10, 1: 4})
    with pytest.raises(KeyboardInterrupt):
        label.write_rows(interrupted(), files, label.LabelSummary(), lambda n: None)
    for state in files.values():
        state.output.keep()
    part = partial_paths(outputs[0])[0]
    assert ids(part) == [f"f0r{r}" for r in range(6)] and not outputs[0].exists()
    with open(part, "a", encoding="utf-8") as fh:
        fh.write('{"id": "f0r6", "la')  # a hard kill mid-line
    done = {0: resume_point(tmp_path / "in0.jsonl", outputs[0]), 1: resume_point(tmp_path / "in1.jsonl", outputs[1])}
    assert done == {0: 6, 1: 0}  # the torn line is cut off; file 1 had nothing yet
    files, outputs = open_files(tmp_path, {0: 10, 1: 4}, done=done)
    rerun = [r for r in all_rows if r.file == 1 or r.seq >= done[0]]  # what record_rows gives after `skip`
    summary = label.LabelSummary()
    label.write_rows(iter(rerun), files, summary, lambda n: None)
    finish(outputs)
    assert ids(outputs[0]) == [f"f0r{r}" for r in range(10)] and ids(outputs[1]) == [f"f1r{r}" for r in range(4)]
    assert summary.rows == 4 + 4  # only what was not answered before
    assert not list(tmp_path.glob("*.partial*"))


def test_a_changed_input_makes_its_partial_stale(tmp_path: Path) -> None:
    files, outputs = open_files(tmp_path, {0: 5})
    for row in rows_for({0: 5})[:3]:
        files[0].take(row)
    files[0].output.keep()
    assert resume_point(tmp_path / "in0.jsonl", outputs[0]) == 3
    (tmp_path / "in0.jsonl").write_text('{"changed": true}\n')
    assert resume_point(tmp_path / "in0.jsonl", outputs[0]) == 0
    assert not any(p.exists() for p in partial_paths(outputs[0]))


def test_parquet_output_holds_every_row_in_groups_of_4096(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    rows = [Row(0, i, False, json.dumps({"id": f"r{i}", "label": "a", "confidence": 0.5, "probs": {"a": 0.5, "b": 0.5},
                                         "tasks": {"damage": {"label": "a"}}, "needs_review": False, "error": None}),
                False, "") for i in range(4098)]
    files, outputs = open_files(tmp_path, {0: 4098}, "parquet")
    label.write_rows(iter([*reversed(rows), Row(0, 4098, True, "", False, "")]), files, label.LabelSummary(),
                     lambda n: None)
    finish(outputs, "parquet")
    parquet = pq.ParquetFile(outputs[0])
    assert [parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)] == [4096, 2]
    table = parquet.read().to_pylist()
    assert [r["id"] for r in table] == [f"r{i}" for i in range(4098)]
    assert dict(table[0]["probs"]) == {"a": 0.5, "b": 0.5} and json.loads(table[0]["tasks"])["damage"]["label"] == "a"


def test_run_label_skips_complete_outputs_and_labels_the_rest(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    inputs = []
    for name, n in (("a", 2), ("b", 3), ("c", 1)):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"id": f"{name}{i}", "text": "t", "image": "x.jpg"}) + "\n"
                                for i in range(n)))
        inputs.append(path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "b.predictions.jsonl").write_text("done\n")
    (out / ".a.predictions.jsonl.k3j2x.partial").write_text("left by a killed run")
    seen: dict[str, Any] = {}

    def fake_rows(pending: list[tuple[int, Path, int]], predictor_options: Any, options: Any, verbose: bool) -> Any:
        seen["pending"] = [(i, p.name, skip) for i, p, skip in pending]
        sizes = {"a.jsonl": 2, "c.jsonl": 1}
        for i, path, _ in pending:
            for r in range(sizes[path.name]):
                yield Row(i, r, False, json.dumps({"id": f"{path.stem}{r}"}), r == 1, "n")
            yield Row(i, sizes[path.name], True, "", False, "n")

    checks: list[str] = []
    monkeypatch.setattr(label, "predicted_rows", fake_rows)
    monkeypatch.setattr(label, "require_ray", lambda what: checks.append("ray"))
    monkeypatch.setattr(label, "ray_session", lambda address, verbose: __import__("contextlib").nullcontext())
    monkeypatch.setattr(PredictorOptions, "check", lambda self: checks.append("check"))
    totals: list[tuple[str, int]] = []

    def progress(description: str, total: int) -> Any:
        totals.append((description, total))
        return __import__("contextlib").nullcontext(lambda n: totals.append(("advance", n)))

    summary = label.run_label(PredictorOptions(bundle=tmp_path), LabelOptions(inputs=tuple(map(str, inputs)),
                                                                              output=out), progress=progress)
    assert seen["pending"] == [(0, "a.jsonl", 0), (2, "c.jsonl", 0)] and checks == ["ray", "check"]
    assert totals[0] == ("labelling records", 3) and sum(n for what, n in totals[1:]) == 3
    assert summary.skipped == [out / "b.predictions.jsonl"] and (out / "b.predictions.jsonl").read_text() == "done\n"
    assert summary.written == [out / "a.predictions.jsonl", out / "c.predictions.jsonl"]
    assert (summary.rows, summary.errors) == (3, 1)
    assert ids(out / "a.predictions.jsonl") == ["a0", "a1"]
    assert sorted(p.name for p in out.iterdir()) == ["a.predictions.jsonl", "b.predictions.jsonl",
                                                     "c.predictions.jsonl"]  # the stale temporary is gone
    checks.clear()
    again = label.run_label(PredictorOptions(bundle=tmp_path), LabelOptions(inputs=tuple(map(str, inputs)),
                                                                            output=out, address="auto"))
    assert again.written == [] and len(again.skipped) == 3 and checks == []  # nothing pending: no Ray at all


def test_a_lost_node_resumes_from_the_partials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="the cluster-failure classes are Ray's")
    import ray.exceptions

    source = tmp_path / "a.jsonl"
    source.write_text("".join(json.dumps({"id": f"a{i}", "text": "t", "image": "x.jpg"}) + "\n" for i in range(8)))
    calls: list[int] = []

    def flaky_rows(pending: list[tuple[int, Path, int]], predictor_options: Any, options: Any, verbose: bool) -> Any:
        (_, _, skip), = pending
        calls.append(skip)
        for r in range(skip, 8):
            if len(calls) == 1 and r == 5:
                raise ray.exceptions.NodeDiedError("node 7 died")
            yield Row(0, r, False, json.dumps({"id": f"a{r}"}), False, f"n{len(calls)}")
        yield Row(0, 8, True, "", False, "")

    monkeypatch.setattr(label, "predicted_rows", flaky_rows)
    monkeypatch.setattr(label, "require_ray", lambda what: None)
    monkeypatch.setattr(label, "ray_session", lambda address, verbose: __import__("contextlib").nullcontext())
    summary = label.run_label(PredictorOptions(bundle=tmp_path),
                              LabelOptions(inputs=(str(source),), output=tmp_path / "out", address="auto"))
    assert calls == [0, 5] and summary.retries == 1  # the second attempt skipped the 5 answers written
    assert ids(tmp_path / "out" / "a.predictions.jsonl") == [f"a{i}" for i in range(8)]
    assert summary.nodes == {"n1": 5, "n2": 3} and summary.rows == 8


def test_only_cluster_failures_are_retried() -> None:
    pytest.importorskip("ray", reason="the cluster-failure classes are Ray's")
    import ray.exceptions

    assert label.cluster_lost(ray.exceptions.ActorDiedError())
    try:
        try:
            raise ray.exceptions.ObjectLostError("ab" * 14, "owner", "call site")
        except ray.exceptions.RayError as inner:
            raise RuntimeError("wrapped by Ray Data") from inner
    except RuntimeError as outer:
        assert label.cluster_lost(outer)
    assert not label.cluster_lost(ValueError("a bug"))
    assert not label.cluster_lost(RuntimeError("the pipeline ended before every record"))
