"""The Q/DQ rules of export/qdq.py on a small hand-built pre-norm attention block: only weight-bearing MatMuls
are quantized (never the attention score / context MatMuls), TensorRT activations are symmetric int8 with
zero points 0 and percentile ranges, the CPU flavour is asymmetric uint8 min/max, the residual-stream writers
are found, and broken scales are reported."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime.quantization")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402 - after the importorskip

from crisis_tool.export.qdq import (  # noqa: E402
    name_nodes,
    qdq_graph,
    residual_writers,
    scale_problems,
    uniform_feeds,
    weight_nodes,
)

D = 8
WEIGHTED = ["q_proj", "k_proj", "v_proj", "out_proj", "mlp_up", "mlp_down"]


def attention_block(path: Path) -> Path:
    """x -> LN -> q,k,v -> softmax(q k^T) v -> out_proj (+bias) -> + x = h -> LN -> mlp_up -> Relu -> mlp_down
    -> + h = y -> LN -> out. out_proj and mlp_down write into the residual stream; `scores` and `context` are
    attention MatMuls with no weight; `side` adds a weight node's output to a tensor that feeds no norm."""
    rng = np.random.default_rng(0)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.normal(0, 0.3, shape).astype(np.float32), name)

    inits = [init(f"W_{n}", D, D) for n in WEIGHTED] + [init("b_out", D), init("W_side", D, D)]
    inits += [numpy_helper.from_array(np.ones(D, np.float32), "ln_s"),
              numpy_helper.from_array(np.zeros(D, np.float32), "ln_b")]
    n = helper.make_node
    nodes = [
        n("LayerNormalization", ["x", "ln_s", "ln_b"], ["x_n"], name="ln1", axis=-1),
        n("MatMul", ["x_n", "W_q_proj"], ["q"], name="q_proj"),
        n("MatMul", ["x_n", "W_k_proj"], ["k"], name="k_proj"),
        n("MatMul", ["x_n", "W_v_proj"], ["v"], name="v_proj"),
        n("Transpose", ["k"], ["k_t"], name="k_t", perm=[1, 0]),
        n("MatMul", ["q", "k_t"], ["scores"], name="scores"),
        n("Softmax", ["scores"], ["probs"], name="softmax", axis=-1),
        n("MatMul", ["probs", "v"], ["context"], name="context"),
        n("MatMul", ["context", "W_out_proj"], ["o"], name="out_proj"),
        n("Add", ["o", "b_out"], ["o_b"], name="out_bias"),
        n("Add", ["x", "o_b"], ["h"], name="residual1"),
        n("LayerNormalization", ["h", "ln_s", "ln_b"], ["h_n"], name="ln2", axis=-1),
        n("MatMul", ["h_n", "W_mlp_up"], ["u"], name="mlp_up"),
        n("Relu", ["u"], ["u_r"], name="relu"),
        n("MatMul", ["u_r", "W_mlp_down"], ["d"], name="mlp_down"),
        n("Add", ["h", "d"], ["y"], name="residual2"),
        n("LayerNormalization", ["y", "ln_s", "ln_b"], ["out"], name="ln3", axis=-1),
        n("MatMul", ["u_r", "W_side"], ["s"], name="side"),
        n("Add", ["s", "u"], ["side_out"], name="side_add"),
    ]
    graph = helper.make_graph(
        nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", D])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["B", D]),
         helper.make_tensor_value_info("side_out", TensorProto.FLOAT, ["B", D])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def block(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return attention_block(tmp_path_factory.mktemp("qdq") / "block.onnx")


def feeds(outlier: float | None = None) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    batches = [{"x": rng.normal(0, 1, (4, D)).astype(np.float32)} for _ in range(8)]
    if outlier is not None:
        batches[0]["x"][0, 0] = outlier
    return batches


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in model.graph.node for out in node.output}


def quantized_inputs(model: onnx.ModelProto) -> set[str]:
    """Names of the MatMul nodes (original names) that read a DequantizeLinear output as activation."""
    made_by = producers(model)
    return {node.name for node in model.graph.node if node.op_type == "MatMul"
            and (made_by.get(node.input[0]) is not None and made_by[node.input[0]].op_type == "DequantizeLinear")}


def test_weight_nodes_are_the_projections_not_the_attention_matmuls(block: Path) -> None:
    model = onnx.load(str(block))
    assert weight_nodes(model) == ["q_proj", "k_proj", "v_proj", "out_proj", "mlp_up", "mlp_down", "side"]
    assert "scores" not in weight_nodes(model) and "context" not in weight_nodes(model)


def test_residual_writers_are_the_output_and_mlp_down_projections(block: Path) -> None:
    assert residual_writers(onnx.load(str(block))) == ["out_proj", "mlp_down"]


@pytest.mark.parametrize("flavour", ["tensorrt", "cpu"])
def test_only_weight_nodes_are_quantized_never_the_attention_matmuls(block: Path, tmp_path: Path,
                                                                     flavour: str) -> None:
    out = qdq_graph(block, tmp_path / "q.onnx", feeds(), flavour=flavour)
    model = onnx.load(str(out))
    assert quantized_inputs(model) == {"q_proj", "k_proj", "v_proj", "out_proj", "mlp_up", "mlp_down", "side"}
    made_by = producers(model)
    for name in ("scores", "context"):  # neither operand of an attention MatMul passes through Q/DQ
        node = next(n for n in model.graph.node if n.name == name)
        assert all(made_by.get(i) is None or made_by[i].op_type != "DequantizeLinear" for i in node.input), name
    assert scale_problems(out) == []


def activation_quantizers(model: onnx.ModelProto) -> list[tuple[np.ndarray, np.ndarray]]:
    """(scale, zero point) of every QuantizeLinear whose input is not an initializer (activations)."""
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return [(inits[node.input[1]], inits[node.input[2]]) for node in model.graph.node
            if node.op_type == "QuantizeLinear" and node.input[0] not in inits]


def test_tensorrt_activations_are_symmetric_int8(block: Path, tmp_path: Path) -> None:
    model = onnx.load(str(qdq_graph(block, tmp_path / "q.onnx", feeds(), flavour="tensorrt")))
    quantizers = activation_quantizers(model)
    assert quantizers
    for _, zero in quantizers:
        assert zero.dtype == np.int8 and not zero.any()  # symmetric: zero point 0, signed


def test_cpu_activations_are_asymmetric_uint8(block: Path, tmp_path: Path) -> None:
    model = onnx.load(str(qdq_graph(block, tmp_path / "q.onnx", feeds(), flavour="cpu")))
    zeros = [zero for _, zero in activation_quantizers(model)]
    assert zeros and all(z.dtype == np.uint8 for z in zeros)
    assert any(int(z) not in (0, 128) for z in zeros)  # some range is not centred: a real zero point


WIDE = 256


def single_matmul(path: Path) -> Path:
    """x [B, WIDE] -> MatMul(W) -> y: the quantized activation is the raw input."""
    w = numpy_helper.from_array(np.random.default_rng(2).normal(0, 0.1, (WIDE, 4)).astype(np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="proj")], "one",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", WIDE])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def x_scale(path: Path) -> float:
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    node = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x")
    return float(inits[node.input[1]])


def test_one_outlier_does_not_set_the_tensorrt_range(tmp_path: Path) -> None:
    """Percentile calibration (TensorRT) ignores one huge input value; min/max (the CPU flavour) follows it."""
    src = single_matmul(tmp_path / "one.onnx")
    rng = np.random.default_rng(3)
    calm_feeds = [{"x": rng.normal(0, 1, (100, WIDE)).astype(np.float32)} for _ in range(10)]  # 256k values
    spiky_feeds = [{"x": f["x"].copy()} for f in calm_feeds]
    spiky_feeds[0]["x"][0, 0] = 1e4
    calm = x_scale(qdq_graph(src, tmp_path / "t0.onnx", calm_feeds, flavour="tensorrt"))
    spiky = x_scale(qdq_graph(src, tmp_path / "t1.onnx", spiky_feeds, flavour="tensorrt"))
    cpu_spiky = x_scale(qdq_graph(src, tmp_path / "c1.onnx", spiky_feeds, flavour="cpu"))
    assert spiky < 2 * calm  # the percentile range barely moves
    assert cpu_spiky > 1e4 / 255 * 0.99  # min/max covers the outlier


def test_only_the_chosen_nodes_and_an_empty_choice_is_a_copy(block: Path, tmp_path: Path) -> None:
    one = onnx.load(str(qdq_graph(block, tmp_path / "one.onnx", feeds(), nodes=["mlp_up", "scores"])))
    assert quantized_inputs(one) == {"mlp_up"}  # "scores" is not a weight node: never quantized
    copy = qdq_graph(block, tmp_path / "none.onnx", feeds(), nodes=["scores"])
    assert copy.read_bytes() == block.read_bytes()
    with pytest.raises(ValueError, match="unknown Q/DQ flavour 'fast'"):
        qdq_graph(block, tmp_path / "x.onnx", feeds(), flavour="fast")


@pytest.mark.parametrize(("value", "bad"), [(np.inf, True), (0.0, True), (-0.1, True), (np.nan, True),
                                            (0.05, False)])
def test_scale_problems_names_unusable_scales(block: Path, tmp_path: Path, value: float, bad: bool) -> None:
    model = onnx.load(str(qdq_graph(block, tmp_path / "q.onnx", feeds())))
    node = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x_n")
    init = next(i for i in model.graph.initializer if i.name == node.input[1])
    init.CopyFrom(numpy_helper.from_array(np.array(value, np.float32), init.name))
    onnx.save(model, str(tmp_path / "bad.onnx"))
    assert scale_problems(tmp_path / "bad.onnx") == ([node.input[1]] if bad else [])


def test_uniform_feeds_pads_ids_and_splits_rows() -> None:
    ids_a = np.array([[49406, 5, 49407]], np.int64)
    ids_b = np.array([[49406, 7, 8, 9, 49407], [49406, 1, 49407, 0, 0]], np.int64)
    pixels = np.ones((1, 2), np.float32)
    rows = uniform_feeds([{"input_ids": ids_a, "p": pixels}, {"input_ids": ids_b, "p": np.zeros((2, 2), np.float32)}])
    assert len(rows) == 3 and all(r["input_ids"].shape == (1, 5) and r["p"].shape == (1, 2) for r in rows)
    assert rows[0]["input_ids"].tolist() == [[49406, 5, 49407, 0, 0]]
    assert rows[2]["input_ids"].tolist() == [[49406, 1, 49407, 0, 0]]
    assert rows[0]["p"].dtype == np.float32 and rows[0]["p"].tolist() == [[1.0, 1.0]]


def test_name_nodes_gives_unique_names_and_keeps_given_ones() -> None:
    nodes = [helper.make_node("Relu", ["a"], ["b"]), helper.make_node("Relu", ["b"], ["c"], name="Relu_0"),
             helper.make_node("Relu", ["c"], ["d"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("d", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph)
    name_nodes(model)
    assert [n.name for n in model.graph.node] == ["Relu_0_", "Relu_0", "Relu_2"]


def test_weights_are_symmetric_and_per_channel(block: Path, tmp_path: Path) -> None:
    model = onnx.load(str(qdq_graph(block, tmp_path / "q.onnx", feeds(), flavour="tensorrt")))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    weight_dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
                 and inits[n.input[0]].ndim == 2]
    assert len(weight_dq) == 7
    for node in weight_dq:
        scale, zero = inits[node.input[1]], inits[node.input[2]]
        assert scale.shape == (D,) and zero.shape == (D,) and not zero.any(), node.name  # one scale per channel


def chain_graph(bias_adds: int) -> onnx.ModelProto:
    """x -> LN; x_n -> MatMul(W) -> `bias_adds` bias Adds -> + x (which feeds the LN): a residual writer only
    within one bias hop."""
    n = helper.make_node
    nodes = [n("LayerNormalization", ["x", "s", "b"], ["x_n"], name="ln"), n("MatMul", ["x_n", "W"], ["t0"], name="w")]
    for i in range(bias_adds):
        nodes.append(n("Add", [f"t{i}", "bias"], [f"t{i + 1}"], name=f"bias{i}"))
    nodes.append(n("Add", ["x", f"t{bias_adds}"], ["y"], name="residual"))
    inits = [numpy_helper.from_array(np.ones((D, D), np.float32), "W"),
             numpy_helper.from_array(np.ones(D, np.float32), "bias"),
             numpy_helper.from_array(np.ones(D, np.float32), "s"), numpy_helper.from_array(np.ones(D, np.float32), "b")]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", D])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", D])], inits)
    return helper.make_model(graph)


def test_a_writer_is_found_through_at_most_one_bias_add() -> None:
    assert residual_writers(chain_graph(0)) == ["w"]
    assert residual_writers(chain_graph(1)) == ["w"]
    assert residual_writers(chain_graph(2)) == []
    assert residual_writers(chain_graph(3)) == []


def test_a_matmul_without_a_second_input_is_not_a_weight_node() -> None:
    model = chain_graph(0)
    model.graph.node.append(helper.make_node("MatMul", ["y"], ["z"], name="broken"))
    assert weight_nodes(model) == ["w"]


def test_uniform_feeds_leaves_other_inputs_alone() -> None:
    rows = uniform_feeds([{"ids": np.array([[1, 2]], np.int64), "eot": np.array([1], np.int64),
                           "emb": np.ones((1, 3), np.float32)},
                          {"ids": np.array([[1, 2, 3]], np.int64), "eot": np.array([2], np.int64),
                           "emb": np.ones((1, 3), np.float32)}])
    assert [r["eot"].tolist() for r in rows] == [[1], [2]]  # 1-D ids are not padded
    assert [r["ids"].shape for r in rows] == [(1, 3), (1, 3)] and rows[1]["emb"].shape == (1, 3)


# --------------------------------------------------------------------------- row-wise int8 (batch-invariant)
def run_graph(path: Path, x: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def rowwise_reference(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """The documented row-wise int8 product, in numpy: per-row u8 activations, 7-bit per-column weights."""
    scale_w = np.maximum(np.abs(weight).max(axis=0), 1e-12) / 63
    w8 = np.clip(np.round(weight / scale_w), -63, 63)
    lo, hi = np.minimum(x.min(axis=1, keepdims=True), 0), np.maximum(x.max(axis=1, keepdims=True), 0)
    s = np.maximum((hi - lo) / 255, 1e-12)
    zp = -np.round(lo / s)
    a = np.clip(np.round(x / s) + zp, 0, 255)
    return ((a @ w8) - zp * w8.sum(axis=0)) * s * scale_w


def test_rowwise_int8_is_close_to_fp32_and_each_row_is_batch_invariant(tmp_path: Path) -> None:
    """On a per-row graph (the attention block mixes rows by construction, so it cannot be invariant)."""
    from crisis_tool.export.qdq import rowwise_int8_graph

    src = single_matmul(tmp_path / "one.onnx")
    out = rowwise_int8_graph(src, tmp_path / "rw.onnx")
    rng = np.random.default_rng(5)
    x = rng.normal(0.3, 1, (16, WIDE)).astype(np.float32)
    x[3] *= 40  # one loud record: with per-batch scales it would cost every other row its resolution
    ref, got = run_graph(src, x), run_graph(out, x)
    for r, g in zip(ref, got, strict=True):
        error = np.linalg.norm(g - r, axis=1) / np.linalg.norm(r, axis=1)  # each row against its own size
        assert error.max() <= 0.1, error
    weight = numpy_helper.to_array(onnx.load(str(src)).graph.initializer[0])
    np.testing.assert_allclose(got[0], rowwise_reference(x, weight), rtol=1e-4, atol=1e-4)
    for i in range(len(x)):  # alone == inside the batch, bit for bit
        alone = run_graph(out, x[i : i + 1])
        for a, g in zip(alone, got, strict=True):
            np.testing.assert_array_equal(a[0], g[i])


def test_rowwise_int8_replaces_only_the_chosen_2d_weight_matmuls(block: Path, tmp_path: Path) -> None:
    from crisis_tool.export.qdq import ROWWISE_WEIGHT_LEVELS, rowwise_int8_graph

    model = onnx.load(str(rowwise_int8_graph(block, tmp_path / "all.onnx")))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMulInteger") == 7 and ops.count("MatMul") == 2  # the attention MatMuls stay float
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert "W_q_proj" not in inits and "W_side" not in inits  # the float weights are gone
    w = inits["q_proj_w_int8"]
    assert w.dtype == np.int8 and np.abs(w).max() == ROWWISE_WEIGHT_LEVELS == 63  # 7-bit, full range used
    assert inits["q_proj_w_scale"].shape == (D,)  # per output column
    np.testing.assert_array_equal(inits["q_proj_w_colsum"], w.astype(np.float32).sum(axis=0))
    one = onnx.load(str(rowwise_int8_graph(block, tmp_path / "one.onnx", nodes=["mlp_up", "scores"])))
    assert [n.op_type for n in one.graph.node].count("MatMulInteger") == 1
    assert "W_q_proj" in {i.name for i in one.graph.initializer}
    none = onnx.load(str(rowwise_int8_graph(block, tmp_path / "none.onnx", nodes=[])))
    assert not [i.name for i in none.graph.initializer if i.name.startswith("rw_")]  # nothing unused is kept


def test_cpu_qdq_weights_are_7_bit_and_tensorrt_weights_use_8(block: Path, tmp_path: Path) -> None:
    def weight_range(flavour: str) -> int:
        model = onnx.load(str(qdq_graph(block, tmp_path / f"{flavour}.onnx", feeds(), flavour=flavour)))
        inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        return max(int(np.abs(inits[n.input[0]].astype(np.int32)).max()) for n in model.graph.node
                   if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].ndim == 2)

    assert weight_range("cpu") <= 64 and weight_range("tensorrt") == 127
