"""The text near-duplicate key (crisis_tool.runtime.triage.text_key): the tokenizer's cleaning, without mentions."""

from __future__ import annotations

import pytest

from crisis_tool.runtime.triage.text_key import text_key


@pytest.mark.parametrize(
    ("a", "b"),
    [("RT @x: same text", "same text"),
     ("RT @FEMA: Shelter open at #Houston https://t.co/abc", "shelter open at Houston"),
     ("Flood   in\n\tthe city", "flood in the city"),
     ("@a @b water needed @c", "water needed"),
     ("Fish &amp; chips", "fish & chips"),
     ("Weâ€™re safe", "We’re safe")],
)
def test_same_key(a: str, b: str) -> None:
    assert text_key(a) == text_key(b) is not None


@pytest.mark.parametrize(
    ("a", "b"),
    [("flood in the city", "fire in the city"), ("mail a@b.com now", "mail now"), ("water needed", "water needed!")],
)
def test_different_key(a: str, b: str) -> None:
    assert text_key(a) != text_key(b)


@pytest.mark.parametrize("text", [None, "", "   ", "https://t.co/abc", "RT @x:", "@a @b"])
def test_nothing_left_means_no_key(text: str | None) -> None:
    assert text_key(text) is None
