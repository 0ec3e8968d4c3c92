"""TensorRT (10.x) engines from a bundle's ONNX graphs, built on the target GPU.

One optimization profile per engine (batch 1 / 8 / --max-batch, text length 1 / 77 / 77), fp16 with
normalisation, softmax and reduction layers pinned to fp32 (OBEY_PRECISION_CONSTRAINTS), int8 from an
explicit Q/DQ graph (ONNX Runtime static quantization, calibrated on generated inputs), a persistent timing
cache, and a manifest entry (plus JSON sidecar) with the TensorRT version, GPU name and compute capability.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from crisis_tool.export.graph_specs import GRAPHS, GraphSpec
from crisis_tool.runtime.errors import CrisisToolError, MissingDependencyError

ENGINE_DIR = "engines"
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
            f"`crisis-tool export --from-bundle {bundle} --engine trt` on the target")


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
    """(GPU name, compute capability 'major.minor') of device 0; MissingDependencyError without a GPU."""
    cudart = None
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            cudart = None
    if cudart is not None:
        err, count = cudart.cudaGetDeviceCount()
        if int(err) == 0 and count > 0:
            err, prop = cudart.cudaGetDeviceProperties(0)
            if int(err) == 0:
                name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
                return name.rstrip("\x00").strip(), f"{prop.major}.{prop.minor}"
    else:
        try:
            import torch

            if torch.cuda.is_available():
                major, minor = torch.cuda.get_device_capability(0)
                return torch.cuda.get_device_name(0), f"{major}.{minor}"
        except ImportError:
            pass
    raise MissingDependencyError(f"TensorRT engines need an NVIDIA GPU and none was found; {_hint(bundle)}")


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
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))


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
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    engine_path.write_bytes(bytes(memoryview(serialized)))
    return {"profile": shapes, "fp32_layers": len(pinned)}


def qdq_graph(src: Path, dst: Path, component: str, feeds: list[dict[str, Any]]) -> Path:
    """An explicitly quantized (Q/DQ) copy of a graph for TensorRT int8, calibrated on `feeds`."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(feeds)

        def get_next(self) -> dict[str, Any] | None:
            return next(self._it, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    return dst


def calibration_feeds(
    bundle: Path, manifest: dict[str, Any], batches: int = 4, batch: int = 8
) -> dict[str, list]:
    """Generated calibration inputs per component; the head's come from the fp32 encoders (ONNX Runtime)."""
    import numpy as np

    from crisis_tool.export.validate import generate_ids, open_session

    rng = np.random.default_rng(0)
    tok, size = manifest["tokenizer"], int(manifest["preprocess"]["size"])
    graphs = manifest["graphs"]["fp32"]
    image = open_session(bundle / graphs["image_encoder"]["file"])
    text = open_session(bundle / graphs["text_encoder"]["file"])
    feeds: dict[str, list] = {"image_encoder": [], "text_encoder": [], "head": []}
    for _ in range(batches):
        pixels = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
        ids = generate_ids(batch, rng, tok["sot_token_id"], tok["eot_token_id"], tok["context_length"])
        feeds["image_encoder"].append({"pixel_values": pixels})
        feeds["text_encoder"].append({"input_ids": ids})
        feeds["head"].append({"image_embeds": image.run(None, {"pixel_values": pixels})[0],
                              "text_embeds": text.run(None, {"input_ids": ids})[0]})
    return feeds


def build_bundle_engines(bundle: Path, precision: str | None = None, max_batch: int | None = None,
                         timing_cache: Path | None = None) -> dict[str, Any]:
    """Build engines for every component of a verified bundle and record them in its manifest."""
    from crisis_tool.export.bundle_writer import finalize_manifest
    from crisis_tool.runtime.bundle import verify_bundle

    bundle = Path(bundle)
    manifest = verify_bundle(bundle)
    trt = import_tensorrt(bundle)
    gpu_name, capability = gpu_info(bundle)
    precision = precision or manifest["precision"]
    max_batch = int(max_batch or manifest.get("max_batch", 64))
    timing_cache = Path(timing_cache or default_timing_cache())
    size = int(manifest["preprocess"]["size"])
    head_cfg = manifest["model"]["head"]
    dims = {"L": int(manifest["tokenizer"]["context_length"]), "H": size, "W": size,
            "D": int(head_cfg["clip_embed_dim"]), "C": int(head_cfg["num_classes"])}
    fp32 = manifest["graphs"]["fp32"]
    feeds = calibration_feeds(bundle, manifest) if precision == "int8" else {}
    entries: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(dir=bundle) as scratch:
        for component, spec in GRAPHS.items():
            source = bundle / fp32[component]["file"]
            if precision == "int8":
                qdq = Path(scratch) / f"{component}.qdq.onnx"
                source = qdq_graph(source, qdq, component, feeds[component])
            rel = f"{ENGINE_DIR}/{component}.{precision}.engine"
            info = build_engine(trt, source, spec, dims, precision, max_batch, bundle / rel, timing_cache)
            entry = {"file": rel, "trt_version": str(trt.__version__), "gpu_name": gpu_name,
                     "compute_capability": capability, "precision": precision,
                     "source_graph": fp32[component]["file"], **info}
            sidecar = bundle / ENGINE_DIR / f"{component}.{precision}.json"
            sidecar.write_text(json.dumps(entry, indent=2) + "\n", encoding="utf-8")
            entries[component] = entry
    manifest.setdefault("engines", {})[precision] = entries
    finalize_manifest(bundle, manifest)
    return entries
