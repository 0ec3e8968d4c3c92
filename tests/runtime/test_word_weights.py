"""The runtime half of `--explain` words: padding per head batch, the top words, and token ids back to text."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from crisis_tool.runtime.bundle import Bundle
from crisis_tool.runtime.tokenizer import ClipTokenizer
from crisis_tool.runtime.word_weights import Words, padded_words, top_words


class Pieces:
    def token_text(self, token_id: int) -> str:
        return f"w{token_id}"


def _words(n: int, dim: int = 3) -> Words:
    ids = np.arange(100, 100 + n)
    mask = np.array([0.0] + [1.0] * (n - 2) + [0.0], np.float32)  # SOT, words, EOT
    return Words(ids, np.full((n, dim), float(n), np.float32), mask)


def test_padded_words_zero_pads_features_and_mask_to_the_longest() -> None:
    feeds = padded_words([_words(3), _words(5)])
    assert feeds["text_token_embeds"].shape == (2, 5, 3) and feeds["token_mask"].shape == (2, 5)
    assert (feeds["text_token_embeds"][0, 3:] == 0).all() and (feeds["text_token_embeds"][0, :3] == 3).all()
    np.testing.assert_array_equal(feeds["token_mask"], [[0, 1, 0, 0, 0], [0, 1, 1, 1, 0]])


def test_top_words_are_the_largest_weights_of_words_only_largest_first() -> None:
    words = _words(8)  # positions 1..6 are words
    weights = np.array([9.0, 0.1, 0.5, -0.2, 0.5, 0.3, 0.05, 9.0], np.float32)  # SOT/EOT weigh most: never listed
    assert top_words(words, weights, Pieces(), k=3) == [("w102", 0.5), ("w104", 0.5), ("w105", 0.3)]
    assert [w for w, _ in top_words(words, weights, Pieces(), k=10)] == ["w102", "w104", "w105", "w101", "w106",
                                                                          "w103"]


def test_token_text_decodes_the_tokenizer_pieces(tiny_bundle: Path) -> None:
    bundle = Bundle.load(tiny_bundle)
    tokenizer = ClipTokenizer.from_config(bundle.tokenizer_config, bundle.root)
    ids = tokenizer.tokenize(["Flooding near the bridge, café 🚨"])[0]
    pieces = [tokenizer.token_text(int(i)) for i in ids if i]
    assert pieces[0] == "<start_of_text>" and pieces[-1] == "<end_of_text>"
    assert "".join(pieces[1:-1]) == "floodingnearthebridge,café🚨"
