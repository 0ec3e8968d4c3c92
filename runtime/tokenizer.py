"""CLIP byte-level BPE tokenizer in pure Python (numpy, ftfy, regex; no torch, no open_clip).

Produces ids identical to ``open_clip.get_tokenizer("ViT-B-32")(texts)``:
text -> ftfy.fix_text -> html.unescape twice -> strip -> collapse whitespace -> lower case -> split with
CLIP's regex -> UTF-8 bytes mapped to printable characters -> BPE merges -> ids; each sequence is
``[sot] + ids + [eot]``, zero padded to `context_length`; longer sequences are cut to `context_length`
with the last token forced to eot. As in open_clip, the literal strings "<start_of_text>" and
"<end_of_text>" inside a text map to the special ids.

Bounded cost on hostile text (open_clip has neither bound): only the first `MAX_TEXT_CHARS` (16384) characters
of a text are read, tokenizing stops once `context_length` ids are known, and a pre-token (a run of letters or
of punctuation) longer than `MAX_WORD_CHARS` (64) is split into chunks of that length before BPE, whose cost
grows with the square of a word's length. Only such words, which no language has, get ids unlike open_clip's.
"""

from __future__ import annotations

import gzip
import html
import threading
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path

import ftfy
import numpy as np
import regex

from crisis_tool.runtime.errors import BundleError, CrisisToolError, UsageError
from crisis_tool.runtime.text_clean import MAX_TEXT_CHARS

SOT_TOKEN = "<start_of_text>"
EOT_TOKEN = "<end_of_text>"
VOCAB_SIZE = 49408  # 256 bytes + 256 "</w>" bytes + 48894 merges + 2 special tokens
_NUM_MERGES = 49152 - 256 - 2
_CACHE_LIMIT = 200_000  # words; the cache is cleared when it grows past this
MAX_WORD_CHARS = 64  # longer pre-tokens are split into chunks of this many characters before BPE

_PATTERN = regex.compile(
    regex.escape(SOT_TOKEN) + "|" + regex.escape(EOT_TOKEN)
    + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)


@lru_cache
def bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible map from the 256 byte values to printable unicode characters."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


@lru_cache
def _byte_decoder() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def clean_for_clip(text: str) -> str:
    """open_clip's "lower" cleaning: ftfy, double html unescape, whitespace collapse, lower case."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).strip().lower()


@lru_cache(maxsize=4)
def _load_vocab(path: str, mtime_ns: int) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
    """Parse the gzipped merges file into (encoder, bpe_ranks); raises UsageError when unusable."""
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise UsageError(f"CLIP vocab file {path} is not a readable gzip text file ({exc})") from exc
    merges = [tuple(line.split()) for line in lines[1 : _NUM_MERGES + 1]]
    if len(merges) != _NUM_MERGES or any(len(m) != 2 for m in merges):
        raise UsageError(
            f"CLIP vocab file {path} holds {len(merges)} merges or malformed lines; expected {_NUM_MERGES}"
        )
    byte_chars = list(bytes_to_unicode().values())
    vocab = [*byte_chars, *(c + "</w>" for c in byte_chars), *("".join(m) for m in merges)]
    vocab += [SOT_TOKEN, EOT_TOKEN]
    encoder = {tok: i for i, tok in enumerate(vocab)}
    if len(encoder) != VOCAB_SIZE:
        raise UsageError(f"CLIP vocab file {path} gives {len(encoder)} tokens; expected {VOCAB_SIZE}")
    ranks = {m: i for i, m in enumerate(merges)}
    return encoder, ranks  # type: ignore[return-value]


class ClipTokenizer:
    """Thread-safe CLIP tokenizer; `tok(texts)` -> int64 [B, context_length] identical to open_clip."""

    def __init__(self, vocab_path: str | Path, context_length: int = 77) -> None:
        path = Path(vocab_path)
        if not path.is_file():
            raise UsageError(f"CLIP vocab file not found: {path}")
        if int(context_length) < 2:
            raise UsageError(f"context_length must be at least 2, got {context_length}")
        self._vocab_path = path
        self._context_length = int(context_length)
        self._encoder, self._ranks = _load_vocab(str(path.resolve()), path.stat().st_mtime_ns)
        self._byte_encoder = bytes_to_unicode()
        self._specials = {SOT_TOKEN: SOT_TOKEN, EOT_TOKEN: EOT_TOKEN}
        self._cache: dict[tuple[str, bool], tuple[int, ...]] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: Mapping[str, object], root: str | Path) -> ClipTokenizer:
        """Build from a bundle manifest's tokenizer section; BundleError unless the vocab matches it."""
        try:
            vocab_file = Path(root) / str(config["vocab_file"])
            context_length = int(str(config["context_length"]))
            sot, eot = int(str(config["sot_token_id"])), int(str(config["eot_token_id"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"bundle tokenizer config is incomplete or malformed: {exc!r}") from exc
        try:
            tok = cls(vocab_file, context_length)
        except CrisisToolError as exc:
            raise BundleError(f"bundle tokenizer: {exc}") from exc
        if (tok.sot_token_id, tok.eot_token_id) != (sot, eot):
            raise BundleError(
                f"bundle tokenizer: {vocab_file} gives sot/eot ids {tok.sot_token_id}/{tok.eot_token_id}, "
                f"the manifest says {sot}/{eot}"
            )
        return tok

    @property
    def vocab_path(self) -> Path:
        return self._vocab_path

    @property
    def context_length(self) -> int:
        return self._context_length

    @property
    def sot_token_id(self) -> int:
        return self._encoder[SOT_TOKEN]

    @property
    def eot_token_id(self) -> int:
        return self._encoder[EOT_TOKEN]

    @property
    def vocab_size(self) -> int:
        return len(self._encoder)

    def _bpe(self, token: str, end_of_word: bool = True) -> tuple[int, ...]:
        """Ids of one pre-token (already byte-mapped), cached; `end_of_word` False for a chunk of a long word."""
        key = (token, end_of_word)
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None:
            return hit
        if token in self._specials:
            ids: tuple[int, ...] = (self._encoder[token],)
        else:
            ids = tuple(self._encoder[piece] for piece in self._merge(token, end_of_word))
        with self._lock:
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[key] = ids
        return ids

    def _merge(self, token: str, end_of_word: bool = True) -> tuple[str, ...]:
        word = tuple(token[:-1]) + (token[-1] + "</w>",) if end_of_word else tuple(token)
        ranks = self._ranks
        while len(word) > 1:
            pairs = set(zip(word[:-1], word[1:], strict=True))
            bigram = min(pairs, key=lambda p: ranks.get(p, float("inf")))
            if bigram not in ranks:
                break
            first, second = bigram
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        return word

    def encode(self, text: str, limit: int | None = None) -> list[int]:
        """BPE ids of `text` without sot/eot; with `limit`, stops once at least that many ids are known."""
        ids: list[int] = []
        byte_encoder = self._byte_encoder
        for match in _PATTERN.finditer(clean_for_clip(text[:MAX_TEXT_CHARS])):
            piece = match.group()
            chunks = [piece[i : i + MAX_WORD_CHARS] for i in range(0, len(piece), MAX_WORD_CHARS)]
            for n, chunk in enumerate(chunks, start=1):
                mapped = "".join(byte_encoder[b] for b in chunk.encode("utf-8"))
                ids.extend(self._bpe(mapped, end_of_word=n == len(chunks)))
                if limit is not None and len(ids) >= limit:
                    return ids
        return ids

    def _sequences(self, texts: Sequence[str] | str) -> list[list[int]]:
        if isinstance(texts, str):
            texts = [texts]
        out = []
        for text in texts:
            seq = [self.sot_token_id, *self.encode(text, limit=self._context_length), self.eot_token_id]
            if len(seq) > self._context_length:
                seq = seq[: self._context_length]
                seq[-1] = self.eot_token_id
            out.append(seq)
        return out

    def tokenize(self, texts: Sequence[str] | str, trim: bool = True) -> np.ndarray:
        """int64 [B, L] ids; with `trim`, L is the batch's longest real sequence (sot..eot), at least 2."""
        seqs = self._sequences(texts)
        width = self._context_length
        if trim:
            width = max([2, *(len(s) for s in seqs)])
        result = np.zeros((len(seqs), width), dtype=np.int64)
        for i, seq in enumerate(seqs):
            result[i, : len(seq)] = seq
        return result

    def __call__(self, texts: Sequence[str] | str) -> np.ndarray:
        """int64 [B, context_length] ids, identical to open_clip's tokenizer."""
        return self.tokenize(texts, trim=False)

    def token_text(self, token_id: int) -> str:
        """The text of one token id (its BPE piece decoded from bytes, without the end-of-word mark)."""
        with self._lock:
            decoder = getattr(self, "_decoder", None)
            if decoder is None:
                decoder = self._decoder = {i: piece for piece, i in self._encoder.items()}
        piece = decoder.get(int(token_id), "")
        if piece in self._specials:
            return piece
        data = bytes(_byte_decoder()[c] for c in piece.removesuffix("</w>") if c in _byte_decoder())
        return data.decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return f"ClipTokenizer({str(self._vocab_path)!r}, context_length={self._context_length})"
