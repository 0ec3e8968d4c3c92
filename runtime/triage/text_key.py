"""The near-duplicate key of a post's text: the tweet cleaned as the model reads it, without the mentions.

`text_key` = `clean_tweet` (ftfy repair, URLs removed, leading "RT" removed, "#" removed, whitespace collapsed;
`crisis_tool.runtime.text_clean`), then the tokenizer's `clean_for_clip` (HTML unescape, lower case), then every
@mention removed together with a colon right after it, and whitespace collapsed again. So
"RT @FEMA: Shelter open at #Houston https://t.co/x" and "shelter open at Houston" share a key. A text that
cleans to nothing (only a URL, only mentions) has no key (None) and joins no group by text.
"""

from __future__ import annotations

import re

from crisis_tool.runtime.text_clean import clean_tweet
from crisis_tool.runtime.tokenizer import clean_for_clip

_MENTION_RE = re.compile(r"(?<![\w@])@\w+:?")


def text_key(text: str | None) -> str | None:
    """The normalized text of a post (module docstring), or None when nothing is left."""
    cleaned = clean_for_clip(clean_tweet(text))
    key = " ".join(_MENTION_RE.sub(" ", cleaned).split())
    return key or None
