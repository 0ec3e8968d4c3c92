"""A stand-in for the `tensorrt` module that records what the builder was asked to do, and runs its engines.

The parser reads the real ONNX file: graph inputs become network inputs (dynamic dims as -1) and every node
a layer whose type follows its op (LayerNormalization -> NORMALIZATION, Softmax -> SOFTMAX, Reduce* -> REDUCE).
A built engine remembers the ONNX graph it was built from; the fake `Runtime` deserialises it into an engine
that runs that graph in onnxruntime when its stream is synchronised (with the honest `fake_cuda`), so engine
parity checks see real numbers. `RECORD["wrong"]` names graphs whose engines return wrong numbers.
"""

from __future__ import annotations

import types
from enum import Enum
from typing import Any

import numpy as np
import onnx

__version__ = "10.99.0-fake"
float32 = "float32"
float16 = "float16"


class LayerType(Enum):
    NORMALIZATION = "NORMALIZATION"
    SOFTMAX = "SOFTMAX"
    REDUCE = "REDUCE"
    OTHER = "OTHER"


class BuilderFlag(Enum):
    FP16 = "FP16"
    INT8 = "INT8"
    OBEY_PRECISION_CONSTRAINTS = "OBEY_PRECISION_CONSTRAINTS"


class MemoryPoolType(Enum):
    WORKSPACE = "WORKSPACE"


class Logger:
    WARNING = "WARNING"

    def __init__(self, severity: str = "WARNING") -> None:
        self.severity = severity


RECORD: dict[str, Any] = {"builds": [], "engines": [], "wrong": set(), "runs": []}


def reset() -> None:
    RECORD.clear()
    RECORD.update({"builds": [], "engines": [], "wrong": set(), "runs": []})


class Tensor:
    def __init__(self, name: str, shape: list[int]) -> None:
        self.name, self.shape = name, shape


class Layer:
    def __init__(self, name: str, op: str) -> None:
        self.name = name
        self.op = op
        self.type = (
            LayerType.NORMALIZATION if op == "LayerNormalization"
            else LayerType.SOFTMAX if op == "Softmax"
            else LayerType.REDUCE if op.startswith("Reduce")
            else LayerType.OTHER
        )
        self.precision: str | None = None
        self.num_outputs = 1
        self.output_types: dict[int, str] = {}

    def set_output_type(self, index: int, dtype: str) -> None:
        self.output_types[index] = dtype


class Network:
    def __init__(self) -> None:
        self.inputs: list[Tensor] = []
        self.layers: list[Layer] = []
        self.onnx_bytes = b""

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    def get_input(self, i: int) -> Tensor:
        return self.inputs[i]

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def get_layer(self, i: int) -> Layer:
        return self.layers[i]


class OnnxParser:
    def __init__(self, network: Network, logger: Logger) -> None:
        self.network = network
        self.num_errors = 0

    def parse_from_file(self, path: str) -> bool:
        with open(path, "rb") as fh:
            self.network.onnx_bytes = fh.read()
        model = onnx.load_from_string(self.network.onnx_bytes)
        inits = {i.name for i in model.graph.initializer}
        for value in model.graph.input:
            if value.name not in inits:
                dims = [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]
                self.network.inputs.append(Tensor(value.name, dims))
        for i, node in enumerate(model.graph.node):
            self.network.layers.append(Layer(node.name or f"{node.op_type}_{i}", node.op_type))
        RECORD.setdefault("parsed", []).append({"path": path, "ops": sorted({n.op_type for n in model.graph.node})})
        return True

    def get_error(self, i: int) -> str:
        return "fake error"


class TimingCache:
    def __init__(self, data: bytes) -> None:
        self.data = bytes(data)

    def serialize(self) -> bytes:
        return b"fake-timing-cache:" + str(len(RECORD["builds"])).encode()


class OptimizationProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[list[int], list[int], list[int]]] = {}

    def set_shape(self, name: str, min: Any, opt: Any, max: Any) -> None:  # noqa: A002 - TensorRT's names
        self.shapes[name] = (list(min), list(opt), list(max))


class BuilderConfig:
    def __init__(self) -> None:
        self.flags: set[BuilderFlag] = set()
        self.profiles: list[OptimizationProfile] = []
        self.pool_limits: dict[MemoryPoolType, int] = {}
        self.timing_cache: TimingCache | None = None
        self.loaded_cache_bytes: bytes | None = None

    def set_flag(self, flag: BuilderFlag) -> None:
        self.flags.add(flag)

    def set_memory_pool_limit(self, pool: MemoryPoolType, size: int) -> None:
        self.pool_limits[pool] = size

    def add_optimization_profile(self, profile: OptimizationProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, data: bytes) -> TimingCache:
        self.loaded_cache_bytes = bytes(data)
        return TimingCache(data)

    def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
        self.timing_cache = cache
        return True

    def get_timing_cache(self) -> TimingCache | None:
        return self.timing_cache


class Builder:
    def __init__(self, logger: Logger) -> None:
        self.logger = logger

    def create_network(self, flags: int = 0) -> Network:
        return Network()

    def create_builder_config(self) -> BuilderConfig:
        return BuilderConfig()

    def create_optimization_profile(self) -> OptimizationProfile:
        return OptimizationProfile()

    def build_serialized_network(self, network: Network, config: BuilderConfig) -> bytes:
        pinned = [layer for layer in network.layers if layer.precision == float32]
        RECORD["builds"].append({
            "inputs": {t.name: t.shape for t in network.inputs},
            "profiles": [p.shapes for p in config.profiles],
            "flags": {f.name for f in config.flags},
            "fp32_layers": {layer.op for layer in pinned},
            # False when nothing is pinned: "every pinned layer's output is fp32" must not hold vacuously
            "fp32_outputs": bool(pinned) and all(layer.output_types.get(0) == float32 for layer in pinned),
            "timing_cache_loaded": config.loaded_cache_bytes,
        })
        RECORD["engines"].append(network.onnx_bytes)
        return b"fake-engine:" + str(len(RECORD["engines"]) - 1).encode()


class TensorIOMode(Enum):
    INPUT = "INPUT"
    OUTPUT = "OUTPUT"


def nptype(dtype: Any) -> Any:
    return dtype


_ONNX_DTYPES = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.INT64: np.int64}


class ExecutionContext:
    """Shapes and addresses as set by the caller; the graph runs on the stream, when it is synchronised."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.shapes[name] = tuple(shape)
        return True

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addresses[name] = int(ptr)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        batch = next(iter(self.shapes.values()))[0]
        return tuple(batch if d < 0 else d for d in self.engine.dims[name])

    def execute_async_v3(self, stream: int) -> bool:
        engine, cuda = self.engine, self.engine.cuda
        shapes, addresses = dict(self.shapes), dict(self.addresses)
        out_shapes = {name: self.get_tensor_shape(name) for name in engine.outputs}

        def kernel() -> None:
            feeds = {n: cuda.view(addresses[n], engine.dtypes[n], shapes[n]).copy() for n in engine.inputs}
            outs = engine.session.run(engine.outputs, feeds)
            for name, value in zip(engine.outputs, outs):
                if engine.wrong:
                    value = value[:, ::-1] * 1.5 + 0.25  # a broken engine: plausible shapes, wrong numbers
                cuda.view(addresses[name], engine.dtypes[name], out_shapes[name])[...] = value
            RECORD["runs"].append(engine.label)

        cuda.enqueue(stream, "kernel", kernel)
        return True


class Engine:
    """A deserialised fake engine: the ONNX graph it was built from, run by onnxruntime."""

    def __init__(self, onnx_bytes: bytes, cuda: Any) -> None:
        import onnxruntime as ort

        model = onnx.load_from_string(onnx_bytes)
        self.cuda = cuda
        self.session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
        inits = {i.name for i in model.graph.initializer}
        graph_inputs = [v for v in model.graph.input if v.name not in inits]
        self.inputs = [v.name for v in graph_inputs]
        self.outputs = [v.name for v in model.graph.output]
        self.io = self.inputs + self.outputs
        self.dtypes = {v.name: _ONNX_DTYPES[v.type.tensor_type.elem_type] for v in [*graph_inputs, *model.graph.output]}
        self.dims = {v.name: [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]
                     for v in model.graph.output}
        self.label = "+".join(self.outputs)
        self.wrong = bool(set(self.outputs) & RECORD["wrong"])
        self.num_io_tensors = len(self.io)

    def get_tensor_name(self, i: int) -> str:
        return self.io[i]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return TensorIOMode.INPUT if name in self.inputs else TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str) -> Any:
        return self.dtypes[name]

    def create_execution_context(self) -> ExecutionContext:
        return ExecutionContext(self)


class Runtime:
    """Deserialises what the fake builder produced; `CUDA` is the FakeCuda its engines run on."""

    CUDA: Any = None

    def __init__(self, logger: Logger) -> None:
        self.logger = logger

    def deserialize_cuda_engine(self, blob: bytes) -> Engine | None:
        prefix = b"fake-engine:"
        if not bytes(blob).startswith(prefix):
            return None
        return Engine(RECORD["engines"][int(bytes(blob)[len(prefix):])], Runtime.CUDA)


def as_module() -> types.ModuleType:
    """This module as a fresh `tensorrt` stand-in (state reset)."""
    import sys

    reset()
    return sys.modules[__name__]


def fake_cudart(devices: int = 1, name: bytes = b"NVIDIA FakeGPU 80GB", cc: tuple[int, int] = (9, 0)) -> Any:
    """A `cuda.bindings.runtime` stand-in reporting `devices` GPUs (the honest `fake_cuda`, shared with the
    fake Runtime's engines)."""
    from fake_cuda import FakeCuda

    cuda = FakeCuda(name=name, cc=cc, devices=devices)
    Runtime.CUDA = cuda
    return cuda.cudart
