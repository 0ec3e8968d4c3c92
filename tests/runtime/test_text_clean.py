from __future__ import annotations

import pytest

from crisis_tool.runtime.errors import UsageError
from crisis_tool.runtime.record_text import RecordText, record_text
from crisis_tool.runtime.text_clean import TEXT_SOURCES, clean_tweet


def test_repairs_mojibake() -> None:
    assert clean_tweet("Weâ€™re safe") == "We’re safe"
    assert clean_tweet("containmentÂ efforts") == "containment efforts"


def test_text_after_a_url_survives() -> None:
    text = "Flooding in Houston https://t.co/abc123 more rain expected tonight https://t.co/xyz"
    assert clean_tweet(text) == "Flooding in Houston more rain expected tonight"


def test_removes_only_url_tokens() -> None:
    assert clean_tweet("Irma &amp; Harvey:https://t.co/4WP8NhxSnX update") == "Irma & Harvey: update"
    assert clean_tweet("see www.fema.gov/help now") == "see now"
    assert clean_tweet("HTTP://EXAMPLE.com/x ok") == "ok"
    assert clean_tweet("truncated tweet https://t.co/ab…") == "truncated tweet"
    assert clean_tweet("mail me at help@www.org.net") == "mail me at help@www.org.net"


def test_removes_leading_retweet_marker_only() -> None:
    assert clean_tweet("RT @tveitdal: Where Harvey hits") == "@tveitdal: Where Harvey hits"
    assert clean_tweet("RT: news") == "news"
    assert clean_tweet("  RT\n@a hi") == "@a hi"
    assert clean_tweet("RTE reports RT damage") == "RTE reports RT damage"
    assert clean_tweet("RT") == ""


def test_hashtags_keep_their_word() -> None:
    assert clean_tweet("#NAPA #California #wildfires HORRIBLE") == "NAPA California wildfires HORRIBLE"


def test_collapses_whitespace() -> None:
    assert clean_tweet("  a\t\tb\n\nc  ") == "a b c"
    assert clean_tweet("") == ""
    assert clean_tweet(None) == ""


def test_text_sources_and_the_rule_compose_cleaned_parts() -> None:
    tweet, llava = "RT #Flood in town https://t.co/x", "A  flooded street with cars."
    assert TEXT_SOURCES == ("tweet", "llava", "tweet+llava")
    assert record_text(tweet, llava, "tweet").text == "Flood in town"
    assert record_text(tweet, llava, "llava").text == "A flooded street with cars."
    assert record_text(tweet, llava, "tweet+llava").text == "Flood in town A flooded street with cars."
    assert record_text(tweet, "  ", "tweet+llava") == RecordText("Flood in town", caption_missing=True)


def test_unknown_text_source_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="unknown text source 'image'"):
        record_text("a", "b", "image")
