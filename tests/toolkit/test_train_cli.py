"""Training and evaluation through the CLI on synthetic data whose image colour encodes the class."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crisis_tool.cli import run
from crisis_tool.data.synthetic import make_demo_data

TINY = ["--clip-model", "crisis-tiny", "--pretrained", "none"]


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_data(tmp_path_factory.mktemp("data"), n_train=120, n_dev=40, n_test=45, seed=1,
                          tasks=("damage", "informative"))


@pytest.fixture(scope="module")
def trained_run(demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("run") / "run"
    cache = tmp_path_factory.mktemp("cache")
    code = run(["train", "--data", str(demo_data), "--task", "damage", "--out", str(out), *TINY,
                "--optimizer", "adamw", "--lr", "3e-3", "--epochs", "25", "--cache-dir", str(cache)])
    assert code == 0
    return out, cache


def test_training_learns_colour_classes(trained_run: tuple[Path, Path], demo_data: Path, tmp_path: Path) -> None:
    run_dir, cache = trained_run
    assert {p.name for p in run_dir.iterdir()} >= {"model.safetensors", "config.json", "metrics.json"}
    config = json.loads((run_dir / "config.json").read_text())
    (head,) = config["heads"]
    assert head["task"] == "damage" and head["labels"] == ["little_or_no_damage", "mild_damage", "severe_damage"]
    assert config["clip"]["model_name"] == "crisis-tiny" and len(config["clip"]["weights_sha256"]) == 64
    assert head["head"]["head"] == "guided-diff" and head["temperature"] > 0
    out_json = tmp_path / "metrics.json"
    code = run(["evaluate", "--model", str(run_dir), "--data", str(demo_data), "--split", "test",
                "--json", str(out_json), "--cache-dir", str(cache)])
    assert code == 0
    metrics = json.loads(out_json.read_text())
    assert metrics["n"] == 45
    assert metrics["accuracy"] >= 0.9, metrics
    assert {"accuracy", "macro_f1", "weighted_f1", "n", "per_class"} <= set(metrics)
    png = run_dir / "confusion_test.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_training_is_deterministic_and_reuses_cache(trained_run, demo_data: Path, tmp_path: Path) -> None:
    run_dir, cache = trained_run
    before = {p: p.stat().st_mtime_ns for p in cache.rglob("*.npz")}
    again = tmp_path / "again"
    assert run(["train", "--data", str(demo_data), "--task", "damage", "--out", str(again), *TINY,
                "--optimizer", "adamw", "--lr", "3e-3", "--epochs", "25", "--cache-dir", str(cache)]) == 0
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*.npz")} == before  # nothing re-encoded
    assert (again / "model.safetensors").read_bytes() == (run_dir / "model.safetensors").read_bytes()


def test_unknown_task_is_one_line_error(demo_data: Path, tmp_path: Path, capsys) -> None:
    code = run(["train", "--data", str(demo_data), "--task", "flood", "--out", str(tmp_path / "r"), *TINY])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: unknown task 'flood'") and "\n" not in err


def test_missing_image_is_reported_or_skipped(tmp_path: Path, capsys) -> None:
    data = make_demo_data(tmp_path / "d", n_train=30, n_dev=12, n_test=6, seed=2, tasks=("informative",))
    victim = next((data / "data_image" / "synthetic_informative" / "train").glob("*.jpg"))
    victim.unlink()
    args = ["train", "--data", str(data), "--task", "informative", "--out", str(tmp_path / "r"), *TINY,
            "--epochs", "1", "--cache-dir", str(tmp_path / "c")]
    assert run(args) == 1
    err = capsys.readouterr().err
    assert "1 missing or unreadable images" in err and victim.name in err and "--skip-bad" in err
    assert run([*args, "--skip-bad"]) == 0
    assert "skipped 1 rows" in capsys.readouterr().err


def test_missing_llava_file(demo_data: Path, tmp_path: Path, capsys) -> None:
    code = run(["train", "--data", str(demo_data), "--task", "damage", "--out", str(tmp_path / "r"), *TINY,
                "--text", "tweet+llava", "--llava-file", str(tmp_path / "nope.jsonl")])
    assert code == 1
    assert "LLaVA text file not found" in capsys.readouterr().err


def test_openai_weights_offline_fail_fast(monkeypatch, tmp_path: Path, capsys, demo_data: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    code = run(["train", "--data", str(demo_data), "--task", "damage", "--out", str(tmp_path / "r"),
                "--clip-model", "ViT-B-32", "--pretrained", "openai"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "not available offline" in err[0] and "--pretrained /path/to" in err[0]


def test_other_clip_weights_are_refused(trained_run, demo_data: Path, tmp_path: Path, capsys) -> None:
    """A head is only valid on the CLIP weights it was trained on (checked by sha256)."""
    import shutil

    run_dir, cache = trained_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    config = json.loads((copy / "config.json").read_text())
    config["clip"]["weights_sha256"] = "0" * 64
    (copy / "config.json").write_text(json.dumps(config))
    code = run(["evaluate", "--model", str(copy), "--data", str(demo_data), "--cache-dir", str(cache)])
    err = capsys.readouterr().err
    assert code == 2 and "but the head was trained on 000000000000" in err  # export: tests/export/test_bundle.py
