"""Text cost: a 10 MB record does bounded work (counted, not timed), and normal text keeps open_clip's ids.

The work is counted in a subprocess with a timeout, so the quadratic BPE of old fails instead of hanging; the
time ratio against a normal batch is measured by benchmarks/hostile_text_cost.py.
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
import json, random, string, sys
from crisis_tool.runtime.record_text import record_text
from crisis_tool.runtime.tokenizer import ClipTokenizer

tok = ClipTokenizer(sys.argv[1])
rng = random.Random(7)
hostile = {
    "one_word": "".join(rng.choices(string.ascii_letters, k=10_000_000)),
    "punctuation": "!?*" * 3_400_000,
    "short_words": "ab " * 3_400_000,
    "entities": "&amp;" * 2_000_000,
    "emoji": "\U0001F30A" * 10_000_000,
}
merged = []
merge = tok._merge
tok._merge = lambda token, end_of_word=True: merged.append(len(token)) or merge(token, end_of_word)
out = {}
for name, text in hostile.items():
    merged.clear()
    ids = tok([record_text(text, None, "tweet").text])
    out[name] = {"merges": len(merged), "longest": max(merged), "ids": int((ids[0] > 0).sum())}
print(json.dumps(out))
"""


def test_ten_megabyte_texts_do_bounded_bpe_work(bpe_vocab_path: Path) -> None:
    """The BPE work of a 10 MB record is bounded by the context, not by its size: at most one merge per output
    id, each on at most one MAX_WORD_CHARS chunk (4 mapped characters per UTF-8 byte at worst). The timeout is a
    hang guard only (the quadratic BPE of old never finished); the time ratio lives in
    benchmarks/hostile_text_cost.py."""
    child = subprocess.run([sys.executable, "-c", _CHILD, str(bpe_vocab_path)],
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-2000:]
    work = json.loads(child.stdout)
    assert set(work) == {"one_word", "punctuation", "short_words", "entities", "emoji"}
    context = ClipTokenizer(bpe_vocab_path)(["x"]).shape[1]
    for name, w in work.items():
        assert 1 <= w["merges"] <= w["ids"] <= context, (name, w)  # at most one merge per id it keeps
        assert w["longest"] <= 4 * MAX_WORD_CHARS, (name, w)


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
