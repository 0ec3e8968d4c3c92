"""ClipTokenizer must give ids identical to open_clip's tokenizer (imported here only, as the reference)."""

from __future__ import annotations

import gzip
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from crisis_tool.runtime.errors import BundleError
from crisis_tool.runtime.text_clean import clean_tweet
from crisis_tool.runtime.tokenizer import VOCAB_SIZE, ClipTokenizer

open_clip = pytest.importorskip("open_clip")

CRAFTED = [
    "",
    "   ",
    "Hurricane Harvey",
    "🌀🌊 stay safe!! 🙏🏽👨‍👩‍👧 #prayfortexas",
    "Weâ€™re OK â€” thanks ðŸ˜Š",
    "containmentÂ efforts",
    "Irma &amp; Harvey &amp;amp; &lt;3 &#8217;",
    "RT @user: see https://t.co/abc?x=1&y=2 and www.example.org/path#frag",
    "إعصار هارفي يضرب تكساس",
    "तूफान से भारी नुकसान हुआ",
    "飓风哈维袭击了德克萨斯州",
    "ＦＵＬＬＷＩＤＴＨ ｔｅｘｔ and ﬁ ligature",
    "don't won't it's we'll I'd you're they've I'm",
    "numbers 1234567890 3.14 $100 50% 7:51UTC",
    "<start_of_text> literal <end_of_text> tokens <START_OF_TEXT>",
    "a" * 500,
    "supercalifragilisticexpialidocious " * 40,
    "word " * 74,
    "word " * 75,
    "word " * 76,
    "\t\nnew\r\nlines\u00a0and\u2009odd\u200bspaces\x00",
    "Ünïcödé ÀÉÎÕÜ çñß œæ",
    "x" * 100_000,
    " ".join(f"w{i}" for i in range(20_000)),
    # HTML unescaped twice, as open_clip does; a literal "<" stops ftfy's own unescaping, so it shows the second
    "<3 &amp;amp; love",
    "&lt;3 &amp;amp; love",
    "a < b &amp;lt; c &amp;amp;gt; d",
    "&amp;amp;amp; three levels",
    "<b>bold</b> &amp; 😀 &amp;amp; 🌊",
    "&#128512; &amp;#128512; &amp;#x1F30A; <3",
    "5 &lt; 6 &gt; 4 &quot;q&quot; &#39;s &nbsp;end",
]


@pytest.fixture(scope="module")
def reference():
    return open_clip.get_tokenizer("ViT-B-32")


@pytest.fixture(scope="module")
def tok(bpe_vocab_path: Path) -> ClipTokenizer:
    return ClipTokenizer(bpe_vocab_path)


def assert_same_ids(tok: ClipTokenizer, reference, texts: list[str]) -> None:
    expected = reference(texts).numpy()
    got = tok(texts)
    assert got.dtype == np.int64 and got.shape == (len(texts), 77)
    bad = [texts[i][:80] for i in np.flatnonzero((got != expected).any(axis=1))]
    assert not bad, f"{len(bad)} texts tokenized differently, e.g. {bad[:3]}"


def test_real_tweets_match_open_clip(tok, reference, real_tweets) -> None:
    """Every tweet_text of the real settingA splits, raw and cleaned."""
    texts = real_tweets + [clean_tweet(t) for t in real_tweets]
    assert_same_ids(tok, reference, texts)


def test_crafted_strings_match_open_clip(tok, reference) -> None:
    texts = CRAFTED + [clean_tweet(t) for t in CRAFTED]
    assert_same_ids(tok, reference, texts)
    for text in CRAFTED[:15]:
        assert tok.encode(text) == reference.encode(text)


def test_single_string_and_short_context(bpe_vocab_path, reference) -> None:
    tok16 = ClipTokenizer(bpe_vocab_path, context_length=16)
    texts = ["word " * 20, "short one", ""]
    np.testing.assert_array_equal(tok16(texts), reference(texts, context_length=16).numpy())
    np.testing.assert_array_equal(tok16("flood"), reference("flood", context_length=16).numpy())
    assert tok16(texts)[0, -1] == tok16.eot_token_id


def test_special_ids_and_properties(tok, reference, bpe_vocab_path) -> None:
    assert (tok.sot_token_id, tok.eot_token_id) == (reference.sot_token_id, reference.eot_token_id)
    assert (tok.sot_token_id, tok.eot_token_id) == (49406, 49407)
    assert tok.vocab_size == VOCAB_SIZE == reference.vocab_size
    assert tok.context_length == 77 and tok.vocab_path == bpe_vocab_path
    ids = tok(["flood"])[0]
    assert ids[0] == tok.sot_token_id and ids[2] == tok.eot_token_id and not ids[3:].any()


def test_trim_keeps_the_longest_real_sequence(tok) -> None:
    texts = ["flood", "hurricane harvey hits texas coast", ""]
    full = tok(texts)
    trimmed = tok.tokenize(texts)
    real_lengths = [int(np.count_nonzero(row)) for row in full]
    assert trimmed.shape == (3, max(real_lengths))
    np.testing.assert_array_equal(trimmed, full[:, : trimmed.shape[1]])
    assert tok.tokenize([""]).shape == (1, 2)
    assert tok.tokenize(["word " * 200]).shape == (1, 77)
    np.testing.assert_array_equal(tok.tokenize(texts, trim=False), full)


def test_concurrent_use_gives_the_same_ids(bpe_vocab_path, real_tweets) -> None:
    texts = real_tweets[:400]
    expected = ClipTokenizer(bpe_vocab_path)(texts)
    shared = ClipTokenizer(bpe_vocab_path)
    results: list[np.ndarray] = [np.empty(0)] * 4
    threads = [
        threading.Thread(target=lambda i=i: results.__setitem__(i, shared(texts[i % 2 :: 2] + texts)))
        for i in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result[-len(texts) :], expected)
        np.testing.assert_array_equal(result[: -len(texts)], expected[i % 2 :: 2])


def _config(vocab_file: str = "vocab/bpe.txt.gz", **overrides) -> dict:
    return {"vocab_file": vocab_file, "context_length": 77, "sot_token_id": 49406, "eot_token_id": 49407,
            **overrides}


def test_from_config_reads_a_bundle_vocab(tmp_path, bpe_vocab_path, tok) -> None:
    (tmp_path / "vocab").mkdir()
    shutil.copy(bpe_vocab_path, tmp_path / "vocab" / "bpe.txt.gz")
    loaded = ClipTokenizer.from_config(_config(), tmp_path)
    assert loaded.vocab_path == tmp_path / "vocab" / "bpe.txt.gz"
    np.testing.assert_array_equal(loaded(CRAFTED[:6]), tok(CRAFTED[:6]))


def test_from_config_refuses_a_missing_vocab(tmp_path) -> None:
    with pytest.raises(BundleError, match="not found"):
        ClipTokenizer.from_config(_config(), tmp_path)


def test_from_config_refuses_a_non_gzip_vocab(tmp_path) -> None:
    (tmp_path / "vocab").mkdir()
    (tmp_path / "vocab" / "bpe.txt.gz").write_text("not a gzip file")
    with pytest.raises(BundleError, match="not a readable gzip"):
        ClipTokenizer.from_config(_config(), tmp_path)


def test_from_config_refuses_a_truncated_vocab(tmp_path, bpe_vocab_path) -> None:
    """A vocab that loads but is too small (the silent 2-token-vocab failure) must be refused."""
    lines = gzip.open(bpe_vocab_path, "rt", encoding="utf-8").read().split("\n")[:1000]
    (tmp_path / "vocab").mkdir()
    with gzip.open(tmp_path / "vocab" / "bpe.txt.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(lines))
    with pytest.raises(BundleError, match="merges"):
        ClipTokenizer.from_config(_config(), tmp_path)


def test_from_config_refuses_wrong_special_ids(tmp_path, bpe_vocab_path) -> None:
    (tmp_path / "vocab").mkdir()
    shutil.copy(bpe_vocab_path, tmp_path / "vocab" / "bpe.txt.gz")
    with pytest.raises(BundleError, match="sot/eot ids 49406/49407"):
        ClipTokenizer.from_config(_config(eot_token_id=2), tmp_path)
    with pytest.raises(BundleError, match="malformed"):
        ClipTokenizer.from_config({"vocab_file": "vocab/bpe.txt.gz"}, tmp_path)
