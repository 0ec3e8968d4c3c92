"""Triage through the Predictor and `predict`: calibrated confidence from the head's temperature on every backend,
the review flag from its threshold, near-duplicate groups on every line (photos re-encoded and cropped, retweets),
and the review queue file (least confident first, one post per group, with its members).
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crisis_tool.runtime.backends import backend_unavailable_reason
from crisis_tool.runtime.manifest import MANIFEST_DIGEST_NAME, MANIFEST_NAME, canonical_digest, sha256_file
from crisis_tool.runtime.predictor import Predictor
from crisis_tool.runtime.records import Record

PHOTOS = Path(__file__).resolve().parents[3] / "shared" / "data" / "photos"
TEMPERATURE, THRESHOLD = 2.5, 0.45


@pytest.fixture(scope="module")
def calibrated_bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny bundle with a temperature and review threshold stated in both hashed files, re-hashed."""
    root = Path(shutil.copytree(tiny_bundle, tmp_path_factory.mktemp("calibrated") / "b"))
    config = json.loads((root / "model_config.json").read_text())
    config.update(temperature=TEMPERATURE, review_threshold=THRESHOLD)
    (root / "model_config.json").write_text(json.dumps(config))
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    manifest["spec"]["heads"][0].update(temperature=TEMPERATURE, review_threshold=THRESHOLD)
    manifest["files"]["model_config.json"] = {"sha256": sha256_file(root / "model_config.json"),
                                              "size": (root / "model_config.json").stat().st_size}
    (root / MANIFEST_NAME).write_text(json.dumps(manifest))
    (root / MANIFEST_DIGEST_NAME).write_text(canonical_digest(manifest) + "\n")
    return root


def _images(tmp_path: Path, n: int) -> list[str]:
    rng = np.random.default_rng(1)
    paths = []
    for i in range(n):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (40 + i, 56, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "torch"])
def test_confidence_is_calibrated_by_every_backend(backend: str, calibrated_bundle: Path, tmp_path: Path) -> None:
    if backend_unavailable_reason(backend):
        pytest.skip(f"{backend} not usable here: {backend_unavailable_reason(backend)}")
    records = [Record(f"r{i}", f"roof torn off house {i}", path) for i, path in enumerate(_images(tmp_path, 6))]
    with Predictor.from_bundle(calibrated_bundle, backend=backend, groups=False) as predictor:
        predictions = predictor.predict(records)
        pixels = np.stack([predictor.image_cache.get(k) for k in list(predictor.image_cache._data)])
        assert len(pixels) == 6  # the embeddings the predictor used, in record order (distinct images)
        ids = predictor.tokenizer.tokenize([r.text for r in records], trim=True)
        logits, _ = predictor.backend.run_head(pixels, predictor.backend.encode_text(ids))
    z = logits.astype(np.float64) / TEMPERATURE
    expected = np.exp(z - z.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    labels = predictions[0].tasks["damage"].probs.keys()
    for p, row in zip(predictions, expected, strict=True):
        answer = p.tasks["damage"]
        np.testing.assert_allclose([answer.probs[k] for k in labels], row, atol=1e-5)
        assert answer.confidence == pytest.approx(row.max(), abs=1e-5)
        assert answer.needs_review is (answer.confidence < THRESHOLD)
        assert p.needs_review is answer.needs_review
    assert max(p.confidence for p in predictions) < 0.75  # T = 2.5 flattens the tiny head's answers


def _jpeg(image: Image.Image, quality: int = 90) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


@pytest.mark.skipif(not PHOTOS.is_dir(), reason=f"shared photos not found at {PHOTOS}")
def test_near_duplicate_photos_share_a_group_and_distinct_photos_do_not(tiny_bundle: Path) -> None:
    photos = sorted(p for p in PHOTOS.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:4]
    assert len(photos) >= 2
    records = []
    for i, path in enumerate(photos):
        image = Image.open(path).convert("RGB")
        image = image.resize((1200, round(1200 * image.height / image.width)))  # a tweet-size photo
        w, h = image.size
        crop = image.crop((int(0.025 * w), int(0.025 * h), int(0.975 * w), int(0.975 * h)))  # a 5% crop
        records += [Record(f"p{i}", f"original photo number {i}", _jpeg(image)),
                    Record(f"p{i}-q60", f"someone else reposted it {i}", _jpeg(image.resize((w // 2, h // 2)), 60)),
                    Record(f"p{i}-crop", f"a cropped copy, post {i}", _jpeg(crop, 85))]
    with Predictor.from_bundle(tiny_bundle, backend="onnxruntime") as predictor:
        predictions = predictor.predict(records)
    groups = {p.id: p.group for p in predictions}
    for i in range(len(photos)):
        assert groups[f"p{i}-q60"] == groups[f"p{i}-crop"] == f"p{i}", groups
    assert len({groups[f"p{i}"] for i in range(len(photos))}) == len(photos)  # distinct photos stay apart
    dup = {p.id: p.duplicate_of for p in predictions}
    assert dup["p0"] is None and dup["p0-q60"] == "p0"


def test_retweets_share_a_group_across_images(tiny_bundle: Path, tmp_path: Path) -> None:
    paths = _images(tmp_path, 3)
    records = [Record("a", "Bridge on Route 9 washed out https://t.co/x1", paths[0]),
               Record("b", "RT @county_ems: Bridge on Route 9 washed out https://t.co/zz9", paths[1]),
               Record("c", "Shelter open at the high school", paths[2])]
    with Predictor.from_bundle(tiny_bundle, backend="onnxruntime") as predictor:
        a, b, c = predictor.predict(records)
    assert (a.group, b.group, c.group) == ("a", "a", "c") and b.duplicate_of == "a" and c.duplicate_of is None


def test_predict_lines_and_review_queue(calibrated_bundle: Path, tmp_path: Path, cli) -> None:
    paths = _images(tmp_path, 8)
    posts = [{"id": f"x{i}", "text": f"storm update {i} flooding downtown", "image": paths[i]} for i in range(8)]
    posts += [{"id": "x0-rt", "text": "RT @a: storm update 0 flooding downtown", "image": paths[0]},
              {"id": "bad", "text": "no picture", "image": str(tmp_path / "missing.jpg")}]
    src = tmp_path / "posts.jsonl"
    src.write_text("".join(json.dumps(p) + "\n" for p in posts))
    out, queue = tmp_path / "out.jsonl", tmp_path / "queue.jsonl"
    assert cli(["predict", "--bundle", calibrated_bundle, "--input", src, "--output", out, "--backend",
                "onnxruntime", "--review-queue", queue]) == 3  # one record failed
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["id"] for line in lines] == [p["id"] for p in posts]
    for line in lines:
        assert {"needs_review", "group", "duplicate_of", "tasks"} <= set(line)
    assert lines[8]["group"] == "x0" and lines[8]["duplicate_of"] == "x0"
    queued = [json.loads(line) for line in queue.read_text().splitlines()]
    scores = [min(t["confidence"] for t in q["tasks"].values()) for q in queued]
    assert scores == sorted(scores) and len(queued) == 8  # 10 posts, one error, one duplicate folded in
    assert "bad" not in {q["id"] for q in queued}
    x0 = next(q for q in queued if q["group"] == "x0")
    assert x0["image"] == paths[0] and x0["text"].startswith(("storm", "RT"))
    assert x0["group_size"] == 2 and len(x0["group_members"]) == 1
    assert cli(["predict", "--bundle", calibrated_bundle, "--input", src, "--output", tmp_path / "o2.jsonl",
                "--backend", "onnxruntime", "--review-queue", tmp_path / "q2.jsonl", "--review-budget", "3"]) == 3
    assert len((tmp_path / "q2.jsonl").read_text().splitlines()) == 3
