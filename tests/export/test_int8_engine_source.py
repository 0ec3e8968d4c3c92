"""What a TensorRT int8 engine is built from (export/engine_parity.py), with the quantizer and the gate replaced
by scripted fakes: the fully quantized graph first, then the residual writers in float, then the worst nodes
out one at a time; never an "int8" graph with nothing quantized; when no Q/DQ graph passes the engine is built
fp16 from the fp32 graph, never int8 from an unquantized one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("onnx")

from crisis_tool.export import engine_parity, qdq  # noqa: E402 - after the importorskip

NODES = ["a", "b", "c", "w"]


class FakeQuantizer:
    """Stands in for qdq.qdq_graph and the gate: `passes(nodes)` decides the verdict of a Q/DQ graph."""

    def __init__(self, passes: Callable[[frozenset[str]], bool], writers: list[str], cost: dict[str, float]):
        self.passes, self.writers, self.cost = passes, writers, cost
        self.built: list[list[str]] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import onnx

        monkeypatch.setattr(onnx, "load", lambda path: SimpleNamespace(path=path))
        monkeypatch.setattr(qdq, "name_nodes", lambda model: None)
        monkeypatch.setattr(qdq, "weight_nodes", lambda model: list(NODES))
        monkeypatch.setattr(qdq, "residual_writers", lambda model: list(self.writers))
        monkeypatch.setattr(qdq, "qdq_graph", self.qdq_graph)
        monkeypatch.setattr(engine_parity, "calibration_feeds", lambda graph, cases: [{"x": 1}])
        monkeypatch.setattr(engine_parity, "_gate", self.gate)
        monkeypatch.setattr(engine_parity, "_alone", lambda graph, src, dst, feeds, cases, node: self.cost[node])

    def qdq_graph(self, src: Path, dst: Path, feeds: Any, flavour: str = "tensorrt",
                  nodes: list[str] | None = None) -> Path:
        assert flavour == "tensorrt"
        chosen = list(NODES) if nodes is None else list(nodes)
        assert chosen, "an int8 graph with no quantized node is the fp32 graph under another name"
        self.built.append(chosen)
        Path(dst).write_text(",".join(chosen))
        return Path(dst)

    def gate(self, graph: str, path: Path, cases: Any) -> dict[str, Any]:
        ok = self.passes(frozenset(Path(path).read_text().split(",")))
        return {"min_cosine": 0.9995 if ok else 0.99, "n": 12, "passed": ok, "limits": {"min_cosine": 0.999}}


def run_gated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake: FakeQuantizer) -> tuple[Path | None, dict]:
    fake.install(monkeypatch)
    src = tmp_path / "g.onnx"
    src.write_text("fp32")
    return engine_parity.gated_qdq_graph("image_encoder", src, tmp_path / "g.qdq.onnx", cases=[])


def test_the_fully_quantized_graph_is_kept_when_it_passes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = FakeQuantizer(lambda nodes: True, ["w"], {})
    path, report = run_gated(monkeypatch, tmp_path, fake)
    assert path == tmp_path / "g.qdq.onnx" and fake.built == [NODES]
    assert report["passed"] and report["excluded"] == [] and report["quantized_nodes"] == 4
    assert report["first_try"] == {"min_cosine": 0.9995, "n": 12, "passed": True}


def test_residual_writers_go_float_second(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = FakeQuantizer(lambda nodes: "w" not in nodes, ["w"], {})
    path, report = run_gated(monkeypatch, tmp_path, fake)
    assert path is not None and fake.built == [NODES, ["a", "b", "c"]]
    assert report["excluded"] == ["w"] and report["quantized_nodes"] == 3
    assert report["rule"] == "residual-stream writers left in float"
    assert report["first_try"]["passed"] is False and report["residual_writers_in_float"]["passed"] is True


def test_then_the_worst_nodes_go_float_one_at_a_time(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cost = {"a": 0.1, "b": 0.5, "c": 0.3, "w": 0.0}
    fake = FakeQuantizer(lambda nodes: not nodes & {"b", "c"}, ["w"], cost)
    path, report = run_gated(monkeypatch, tmp_path, fake)
    assert path is not None
    assert fake.built == [NODES, ["a", "b", "c"], ["a", "c", "w"], ["a", "w"]]  # b (worst), then c
    assert report["excluded"] == ["b", "c"] and report["quantized_nodes"] == 2 and report["passed"]


def test_without_writers_the_ranking_starts_at_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = FakeQuantizer(lambda nodes: "a" not in nodes, [], {"a": 0.9, "b": 0.1, "c": 0.2, "w": 0.3})
    path, report = run_gated(monkeypatch, tmp_path, fake)
    assert path is not None and fake.built == [NODES, ["b", "c", "w"]]
    assert "residual_writers_in_float" not in report and report["excluded"] == ["a"]


def test_when_every_node_must_go_there_is_no_qdq_graph(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = FakeQuantizer(lambda nodes: False, ["w"], {"a": 0.4, "b": 0.3, "c": 0.2, "w": 0.1})
    path, report = run_gated(monkeypatch, tmp_path, fake)
    assert path is None and not (tmp_path / "g.qdq.onnx").exists()
    assert report["passed"] is False and report["quantized_nodes"] == 0
    assert report["excluded"] == ["a", "b", "c", "w"]
    assert all(fake.built)  # never asked for a Q/DQ graph of zero nodes (the FakeQuantizer asserts it too)


def test_int8_engine_is_built_fp16_from_fp32_when_no_qdq_graph_passes(monkeypatch: pytest.MonkeyPatch,
                                                                       tmp_path: Path) -> None:
    fp32 = tmp_path / "image_encoder.onnx"
    monkeypatch.setattr(engine_parity, "gated_qdq_graph",
                        lambda graph, src, dst, cases: (None, {"passed": False, "quantized_nodes": 0}))
    source, built_as, report = engine_parity.engine_source("image_encoder", fp32, tmp_path, "int8", [], "generated")
    assert (source, built_as) == (fp32, "fp16")  # not int8 from the unquantized graph
    assert report["built_as"] == "fp16" and "no Q/DQ graph passed" in report["why"]
    assert report["qdq_onnxruntime"] == {"passed": False, "quantized_nodes": 0} and report["calibration"] == "generated"


def test_int8_engine_is_built_from_the_gated_qdq_graph(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = []

    def gated(graph: str, src: Path, dst: Path, cases: list) -> tuple[Path, dict]:
        calls.append((graph, src, dst))
        return dst, {"passed": True}

    monkeypatch.setattr(engine_parity, "gated_qdq_graph", gated)
    fp32 = tmp_path / "text_encoder.onnx"
    source, built_as, report = engine_parity.engine_source("text_encoder", fp32, tmp_path, "int8", [], "records")
    assert (source, built_as) == (tmp_path / "text_encoder.qdq.onnx", "int8") and report["built_as"] == "int8"
    assert calls == [("text_encoder", fp32, tmp_path / "text_encoder.qdq.onnx")]
    plain = engine_parity.engine_source("text_encoder", fp32, tmp_path, "fp16", [], "records")
    assert plain == (fp32, "fp16", {"built_as": "fp16", "calibration": "records"}) and len(calls) == 1


def test_bad_scales_fail_the_gate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(engine_parity, "check_graph", lambda graph, path, cases, precision: {"passed": True, "n": 3})
    monkeypatch.setattr(qdq, "scale_problems", lambda path: ["s1"])
    assert engine_parity._gate("head", tmp_path / "x.onnx", []) == {"passed": False, "n": 3, "bad_scales": ["s1"]}
    monkeypatch.setattr(qdq, "scale_problems", lambda path: [])
    assert engine_parity._gate("head", tmp_path / "x.onnx", []) == {"passed": True, "n": 3}


@pytest.mark.parametrize(("is_head", "expected"), [(True, 0.25), (False, 0.5)])
def test_alone_cost_is_the_shortfall_on_the_first_two_cases(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                            is_head: bool, expected: float) -> None:
    seen: dict[str, Any] = {}

    def fake_qdq(src: Path, dst: Path, feeds: Any, flavour: str = "tensorrt", nodes: Any = None) -> Path:
        seen["nodes"] = nodes
        Path(dst).write_text("probe")
        return Path(dst)

    def fake_gate(graph: str, path: Path, cases: list) -> dict[str, Any]:
        seen["cases"] = cases
        return {"top1_agreement": 0.75, "min_cosine": 0.5}

    monkeypatch.setattr(qdq, "qdq_graph", fake_qdq)
    monkeypatch.setattr(engine_parity, "_gate", fake_gate)
    monkeypatch.setattr(engine_parity, "graph_spec", lambda graph: SimpleNamespace(is_head=is_head))
    cost = engine_parity._alone("g", tmp_path / "s.onnx", tmp_path / "d.onnx", [], [1, 2, 3], "n1")
    assert cost == pytest.approx(expected) and seen == {"nodes": ["n1"], "cases": [1, 2]}
    assert not (tmp_path / "d.probe.onnx").exists()


def test_engine_parity_uses_cases_up_to_the_engine_batch_and_always_closes(monkeypatch: pytest.MonkeyPatch,
                                                                            tmp_path: Path) -> None:
    closed: list[bool] = []
    monkeypatch.setattr(engine_parity, "engine_runner", lambda trt, cudart, path: ("run", lambda: closed.append(True)))
    used: dict[str, Any] = {}

    def check(graph: str, run: Any, cases: list, precision: str) -> dict[str, Any]:
        used.update(batches=[c.batch for c in cases], precision=precision)
        return {"passed": True}

    monkeypatch.setattr(engine_parity, "check_runner", check)
    cases = [SimpleNamespace(batch=b) for b in (1, 4, 8, 9)]
    assert engine_parity.engine_parity(None, None, "head", tmp_path, cases, "int8", 8) == {"passed": True}
    assert used == {"batches": [1, 4, 8], "precision": "int8"} and closed == [True]
    monkeypatch.setattr(engine_parity, "check_runner", lambda *a: (_ for _ in ()).throw(RuntimeError("gpu")))
    with pytest.raises(RuntimeError, match="gpu"):
        engine_parity.engine_parity(None, None, "head", tmp_path, cases, "int8", 8)
    assert closed == [True, True]


def test_failed_engines_are_deleted_and_named(tmp_path: Path) -> None:
    for name in ("a.engine", "a.json", "b.engine", "b.json"):
        (tmp_path / name).write_text("x")
    files = {"a": ["a.engine", "a.json"], "b": ["b.engine", "b.json"]}
    failed = engine_parity.drop_failed_engines(tmp_path, files, {"a": {"passed": False}, "b": {"passed": True}})
    assert failed == ["a"] and sorted(p.name for p in tmp_path.iterdir()) == ["b.engine", "b.json"]
    assert engine_parity.drop_failed_engines(tmp_path, files, {"b": {}}) == ["b"]  # no verdict: not deployable


def test_the_fp32_reference_runs_each_graph_and_picks_the_head(monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    from crisis_tool.runtime.model_spec import IMAGE_GRAPH, TEXT_GRAPH

    calls: list[tuple[str, dict]] = []

    from crisis_tool.runtime.model_spec import HeadSpec, ModelSpec

    def session_runner(path: str) -> Callable[[dict], list]:
        def run(feeds: dict) -> list:
            calls.append((path, feeds))
            return [f"{path}:0", f"{path}:1"]
        return run

    spec = ModelSpec((HeadSpec("one", ("a", "b"), "head_one", "w1"), HeadSpec("two", ("a", "b"), "head_two", "w2")))
    monkeypatch.setattr(engine_parity, "session_runner", session_runner)
    paths = {IMAGE_GRAPH.name: "img", TEXT_GRAPH.name: "txt", "head_one": "h1", "head_two": "h2"}
    ref = engine_parity.OnnxReference(spec, paths)  # type: ignore[arg-type]
    pixels, ids = np.zeros((1, 3, 4, 4), np.float32), np.zeros((1, 5), np.int64)
    assert ref.encode_image(pixels) == "img:0" and ref.encode_text(ids) == "txt:0"
    assert list(calls[0][1]) == list(IMAGE_GRAPH.feeds(pixels)) and calls[1][0] == "txt"
    assert ref.run_head("e1", "e2") == ("h1:0", "h1:1")  # no task: the first head; two outputs only
    assert ref.run_head("e1", "e2", task="two") == ("h2:0", "h2:1") and calls[-1][1] == {"image_embeds": "e1",
                                                                                           "text_embeds": "e2"}


def test_engine_gate_cases_read_the_bundle_tokenizer_and_default_spec(monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path: Path) -> None:
    from crisis_tool.export.calibration import CalibrationSpec
    from crisis_tool.runtime import tokenizer

    seen: dict[str, Any] = {}
    monkeypatch.setattr(tokenizer, "ClipTokenizer", lambda path, context_length: ("tok", path, context_length))
    monkeypatch.setattr(engine_parity, "bundle_gate_cases",
                        lambda model, fp32, spec, **kw: seen.update(model=model, fp32=fp32, spec=spec, **kw) or "out")
    manifest = SimpleNamespace(
        tokenizer=SimpleNamespace(vocab_file="tokenizer/vocab.txt.gz", context_length=77), spec="SPEC",
        graphs={"fp32": {"image_encoder": SimpleNamespace(file="image_encoder.onnx")}},
        preprocess={"size": 224}, text_source="tweet")
    assert engine_parity.engine_gate_cases(tmp_path, manifest, None, 8) == "out"
    assert seen["spec"] == CalibrationSpec() and seen["model"] == "SPEC" and seen["max_batch"] == 8
    assert seen["fp32"] == {"image_encoder": tmp_path / "image_encoder.onnx"}
    assert seen["tokenizer"] == ("tok", tmp_path / "tokenizer/vocab.txt.gz", 77)
    assert (seen["preprocess"], seen["text_source"]) == ({"size": 224}, "tweet")
    given = CalibrationSpec()
    engine_parity.engine_gate_cases(tmp_path, manifest, given, 4)
    assert seen["spec"] is given


def test_a_missing_engine_file_is_not_an_error_and_the_message_names_failures(tmp_path: Path) -> None:
    assert engine_parity.drop_failed_engines(tmp_path, {"a": ["gone.engine"]}, {"a": {"passed": False}}) == ["a"]
    parity = {"image_encoder": {"passed": False, "min_cosine": 0.9, "limits": {"min_cosine": 0.999}}}
    message = engine_parity.failed_engines_message(tmp_path, "int8", parity, ["image_encoder"])
    assert message == (f"TensorRT engine parity failed (trt-int8 image_encoder: min_cosine 0.9 < 0.999); those "
                       f"engines were not written; every engine's parity is in {tmp_path}/manifest.json under "
                       "parity.trt-int8")


def test_bundle_gate_cases_run_the_fp32_reference_on_the_gate_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    data = SimpleNamespace(batches=["b1", "b2"])
    monkeypatch.setattr(engine_parity, "validation_batches", lambda max_batch: [1, max_batch])
    monkeypatch.setattr(engine_parity, "gate_data_for", lambda spec, **kw: seen.update(kw) or data)
    monkeypatch.setattr(engine_parity, "OnnxReference", lambda model, paths: ("ref", model, paths))
    monkeypatch.setattr(engine_parity, "reference_cases",
                        lambda reference, batches, model: [("case", reference, batches, model)])
    got = engine_parity.bundle_gate_cases("MODEL", {"g": "p"}, "SPEC", preprocess={"p": 1},  # type: ignore[arg-type]
                                          tokenizer="TOK", text_source="tweet", max_batch=6)
    assert got == (data, [("case", ("ref", "MODEL", {"g": "p"}), ["b1", "b2"], "MODEL")])
    assert seen == {"preprocess": {"p": 1}, "tokenizer": "TOK", "text_source": "tweet", "max_batch": 6,
                    "batches": [1, 6]}


def test_the_fp32_reference_gives_every_output_by_name_for_heads_that_weigh_words(monkeypatch: pytest.MonkeyPatch
                                                                                 ) -> None:
    """A bundle whose heads weigh words (--explain): the text encoder's three outputs and the head's four, by
    name; a graph answering another number of outputs than its spec declares is an error, not a silent cut."""
    import numpy as np

    from crisis_tool.runtime.model_spec import IMAGE_GRAPH, TEXT_GRAPH, HeadSpec, ModelSpec

    answers = {"txt": ["e", "tok", "mask"], "h1": ["l", "p", "share", "w"]}
    monkeypatch.setattr(engine_parity, "session_runner", lambda path: lambda feeds: list(answers[path]))
    spec = ModelSpec((HeadSpec("one", ("a", "b"), "head_one", "w1", explain=True, explain_tokens=True),))
    ref = engine_parity.OnnxReference(spec, {IMAGE_GRAPH.name: "img", TEXT_GRAPH.name: "txt", "head_one": "h1"})
    ids = np.zeros((1, 5), np.int64)
    assert ref.encode_text_outputs(ids) == {"text_embeds": "e", "text_token_embeds": "tok", "token_mask": "mask"}
    embeds = np.zeros((1, 4), np.float32)
    assert ref.run_head_outputs(embeds, embeds, "one") == {"logits": "l", "probs": "p", "modality_share": "share",
                                                           "token_weights": "w"}
    answers["txt"], answers["h1"] = ["e", "tok"], ["l", "p", "share"]
    with pytest.raises(ValueError):
        ref.encode_text_outputs(ids)
    with pytest.raises(ValueError):
        ref.run_head_outputs(embeds, embeds, "one")
