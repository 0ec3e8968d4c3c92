"""A synthetic CrisisMMD-format data set for the demo and the tests.

It writes the real folder structure (split TSVs under `crisismmd_datasplit_settingA/`, JPEGs under
`data_image/`) for every task. Each image's dominant colour encodes its class; tweets mention a class
keyword only some of the time and some tweets are retweets (identical text), so the image carries most of
the signal. `llava.jsonl` holds a describe-the-colour "LLaVA" text per image, for the text-source options.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

from crisis_tool.data.crisismmd import SPLITS, TASKS, TaskSpec, split_path

PALETTE = (
    ("red", (200, 40, 40)),
    ("green", (40, 170, 60)),
    ("blue", (40, 70, 200)),
    ("yellow", (220, 200, 40)),
    ("purple", (140, 50, 170)),
    ("cyan", (40, 190, 200)),
)
FILLER = (
    "flood storm rain wind road city people help news update photo today again water fire power "
    "night morning area county team watch live video crews near town local latest report"
).split()


def _image(rng: np.random.Generator, colour: tuple[int, int, int]) -> Image.Image:
    h, w = int(rng.integers(120, 260)), int(rng.integers(120, 260))
    pixels = np.asarray(colour, dtype=np.float32) + rng.normal(0, 25, size=(h, w, 3))
    y, x = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
    pixels[y : y + h // 4, x : x + w // 4] = rng.integers(0, 255, size=3)  # a distractor patch
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _tweet(rng: np.random.Generator, label: str, keyword_rate: float) -> str:
    words = list(rng.choice(FILLER, size=int(rng.integers(5, 14))))
    if rng.random() < keyword_rate:
        words.insert(int(rng.integers(0, len(words))), label.replace("_", " "))
    text = " ".join(words).capitalize()
    if rng.random() < 0.3:
        text += " https://t.co/" + "".join(rng.choice(list("abcdefghXYZ0123456789"), size=10))
    if rng.random() < 0.2:
        text = "RT @crisis_watch: " + text + " #disaster"
    return text


def write_task(root: Path, task: TaskSpec, sizes: dict[str, int], rng: np.random.Generator,
               keyword_rate: float, llava: dict[str, str]) -> None:
    """Write the split TSVs and images of one task."""
    for split, n in sizes.items():
        path = split_path(root, task, split)
        path.parent.mkdir(parents=True, exist_ok=True)
        last_text: str | None = None
        with open(path, "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\", lineterminator="\n")
            writer.writerow(task.columns)
            for i in range(n):
                k = i % len(task.classes)
                label = task.classes[k]
                colour_name, colour = PALETTE[k % len(PALETTE)]
                tweet_id = f"{900000000000000000 + int(rng.integers(0, 10**12))}"
                image_id = f"{tweet_id}_0"
                rel = f"data_image/synthetic_{task.name}/{split}/{image_id}.jpg"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                _image(rng, colour).save(root / rel, quality=90)
                text = last_text if last_text and rng.random() < 0.15 else _tweet(rng, label, keyword_rate)
                last_text = text
                llava[image_id] = f"The image is mostly {colour_name}, showing a scene after a disaster."
                row = {"event_name": f"synthetic_{task.name}", "tweet_id": tweet_id, "image_id": image_id,
                       "tweet_text": text, "image": rel, "label": label, "label_text": label,
                       "label_image": label, "label_text_image": "Positive"}
                writer.writerow([row[c] for c in task.columns])


def make_demo_data(root: Path, n_train: int = 96, n_dev: int = 32, n_test: int = 32, seed: int = 0,
                   keyword_rate: float = 0.3, tasks: tuple[str, ...] = tuple(TASKS)) -> Path:
    """Write a synthetic CrisisMMD_v2.0-style folder; returns its root."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    llava: dict[str, str] = {}
    sizes = dict(zip(SPLITS, (n_train, n_dev, n_test)))
    for name in tasks:
        write_task(root, TASKS[name], sizes, rng, keyword_rate, llava)
    with open(root / "llava.jsonl", "w", encoding="utf-8") as fh:
        for image_id, text in llava.items():
            fh.write(json.dumps({"image_id": image_id, "llava_text": text, "model": "synthetic",
                                 "prompt_sha256": None}) + "\n")
    return root
