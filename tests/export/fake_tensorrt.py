"""A stand-in for the `tensorrt` module that records what the builder was asked to do.

The parser reads the real ONNX file: graph inputs become network inputs (dynamic dims as -1) and every node
a layer whose type follows its op (LayerNormalization -> NORMALIZATION, Softmax -> SOFTMAX, Reduce* -> REDUCE).
"""

from __future__ import annotations

import types
from enum import Enum
from typing import Any

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


RECORD: dict[str, Any] = {"builds": []}


def reset() -> None:
    RECORD.clear()
    RECORD["builds"] = []


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
        model = onnx.load(path)
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
        RECORD["builds"].append({
            "inputs": {t.name: t.shape for t in network.inputs},
            "profiles": [p.shapes for p in config.profiles],
            "flags": {f.name for f in config.flags},
            "fp32_layers": {layer.op for layer in network.layers if layer.precision == float32},
            "fp32_outputs": all(layer.output_types.get(0) == float32 for layer in network.layers
                                if layer.precision == float32),
            "timing_cache_loaded": config.loaded_cache_bytes,
        })
        return b"fake-engine:" + str(len(RECORD["builds"])).encode()


def as_module() -> types.ModuleType:
    """This module as a fresh `tensorrt` stand-in (state reset)."""
    import sys

    reset()
    return sys.modules[__name__]


def fake_cudart(devices: int = 1, name: bytes = b"NVIDIA FakeGPU 80GB", cc: tuple[int, int] = (9, 0)) -> Any:
    """A `cuda.bindings.runtime` stand-in reporting `devices` GPUs."""
    prop = types.SimpleNamespace(name=name, major=cc[0], minor=cc[1])
    return types.SimpleNamespace(
        cudaGetDeviceCount=lambda: (0, devices),
        cudaGetDeviceProperties=lambda i: (0, prop),
    )
