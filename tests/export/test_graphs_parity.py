"""Each exported tiny graph vs PyTorch in ONNX Runtime, per graph and end to end, at batch 1, 3 and max."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from crisis_tool.export.validate import generate_ids, min_cosine, open_session
from crisis_tool.runtime.bundle import Bundle
from crisis_tool.torch_reference import TorchBackend

BATCHES = (1, 3, 8)


@pytest.fixture(scope="module")
def reference(tiny_int8_bundle: Path) -> TorchBackend:
    return TorchBackend.from_bundle(Bundle.load(tiny_int8_bundle))


@pytest.fixture(scope="module")
def sessions(tiny_int8_bundle: Path) -> dict:
    bundle = Bundle.load(tiny_int8_bundle)
    return {c: open_session(bundle.graph_path(c, "fp32")) for c in bundle.spec.graph_names}


def _inputs(batch: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, 3, 224, 224)).astype(np.float32), generate_ids(batch, rng, 49406, 49407)


def test_manifest_records_passing_fp32_gates(tiny_int8_bundle: Path):
    parity = json.loads((tiny_int8_bundle / "manifest.json").read_text())["parity"]["fp32"]
    assert set(parity) == {"image_encoder", "text_encoder", "head_informative", "end_to_end:informative",
                           "batch_invariance"}
    invariance = parity.pop("batch_invariance")
    assert invariance["passed"] and invariance["batch_invariance_max_diff"] <= 1e-6 and invariance["n"] == 32
    for entry in parity.values():
        assert entry["passed"] and entry["batches"] == list(BATCHES)
    e2e = parity["end_to_end:informative"]
    assert e2e["max_abs"] <= 1e-4 and e2e["top1_agreement"] == 1.0


@pytest.mark.parametrize("batch", BATCHES)
def test_each_graph_and_end_to_end_match_torch(batch, reference, sessions):
    pixels, ids = _inputs(batch, seed=100 + batch)
    ref_img, ref_txt = reference.encode_image(pixels), reference.encode_text(ids)
    ref_logits, ref_probs = reference.run_head(ref_img, ref_txt)

    img = sessions["image_encoder"].run(None, {"pixel_values": pixels})[0]
    txt = sessions["text_encoder"].run(None, {"input_ids": ids})[0]
    assert img.shape == ref_img.shape and txt.shape == ref_txt.shape
    assert min_cosine(img, ref_img) > 0.99999 and np.abs(img - ref_img).max() < 1e-4
    assert min_cosine(txt, ref_txt) > 0.99999 and np.abs(txt - ref_txt).max() < 1e-4

    logits, probs = sessions["head_informative"].run(None, {"image_embeds": ref_img, "text_embeds": ref_txt})
    assert np.abs(logits - ref_logits).max() < 1e-5 and np.allclose(probs.sum(1), 1.0, atol=1e-6)
    assert np.abs(probs - ref_probs).max() < 1e-5

    e2e, _ = sessions["head_informative"].run(None, {"image_embeds": img, "text_embeds": txt})
    assert np.abs(e2e - ref_logits).max() <= 1e-4
    assert (e2e.argmax(1) == ref_logits.argmax(1)).all()


def test_graph_io_and_dynamic_axes(tiny_int8_bundle: Path):
    bundle = Bundle.load(tiny_int8_bundle)
    for component, spec in bundle.spec.graphs().items():
        model = onnx.load(bundle.graph_path(component, "fp32"))
        assert [i.name for i in model.graph.input] == spec.input_names
        assert [o.name for o in model.graph.output] == spec.output_names
        for value in model.graph.input:
            dims = value.type.tensor_type.shape.dim
            assert dims[0].dim_param == "B"
        if component == "text_encoder":
            assert model.graph.input[0].type.tensor_type.shape.dim[1].dim_param == "L"
            assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64


def test_eot_is_located_with_int32_argmax(tiny_int8_bundle: Path):
    """No ArgMax over int64 in the text graph: the EOT position comes from (ids == eot) cast to int32."""
    model = onnx.shape_inference.infer_shapes(onnx.load(Bundle.load(tiny_int8_bundle).graph_path("text_encoder")))
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    argmaxes = [n for n in model.graph.node if n.op_type == "ArgMax"]
    assert argmaxes and all(types[n.input[0]] == onnx.TensorProto.INT32 for n in argmaxes)


def test_odd_batch_sizes_beyond_validation_cap(reference, sessions):
    pixels, ids = _inputs(5, seed=7)
    img = sessions["image_encoder"].run(None, {"pixel_values": pixels})[0]
    assert min_cosine(img, reference.encode_image(pixels)) > 0.99999
