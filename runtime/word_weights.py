"""The words of a post for `--explain` heads that weigh them: per-text token features in, top words out.

A bundle exported with `--explain` whose heads have Differential Attention has a text encoder with two more
outputs, `text_token_embeds` [B,L,D] (every position's projected feature) and `token_mask` [B,L] (1 at the
words: after the SOT, before the EOT), and heads that take them and output `token_weights` [B,L]. The Predictor
keeps each text's `Words` (trimmed to its own length, cached with its embedding), pads them per head batch
(`padded_words`: zero features, mask 0, which the graph leaves out of its softmaxes, so padding changes no
weight) and reads the top words back (`top_words`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

import numpy as np

TOP_WORDS = 5  # words listed per post and head
WORD_CACHE_SIZE = 256  # texts whose Words the Predictor keeps: up to 77 x D floats each (~40 MB at D = 512)


class Words(NamedTuple):
    """One text's token ids [n], token features [n, D] and word mask [n] (n: up to and including its EOT)."""

    ids: np.ndarray
    embeds: np.ndarray
    mask: np.ndarray


class TokenText(Protocol):
    def token_text(self, token_id: int) -> str: ...


def padded_words(rows: Sequence[Words]) -> dict[str, np.ndarray]:
    """The head inputs for `rows`: text_token_embeds [N, L, D] and token_mask [N, L], zero-padded to the longest."""
    length = max(1, max(len(w.ids) for w in rows))
    dim = rows[0].embeds.shape[-1]
    embeds = np.zeros((len(rows), length, dim), np.float32)
    mask = np.zeros((len(rows), length), np.float32)
    for r, words in enumerate(rows):
        embeds[r, : len(words.ids)] = words.embeds
        mask[r, : len(words.ids)] = words.mask
    return {"text_token_embeds": embeds, "token_mask": mask}


def top_words(words: Words, weights: np.ndarray, tokenizer: TokenText, k: int = TOP_WORDS
              ) -> list[tuple[str, float]]:
    """The `k` words with the largest weight, largest first (ties: earlier word first), as (text, weight)."""
    positions = [p for p in range(len(words.ids)) if words.mask[p] > 0.5]
    ranked = sorted(positions, key=lambda p: (-float(weights[p]), p))[:k]
    return [(tokenizer.token_text(int(words.ids[p])), round(float(weights[p]), 6)) for p in ranked]
