"""Time of a 10 MB hostile record against a normal batch of 64 distinct tweets, tokenized in the same run.

    python benchmarks/hostile_text_cost.py [--vocab PATH] [--max-ratio 2.0]

Each hostile record (one 10 MB word, punctuation, short words, HTML entities, emoji) goes through
`record_text` and the CLIP tokenizer; its time is divided by the time of a fresh batch of 64 normal tweets.
Exits 1 when any ratio is above `--max-ratio` (2.0: a 10 MB record may cost at most two normal batches). The
unit test (tests/runtime/test_hostile_text.py) counts the BPE work instead of timing it.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import string
import sys
import time

from crisis_tool.runtime.record_text import record_text
from crisis_tool.runtime.tokenizer import ClipTokenizer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", help="BPE vocabulary (default: open_clip's bundled one)")
    parser.add_argument("--max-ratio", type=float, default=2.0)
    args = parser.parse_args()
    if args.vocab is None:
        from open_clip.tokenizer import default_bpe

        args.vocab = default_bpe()
    tok = ClipTokenizer(args.vocab)
    rng = random.Random(7)

    def word(n: int) -> str:
        return "".join(rng.choice(string.ascii_lowercase) for _ in range(n))

    normal = [" ".join(word(rng.randint(2, 9)) for _ in range(20)) + f" #flood{i}" for i in range(64)]
    hostile = {
        "one_word": "".join(rng.choices(string.ascii_letters, k=10_000_000)),
        "punctuation": "!?*" * 3_400_000,
        "short_words": "ab " * 3_400_000,
        "entities": "&amp;" * 2_000_000,
        "emoji": "\U0001F30A" * 10_000_000,
    }
    tok([normal[0]])  # warm-up (vocab, regex)

    def cost(texts: list[str]) -> float:
        start = time.perf_counter()
        tok([record_text(t, None, "tweet").text for t in texts])
        return time.perf_counter() - start

    batch = cost(normal)  # 64 distinct tweets, nothing cached
    ratios = {name: round(cost([text]) / batch, 3) for name, text in hostile.items()}
    print(json.dumps({"machine": platform.processor() or platform.machine(), "normal_batch_s": round(batch, 4),
                      "ratio_to_normal_batch": ratios, "max_ratio": args.max_ratio}, indent=2))
    slow = {name: r for name, r in ratios.items() if r > args.max_ratio}
    if slow:
        print(f"FAIL: above {args.max_ratio}x a normal batch: {slow}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
