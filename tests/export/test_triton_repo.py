"""The Triton model repository: every config.pbtxt parses into Triton's own ModelConfig and matches its ONNX
graph; the ensemble, run step by step as its config says, answers what the Predictor answers.

No Triton server runs here: the configs are checked with Triton's protobuf schema (tritonclient), the graphs
with onnx and onnxruntime.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
from google.protobuf import text_format  # noqa: E402

from crisis_tool.export.triton_repo import write_triton_repo  # noqa: E402
from crisis_tool.runtime.bundle import Bundle  # noqa: E402
from crisis_tool.runtime.errors import UsageError  # noqa: E402

ONNX_TO_TRITON = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.INT64: "TYPE_INT64",
                  onnx.TensorProto.FLOAT16: "TYPE_FP16", onnx.TensorProto.INT32: "TYPE_INT32"}


@pytest.fixture(scope="module")
def repo(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("triton") / "repo"
    write_triton_repo(tiny_bundle, out, model_name="crisis")
    return out


def parse(path: Path) -> Any:
    return text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())


def graph_io(value_infos: Any) -> list[tuple[str, str, list[Any]]]:
    """(name, Triton type, dims after the batch axis: int, or -1 for a symbolic one) per ONNX input/output."""
    out = []
    for v in value_infos:
        shape = v.type.tensor_type.shape.dim
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in shape]
        out.append((v.name, ONNX_TO_TRITON[v.type.tensor_type.elem_type], dims[1:]))
    return out


def config_io(tensors: Any) -> list[tuple[str, str, list[int]]]:
    return [(t.name, model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in tensors]


def test_repository_layout(repo: Path) -> None:
    assert sorted(p.name for p in repo.iterdir()) == ["crisis", "crisis_head", "crisis_image", "crisis_text"]
    assert (repo / "crisis" / "1").is_dir()  # Triton loads an ensemble from a version folder too
    assert (repo / "crisis_head" / "labels.txt").read_text().split() == [
        "little_or_no_damage", "mild_damage", "severe_damage"]


@pytest.mark.parametrize("model", ["crisis_image", "crisis_text", "crisis_head"])
@pytest.mark.parametrize(("config", "kind"), [("config.pbtxt", "KIND_GPU"), ("configs/cpu.pbtxt", "KIND_CPU")])
def test_model_config_matches_its_onnx_graph(repo: Path, model: str, config: str, kind: str) -> None:
    cfg = parse(repo / model / config)
    graph = onnx.load(str(repo / model / "1" / "model.onnx")).graph
    assert cfg.name == model and cfg.backend == "onnxruntime" and cfg.max_batch_size == 64
    assert config_io(cfg.input) == graph_io(graph.input)
    assert config_io(cfg.output) == graph_io(graph.output)
    assert cfg.HasField("dynamic_batching")
    assert [(g.count, model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind)) for g in cfg.instance_group] == [
        (1, kind)]
    if model == "crisis_head":
        assert [t.label_filename for t in cfg.output] == ["", "labels.txt"]


def test_ensemble_wires_existing_tensors(repo: Path) -> None:
    cfg = parse(repo / "crisis" / "config.pbtxt")
    assert cfg.platform == "ensemble" and cfg.max_batch_size == 64
    produced = {t.name for t in cfg.input}
    for step in cfg.ensemble_scheduling.step:
        model = parse(repo / step.model_name / "config.pbtxt")
        assert set(step.input_map) == {t.name for t in model.input}
        assert set(step.output_map) == {t.name for t in model.output}
        assert set(step.input_map.values()) <= produced, step.model_name  # each input made by an earlier step
        produced |= set(step.output_map.values())
    outputs = config_io(cfg.output)
    assert outputs == [("damage_logits", "TYPE_FP32", [3]), ("damage_probs", "TYPE_FP32", [3])]
    assert {name for name, _, _ in outputs} <= produced
    image = parse(repo / "crisis_image" / "config.pbtxt")
    text = parse(repo / "crisis_text" / "config.pbtxt")
    assert config_io(cfg.input) == config_io(image.input) + config_io(text.input)


def run_ensemble(repo: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Execute the ensemble as its config says, each step's ONNX model with onnxruntime."""
    import onnxruntime as ort

    tensors = dict(feeds)
    for step in parse(repo / "crisis" / "config.pbtxt").ensemble_scheduling.step:
        session = ort.InferenceSession(str(repo / step.model_name / "1" / "model.onnx"),
                                       providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        results = session.run(names, {key: tensors[value] for key, value in step.input_map.items()})
        tensors.update({step.output_map[n]: r for n, r in zip(names, results, strict=True)})
    return tensors


def test_ensemble_answers_as_the_predictor(repo: Path, tiny_bundle: Path) -> None:
    import io

    from PIL import Image

    from crisis_tool.runtime.image_decode import ImageLimits
    from crisis_tool.runtime.predictor import Predictor
    from crisis_tool.runtime.preprocess import PreprocessConfig, load_preprocessed
    from crisis_tool.runtime.records import Record
    from crisis_tool.runtime.tokenizer import ClipTokenizer

    bundle = Bundle.load(tiny_bundle)
    images, texts = [], ["bridge collapsed after the quake", "shelters open downtown"]
    for colour in ((200, 30, 30), (20, 90, 220)):
        buffer = io.BytesIO()
        Image.new("RGB", (64, 48), colour).save(buffer, format="PNG")
        images.append(buffer.getvalue())
    preprocess = PreprocessConfig.from_dict(bundle.preprocess_config)
    pixels = np.stack([load_preprocessed(im, preprocess, ImageLimits(), "exact") for im in images])
    ids = ClipTokenizer.from_config(bundle.tokenizer_config, bundle.root).tokenize(texts)
    got = run_ensemble(repo, {"pixel_values": pixels.astype(np.float32), "input_ids": ids.astype(np.int64)})
    with Predictor.from_bundle(tiny_bundle) as predictor:
        want = predictor.predict([Record(str(i), t, im) for i, (im, t) in enumerate(zip(images, texts, strict=True))])
    np.testing.assert_allclose(got["damage_probs"], [list(p.tasks["damage"].probs.values()) for p in want],
                               atol=1e-5)


def test_refuses_a_non_empty_out_and_a_bad_name(tiny_bundle: Path, tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="is not empty"):
        write_triton_repo(tiny_bundle, tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    with pytest.raises(UsageError, match="Triton model name"):
        write_triton_repo(tiny_bundle, tmp_path / "new", model_name="bad name/../x")


def test_export_command_writes_and_force_replaces_only_a_repository(tiny_bundle: Path, tmp_path: Path,
                                                                    capfd: pytest.CaptureFixture[str]) -> None:
    from crisis_tool.cli import run

    out = tmp_path / "repo"
    assert run(["export", "--format", "triton", "--from-bundle", str(tiny_bundle), "--out", str(out)]) == 0
    first = parse(out / tiny_bundle.name / "config.pbtxt")
    assert first.name == tiny_bundle.name and first.platform == "ensemble"
    capfd.readouterr()
    assert run(["export", "--format", "triton", "--from-bundle", str(tiny_bundle), "--out", str(out)]) == 2
    assert "is not empty" in capfd.readouterr().err
    assert run(["export", "--format", "triton", "--from-bundle", str(tiny_bundle), "--out", str(out), "--max-batch",
                "8", "--force"]) == 0
    assert parse(out / f"{tiny_bundle.name}_head" / "config.pbtxt").max_batch_size == 8
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".repo.")]  # no staging folder left
    other = tmp_path / "notes"
    other.mkdir()
    (other / "a.txt").write_text("keep")
    capfd.readouterr()
    assert run(["export", "--format", "triton", "--from-bundle", str(tiny_bundle), "--out", str(other),
                "--force"]) == 2
    err = capfd.readouterr().err
    assert "is not a Triton repository" in err and len(err.strip().splitlines()) == 1
    assert (other / "a.txt").read_text() == "keep"
    assert run(["export", "--format", "triton", "--from-bundle", str(tiny_bundle)]) == 2
    assert "give --out FOLDER" in capfd.readouterr().err
