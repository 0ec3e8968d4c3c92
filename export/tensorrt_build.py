"""TensorRT (10.x) engines from a bundle's ONNX graphs, built on the target GPU.

One optimization profile per engine (batch 1 / 8 / --max-batch, text length 1 / 77 / 77), fp16 with
normalisation, softmax and reduction layers pinned to fp32 (OBEY_PRECISION_CONSTRAINTS), int8 from an
explicit Q/DQ graph that passed the int8 gate in onnxruntime first, a persistent timing cache, and a manifest
entry (plus JSON sidecar) with the TensorRT version, GPU name and compute capability. Every engine is run on the
gate inputs and held to its graph's gate; a failing one is not kept (`crisis_tool.export.engine_parity`).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from crisis_tool.runtime.atomic_files import atomic_write_bytes, atomic_write_text
from crisis_tool.runtime.bundle import Bundle
from crisis_tool.runtime.errors import CrisisToolError, MissingDependencyError
from crisis_tool.runtime.manifest import EngineEntry, engine_file_name, engine_sidecar_name
from crisis_tool.runtime.model_spec import GraphSpec

OPT_BATCH = 8
WORKSPACE_BYTES = 4 << 30
# Layers kept in fp32 in reduced-precision engines, by TensorRT layer type and by ONNX op name.
FP32_LAYER_TYPES = ("NORMALIZATION", "SOFTMAX", "REDUCE")
FP32_NAME_MARKERS = ("LayerNorm", "layer_norm", "ln_", "Softmax", "softmax", "Pow", "ReduceMean", "ReduceSum",
                     "Sqrt", "Reciprocal", "BatchNorm", "subln")


def default_timing_cache() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "crisis-tool" / "tensorrt_timing.cache"


def _hint(bundle: Path) -> str:
    return (f"the ONNX bundle at {bundle} is ready for "
            f"`crisis-tool export --from-bundle {bundle} --format trt` on the target")


def import_tensorrt(bundle: Path) -> Any:
    """The `tensorrt` module, or MissingDependencyError with the from-bundle hint."""
    try:
        import tensorrt
    except ImportError as exc:
        raise MissingDependencyError(
            f"TensorRT engines need the `tensorrt` package (pip install 'crisis-tool[trt]'); {_hint(bundle)}"
        ) from exc
    return tensorrt


def gpu_info(bundle: Path) -> tuple[str, str]:
    """(GPU name, compute capability 'major.minor') of device 0 (the runtime's probe); MissingDependencyError
    with the from-bundle hint without a GPU or cuda-python."""
    from crisis_tool.runtime.backends.tensorrt_backend import gpu_identity, import_cudart

    try:
        return gpu_identity(import_cudart())
    except MissingDependencyError:
        raise MissingDependencyError(
            f"TensorRT engines need an NVIDIA GPU (and cuda-python) and none was found; {_hint(bundle)}"
        ) from None


def profile_shapes(spec: GraphSpec, dims: dict[str, int], max_batch: int) -> dict[str, dict[str, list[int]]]:
    """min/opt/max shape of every input: batch 1/8/max_batch, text length 1/L/L, other dims fixed."""
    shapes: dict[str, dict[str, list[int]]] = {}
    opt_batch = min(OPT_BATCH, max_batch)
    for t in spec.inputs:
        ranges = []
        for d in t.shape:
            if d == "B":
                ranges.append((1, opt_batch, max_batch))
            elif d == "L":
                ranges.append((1, dims["L"], dims["L"]))
            else:
                size = d if isinstance(d, int) else dims[d]
                ranges.append((size, size, size))
        shapes[t.name] = {key: [r[i] for r in ranges] for i, key in enumerate(("min", "opt", "max"))}
    return shapes


def constrain_fp32_layers(trt: Any, network: Any) -> list[str]:
    """Pin normalisation / softmax / reduction layers (and their outputs) to fp32. Returns their names."""
    fp32_types = {getattr(trt.LayerType, n) for n in FP32_LAYER_TYPES if hasattr(trt.LayerType, n)}
    pinned = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type in fp32_types or any(m in layer.name for m in FP32_NAME_MARKERS):
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)
            pinned.append(layer.name)
    return pinned


def _load_timing_cache(config: Any, path: Path) -> Any:
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    config.set_timing_cache(cache, False)
    return cache


def _save_timing_cache(config: Any, path: Path) -> None:
    atomic_write_bytes(path, bytes(memoryview(config.get_timing_cache().serialize())))


def build_engine(trt: Any, onnx_path: Path, spec: GraphSpec, dims: dict[str, int], precision: str,
                 max_batch: int, engine_path: Path, timing_cache: Path) -> dict[str, Any]:
    """Parse `onnx_path`, build and serialize one engine. Returns profile and pinned-layer info."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise CrisisToolError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    shapes = profile_shapes(spec, dims, max_batch)
    profile = builder.create_optimization_profile()
    for name, s in shapes.items():
        profile.set_shape(name, s["min"], s["opt"], s["max"])
    config.add_optimization_profile(profile)
    pinned: list[str] = []
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        pinned = constrain_fp32_layers(trt, network)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
    _load_timing_cache(config, timing_cache)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise CrisisToolError(f"TensorRT failed to build an engine from {onnx_path.name} ({precision})")
    _save_timing_cache(config, timing_cache)
    atomic_write_bytes(engine_path, bytes(memoryview(serialized)))
    return {"profile": shapes, "fp32_layers": len(pinned)}


def build_bundle_engines(bundle: Path, precision: str | None = None, max_batch: int | None = None,
                         timing_cache: Path | None = None, calibration: Any = None) -> dict[str, Any]:
    """Build engines for every graph of a verified bundle and record them in its manifest (written atomically)."""
    bundle = Path(bundle)
    manifest = Bundle.load(bundle, verify=True).manifest
    trt = import_tensorrt(bundle)
    gpu_name, capability = gpu_info(bundle)
    precision = precision or manifest.precision
    max_batch = int(max_batch or manifest.max_batch)
    timing_cache = Path(timing_cache or default_timing_cache())
    dims = {**manifest.dims, "L": manifest.tokenizer.context_length}
    fp32 = manifest.graphs["fp32"]
    from crisis_tool.export import engine_parity as gate
    from crisis_tool.runtime.backends.tensorrt_backend import import_cudart

    data, cases = gate.engine_gate_cases(bundle, manifest, calibration, max_batch)
    cudart = import_cudart()
    entries: dict[str, EngineEntry] = {}
    parity: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(dir=bundle) as scratch:
        for graph, spec in manifest.spec.graphs().items():
            source, built_as, report = gate.engine_source(graph, bundle / fp32[graph].file, Path(scratch),
                                                          precision, cases, data.source)
            rel = engine_file_name(graph, precision)
            info = build_engine(trt, source, spec, spec.dims(dims), built_as, max_batch, bundle / rel, timing_cache)
            parity[graph] = {**gate.engine_parity(trt, cudart, graph, bundle / rel, cases, precision, max_batch),
                             **report}
            entry = EngineEntry(file=rel, trt_version=str(trt.__version__), gpu_name=gpu_name,
                                compute_capability=capability, precision=built_as,
                                source_graph=fp32[graph].file, profile=info["profile"],
                                fp32_layers=info["fp32_layers"])
            atomic_write_text(bundle / engine_sidecar_name(graph, precision),
                              json.dumps(entry.to_dict(), indent=2) + "\n")
            entries[graph] = entry
    failed = gate.drop_failed_engines(bundle, {g: [e.file, engine_sidecar_name(g, precision)]
                                               for g, e in entries.items()}, parity)
    kept = {graph: entry for graph, entry in entries.items() if graph not in failed}
    engines = {**manifest.engines, precision: kept} if not failed else {
        p: e for p, e in manifest.engines.items() if p != precision}
    replace(manifest, engines=engines, parity={**manifest.parity, f"trt-{precision}": parity}).save(bundle)
    if failed:
        raise CrisisToolError(gate.failed_engines_message(bundle, precision, parity, failed))
    return {graph: {**entry.to_dict(), "parity": parity[graph]} for graph, entry in entries.items()}
