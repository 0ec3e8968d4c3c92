"""The Predictor options of `serve` and `label` (--device, --max-image-bytes, --decode) reach the Predictor.

A mistake in them, or a bad bundle, is one usage line before Ray starts (the driver loads the Predictor once);
a served record whose image is over --max-image-bytes gets its own error, and the other records are answered.
"""

from __future__ import annotations

import io
import json
import shutil
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from serve_helpers import RAY_MISSING, b64, free_port, png_bytes

from crisis_tool.cli import run

pytest.importorskip("ray", reason=RAY_MISSING)
from ray import serve  # noqa: E402

from crisis_tool.runtime.serve import label as label_module  # noqa: E402
from crisis_tool.runtime.serve import server as server_module  # noqa: E402
from crisis_tool.runtime.serve.options import PredictorOptions, ServeOptions  # noqa: E402
from crisis_tool.runtime.serve.server import start_server  # noqa: E402

MAX_IMAGE_BYTES = 4000


def noisy_png(side: int) -> bytes:
    """A PNG of random pixels: about 3 * side^2 bytes (noise does not compress)."""
    pixels = np.random.default_rng(side).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if serve or label gets as far as starting Ray."""
    def refuse(*args: Any, **kwargs: Any) -> None:
        pytest.fail("Ray was started before the mistake was reported")

    monkeypatch.setattr(server_module, "ray_session", refuse)
    monkeypatch.setattr(label_module, "ray_session", refuse)


@pytest.fixture
def broken_bundle(tiny_bundle: Path, tmp_path: Path) -> Path:
    """A copy of the tiny bundle whose image encoder no longer matches the manifest's hash."""
    copy = tmp_path / "broken"
    shutil.copytree(tiny_bundle, copy)
    graph = copy / "image_encoder.onnx"
    graph.write_bytes(graph.read_bytes()[:-16] + b"\0" * 16)
    return copy


@pytest.mark.parametrize(("args", "code", "message"), [
    (["--device", "CPU"], 2, "does not take --device"),  # the default backend (auto) names itself
    (["--precision", "int8"], 2, "no int8 graphs"),
    (["--decode", "blurry"], 2, "decode mode 'blurry' is not one of exact, fast"),
])
@pytest.mark.parametrize("command", ["serve", "label"])
def test_predictor_mistakes_are_one_line_before_ray(command: str, args: list[str], code: int, message: str,
                                                    tiny_bundle: Path, tmp_path: Path, capfd, no_ray) -> None:
    extra = []
    if command == "label":
        data = tmp_path / "in.jsonl"
        data.write_text(json.dumps({"id": "1", "text": "t", "image": "x.png"}) + "\n")
        (tmp_path / "x.png").write_bytes(png_bytes(1))
        extra = ["--input", str(data), "--output", str(tmp_path / "out")]
    assert run([command, "--bundle", str(tiny_bundle), *extra, "--port" if command == "serve" else "--format",
                str(free_port()) if command == "serve" else "jsonl", *args]) == code
    err = capfd.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_serve_with_a_broken_bundle_is_one_line_before_ray(broken_bundle: Path, capfd, no_ray) -> None:
    code = run(["serve", "--bundle", str(broken_bundle), "--port", str(free_port())])
    err = capfd.readouterr().err
    assert code != 0 and "image_encoder.onnx" in err and len(err.strip().splitlines()) == 1, err


@pytest.fixture(scope="module")
def limited_server(local_ray: Any, tiny_bundle: Path):
    options = PredictorOptions(bundle=tiny_bundle, threads=1, max_image_bytes=MAX_IMAGE_BYTES, decode="fast")
    running = start_server(options, ServeOptions(port=free_port(), batch_size=4, max_ongoing_requests=8))
    yield running
    serve.shutdown()


def _post(url: str, body: Any) -> Any:
    request = urllib.request.Request(f"{url}/v1/predict", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200
        return json.load(response)


def test_image_over_the_limit_is_that_records_error(limited_server) -> None:
    big, small = noisy_png(48), png_bytes(5)
    assert len(big) > MAX_IMAGE_BYTES > len(small)
    answers = _post(limited_server.url, [
        {"id": "small", "text": "bridge collapsed", "image_b64": b64(small)},
        {"id": "big", "text": "bridge collapsed", "image_b64": b64(big)},
        {"id": "small-again", "text": "roads flooded", "image_b64": b64(small)},
    ])
    assert [a["id"] for a in answers] == ["small", "big", "small-again"]
    assert answers[0]["error"] is None and answers[2]["error"] is None and answers[0]["label"] in answers[0]["probs"]
    assert answers[1]["label"] is None and answers[1]["error"] == (
        f"record big: bad image (field 'image', {len(big)} bytes of image data): {len(big)} bytes, above the "
        f"limit of {MAX_IMAGE_BYTES} bytes")
    with urllib.request.urlopen(f"{limited_server.url}/v1/model", timeout=30) as response:
        model = json.load(response)
    assert (model["decode"], model["max_image_bytes"]) == ("fast", MAX_IMAGE_BYTES)


def test_a_held_budget_below_the_body_limit_is_one_line(tiny_bundle: Path, capfd, no_ray) -> None:
    assert run(["serve", "--bundle", str(tiny_bundle), "--port", str(free_port()), "--max-body-bytes", "2000000",
                "--max-held-bytes", "1000000"]) == 2
    err = capfd.readouterr().err
    assert "--max-held-bytes must be at least --max-body-bytes" in err and len(err.strip().splitlines()) == 1, err
