"""A Triton Inference Server model repository from a bundle (`crisis-tool export --format triton`).

For a bundle folder NAME (or `model_name`) it writes, iterating the manifest's graphs (so one head or many):

    REPO/NAME_image/1/model.onnx + config.pbtxt    pixel_values [B,3,H,W] FP32 -> image_embeds [B,D]
    REPO/NAME_text/1/model.onnx  + config.pbtxt    input_ids [B,L] INT64 -> text_embeds [B,D]
    REPO/NAME_head/1/model.onnx  + config.pbtxt    (image_embeds, text_embeds) -> logits, probs [B,C]
         (NAME_head_<task> for each task when the bundle has several heads; labels.txt per head)
    REPO/NAME/config.pbtxt + 1/                    the ensemble: pixel_values, input_ids -> <task>_logits,
                                                   <task>_probs for every head

Each ONNX model has dynamic batching, `max_batch_size` = the bundle's max batch and one GPU instance
(`config.pbtxt`); `configs/cpu.pbtxt` is the same model on CPU (Triton's `--model-config-name=cpu`).
Preprocessing (decode, resize, normalise) and CLIP tokenization stay client-side: they are what
`crisis_tool.runtime.preprocess` and `crisis_tool.runtime.tokenizer` do, or belong in a Python-backend model.
Head probabilities are the graph's softmax; a bundle's calibration temperature and review thresholds are
applied client-side (they are in the manifest). Torch-free; needs neither onnx nor tritonclient.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crisis_tool.runtime.atomic_files import check_writable_dir
from crisis_tool.runtime.bundle import Bundle
from crisis_tool.runtime.errors import UsageError

TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32"}
DYNAMIC_DIMS = ("B", "L")
ROLE_SUFFIX = {"image_encoder": "image", "text_encoder": "text"}
MODEL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
QUEUE_DELAY_US = 2000


@dataclass(frozen=True)
class TritonModel:
    """One model of the repository: its name, the bundle graph it serves and, for a head, its task."""

    name: str
    graph: str
    task: str | None = None


def triton_dims(tensor: Any, dims: dict[str, int]) -> list[int]:
    """A tensor's dims as Triton sees them: without the batch axis, -1 for a dynamic axis (L)."""
    return [-1 if d in DYNAMIC_DIMS else d if isinstance(d, int) else int(dims[d]) for d in tensor.shape[1:]]


def _tensor_block(kind: str, tensors: list[tuple[str, str, list[int]]], label_file: str | None = None) -> str:
    """`input [...]` / `output [...]` of (name, numpy dtype, dims); `label_file` goes on the output "probs"."""
    blocks = []
    for name, dtype, dims in tensors:
        label = f'\n    label_filename: "{label_file}"' if label_file and name == "probs" else ""
        blocks.append(f'  {{\n    name: "{name}"\n    data_type: {TRITON_TYPES[dtype]}\n'
                      f"    dims: [ {', '.join(map(str, dims))} ]{label}\n  }}")
    return f"{kind} [\n" + ",\n".join(blocks) + "\n]\n"


def _io(tensors: Any, dims: dict[str, int], rename: str = "") -> list[tuple[str, str, list[int]]]:
    return [(f"{rename}{t.name}", t.dtype, triton_dims(t, dims)) for t in tensors]


def onnx_config(model: TritonModel, entry: Any, dims: dict[str, int], max_batch: int, kind: str) -> str:
    """config.pbtxt of one ONNX model: I/O without the batch axis, dynamic batching, one `kind` instance."""
    return (
        f'name: "{model.name}"\nbackend: "onnxruntime"\nmax_batch_size: {max_batch}\n'
        + _tensor_block("input", _io(entry.inputs, dims))
        + _tensor_block("output", _io(entry.outputs, dims), "labels.txt" if model.task else None)
        + f"dynamic_batching {{\n  max_queue_delay_microseconds: {QUEUE_DELAY_US}\n}}\n"
        + f"instance_group [\n  {{\n    count: 1\n    kind: {kind}\n  }}\n]\n"
    )


def ensemble_config(name: str, models: list[TritonModel], entries: dict[str, Any],
                    dims: dict[str, dict[str, int]], max_batch: int) -> str:
    """config.pbtxt of the ensemble: the encoders' inputs in, every head's `<task>_logits`/`<task>_probs` out.

    `dims` holds each model's fixed sizes by model name (a head's C is its own class count)."""
    image, text = (next(m for m in models if m.graph == g) for g in ("image_encoder", "text_encoder"))
    heads = [m for m in models if m.task is not None]
    inputs = _io(entries[image.graph].inputs, dims[image.name]) + _io(entries[text.graph].inputs, dims[text.name])
    outputs = [io for h in heads for io in _io(entries[h.graph].outputs, dims[h.name], f"{h.task}_")]
    steps = [_step(image, entries[image.graph], ""), _step(text, entries[text.graph], "")]
    steps += [_step(h, entries[h.graph], f"{h.task}_") for h in heads]
    return (f'name: "{name}"\nplatform: "ensemble"\nmax_batch_size: {max_batch}\n'
            + _tensor_block("input", inputs) + _tensor_block("output", outputs)
            + "ensemble_scheduling {\n  step [\n" + ",\n".join(steps) + "\n  ]\n}\n")


def _step(model: TritonModel, entry: Any, output_prefix: str) -> str:
    maps = [f'      input_map {{\n        key: "{t.name}"\n        value: "{t.name}"\n      }}' for t in entry.inputs]
    maps += [f'      output_map {{\n        key: "{t.name}"\n        value: "{output_prefix}{t.name}"\n      }}'
             for t in entry.outputs]
    return f'    {{\n      model_name: "{model.name}"\n      model_version: -1\n' + "\n".join(maps) + "\n    }"


def repo_models(bundle: Bundle, name: str, precision: str) -> list[TritonModel]:
    """The repository's ONNX models, from the manifest's graphs of `precision` (encoders, then the heads)."""
    graphs = bundle.manifest.graphs[precision]
    heads = [g for g in graphs if g not in ROLE_SUFFIX]
    spec = getattr(bundle, "spec", None)
    models = [TritonModel(f"{name}_{ROLE_SUFFIX[g]}", g) for g in ROLE_SUFFIX]
    for graph in heads:
        head = spec.head_for_graph(graph) if spec is not None else None
        task = head.task if head is not None else graph.removeprefix("head_") or "head"
        models.append(TritonModel(f"{name}_head" if len(heads) == 1 else f"{name}_head_{task}", graph, task))
    return models


def head_labels(bundle: Bundle, model: TritonModel) -> list[str]:
    spec = getattr(bundle, "spec", None)
    head = spec.head_for_graph(model.graph) if spec is not None else None
    return list(head.labels) if head is not None else list(bundle.labels)


def write_triton_repo(bundle_dir: Path, out: Path, model_name: str | None = None, precision: str | None = None,
                      max_batch: int | None = None, force: bool = False) -> dict[str, Any]:
    """Write the repository (see the module docstring) into `out`; returns {model name: its folder}."""
    bundle = Bundle.load(bundle_dir)
    name = model_name or Path(bundle_dir).resolve().name
    if not MODEL_NAME.match(name):
        raise UsageError(f"Triton model name {name!r}: use letters, digits, '_', '.' or '-'")
    precision = precision or bundle.precision
    if precision not in bundle.manifest.graphs:
        raise UsageError(f"{bundle_dir}: no {precision} graphs (has {', '.join(bundle.precisions())})")
    batch = max_batch or bundle.manifest.max_batch
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not force:
            raise UsageError(f"--out {out} is not empty; give an empty folder (or --force to replace a Triton "
                             "repository written before)")
        if not is_triton_repo(out):
            raise UsageError(f"--out {out} is not a Triton repository (a folder of models with config.pbtxt); "
                             "--force replaces only such a folder")
    check_writable_dir(out.parent)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; a server running as another user must read it
    try:
        written = _write_models(bundle, staging, name, precision, batch)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {model: out / path.name for model, path in written.items()}


def is_triton_repo(folder: Path) -> bool:
    """True when every entry of `folder` is a model folder with a config.pbtxt."""
    entries = list(folder.iterdir())
    return bool(entries) and all(e.is_dir() and (e / "config.pbtxt").is_file() for e in entries)


def _write_models(bundle: Bundle, folder: Path, name: str, precision: str, batch: int) -> dict[str, Path]:
    entries = bundle.manifest.graphs[precision]
    models = repo_models(bundle, name, precision)
    dims = {m.name: {**bundle.dims, **({"C": len(head_labels(bundle, m))} if m.task else {})} for m in models}
    written: dict[str, Any] = {}
    for model in models:
        model_dir = folder / model.name
        (model_dir / "1").mkdir(parents=True)
        (model_dir / "configs").mkdir()
        shutil.copyfile(bundle.graph_path(model.graph, precision), model_dir / "1" / "model.onnx")
        for path, kind in ((model_dir / "config.pbtxt", "KIND_GPU"), (model_dir / "configs" / "cpu.pbtxt", "KIND_CPU")):
            path.write_text(onnx_config(model, entries[model.graph], dims[model.name], batch, kind), encoding="utf-8")
        if model.task is not None:
            (model_dir / "labels.txt").write_text("\n".join(head_labels(bundle, model)) + "\n", encoding="utf-8")
        written[model.name] = model_dir
    ensemble = folder / name
    (ensemble / "1").mkdir(parents=True)
    (ensemble / "config.pbtxt").write_text(ensemble_config(name, models, entries, dims, batch), encoding="utf-8")
    written[name] = ensemble
    return written


def build_triton(opts: Any, progress: Any = None) -> Any:
    """The `triton` row of the export table: --from-bundle BUNDLE --out REPO (--precision, --max-batch,
    --force)."""
    from crisis_tool.export.options import ExportResult

    if opts.from_bundle is None or opts.out is None:
        raise UsageError("--format triton builds from --from-bundle BUNDLE into --out FOLDER")
    written = write_triton_repo(Path(opts.from_bundle), Path(opts.out), precision=opts.precision,
                                max_batch=opts.max_batch, force=opts.force)
    if progress is not None:
        progress(f"Triton model repository written to {opts.out}: {', '.join(written)} (the last one is the "
                 "ensemble); start it with tritonserver --model-repository " + str(opts.out))
    # `built` stays empty: the export command lists TensorRT engines from it
    return ExportResult(out=Path(opts.out), manifest=Bundle.load(opts.from_bundle).manifest)
