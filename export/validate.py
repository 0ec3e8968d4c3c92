"""Parity gates: run each exported graph in ONNX Runtime and compare it with a reference.

The reference is the PyTorch model at export time (`TorchBackend`), or the bundle's fp32 ONNX graphs when
TensorRT engines are built from a bundle. Inputs are real records (`--calib-data`, see
`crisis_tool.export.calibration`) or, without them, generated (seeded): normalised-image-like pixels and token
ids of varied length, trimmed to the longest real sequence as the runtime tokenizer does. Batches include 1, an
odd batch and the (capped) max batch. Every report records `n` (samples compared) and, for top-1 agreement, its
95% Wilson interval: "99%" on 68 samples is a much weaker claim than on 512.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crisis_tool.runtime.errors import CrisisToolError
from crisis_tool.runtime.model_spec import (
    END_TO_END,
    EXPLAIN_MAX_ABS,
    EXPLAIN_OUTPUTS,
    HEAD_GATE,
    IMAGE_GRAPH,
    LOGITS,
    PROBS,
    TEXT_GRAPH,
    GraphSpec,
    HeadSpec,
    ModelSpec,
)
from crisis_tool.runtime.parity import compare, judge, max_abs, min_cosine, top1_numbers, wilson_interval

__all__ = ["ParityCase", "RuntimeCannotRun", "check_end_to_end", "check_graph", "check_runner", "compare",
           "end_to_end_key", "generate_ids", "generated_inputs", "graph_spec", "judge", "make_cases",
           "min_cosine", "open_session", "reference_cases", "session_runner", "top1_numbers", "validate_graphs",
           "validation_batches", "wilson_interval"]

VALIDATION_BATCH_CAP = 64  # --max-batch above this is validated at 64 (recorded in the manifest)


class RuntimeCannotRun(CrisisToolError):
    """ONNX Runtime on this machine cannot load or execute a graph (e.g. fp16 kernels missing on CPU)."""


def validation_batches(max_batch: int, cap: int = VALIDATION_BATCH_CAP) -> list[int]:
    """Batch 1, an odd batch (3) and min(max_batch, cap), without duplicates."""
    top = max(1, min(max_batch, cap))
    return sorted({1, min(3, top), top})


def graph_spec(graph: GraphSpec | str) -> GraphSpec:
    """A GraphSpec, or the spec of a graph named by string (an encoder, else a head: every head has one I/O)."""
    if isinstance(graph, GraphSpec):
        return graph
    if graph in (IMAGE_GRAPH.name, TEXT_GRAPH.name):
        return IMAGE_GRAPH if graph == IMAGE_GRAPH.name else TEXT_GRAPH
    return GraphSpec(graph, "head", (IMAGE_GRAPH.outputs[0], TEXT_GRAPH.outputs[0]), (LOGITS, PROBS),
                     dict(HEAD_GATE))


@dataclass
class ParityCase:
    """One batch of inputs with the reference outputs of every graph, by tensor name.

    `inputs` holds the model inputs (pixel_values, input_ids); `outputs[graph]` each graph's reference outputs.
    A graph's feeds are looked up by its declared input names, so a head is fed the reference embeddings.
    """

    inputs: dict[str, np.ndarray]
    outputs: dict[str, dict[str, np.ndarray]]

    def tensors(self) -> dict[str, np.ndarray]:
        """Every named tensor of the case: the inputs and the encoders' reference outputs."""
        out = dict(self.inputs)
        for graph in (IMAGE_GRAPH, TEXT_GRAPH):
            out.update(self.outputs.get(graph.name, {}))
        return out

    def feeds(self, spec: GraphSpec | str) -> dict[str, np.ndarray]:
        tensors = self.tensors()
        return {name: tensors[name] for name in graph_spec(spec).input_names}

    def expected(self, spec: GraphSpec | str) -> dict[str, np.ndarray]:
        return self.outputs[graph_spec(spec).name]

    def _head(self) -> dict[str, np.ndarray]:
        heads = [o for g, o in self.outputs.items() if g not in (IMAGE_GRAPH.name, TEXT_GRAPH.name)]
        return heads[0]

    @property
    def batch(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])

    # Named views (calibration feeds and int8 timing read them).
    @property
    def pixel_values(self) -> np.ndarray:
        return self.inputs["pixel_values"]

    @property
    def input_ids(self) -> np.ndarray:
        return self.inputs["input_ids"]

    @property
    def image_embeds(self) -> np.ndarray:
        return self.outputs[IMAGE_GRAPH.name]["image_embeds"]

    @property
    def text_embeds(self) -> np.ndarray:
        return self.outputs[TEXT_GRAPH.name]["text_embeds"]

    @property
    def logits(self) -> np.ndarray:
        """The first head's reference logits."""
        return self._head()["logits"]

    @property
    def probs(self) -> np.ndarray:
        return self._head()["probs"]


def generate_ids(
    batch: int, rng: np.random.Generator, sot: int, eot: int, context_length: int = 77
) -> np.ndarray:
    """Token ids [batch, L]: sot, random tokens, eot, zero padding; trimmed to the longest sequence."""
    lengths = rng.integers(1, context_length - 1, size=batch)
    ids = np.zeros((batch, context_length), dtype=np.int64)
    for row, n in enumerate(lengths):
        ids[row, 0] = sot
        ids[row, 1 : n + 1] = rng.integers(1, sot, size=n)
        ids[row, n + 1] = eot
    longest = int(lengths.max()) + 2
    return ids[:, :longest]


def generated_inputs(batches: list[int], image_size: int, sot: int, eot: int, context_length: int = 77,
                     seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Seeded (pixel_values, input_ids) per batch size: the gate's inputs when no records are given."""
    rng = np.random.default_rng(seed)
    out = []
    for batch in batches:
        pixels = rng.standard_normal((batch, 3, image_size, image_size)).astype(np.float32)
        out.append((pixels, generate_ids(batch, rng, sot, eot, context_length)))
    return out


def reference_cases(reference: Any, inputs: Sequence[tuple[np.ndarray, np.ndarray]],
                    spec: ModelSpec | None = None) -> list[ParityCase]:
    """The reference (a Backend-like object) run on each (pixel_values, input_ids) batch, every head of `spec`.

    Without `spec`, the reference's own (`reference.spec`) or, failing that, its one head under "head".
    """
    spec = spec or getattr(reference, "spec", None)
    heads: list[tuple[str, str | None]] = [(h.graph, h.task) for h in spec.heads] if spec else [("head", None)]
    cases = []
    words = spec is not None and any(h.explain_tokens for h in spec.heads)  # heads weigh words: token outputs too
    for pixels, ids in inputs:
        image_embeds = np.asarray(reference.encode_image(pixels), dtype=np.float32)
        text = ({k: np.asarray(v, dtype=np.float32) for k, v in reference.encode_text_outputs(ids).items()} if words
                else {"text_embeds": np.asarray(reference.encode_text(ids), dtype=np.float32)})
        text_embeds = text["text_embeds"]
        outputs = {IMAGE_GRAPH.name: {"image_embeds": image_embeds}, TEXT_GRAPH.name: text}
        for graph, task in heads:
            if task is not None and hasattr(reference, "run_head_outputs"):
                extra = {"extra": text} if words else {}
                outputs[graph] = {k: np.asarray(v) for k, v in
                                  reference.run_head_outputs(image_embeds, text_embeds, task, **extra).items()}
                continue
            logits, probs = (reference.run_head(image_embeds, text_embeds, task) if task
                             else reference.run_head(image_embeds, text_embeds))
            outputs[graph] = {"logits": np.asarray(logits), "probs": np.asarray(probs)}
        cases.append(ParityCase({"pixel_values": pixels, "input_ids": ids}, outputs))
    return cases


def make_cases(reference: Any, batches: list[int], image_size: int, sot: int, eot: int,
               context_length: int = 77, seed: int = 0, spec: ModelSpec | None = None) -> list[ParityCase]:
    """Generated inputs for each batch size and the reference outputs on them."""
    return reference_cases(reference, generated_inputs(batches, image_size, sot, eot, context_length, seed), spec)


def open_session(path: Path) -> Any:
    """A CPU ONNX Runtime session; `RuntimeCannotRun` when the runtime refuses the graph."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise RuntimeCannotRun(f"onnxruntime cannot load {Path(path).name}: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _run(session: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    try:
        return session.run(None, feeds)
    except Exception as exc:
        raise RuntimeCannotRun(f"onnxruntime cannot run the graph: {_first_line(exc)}") from exc


GraphRunner = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


def session_runner(path: Path) -> GraphRunner:
    """feeds -> outputs of one graph in a CPU onnxruntime session."""
    session = open_session(path)
    return lambda feeds: _run(session, feeds)


def check_runner(graph: GraphSpec | str, run: GraphRunner, cases: list[ParityCase], precision: str
                 ) -> dict[str, Any]:
    """Parity numbers of one graph (any runner: onnxruntime, a TensorRT engine) with its gate.

    Feeds and references come from the spec's declared input and output names; the first output is gated
    (cosine for embeddings, logits with top-1 for a head), and every further output's max |diff| is reported.
    """
    spec = graph_spec(graph)
    main, *others = spec.output_names
    outs, refs, other_diff = [], [], dict.fromkeys(others, 0.0)
    for case in cases:
        got = dict(zip(spec.output_names, run(case.feeds(spec)), strict=False))
        want = case.expected(spec)
        outs.append(got[main])
        refs.append(want[main])
        for name in others:
            other_diff[name] = max(other_diff[name], max_abs(got[name], want[name]))
    numbers = compare(outs, refs, logits=spec.is_head)
    numbers.update({f"max_abs_{name}": value for name, value in other_diff.items()})
    numbers["batches"] = sorted({c.batch for c in cases})
    entry = judge(numbers, spec.tolerance(precision))
    limits = {name: EXPLAIN_MAX_ABS[precision] for name in EXPLAIN_OUTPUTS}  # --explain: gated like any output
    limits["token_mask"] = 0.0  # which positions are words: exact
    for name, limit in limits.items():
        if name in other_diff:
            entry["limits"][f"max_abs_{name}"] = limit
            entry["passed"] = bool(entry["passed"] and other_diff[name] <= limit)
    return entry


def check_graph(graph: GraphSpec | str, path: Path, cases: list[ParityCase], precision: str) -> dict[str, Any]:
    """Parity numbers of one ONNX graph against the reference, with its gate from the model spec."""
    return check_runner(graph, session_runner(path), cases, precision)


def end_to_end_key(head: HeadSpec) -> str:
    """The parity report's key for a head's end-to-end gate."""
    return f"end_to_end:{head.task}"


def run_chain(runners: dict[str, GraphRunner], specs: list[GraphSpec], inputs: dict[str, np.ndarray]
              ) -> dict[str, np.ndarray]:
    """Run graphs in order, feeding each by input name from the inputs and earlier graphs' outputs."""
    env = dict(inputs)
    for spec in specs:
        env.update(zip(spec.output_names, runners[spec.name]({n: env[n] for n in spec.input_names}), strict=False))
    return env


def check_end_to_end(spec: ModelSpec, paths: dict[str, Path], cases: list[ParityCase], precision: str
                     ) -> dict[str, dict[str, Any]]:
    """Image encoder -> text encoder -> each head in ONNX Runtime vs the reference, on that head's logits.

    Returns {end_to_end_key(head): entry} for every head: each head is gated on its own.
    """
    runners = {name: session_runner(path) for name, path in paths.items()}
    report = {}
    for head in spec.heads:
        chain = [IMAGE_GRAPH, spec.text_graph, head.graph_spec()]
        envs = [run_chain(runners, chain, case.inputs) for case in cases]
        numbers = compare([env["logits"] for env in envs], [case.outputs[head.graph]["logits"] for case in cases],
                          logits=True)
        numbers["batches"] = sorted({c.batch for c in cases})
        entry = judge(numbers, END_TO_END[precision])
        if head.explain_tokens:  # the words' weights end to end, through the text encoder's token outputs
            worst = max(max_abs(env["token_weights"], case.outputs[head.graph]["token_weights"])
                        for env, case in zip(envs, cases, strict=True))
            entry["max_abs_token_weights"] = worst
            entry["limits"]["max_abs_token_weights"] = EXPLAIN_MAX_ABS[precision]
            entry["passed"] = bool(entry["passed"] and worst <= EXPLAIN_MAX_ABS[precision])
        report[end_to_end_key(head)] = entry
    return report


def validate_graphs(spec: ModelSpec, paths: dict[str, Path], cases: list[ParityCase], precision: str
                    ) -> dict[str, Any]:
    """Parity of every graph of the spec and of every head end to end."""
    report: dict[str, Any] = {name: check_graph(g, paths[name], cases, precision)
                              for name, g in spec.graphs().items()}
    report.update(check_end_to_end(spec, paths, cases, precision))
    return report
