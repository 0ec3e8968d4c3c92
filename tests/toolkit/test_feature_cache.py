"""The feature cache under interruption, concurrency, corruption and other CLIP weights.

Interruption and concurrency run in subprocesses (with timeouts) that share a cache folder with this process;
everything uses the random-init `crisis-tiny` CLIP (seed 0, identical in every process).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from crisis_tool.clip_loader import LoadedClip, load_clip
from crisis_tool.feature_store import CORRUPT_SUFFIX
from crisis_tool.features import FeatureCache, encoder_id
from crisis_tool.runtime.errors import DataError
from crisis_tool.runtime.tokenizer import ClipTokenizer

TEXTS = [f"tweet number {i} about the flood in town {i % 7}" for i in range(24)]
CHILD_TIMEOUT_S = 180

CHILD_PRELUDE = """
import json, os, signal, sys, time, warnings
from pathlib import Path
warnings.filterwarnings("ignore")
from crisis_tool.clip_loader import load_clip
from crisis_tool.features import FeatureCache
args = json.loads(sys.argv[1])
clip = load_clip("crisis-tiny", "none")
"""


@pytest.fixture(scope="module")
def clip() -> LoadedClip:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_clip("crisis-tiny", "none")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i in range(24):
        path = folder / f"img{i:02d}.png"
        Image.new("RGB", (40 + i, 32), (10 * i, 255 - 10 * i, (37 * i) % 256)).save(path)
        paths.append(path)
    return paths


def reference_texts(clip: LoadedClip, texts: list[str]) -> np.ndarray:
    """The text embeddings computed directly, without the cache."""
    ids = ClipTokenizer(clip.vocab_path, clip.context_length)(texts)
    with torch.inference_mode():
        return clip.model.encode_text(torch.from_numpy(ids)).float().numpy()


class CountingEncoder:
    """Wraps one encode method of the CLIP model and counts the rows it encodes."""

    def __init__(self, clip: LoadedClip, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
        self.rows = 0
        self.real = getattr(clip.model, name)
        monkeypatch.setattr(clip.model, name, self, raising=False)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += len(x)
        return self.real(x)


def run_child(body: str, args: dict) -> subprocess.CompletedProcess:
    code = CHILD_PRELUDE + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True,
                          timeout=CHILD_TIMEOUT_S)


# --------------------------------------------------------------------------- interruption
INTERRUPTED_CHILD = """
cache = FeatureCache(Path(args["root"]), clip, batch_size=4, save_every=10, log=lambda m: None)
method = "encode_text" if args["kind"] == "text" else "encode_image"
real = getattr(clip.model, method)
calls = [0]
def encode(x):
    calls[0] += 1
    if calls[0] == 5:  # the fifth batch never finishes
        os.kill(os.getpid(), getattr(signal, args["signal"]))
        time.sleep(60)
    return real(x)
setattr(clip.model, method, encode)
if args["kind"] == "text":
    cache.encode_texts(args["texts"])
else:
    cache.encode_images([Path(p) for p in args["images"]])
print("finished without interruption")
"""


@pytest.mark.parametrize(("kind", "signal_name", "kept"),
                         [("text", "SIGINT", 16), ("image", "SIGINT", 16), ("text", "SIGKILL", 12)])
def test_interrupted_encoding_keeps_what_was_encoded(
    kind: str, signal_name: str, kept: int, clip: LoadedClip, images: list[Path], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Batches of 4, a shard every 10 entries: Ctrl-C in batch 5 keeps all 16 encoded entries (the last 6 are
    saved on the way out); a hard kill keeps the 12 saved after batch 3. A rerun encodes only the rest."""
    root = tmp_path / "cache"
    proc = run_child(INTERRUPTED_CHILD, {"root": str(root), "kind": kind, "signal": signal_name,
                                         "texts": TEXTS, "images": [str(p) for p in images]})
    assert proc.returncode != 0 and "finished without interruption" not in proc.stdout, proc.stderr[-2000:]
    assert not list(root.rglob("*.partial"))  # no half-written shard left behind
    counter = CountingEncoder(clip, "encode_text" if kind == "text" else "encode_image", monkeypatch)
    cache = FeatureCache(root, clip, batch_size=4, log=lambda m: None)
    store = cache.texts if kind == "text" else cache.images
    assert len(store) == kept and not cache.problems
    if kind == "text":
        keys = cache.encode_texts(TEXTS)
        assert counter.rows == 24 - kept  # only what was not saved is encoded again
        np.testing.assert_allclose(cache.texts.stack(keys), reference_texts(clip, TEXTS), rtol=1e-5, atol=1e-6)
    else:
        keys, bad = cache.encode_images(images)
        assert counter.rows == 24 - kept
        assert not bad and len(set(keys)) == 24


# --------------------------------------------------------------------------- concurrency
CONCURRENT_CHILD = """
cache = FeatureCache(Path(args["root"]), clip, batch_size=4, save_every=8, log=lambda m: None)
cache.texts.compact_above = 3  # merge often, to race merges against the other writer's saves
go = Path(args["go"])
(go.parent / f"ready-{os.getpid()}").touch()
while not go.exists():
    time.sleep(0.005)
texts = args["texts"]
for start in range(0, len(texts), 12):
    cache.encode_texts(texts[start : start + 12])
print(len(cache.texts))
"""


def test_two_processes_sharing_a_cache_lose_no_entries(clip: LoadedClip, tmp_path: Path) -> None:
    root, go = tmp_path / "cache", tmp_path / "go"
    texts = [f"shared cache text {i}" for i in range(240)]
    jobs = [(texts[:160], "a"), (texts[80:], "b")]  # 80 texts overlap
    code = CHILD_PRELUDE + CONCURRENT_CHILD
    procs = [subprocess.Popen([sys.executable, "-c", code,
                               json.dumps({"root": str(root), "go": str(go), "texts": part})],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for part, _ in jobs]
    try:
        FeatureCache(root, clip, log=lambda m: None)  # create the folders while the children load torch
        for _ in range(CHILD_TIMEOUT_S * 20):  # start both writers at once, when both are ready
            if len(list(tmp_path.glob("ready-*"))) == 2 or any(p.poll() is not None for p in procs):
                break
            time.sleep(0.05)
        go.touch()
        outputs = [p.communicate(timeout=CHILD_TIMEOUT_S) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-2000:]
    cache = FeatureCache(root, clip, log=lambda m: None)
    assert not cache.problems and not list(root.rglob("*.partial"))
    assert len(cache.texts) == len(texts)  # every entry of both writers is there
    keys = cache.encode_texts(texts)  # nothing left to encode ...
    np.testing.assert_allclose(cache.texts.stack(keys), reference_texts(clip, texts), rtol=1e-5, atol=1e-6)
    assert len(list((cache.dir / "text").glob("*.npz"))) <= 4  # ... and merging kept the folder small


# --------------------------------------------------------------------------- corruption
def shard_paths(cache: FeatureCache, kind: str = "text") -> list[Path]:
    return sorted((cache.dir / kind).glob("*.npz"))


def test_corrupt_cache_files_are_misses_logged_moved_aside_and_reencoded(
    clip: LoadedClip, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "cache"
    first = FeatureCache(root, clip, batch_size=4, save_every=4, log=lambda m: None)
    first.encode_texts(TEXTS[:12])
    truncated, garbage, intact = shard_paths(first)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    garbage.write_bytes(b"this is not an npz file")
    pickled = first.dir / "text" / "pickled.npz"
    np.savez(pickled, keys=np.array(["x"], dtype=object), embeds=np.zeros((1, clip.embed_dim), np.float32))
    narrow = first.dir / "text" / "narrow.npz"
    np.savez(narrow, keys=np.array(["y"]), embeds=np.zeros((1, 5), np.float32))

    logs: list[str] = []
    counter = CountingEncoder(clip, "encode_text", monkeypatch)
    cache = FeatureCache(root, clip, batch_size=4, log=logs.append)
    assert len(cache.problems) == 4 and logs == cache.problems
    for path in (truncated, garbage, pickled, narrow):
        assert any(str(path) in line and "corrupt" in line for line in logs), path
        assert not path.exists() and path.with_name(path.name + CORRUPT_SUFFIX).is_file()
    assert intact.is_file() and len(cache.texts) == 4
    keys = cache.encode_texts(TEXTS[:12])
    assert counter.rows == 8  # the 8 entries of the two broken shards, nothing else
    monkeypatch.undo()
    np.testing.assert_allclose(cache.texts.stack(keys), reference_texts(clip, TEXTS[:12]), rtol=1e-5, atol=1e-6)
    again: list[str] = []
    assert len(FeatureCache(root, clip, log=again.append).texts) == 12 and not again  # reported once


def test_non_finite_cache_rows_are_refused_and_the_rest_kept(
    clip: LoadedClip, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "cache"
    first = FeatureCache(root, clip, batch_size=4, log=lambda m: None)
    first.encode_texts(TEXTS[:8])
    (shard,) = shard_paths(first)
    with np.load(shard) as data:
        keys, embeds = data["keys"], data["embeds"].copy()
    embeds[1, 3], embeds[5, 0] = np.nan, np.inf
    np.savez(shard, keys=keys, embeds=embeds)

    logs: list[str] = []
    counter = CountingEncoder(clip, "encode_text", monkeypatch)
    cache = FeatureCache(root, clip, batch_size=4, log=logs.append)
    assert len(logs) == 1 and "2 entries hold NaN or inf" in logs[0]
    assert len(cache.texts) == 6
    out = cache.texts.stack(cache.encode_texts(TEXTS[:8]))
    assert counter.rows == 2 and np.isfinite(out).all()
    monkeypatch.undo()
    np.testing.assert_allclose(out, reference_texts(clip, TEXTS[:8]), rtol=1e-5, atol=1e-6)


def test_non_finite_encoder_output_is_refused(clip: LoadedClip, images: list[Path], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    cache = FeatureCache(tmp_path / "cache", clip, batch_size=4, log=lambda m: None)
    real_image, real_text = clip.model.encode_image, clip.model.encode_text

    def nan_for_dark_first_row(x: torch.Tensor) -> torch.Tensor:
        out = real_image(x).clone()
        out[0, 0] = float("nan")
        return out

    monkeypatch.setattr(clip.model, "encode_image", nan_for_dark_first_row, raising=False)
    keys, bad = cache.encode_images(images[:8])
    assert [p for p, _ in bad] == [str(images[0]), str(images[4])]  # the first row of each batch of 4
    assert all("NaN or inf" in why for _, why in bad) and keys[0] is None and keys[1] is not None
    assert len(cache.images) == 6
    monkeypatch.setattr(clip.model, "encode_text", lambda x: real_text(x) * float("inf"), raising=False)
    with pytest.raises(DataError, match="text encoder returned NaN or inf for 4 texts"):
        cache.encode_texts(TEXTS[:4])
    assert len(cache.texts) == 0
    with pytest.raises(DataError, match="non-finite"):
        cache.texts.add(["k"], np.full((1, clip.embed_dim), np.nan, np.float32))


# --------------------------------------------------------------------------- key integrity
def test_other_clip_weights_write_a_new_entry_and_never_read_the_old_one(
    clip: LoadedClip, images: list[Path], tmp_path: Path
) -> None:
    """The same checkpoint path holding other weights (a fine-tuned file saved over the old one)."""
    state = {k: v.contiguous().clone() for k, v in clip.model.state_dict().items()}
    ckpt = tmp_path / "clip.safetensors"
    loaded = []
    for shift in (0.0, 0.01):
        for key in ("text_projection", "visual.proj"):
            # scaled, not shifted: the pooled features are LayerNorm outputs (zero mean), so a constant shift
            # of the projection would cancel out
            state[key] = clip.model.state_dict()[key] * (1.0 + shift)
        save_file(state, str(ckpt))
        loaded.append(load_clip("crisis-tiny", str(ckpt)))
    clip_a, clip_b = loaded
    # Only the weights' sha256 tells them apart.
    assert clip_a.describe() | {"weights_sha256": ""} == clip_b.describe() | {"weights_sha256": ""}
    assert clip_a.weights_sha256 != clip_b.weights_sha256
    root = tmp_path / "cache"
    cache_a = FeatureCache(root, clip_a, log=lambda m: None)
    a_keys, _ = cache_a.encode_images(images[:4])
    a_text = cache_a.texts.stack(cache_a.encode_texts(TEXTS[:4]))
    a_files = {p: p.stat().st_mtime_ns for p in cache_a.dir.rglob("*.npz")}

    cache_b = FeatureCache(root, clip_b, log=lambda m: None)
    assert cache_b.dir != cache_a.dir and encoder_id(clip_a) != encoder_id(clip_b)
    assert len(cache_b.images) == 0 and len(cache_b.texts) == 0  # nothing of A is visible to B
    b_keys, _ = cache_b.encode_images(images[:4])
    b_text = cache_b.texts.stack(cache_b.encode_texts(TEXTS[:4]))
    with torch.inference_mode():
        fresh_b = clip_b.model.encode_text(torch.from_numpy(cache_b.tokenizer(TEXTS[:4]))).numpy()
    np.testing.assert_allclose(b_text, fresh_b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(a_text, b_text)
    assert not np.allclose(cache_a.images.stack(a_keys), cache_b.images.stack(b_keys))
    assert {p: p.stat().st_mtime_ns for p in cache_a.dir.rglob("*.npz")} == a_files  # A's entries untouched
    assert list(cache_b.dir.rglob("*.npz"))  # B wrote entries of its own


def test_unwritable_cache_dir_is_one_line_usage_error(clip: LoadedClip, tmp_path: Path) -> None:
    from crisis_tool.runtime.errors import UsageError

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(UsageError, match=r"--cache-dir .*a-file/cache is not writable"):
        FeatureCache(blocker / "cache", clip)
