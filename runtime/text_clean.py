"""Tweet text cleaning and the text fed to the CLIP text encoder.

`clean_tweet` applies, in order:

0. A cap: only the first `MAX_TEXT_CHARS` (16384) characters are read. CLIP keeps 77 tokens, so no tweet or
   caption needs more than a few hundred; the cap bounds the cost of a hostile 10 MB "tweet" (the Predictor logs
   a warning naming each record it cut).
1. ftfy repair of mojibake ("Weâ€™re" -> "We’re"); curly quotes are kept as they are (uncurl_quotes=False),
   the CLIP tokenizer normalises them later anyway.
2. URL removal: only the URL token itself (``http://...``, ``https://...``, ``www....``), up to the next
   whitespace. Text after a URL is kept (the original authors' code dropped everything after the first URL).
3. Retweet marker: a leading ``RT`` token (upper case, optionally followed by ``:``) is dropped. The account
   that follows (``RT @user: text`` -> ``@user: text``) is kept: it often names the source (e.g. @FEMA).
4. ``#`` marks are removed, the hashtag word is kept (``#Harvey`` -> ``Harvey``).
5. Whitespace (including newlines and tabs) is collapsed to single spaces and the ends are stripped.

Which text a record feeds the encoder (tweet, caption or both) is decided in one place: `record_text`.
"""

from __future__ import annotations

import re

import ftfy

TEXT_SOURCES: tuple[str, ...] = ("tweet", "llava", "tweet+llava")
MAX_TEXT_CHARS = 16384

_URL_RE = re.compile(r"(?:https?://|(?<![\w.@/])www\.)\S*", re.IGNORECASE)
_RT_RE = re.compile(r"^RT(?::|(?=\s)|$)")


def clean_tweet(text: str | None) -> str:
    """Return `text` repaired and cleaned (see the module docstring); None or empty gives ""."""
    if not text:
        return ""
    text = ftfy.fix_text(str(text)[:MAX_TEXT_CHARS], uncurl_quotes=False)
    text = _URL_RE.sub(" ", text)
    text = " ".join(text.split())
    text = _RT_RE.sub("", text)
    text = text.replace("#", "")
    return " ".join(text.split())
