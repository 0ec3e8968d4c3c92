"""Head epoch on cached CLIP features vs an epoch with the frozen encoders in the loop (ratio, one run).

Machine: the 2-core CPU CI machine (no GPU). Command (from the repo root, after `make test` built .venv):

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/head_epoch_vs_encoder_epoch.py --clip-model ViT-B-32 --n 256

CLIP weights are random (`--pretrained none`): speed does not depend on the weights' values. Goal: >= 50x.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from crisis_tool.clip_loader import load_clip
from crisis_tool.data.crisismmd import load_split, resolve_task
from crisis_tool.data.synthetic import make_demo_data
from crisis_tool.features import FeatureCache
from crisis_tool.models.heads import HeadConfig, build_head
from crisis_tool.runtime.preprocess import load_image, preprocess_image
from crisis_tool.runtime.record_text import record_text
from crisis_tool.runtime.tokenizer import ClipTokenizer


def one_epoch(head: nn.Module, optim: torch.optim.Optimizer, batches) -> float:
    """One training epoch over (image_embeds, text_embeds, labels) batches; returns seconds."""
    head.train()
    start = time.perf_counter()
    for img, txt, y in batches():
        loss = nn.functional.cross_entropy(head(img, txt), y)
        optim.zero_grad()
        loss.backward()
        optim.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip-model", default="ViT-B-32")
    parser.add_argument("--n", type=int, default=256, help="training rows")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    with tempfile.TemporaryDirectory() as tmp:
        data = make_demo_data(Path(tmp) / "data", n_train=args.n, n_dev=8, n_test=8, tasks=("damage",))
        task = resolve_task("damage")
        examples = load_split(data, task, "train")
        clip = load_clip(args.clip_model, "none")
        cache = FeatureCache(Path(tmp) / "cache", clip)
        t0 = time.perf_counter()
        enc = cache.encode_split(data, examples, "tweet", None, task.classes)
        encode_s = time.perf_counter() - t0
        head = build_head(HeadConfig(num_classes=3, clip_embed_dim=clip.embed_dim))
        optim = torch.optim.SGD(head.parameters(), lr=1e-3)
        bs = args.batch_size
        y_all = torch.from_numpy(enc.labels)
        img_all, txt_all = torch.from_numpy(enc.image_embeds), torch.from_numpy(enc.text_embeds)

        def cached():
            for s in range(0, len(y_all) - 1, bs):
                yield img_all[s : s + bs], txt_all[s : s + bs], y_all[s : s + bs]

        tok = ClipTokenizer(clip.vocab_path, clip.context_length)

        def in_loop():
            for s in range(0, len(examples) - 1, bs):
                rows = examples[s : s + bs]
                pixels = np.stack([preprocess_image(load_image(data / r.image), clip.preprocess) for r in rows])
                ids = tok([record_text(r.text, None, "tweet").text for r in rows])
                with torch.no_grad():
                    img = clip.model.encode_image(torch.from_numpy(pixels))
                    txt = clip.model.encode_text(torch.from_numpy(ids))
                yield img, txt, y_all[s : s + bs]

        one_epoch(head, optim, cached)  # warm-up
        cached_s = min(one_epoch(head, optim, cached) for _ in range(5))
        loop_s = one_epoch(head, optim, in_loop)
    print(f"machine: {torch.get_num_threads()} torch threads, CPU; CLIP {args.clip_model} (random weights); "
          f"{args.n} rows, batch {bs}")
    print(f"one-time feature encoding: {encode_s:.2f} s")
    print(f"head epoch on cached features: {cached_s * 1e3:.1f} ms (best of 5)")
    print(f"epoch with encoders in the loop: {loop_s:.2f} s")
    print(f"ratio: {loop_s / cached_s:.0f}x (goal >= 50x)")


if __name__ == "__main__":
    main()
