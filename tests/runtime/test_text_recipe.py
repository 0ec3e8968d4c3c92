"""No silent model mismatch: a bundle trained on tweet+llava text, run on records without captions, is flagged
once by predict, per row by bench (`text recipe differs`), and `--llava-file` supplies the captions."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from crisis_tool.runtime.manifest import MANIFEST_DIGEST_NAME, MANIFEST_NAME, canonical_digest, sha256_file


@pytest.fixture(scope="module")
def llava_bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny bundle restated as trained on tweet+llava text (both hashed files), re-hashed."""
    root = Path(shutil.copytree(tiny_bundle, tmp_path_factory.mktemp("llava") / "b"))
    config = json.loads((root / "model_config.json").read_text())
    config["text_source"] = "tweet+llava"
    (root / "model_config.json").write_text(json.dumps(config))
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    manifest["text_source"] = "tweet+llava"
    manifest["files"]["model_config.json"] = {"sha256": sha256_file(root / "model_config.json"),
                                              "size": (root / "model_config.json").stat().st_size}
    (root / MANIFEST_NAME).write_text(json.dumps(manifest))
    (root / MANIFEST_DIGEST_NAME).write_text(canonical_digest(manifest) + "\n")
    return root


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, cli) -> Path:
    data = tmp_path_factory.mktemp("recipe") / "data"
    assert cli(["make-demo-data", "--out", data, "--n-train", "2", "--n-dev", "2", "--n-test", "6"]) == 0
    return data


def _bench(cli, bundle: Path, data: Path, out: Path, *extra) -> dict:
    assert cli(["bench", "--bundle", bundle, "--data", data, "--split", "test", "--backends", "onnxruntime",
                "--batch-sizes", "2", "--seconds", "0.1", "--warmup", "1", "--no-peak", "--json", out, *extra]) == 0
    return json.loads(out.read_text())


def test_bench_says_in_the_row_that_the_recipe_differs(llava_bundle: Path, demo: Path, tmp_path: Path, cli) -> None:
    result = _bench(cli, llava_bundle, demo, tmp_path / "a.json")
    (row,) = result["rows"]
    assert row["text_recipe"] == "differs" and "tweet+llava" in result["header"]["text_recipe"]
    fixed = _bench(cli, llava_bundle, demo, tmp_path / "b.json", "--llava-file", demo / "llava.jsonl")
    (row,) = fixed["rows"]
    assert "text_recipe" not in row and "text_recipe" not in fixed["header"]


def _predict(*args) -> str:
    """`crisis-tool predict` in a fresh process (warnings are shown once per process); its stderr."""
    code = "import sys; from crisis_tool.cli import run; sys.exit(run(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, "predict", "--backend", "onnxruntime", *map(str, args)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def test_predict_warns_once_and_takes_llava_file(llava_bundle: Path, demo: Path, tmp_path: Path) -> None:
    tsv = demo / "crisismmd_datasplit_settingA" / "task_damage_text_img_test.tsv"
    args = ["--bundle", llava_bundle, "--input", tsv, "--image-root", demo, "--output", tmp_path / "o.jsonl"]
    err = _predict(*args)
    assert err.count("have no llava_text") == 1 and err.count("RANDOM encoder weights") == 1  # each once
    err = _predict(*args, "--llava-file", demo / "llava.jsonl")
    assert "no llava_text" not in err  # every record got its caption from the file
