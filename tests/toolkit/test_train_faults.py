"""`crisis-tool train` on hostile inputs: unwritable folders, device files and FIFOs as images, NaN caches and
NaN encoders. Each ends in one line and the right exit code, or in a run identical to a clean one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from crisis_tool.cli import run
from crisis_tool.clip_loader import load_clip
from crisis_tool.data.synthetic import make_demo_data
from crisis_tool.features import FeatureCache

TINY = ["--clip-model", "crisis-tiny", "--pretrained", "none"]
MEMORY_CAP = 8 * 1024**3  # torch alone maps ~3.6 GB of address space; an endless read would pass any cap
CHILD_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_data(tmp_path_factory.mktemp("data"), n_train=24, n_dev=12, n_test=3, seed=3,
                          tasks=("damage",))


def train_args(data: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--task", "damage", "--out", str(out), *TINY, "--epochs", "2",
            "--cache-dir", str(cache), *extra]


def unwritable_dir(tmp_path: Path) -> Path:
    """A folder this process cannot create files in (root ignores mode bits: then a sysfs path)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if not os.access(folder, os.W_OK):
        return folder
    if Path("/sys/fs").is_dir():
        return Path("/sys/fs/crisis-tool-test")
    pytest.skip("no unwritable folder available to this user")


@pytest.mark.parametrize("which", ["--cache-dir", "--out"])
def test_unwritable_folder_fails_at_once_in_one_line(which: str, data: Path, tmp_path: Path, capsys) -> None:
    bad = unwritable_dir(tmp_path)
    out = bad / "run" if which == "--out" else tmp_path / "run"
    cache = bad / "cache" if which == "--cache-dir" else tmp_path / "cache"
    code = run(train_args(data, out, cache))
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith(f"error: {which} {bad}") and "is not writable" in err and "\n" not in err
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").rglob("*.npz"))  # nothing encoded


CHILD = """
import json, resource, sys
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from crisis_tool.cli import run
codes = [run(argv) for argv in json.loads(sys.argv[1])]
print("codes", json.dumps(codes))
"""


def test_device_file_and_fifo_images_are_record_errors(tmp_path: Path) -> None:
    """/dev/zero (through a symlink) and a FIFO as images: each is its row's error, read under a memory cap and
    a timeout; --skip-bad trains on the rest."""
    data = make_demo_data(tmp_path / "d", n_train=24, n_dev=12, n_test=3, seed=4, tasks=("damage",))
    images = sorted((data / "data_image" / "synthetic_damage" / "train").glob("*.jpg"))
    zero, fifo = images[0], images[1]
    zero.unlink()
    zero.symlink_to("/dev/zero")
    fifo.unlink()
    os.mkfifo(fifo)
    argv = train_args(data, tmp_path / "run", tmp_path / "cache")
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps([argv, [*argv, "--skip-bad"]]),
                           str(MEMORY_CAP)], capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'codes [1, 0]' in proc.stdout, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "MemoryError" not in proc.stderr
    first = next(line for line in proc.stderr.splitlines() if line.startswith("error:"))
    assert "2 missing or unreadable images" in first and zero.name in first and fifo.name in first
    assert "character device" in first and "FIFO" in first
    assert "train: skipped 2 rows" in proc.stderr
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_oversized_image_file_is_refused_before_reading(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clip = load_clip("crisis-tiny", "none")
    data = make_demo_data(tmp_path / "d", n_train=3, n_dev=3, n_test=3, seed=5, tasks=("damage",))
    paths = sorted((data / "data_image" / "synthetic_damage" / "train").glob("*.jpg"))
    limit = max(p.stat().st_size for p in paths)
    big = paths[0]
    big.write_bytes(big.read_bytes() + b"\0" * limit)
    cache = FeatureCache(tmp_path / "cache", clip, max_image_bytes=limit, log=lambda m: None)
    keys, bad = cache.encode_images(paths)
    assert keys[0] is None and all(keys[1:])
    assert bad == [(str(big), f"{big.stat().st_size} bytes, above the limit of {limit} bytes")]


def poison(cache: Path) -> None:
    """Every cached image embedding becomes NaN; every text shard is cut in half."""
    for shard in cache.rglob("image/*.npz"):
        with np.load(shard) as d:
            keys, embeds = d["keys"], np.full_like(d["embeds"], np.nan)
        np.savez(shard, keys=keys, embeds=embeds)
    for shard in cache.rglob("text/*.npz"):
        shard.write_bytes(shard.read_bytes()[:100])


def test_nan_and_truncated_cache_reencodes_to_the_clean_result(data: Path, tmp_path: Path, capsys) -> None:
    cache = tmp_path / "cache"
    assert run(train_args(data, tmp_path / "clean", cache)) == 0
    poison(cache)
    capsys.readouterr()
    assert run(train_args(data, tmp_path / "again", cache)) == 0
    err = capsys.readouterr().err
    assert "NaN or inf" in err and "is corrupt" in err and "Traceback" not in err
    clean = (tmp_path / "clean" / "model.safetensors").read_bytes()
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == clean  # no NaN reached training
    for shard in cache.rglob("*.npz"):
        with np.load(shard) as d:
            assert np.isfinite(d["embeds"]).all()


@pytest.mark.parametrize(("tensor", "expected"), [
    ("text_projection", "the text encoder returned NaN or inf"),
    ("visual.proj", "none of the 24 images could be used"),
])
def test_nan_encoder_never_trains(tensor: str, expected: str, data: Path, tmp_path: Path, capsys) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clip = load_clip("crisis-tiny", "none")
    state = {k: v.contiguous().clone() for k, v in clip.model.state_dict().items()}
    state[tensor][0, 0] = float("nan")
    ckpt = tmp_path / "nan.safetensors"
    save_file(state, str(ckpt))
    argv = train_args(data, tmp_path / "run", tmp_path / "cache", "--skip-bad")
    argv[argv.index("none")] = str(ckpt)
    assert run(argv) == 1
    err = capsys.readouterr().err
    assert expected in err and "epoch" not in err and "Traceback" not in err
    assert not (tmp_path / "run" / "model.safetensors").exists()
    for shard in (tmp_path / "cache").rglob("*.npz"):
        with np.load(shard) as d:
            assert np.isfinite(d["embeds"]).all()
    assert torch.isnan(state[tensor]).any()
