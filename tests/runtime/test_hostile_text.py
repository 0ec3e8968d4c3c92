"""Text cost: a 10 MB record costs about what a normal batch costs, and normal text keeps open_clip's ids.

Timed in one subprocess (with a timeout, so the quadratic BPE of old fails instead of hanging): the hostile record
is compared, as a ratio, with tokenizing a batch of distinct normal tweets in the same run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from crisis_tool.runtime.text_clean import MAX_TEXT_CHARS, clean_tweet
from crisis_tool.runtime.tokenizer import MAX_WORD_CHARS, ClipTokenizer

_CHILD = r"""
import json, random, string, sys, time
from crisis_tool.runtime.record_text import record_text
from crisis_tool.runtime.tokenizer import ClipTokenizer

tok = ClipTokenizer(sys.argv[1])
rng = random.Random(7)
def word(n):
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
def cost(texts):
    start = time.perf_counter()
    tok([record_text(t, None, "tweet").text for t in texts])
    return time.perf_counter() - start
batch = cost(normal)  # 64 distinct tweets, nothing cached
print(json.dumps({name: cost([text]) / batch for name, text in hostile.items()}))
"""


def test_ten_megabyte_texts_cost_less_than_a_normal_batch(bpe_vocab_path: Path) -> None:
    child = subprocess.run([sys.executable, "-c", _CHILD, str(bpe_vocab_path)],
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr[-2000:]
    ratios = json.loads(child.stdout)
    assert set(ratios) == {"one_word", "punctuation", "short_words", "entities", "emoji"}
    slow = {name: ratio for name, ratio in ratios.items() if ratio > 2.0}
    assert not slow, f"10 MB records cost this many normal 64-tweet batches: {ratios}"


def test_text_is_cut_before_cleaning() -> None:
    assert clean_tweet("a" * (MAX_TEXT_CHARS + 500)) == "a" * MAX_TEXT_CHARS
    assert clean_tweet("flood " * 10 + "x" * 10**6).startswith("flood flood")


def test_long_words_are_chunked_but_normal_words_match_open_clip(bpe_vocab_path: Path) -> None:
    open_clip = pytest.importorskip("open_clip")
    reference = open_clip.get_tokenizer("ViT-B-32")
    tok = ClipTokenizer(bpe_vocab_path)
    longest_normal = "pneumonoultramicroscopicsilicovolcanoconiosis " * 3 + "a" * MAX_WORD_CHARS
    assert tok([longest_normal]).tolist() == reference([longest_normal]).tolist()
    long_word = "ab" * MAX_WORD_CHARS  # 128 letters: two chunks, the first without an end-of-word mark
    first_chunk = tok.encode("ab" * (MAX_WORD_CHARS // 2))
    ids = tok.encode(long_word)
    assert ids[: len(first_chunk) - 1] == first_chunk[:-1] and len(ids) < len(long_word)
