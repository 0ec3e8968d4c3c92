"""`--device` through predict and bench to the backend, and the empty-text rule in bench's inputs.

The device reaches a backend that declares it (openvino) and is read back as the provider; a backend that does
not take one refuses it with one usage line. Bench never times a record the Predictor would refuse.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from crisis_tool.cli import run
from crisis_tool.runtime.backends import backend_class
from crisis_tool.runtime.bench.workloads import prepare_batches
from crisis_tool.runtime.bundle import Bundle
from crisis_tool.runtime.errors import UsageError
from crisis_tool.runtime.records import Record

TEXTS = ["Flooded houses near the river", "bridge collapsed after the quake", "all good here"]


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("device")
    lines = []
    for i, text in enumerate(TEXTS):
        path = folder / f"img{i}.png"
        Image.new("RGB", (64 + 8 * i, 48), (60 * i, 200 - 50 * i, 90)).save(path)
        lines.append(json.dumps({"id": f"r{i}", "text": text, "image": str(path)}))
    data = folder / "records.jsonl"
    data.write_text("\n".join(lines) + "\n")
    return data


def _predict(bundle: Path, data: Path, out: Path, *args: str) -> int:
    return run(["predict", "--bundle", str(bundle), "--input", str(data), "--output", str(out), *args])


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_backends_declare_whether_they_take_a_device() -> None:
    assert not backend_class("onnxruntime").takes_option("device")
    assert backend_class("onnxruntime").takes_option("providers")
    assert not backend_class("onnxruntime").takes_option("options")  # **options is not a declared option


def test_predict_device_cpu_on_openvino_reports_the_device(tiny_bundle: Path, records: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("openvino")
    assert _predict(tiny_bundle, records, tmp_path / "ort.jsonl") == 0
    capsys.readouterr()
    assert _predict(tiny_bundle, records, tmp_path / "ov.jsonl", "--backend", "openvino", "--device", "cpu") == 0
    err = capsys.readouterr().err
    assert "backend openvino (fp32) on CPU;" in err, err
    ours, reference = _lines(tmp_path / "ov.jsonl"), _lines(tmp_path / "ort.jsonl")
    assert [r["id"] for r in ours] == ["r0", "r1", "r2"] and all(r["error"] is None for r in ours)
    for got, ref in zip(ours, reference, strict=True):  # the same bundle on another engine: the same answers
        assert got["label"] == ref["label"]
        assert got["probs"] == pytest.approx(ref["probs"], abs=1e-4)


@pytest.mark.parametrize(("args", "message"), [
    (["--backend", "onnxruntime", "--device", "CPU"], "backend 'onnxruntime' does not take --device"),
    (["--device", "CPU"], "backend 'auto' does not take --device"),
    (["--backend", "openvino", "--device", "TPU"], "unknown OpenVINO device 'TPU'"),
])
def test_device_mistakes_are_one_usage_line(tiny_bundle: Path, records: Path, tmp_path: Path, args: list[str],
                                            message: str, capsys: pytest.CaptureFixture[str]) -> None:
    if "openvino" in args:
        pytest.importorskip("openvino")
    out = tmp_path / "out.jsonl"
    assert _predict(tiny_bundle, records, out, *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_bench_rows_show_the_device_in_use(tiny_bundle: Path, tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    out = tmp_path / "b.json"
    assert run(["bench", "--bundle", str(tiny_bundle), "--backends", "onnxruntime,openvino", "--device", "CPU",
                "--workload", "image", "--batch-sizes", "2", "--seconds", "0.2", "--warmup", "1", "--no-peak",
                "--json", str(out)]) == 0
    rows = {r["choice"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["openvino"]["status"] == "ok" and rows["openvino"]["provider"] == "CPU"
    # onnxruntime takes no device: it runs as usual, and stays the parity reference
    assert rows["onnxruntime"]["status"] == "ok" and rows["onnxruntime"]["provider"] == "CPUExecutionProvider"
    assert rows["openvino"]["cosine"] > 0.999


@pytest.mark.parametrize(("backends", "message"), [
    ("onnxruntime,onnxruntime-int8", "--device: none of the backends onnxruntime, onnxruntime-int8 takes a device"),
    ("onnxruntime,openvino", "unknown OpenVINO device 'TPU'"),  # the device reaches the backend that takes it
])
def test_bench_device_mistakes_are_one_usage_line(tiny_bundle: Path, backends: str, message: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    if "openvino" in backends:
        pytest.importorskip("openvino")
    assert run(["bench", "--bundle", str(tiny_bundle), "--backends", backends, "--device", "TPU", "--workload",
                "image", "--batch-sizes", "1", "--seconds", "0.1", "--no-peak"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_bench_refuses_empty_texts_as_the_predictor_does(tiny_bundle: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "x.png"
    Image.new("RGB", (32, 32)).save(image)
    bundle = Bundle.load(tiny_bundle)
    good = Record("ok", "storm damage", str(image))
    for empty in (None, "   "):
        with pytest.raises(UsageError, match=r"record blank: empty text \(field 'text'\)"):
            prepare_batches(bundle, [[good, Record("blank", empty, str(image))]], "text")
    assert prepare_batches(bundle, [[good, Record("url-only", "http://t.co/x", str(image))]], "text")  # cleans to ""
    # 2 tokens are sot + eot: an empty text, refused before any work
    assert run(["bench", "--bundle", str(tiny_bundle), "--text-tokens", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--text-tokens" in err[0]
