"""Fast unit tests of `crisis-tool label` (runtime/serve/label.py, label_groups.py) for what the Ray tests are too
slow to pin: Ray Data's settings, the actor pool's options, the actor's answer lines (one-head fields, triage keys
on answered lines only, the review queue's post fields), the retry budget and its warning, the progress total of
a resumed run, the review queue of a run, and the second pass's keys and outputs. No Ray starts: Ray Data, the
Predictor and the cluster are stand-ins. These tests are what `tests/mutation/run_mutants.py` runs against
label.py and label_groups.py (see tests/mutation/RESULTS.md)."""

from __future__ import annotations

import contextlib
import io
import json
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crisis_tool.runtime.errors import UsageError
from crisis_tool.runtime.prediction import Prediction, TaskPrediction
from crisis_tool.runtime.serve import label
from crisis_tool.runtime.serve.label import Row
from crisis_tool.runtime.serve.label_groups import TRIAGE_KEY, RunFile, group_run, triage_keys
from crisis_tool.runtime.serve.label_output import PartialOutput, clean_stale, partial_paths
from crisis_tool.runtime.serve.options import LabelOptions, PredictorOptions


# ------------------------------------------------------------------------------------------ stand-ins for Ray
class FakeDataset:
    """Records the Ray Data calls of `predicted_rows`; yields no batches."""

    def __init__(self, calls: dict[str, Any]) -> None:
        self.calls = calls

    def flat_map(self, fn: Any) -> FakeDataset:
        return self

    def map_batches(self, cls: Any, **kwargs: Any) -> FakeDataset:
        self.calls["map_batches"] = kwargs
        return self

    def iter_batches(self, **kwargs: Any) -> Iterator[Any]:
        return iter(())


def fake_ray(node: str = "", initialized: bool = False) -> tuple[types.ModuleType, dict[str, Any]]:
    """A `ray` module: Ray Data whose context and calls are recorded, and a runtime context naming `node`."""
    calls: dict[str, Any] = {}
    context = types.SimpleNamespace(execution_options=types.SimpleNamespace(preserve_order=True),
                                    enable_progress_bars=True, target_max_block_size=None)
    ray = types.ModuleType("ray")
    ray.data = types.SimpleNamespace(  # type: ignore[attr-defined]
        DataContext=types.SimpleNamespace(get_current=lambda: context),
        from_items=lambda items, override_num_blocks: FakeDataset(calls),
        ActorPoolStrategy=lambda size: ("pool", size),
    )
    ray.is_initialized = lambda: initialized  # type: ignore[attr-defined]
    ray.get_runtime_context = lambda: types.SimpleNamespace(get_node_id=lambda: node)  # type: ignore[attr-defined]
    calls["context"] = context
    return ray, calls


def run_predicted_rows(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, options: LabelOptions,
                       **kwargs: Any) -> dict[str, Any]:
    ray, calls = fake_ray()
    monkeypatch.setitem(sys.modules, "ray", ray)
    monkeypatch.setattr(label, "set_library_log_level", lambda verbose: calls.setdefault("verbose", verbose))
    list(label.predicted_rows([(0, tmp_path / "a.jsonl", 0)], PredictorOptions(bundle=tmp_path), options, **kwargs))
    return calls


def test_ray_data_streams_small_unordered_blocks_quietly(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = run_predicted_rows(monkeypatch, tmp_path, LabelOptions(inputs=("x",)))
    context = calls["context"]
    assert context.execution_options.preserve_order is False and context.enable_progress_bars is False
    assert context.target_max_block_size == label.BLOCK_BYTES == 64 * 1024  # ~200 records: answers stream back
    assert calls["verbose"] is False  # Ray Data's INFO lines stay hidden unless asked for


def test_ray_data_logs_when_verbose(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert run_predicted_rows(monkeypatch, tmp_path, LabelOptions(inputs=("x",)), verbose=True)["verbose"] is True


@pytest.mark.parametrize("queue", [None, "queue.jsonl"])
def test_actors_keep_the_post_only_for_a_review_queue(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                     queue: str | None) -> None:
    options = LabelOptions(inputs=("x",), review_queue=None if queue is None else tmp_path / queue,
                           batch_size=7, concurrency=2, cpus_per_actor=0.5, gpus_per_actor=0.25)
    kwargs = run_predicted_rows(monkeypatch, tmp_path, options)["map_batches"]
    assert kwargs["fn_constructor_kwargs"]["keep_post"] is (queue is not None)
    assert kwargs["fn_constructor_kwargs"]["options"].batch_size == 7
    assert (kwargs["batch_size"], kwargs["batch_format"], kwargs["compute"], kwargs["num_cpus"],
            kwargs["num_gpus"]) == (7, "numpy", ("pool", 2), 0.5, 0.25)


# ---------------------------------------------------------------------------------------- the actor's lines
PHOTO = 0x0F0F_3C3C_A5A5_5A5A


class FakePredictor:
    """Answers every record with `heads` (an error item stays an error); `spec` names `spec_heads` heads."""

    def __init__(self, spec_heads: int | None = 1, heads: tuple[str, ...] = ("damage",), drop: int = 0) -> None:
        self.spec = None if spec_heads is None else types.SimpleNamespace(heads=[f"h{i}" for i in range(spec_heads)])
        self.heads, self.drop = heads, drop

    def predict(self, items: list[Any]) -> list[Prediction]:
        out = [Prediction.failed(item.id, item.error) if hasattr(item, "error") else
               Prediction(item.id, {h: TaskPrediction("a", 0.75, {"a": 0.75, "b": 0.25}) for h in self.heads},
                          image_hash=PHOTO)
               for item in items]
        return out[:len(out) - self.drop]


def columns() -> dict[str, np.ndarray]:
    """Two records (the second a read error) and the file's end row."""
    return {"file": np.array([0, 0, 0]), "seq": np.array([0, 1, 2]), "end": np.array([False, False, True]),
            "line_no": np.array([1, 2, 0]), "id": np.array(["a", "b", ""], dtype=object),
            "text": np.array(["Water rising", "", ""], dtype=object),
            "image": np.array(["flood.jpg", "", ""], dtype=object),
            "llava_text": np.array(["", "", ""], dtype=object),
            "error": np.array(["", "line 2: bad", ""], dtype=object)}


def actor(monkeypatch: pytest.MonkeyPatch, predictor: FakePredictor, **kwargs: Any) -> label.PredictionActor:
    ray, _ = fake_ray(node="node-7", initialized=True)
    monkeypatch.setitem(sys.modules, "ray", ray)
    monkeypatch.setattr(PredictorOptions, "load", lambda self: predictor)
    return label.PredictionActor(PredictorOptions(), **kwargs)


def lines(out: dict[str, Any]) -> list[dict[str, Any]]:
    return [json.loads(r) for r in out["result"] if r]


def test_triage_keys_go_on_answered_lines_only_without_the_post(monkeypatch: pytest.MonkeyPatch) -> None:
    out = actor(monkeypatch, FakePredictor())(columns())
    answered, failed = lines(out)
    assert answered[TRIAGE_KEY] == triage_keys(PHOTO, "Water rising")  # no post_image / post_text by default
    assert "post_image" not in answered[TRIAGE_KEY]
    assert failed["error"] == "line 2: bad" and TRIAGE_KEY not in failed  # an error joins no group
    assert out["node"].tolist() == ["node-7"] * 3 and out["failed"].tolist() == [False, True, False]


def test_with_keep_post_the_keys_carry_the_image_path_and_text(monkeypatch: pytest.MonkeyPatch) -> None:
    answered, _ = lines(actor(monkeypatch, FakePredictor(), keep_post=True)(columns()))
    assert answered[TRIAGE_KEY]["post_image"] == "flood.jpg" and answered[TRIAGE_KEY]["post_text"] == "Water rising"


def test_a_one_head_bundle_keeps_the_top_level_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    one, one_failed = lines(actor(monkeypatch, FakePredictor(spec_heads=1))(columns()))
    assert (one["label"], one["confidence"]) == ("a", 0.75)
    assert "label" in one_failed and one_failed["label"] is None  # an error line of a one-head bundle: null
    # the bundle decides, not the answer: a two-head bundle run for one task has no top-level fields
    several, several_failed = lines(actor(monkeypatch, FakePredictor(spec_heads=2))(columns()))
    assert "label" not in several and "label" not in several_failed and several["tasks"]["damage"]["label"] == "a"


def test_a_predictor_that_drops_an_answer_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError):  # never an empty line written as a record's answer
        actor(monkeypatch, FakePredictor(drop=1))(columns())


# ----------------------------------------------------------------------------------- runs without a cluster
def write_inputs(tmp_path: Path, sizes: dict[str, int]) -> list[Path]:
    paths = []
    for name, n in sizes.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"id": f"{name}{i}", "text": f"post {name} {i}", "image": "x.jpg"}) + "\n"
                                for i in range(n)))
        paths.append(path)
    return paths


def answer(name: str, r: int, post: bool = False) -> str:
    return json.dumps({"id": f"{name}{r}", "tasks": {"damage": {"label": "a", "confidence": 0.5 + r / 100}},
                       "needs_review": False, "group": None, "duplicate_of": None, "error": None,
                       TRIAGE_KEY: triage_keys(None, f"post {name} {r}", post, "x.jpg")})


def no_cluster(monkeypatch: pytest.MonkeyPatch, rows: Any) -> dict[str, Any]:
    """Stand-ins for Ray: `rows(pending)` gives the rows; records what `run_label` asked of Ray."""
    seen: dict[str, Any] = {"ray": 0, "verbose": []}

    def fake_rows(pending: list[tuple[int, Path, int]], predictor_options: Any, options: Any,
                  verbose: bool) -> Iterator[Row]:
        seen["verbose"].append(verbose)
        return rows(pending)

    def session(address: Any, verbose: bool) -> Any:
        seen["verbose"].append(verbose)
        return contextlib.nullcontext()

    monkeypatch.setattr(label, "predicted_rows", fake_rows)
    monkeypatch.setattr(label, "require_ray", lambda what: seen.update(ray=seen["ray"] + 1))
    monkeypatch.setattr(label, "ray_session", session)
    monkeypatch.setattr(PredictorOptions, "check", lambda self: None)
    return seen


def every_row(pending: list[tuple[int, Path, int]], post: bool = False) -> Iterator[Row]:
    for i, path, skip in pending:
        n = len(path.read_text().splitlines())
        for r in range(skip, n):
            yield Row(i, r, False, answer(path.stem, r, post), False, "n")
        yield Row(i, n, True, "", False, "")


def test_a_run_is_quiet_unless_verbose(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    inputs = write_inputs(tmp_path, {"a": 2})
    seen = no_cluster(monkeypatch, every_row)
    label.run_label(PredictorOptions(bundle=tmp_path), LabelOptions(inputs=(str(inputs[0]),), output=tmp_path / "o"))
    assert seen["verbose"] == [False, False]  # the Ray session and Ray Data
    seen["verbose"].clear()
    label.run_label(PredictorOptions(bundle=tmp_path), LabelOptions(inputs=(str(inputs[0]),), output=tmp_path / "v"),
                    verbose=True)
    assert seen["verbose"] == [True, True]


def test_the_progress_total_counts_only_records_left_to_answer(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    inputs = write_inputs(tmp_path, {"a": 3, "b": 3})
    out = tmp_path / "out"
    out.mkdir()
    for path, done in zip(inputs, (3, 1), strict=True):  # a killed run answered all of a and one record of b
        partial = PartialOutput(path, out / f"{path.stem}.predictions.jsonl", "jsonl", 0)
        for r in range(done):
            partial.add(answer(path.stem, r))
        partial.keep()
    no_cluster(monkeypatch, every_row)
    totals: list[tuple[str, int]] = []

    def progress(description: str, total: int) -> Any:
        totals.append((description, total))
        return contextlib.nullcontext(lambda n: totals.append(("advance", n)))

    summary = label.run_label(PredictorOptions(bundle=tmp_path), LabelOptions(inputs=tuple(map(str, inputs)),
                                                                              output=out), progress=progress)
    assert totals[0] == ("labelling records", 2)  # a: nothing left (not 1); b: two
    assert sum(n for what, n in totals[1:]) == 2 == summary.rows
    assert summary.resumed == [out / "a.predictions.jsonl", out / "b.predictions.jsonl"]


def test_a_run_writes_its_review_queue_and_counts_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    inputs = write_inputs(tmp_path, {"a": 2, "b": 1})
    no_cluster(monkeypatch, lambda pending: every_row(pending, post=True))
    queue = tmp_path / "queue.jsonl"
    summary = label.run_label(PredictorOptions(bundle=tmp_path),
                              LabelOptions(inputs=tuple(map(str, inputs)), output=tmp_path / "out",
                                           review_queue=queue, review_budget=2))
    queued = [json.loads(line) for line in queue.read_text().splitlines()]
    assert summary.queued == len(queued) == 2  # the budget
    assert [q["id"] for q in queued] == ["a0", "b0"]  # least confident first
    assert (queued[0]["image"], queued[0]["text"]) == ("x.jpg", "post a 0")
    plain = label.run_label(PredictorOptions(bundle=tmp_path),
                            LabelOptions(inputs=tuple(map(str, inputs)), output=tmp_path / "plain"))
    assert plain.queued is None and len(plain.written) == 2


@pytest.mark.parametrize("target", ["input", "output"])
def test_the_review_queue_never_overwrites_an_input_or_output(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                              target: str) -> None:
    inputs = write_inputs(tmp_path, {"a": 2})
    before = inputs[0].read_bytes()
    seen = no_cluster(monkeypatch, every_row)
    out = tmp_path / "out"
    queue = inputs[0] if target == "input" else out / "a.predictions.jsonl"
    with pytest.raises(UsageError, match="--review-queue"):
        label.run_label(PredictorOptions(bundle=tmp_path),
                        LabelOptions(inputs=(str(inputs[0]),), output=out, review_queue=queue))
    assert inputs[0].read_bytes() == before and seen["ray"] == 0  # refused before any work


# --------------------------------------------------------------------------------------- a lost cluster node
@pytest.fixture
def node_died(monkeypatch: pytest.MonkeyPatch) -> type[BaseException]:
    """`cluster_lost` recognises the error these tests raise (Ray's own classes are tested with Ray)."""

    class NodeDied(Exception):
        pass

    monkeypatch.setattr(label, "cluster_lost", lambda exc: isinstance(exc, NodeDied))
    return NodeDied


def flaky(losses: int, lost: type[BaseException]) -> Any:
    """Rows of every pending file, but the first `losses` attempts lose the node after file 0 is complete."""
    attempts: list[list[tuple[int, int]]] = []

    def rows(pending: list[tuple[int, Path, int]]) -> Iterator[Row]:
        attempts.append([(i, skip) for i, _, skip in pending])
        for row in every_row(pending):
            yield row
            if len(attempts) <= losses and row.file != 0:
                raise lost(f"node died (attempt {len(attempts)})")

    rows.attempts = attempts  # type: ignore[attr-defined]
    return rows


@pytest.mark.parametrize("losses", [1, 3])
def test_a_run_resumes_after_up_to_three_lost_nodes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                   node_died: type[BaseException], losses: int,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    inputs = write_inputs(tmp_path, {"a": 2, "b": 2, "c": 2})
    rows = flaky(losses, node_died)
    no_cluster(monkeypatch, rows)
    summary = label.run_label(PredictorOptions(bundle=tmp_path),
                              LabelOptions(inputs=tuple(map(str, inputs)), output=tmp_path / "out"))
    assert summary.retries == losses and len(rows.attempts) == losses + 1
    assert rows.attempts[1] == [(0, 2), (1, 1), (2, 0)]  # each resumes after the answers written
    assert summary.rows == 6 and len(summary.written) == 3
    warnings = capsys.readouterr().err.splitlines()
    assert warnings[0] == "warning: label lost part of the Ray cluster (NodeDied); resuming 2 unfinished files"
    assert len(warnings) == losses


def test_a_fourth_lost_node_ends_the_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                         node_died: type[BaseException]) -> None:
    inputs = write_inputs(tmp_path, {"a": 2, "b": 2})
    rows = flaky(4, node_died)
    no_cluster(monkeypatch, rows)
    with pytest.raises(node_died):
        label.run_label(PredictorOptions(bundle=tmp_path),
                        LabelOptions(inputs=tuple(map(str, inputs)), output=tmp_path / "out"))
    assert len(rows.attempts) == 4  # README: "resumes from its partials (up to 3 times)"
    assert (tmp_path / "out" / "b.predictions.jsonl.partial").exists()  # kept for a rerun


def test_the_retry_warning_is_flushed_at_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                              node_died: type[BaseException]) -> None:
    """The run goes on for minutes after the warning: a block-buffered stderr (a log file, a wrapper) must show
    it now, not at exit."""
    raw = io.BytesIO()
    monkeypatch.setattr(sys, "stderr", io.TextIOWrapper(raw, encoding="utf-8", line_buffering=False))
    inputs = write_inputs(tmp_path, {"a": 1, "b": 1})
    shown: list[bytes] = []

    def rows(pending: list[tuple[int, Path, int]]) -> Iterator[Row]:
        shown.append(raw.getvalue())  # what stderr shows when the retry starts
        if len(shown) == 1:
            raise node_died("node died")
        return every_row(pending)

    no_cluster(monkeypatch, rows)
    label.run_label(PredictorOptions(bundle=tmp_path),
                    LabelOptions(inputs=tuple(map(str, inputs)), output=tmp_path / "out"))
    assert shown[1].decode().startswith("warning: label lost part of the Ray cluster (NodeDied)")


# ------------------------------------------------------------------------------- the second pass (label_groups)
def test_triage_keys_are_stable_64_bit_hex_and_carry_the_post_only_when_asked() -> None:
    """A resumed run groups lines written by an earlier process with new ones: the keys must not depend on the
    process (no salted `hash()`), so they are pinned here."""
    keys = triage_keys(PHOTO, "RT @FEMA: Shelter open at #Houston https://t.co/x")
    assert keys == {"image": "0f0f3c3ca5a55a5a", "text": "10d8b6dba6e30284"}  # no post fields by default
    assert triage_keys(5, "shelter open at Houston") == {"image": "0000000000000005", "text": "10d8b6dba6e30284"}
    assert triage_keys(None, "https://t.co/x") == {"image": None, "text": None}
    assert triage_keys(None, "x", True, "a.jpg") == {"image": None, "text": triage_keys(None, "x")["text"],
                                                      "post_image": "a.jpg", "post_text": "x"}


def staged_run(tmp_path: Path, answers: list[str]) -> RunFile:
    out = tmp_path / "a.predictions.jsonl"
    partial = PartialOutput(tmp_path / "a.jsonl", out, "jsonl", 0)
    for line in answers:
        partial.add(line)
    partial.seal()
    return RunFile(out, "jsonl")


def test_outputs_keep_non_ascii_text_as_is(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text("{}\n")
    line = {"id": "café-1", "tasks": {"damage": {"label": "dégâts", "confidence": 0.5}}, "error": None,
            TRIAGE_KEY: triage_keys(None, "Überschwemmung")}
    run = staged_run(tmp_path, [json.dumps(line, ensure_ascii=False)])
    group_run([run])
    text = run.out.read_text(encoding="utf-8")
    assert '"café-1"' in text and '"dégâts"' in text and "\\u" not in text  # as predict writes them
    assert json.loads(text)["group"] == "café-1"


def test_a_note_removed_meanwhile_does_not_fail_the_finished_run(tmp_path: Path) -> None:
    """Once the outputs are in place, a second label run on the same folder may clean their partials
    (`clean_stale`) before this run does: removing what is already gone is fine, not a traceback."""
    (tmp_path / "a.jsonl").write_text("{}\n")
    run = staged_run(tmp_path, [json.dumps({"id": "a0", "error": None, TRIAGE_KEY: triage_keys(None, "x")})])
    partial_paths(run.out)[1].unlink()  # the note went first
    assert group_run([run]) == [run.out]
    assert [json.loads(x)["id"] for x in run.out.read_text().splitlines()] == ["a0"]
    assert not [p for p in partial_paths(run.out) if p.exists()] and clean_stale([run.out]) == []
