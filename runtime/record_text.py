"""The one rule that decides the text a record feeds the CLIP text encoder, for every text source.

Training, evaluation, predict, bench and serve all call `record_text`; nothing else composes text.

| source        | caption present (non-empty after cleaning) | caption missing or empty          |
|---------------|--------------------------------------------|-----------------------------------|
| `tweet`       | cleaned tweet                              | cleaned tweet                     |
| `llava`       | cleaned caption                            | cleaned tweet (`caption_missing`) |
| `tweet+llava` | cleaned tweet + " " + cleaned caption      | cleaned tweet (`caption_missing`) |

An empty or missing tweet contributes nothing, so the text may be "" (e.g. a tweet that is only a URL, with no
caption). Whether "" is acceptable is the caller's policy: training encodes it; the Predictor reports the
record's `text` field as empty when `empty_input` says the rule had nothing at all to work from (a tweet that
only cleans to "" is still classified).
"""

from __future__ import annotations

from dataclasses import dataclass

from crisis_tool.runtime.errors import UsageError
from crisis_tool.runtime.text_clean import TEXT_SOURCES, clean_tweet


@dataclass(frozen=True)
class RecordText:
    """The encoder's text for one record, and what the rule had to work with.

    `caption_missing`: the source wanted a caption and the record had none (or one that cleans to "").
    `empty_input`: every input the rule used was missing or blank before cleaning.
    """

    text: str
    caption_missing: bool = False
    empty_input: bool = False


def check_text_source(source: str) -> str:
    """`source` if it is one of TEXT_SOURCES, else UsageError."""
    if source not in TEXT_SOURCES:
        raise UsageError(f"unknown text source {source!r}; expected one of {', '.join(TEXT_SOURCES)}")
    return source


def _blank(value: str | None) -> bool:
    return value is None or not value.strip()


def record_text(tweet: str | None, caption: str | None, source: str) -> RecordText:
    """The text for one record under `source` (see the module table)."""
    check_text_source(source)
    cleaned_tweet = clean_tweet(tweet)
    if source == "tweet":
        return RecordText(cleaned_tweet, empty_input=_blank(tweet))
    cleaned_caption = clean_tweet(caption)
    if not cleaned_caption:
        return RecordText(cleaned_tweet, caption_missing=True, empty_input=_blank(tweet))
    if source == "llava":
        return RecordText(cleaned_caption)
    return RecordText(" ".join(part for part in (cleaned_tweet, cleaned_caption) if part))
