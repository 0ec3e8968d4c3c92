"""A one-node ONNX MatMul model as bytes, written without the `onnx` package (the lean install lacks it).

ONNX models are protocol buffers; this writes the handful of fields one MatMul needs (ModelProto -> GraphProto
-> NodeProto, ValueInfoProto, TensorProto), field numbers as in onnx/onnx.proto. The result loads in
onnxruntime and OpenVINO; tests/runtime/test_bench_peak.py checks it against the `onnx` package where installed.

Kinds: "fp32" / "fp16" (MatMul, A fed, B a constant), "int8" (MatMulInteger: A uint8, B int8, the U8S8
kernel that dynamic quantization uses), "qdq" (QuantizeLinear/DequantizeLinear around a float MatMul: the
static Q/DQ form that OpenVINO and onnxruntime turn into an int8 GEMM).
"""

from __future__ import annotations

import struct

import numpy as np

FLOAT, UINT8, INT8, INT32, FLOAT16 = 1, 2, 3, 6, 10
_ELEM = {np.dtype(np.float32): FLOAT, np.dtype(np.uint8): UINT8, np.dtype(np.int8): INT8,
         np.dtype(np.int32): INT32, np.dtype(np.float16): FLOAT16}
IR_VERSION = 8
OPSET = 17
KINDS = ("fp32", "fp16", "int8", "qdq")


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1  # negative int64 as two's complement, as protobuf does
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _int(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _bytes(field: int, value: bytes | str) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def _float(field: int, value: float) -> bytes:
    return _varint(field << 3 | 5) + struct.pack("<f", value)


def _tensor(name: str, array: np.ndarray) -> bytes:
    """TensorProto: dims (1), data_type (2), name (8), raw_data (9, little-endian)."""
    dims = b"".join(_int(1, d) for d in array.shape)
    raw = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
    return dims + _int(2, _ELEM[array.dtype]) + _bytes(8, name) + _bytes(9, raw)


def _value_info(name: str, elem: int, shape: tuple[int, ...]) -> bytes:
    """ValueInfoProto: name (1), type (2) = TypeProto.tensor_type (1) {elem_type (1), shape (2) {dim (1)}}."""
    dims = b"".join(_bytes(1, _int(1, d)) for d in shape)
    tensor_type = _int(1, elem) + _bytes(2, dims)
    return _bytes(1, name) + _bytes(2, _bytes(1, tensor_type))


def _node(op: str, inputs: list[str], outputs: list[str]) -> bytes:
    """NodeProto: input (1), output (2), name (3), op_type (4)."""
    return (b"".join(_bytes(1, i) for i in inputs) + b"".join(_bytes(2, o) for o in outputs)
            + _bytes(3, f"{op}_{outputs[0]}") + _bytes(4, op))


def _model(nodes: list[bytes], inputs: list[bytes], outputs: list[bytes], initializers: list[bytes]) -> bytes:
    graph = (b"".join(_bytes(1, n) for n in nodes) + _bytes(2, "peak_probe")
             + b"".join(_bytes(5, t) for t in initializers)
             + b"".join(_bytes(11, v) for v in inputs) + b"".join(_bytes(12, v) for v in outputs))
    opset = _bytes(1, "") + _int(2, OPSET)
    return _int(1, IR_VERSION) + _bytes(2, "crisis-tool bench") + _bytes(7, graph) + _bytes(8, opset)


def matmul_model(m: int, k: int, n: int, kind: str = "fp32", seed: int = 0) -> tuple[bytes, np.ndarray]:
    """(model bytes, the input A to feed) for Y = A[m,k] @ B[k,n] of `kind` (see the module docstring)."""
    if kind not in KINDS:
        raise ValueError(f"unknown MatMul kind {kind!r} (choose from {', '.join(KINDS)})")
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32) / np.float32(np.sqrt(k))
    if kind == "int8":
        a_u8 = rng.integers(0, 256, size=(m, k), dtype=np.uint8)
        b_s8 = rng.integers(-127, 128, size=(k, n), dtype=np.int8)
        model = _model([_node("MatMulInteger", ["A", "B"], ["Y"])], [_value_info("A", UINT8, (m, k))],
                       [_value_info("Y", INT32, (m, n))], [_tensor("B", b_s8)])
        return model, a_u8
    if kind == "qdq":
        scale_a, scale_b = np.array(0.05, np.float32), np.array(0.01, np.float32)
        zero_u8, zero_s8 = np.array(128, np.uint8), np.array(0, np.int8)
        b_s8 = np.clip(np.round(b / scale_b), -127, 127).astype(np.int8)
        nodes = [_node("QuantizeLinear", ["A", "sa", "za"], ["Aq"]),
                 _node("DequantizeLinear", ["Aq", "sa", "za"], ["Ad"]),
                 _node("DequantizeLinear", ["Bq", "sb", "zb"], ["Bd"]),
                 _node("MatMul", ["Ad", "Bd"], ["Y"])]
        inits = [_tensor("sa", scale_a), _tensor("za", zero_u8), _tensor("sb", scale_b), _tensor("zb", zero_s8),
                 _tensor("Bq", b_s8)]
        model = _model(nodes, [_value_info("A", FLOAT, (m, k))], [_value_info("Y", FLOAT, (m, n))], inits)
        return model, a
    dtype = np.float16 if kind == "fp16" else np.float32
    elem = _ELEM[np.dtype(dtype)]
    model = _model([_node("MatMul", ["A", "B"], ["Y"])], [_value_info("A", elem, (m, k))],
                   [_value_info("Y", elem, (m, n))], [_tensor("B", b.astype(dtype))])
    return model, a.astype(dtype)
