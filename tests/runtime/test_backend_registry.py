"""Adding a backend is one class and one registry line: a fake backend registered here shows up in predict and
bench, and in their --help, without touching either command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from crisis_tool.runtime import backends
from crisis_tool.runtime.backends import Backend, backend_names, backend_variants, register_backend
from crisis_tool.runtime.bundle import Bundle
from crisis_tool.runtime.errors import UsageError


class FakeBackend(Backend):
    """Embeddings are pixel / token statistics; the head always prefers the last label."""

    name = "fake"
    provider = "fake-device"

    def __init__(self, bundle: Bundle, precision: str | None = None) -> None:
        self.precision = precision or "fp32"
        self.dims = bundle.dims
        self.spec = bundle.spec
        self.weights = bundle.graph_path(bundle.spec.heads[0].graph, "fp32")

    def encode_image(self, pixel_values: np.ndarray) -> np.ndarray:
        return np.repeat(pixel_values.mean(axis=(1, 2, 3))[:, None], self.dims["D"], axis=1).astype(np.float32)

    def encode_text(self, input_ids: np.ndarray) -> np.ndarray:
        return np.repeat((input_ids != 0).sum(1, keepdims=True), self.dims["D"], axis=1).astype(np.float32)

    def run_head(self, image_embeds: np.ndarray, text_embeds: np.ndarray, task: str | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        classes = len((self.spec.head(task) if task else self.spec.heads[0]).labels)
        logits = np.tile(np.arange(classes, dtype=np.float32), (len(image_embeds), 1))
        e = np.exp(logits - logits.max(1, keepdims=True))
        return logits, e / e.sum(1, keepdims=True)

    def files(self) -> list[Path]:
        return [self.weights]


@pytest.fixture
def fake_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends.registry, "REGISTRY", dict(backends.registry.REGISTRY))
    register_backend("fake", FakeBackend, "nothing", precisions=("fp32", "int8"))


def _help(app: typer.Typer, command: str) -> str:
    """`command --help` as plain words (the box drawing and line wrapping of rich removed)."""
    text = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "250"}).output
    return " ".join(text.replace("│", " ").split())


def _fresh_cli() -> typer.Typer:
    """The predict and bench commands built now, as `crisis_tool.cli` builds them at start-up."""
    from crisis_tool.commands import bench_cmd, predict_cmd

    app = typer.Typer()
    predict_cmd.register(app)
    bench_cmd.register(app)
    return app


def test_fake_backend_appears_in_both_helps(fake_registered) -> None:
    assert "fake" in backend_names() and backend_variants()["fake-int8"] == ("fake", "int8")
    app = _fresh_cli()
    names = backend_names()
    assert names[-1] == "fake" and f"One of: {', '.join(names)}." in _help(app, "predict")
    assert "fake, fake-int8." in _help(app, "bench")


def test_unregistered_backend_is_not_in_help() -> None:
    help_text = _help(_fresh_cli(), "predict")
    assert "fake" not in help_text and f"One of: {', '.join(backend_names())}." in help_text


def test_predict_runs_the_fake_backend(fake_registered, tiny_bundle: Path, tmp_path: Path) -> None:
    from crisis_tool.cli import run

    Image.new("RGB", (40, 30), (10, 200, 10)).save(tmp_path / "a.png")
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": str(i), "text": "storm", "image": "a.png"}) + "\n" for i in range(3)))
    out = tmp_path / "out.jsonl"
    assert run(["predict", "--bundle", str(tiny_bundle), "--backend", "fake", "--input", str(src),
                "--output", str(out)]) == 0
    labels = Bundle.load(tiny_bundle).labels
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["label"] for r in rows] == [labels[-1]] * 3  # the fake head's answer, not the real model's


def test_bench_runs_the_fake_backend(fake_registered, tiny_bundle: Path, tmp_path: Path) -> None:
    from crisis_tool.cli import run

    out = tmp_path / "b.json"
    assert run(["bench", "--bundle", str(tiny_bundle), "--backends", "onnxruntime,fake,fake-int8",
                "--batch-sizes", "2", "--workload", "head", "--seconds", "0.05", "--warmup", "1", "--no-gemm",
                "--json", str(out)]) == 0
    rows = {r["choice"]: r for r in json.loads(out.read_text())["rows"]}
    for variant, precision in (("fake", "fp32"), ("fake-int8", "int8")):
        row = rows[variant]
        assert row["status"] == "ok" and row["provider"] == "fake-device" and row["precision"] == precision
        bundle = Bundle.load(tiny_bundle)
        head = bundle.graph_path(bundle.spec.heads[0].graph, "fp32")
        assert row["model_mb"] == pytest.approx(head.stat().st_size / 1e6, abs=1e-3)  # from files()
        assert row["top1_agreement"] is not None and row["max_abs_diff"] > 0  # differs from onnxruntime


def test_options_a_backend_does_not_take_are_refused(fake_registered, tiny_bundle: Path) -> None:
    bundle = Bundle.load(tiny_bundle)
    with pytest.raises(UsageError, match="does not take --providers"):
        backends.create_backend("fake", bundle, providers=["CPUExecutionProvider"])
    assert backends.create_backend("fake", bundle, providers=None, threads=2).name == "fake"
