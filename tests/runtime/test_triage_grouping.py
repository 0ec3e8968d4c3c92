"""Near-duplicate groups (crisis_tool.runtime.triage.grouping and .hash_index): the rules, by hand, and the
index against a brute-force scan."""

from __future__ import annotations

import random

import numpy as np
import pytest

from crisis_tool.runtime.errors import UsageError
from crisis_tool.runtime.triage.grouping import Assignment, NearDuplicateGrouper
from crisis_tool.runtime.triage.hash_index import HashIndex
from crisis_tool.runtime.triage.image_hash import MAX_DISTANCE, hamming
from crisis_tool.runtime.triage.text_key import text_key

A = 0x0123_4567_89AB_CDEF


def _flip(value: int, bits: list[int]) -> int:
    for bit in bits:
        value ^= 1 << bit
    return value


def test_retweets_share_a_group() -> None:
    grouper = NearDuplicateGrouper()
    assert grouper.add("p1", None, text_key("Bridge closed on Route 9 https://t.co/x")) == ("p1", None)
    assert grouper.add("p2", None, text_key("RT @WSDOT: Bridge closed on Route 9")) == ("p1", "p1")
    assert grouper.add("p3", None, text_key("Bridge open on Route 9")) == ("p3", None)


def test_groups_are_transitive_over_images_and_texts() -> None:
    grouper = NearDuplicateGrouper()
    assert grouper.add("p1", A, "flood") == ("p1", None)
    assert grouper.add("p2", _flip(A, [0, 1, 2, 3, 4]), "other words") == ("p1", "p1")  # image 5 bits away
    assert grouper.add("p3", None, "other words") == ("p1", "p2")  # text of p2: the post it copies
    assert grouper.add("p4", _flip(A, [60]), None) == ("p1", "p1")  # nearest earlier record is p1


def test_a_late_merge_keeps_the_older_id_and_resolve_maps_emitted_ids() -> None:
    grouper = NearDuplicateGrouper()
    assert grouper.add("p1", A, None) == ("p1", None)
    assert grouper.add("p2", None, "shelter open") == ("p2", None)
    assert grouper.add("p3", 0xFFFF_0000_FFFF_0000, "road closed") == ("p3", None)
    assert grouper.add("p4", A, "shelter open") == ("p1", "p1")  # joins p1's and p2's groups
    assert grouper.add("p5", None, "shelter open") == ("p1", "p2")  # later records get the older id
    assert grouper.add("p6", 0xFFFF_0000_FFFF_0000, "shelter open") == ("p1", "p2")
    assert [grouper.resolve(g) for g in ("p1", "p2", "p3", "unknown")] == ["p1", "p1", "p1", "unknown"]


def test_resolve_follows_merges_of_merges() -> None:
    grouper = NearDuplicateGrouper()
    for i in range(4):
        grouper.add(f"q{i}", None, f"text {i}")
    grouper.add("m1", None, "text 2").group  # noqa: B018 - plain duplicate of q2
    grouper.add("m2", A, "text 3")  # q3's group, with an image
    grouper.add("m3", A, "text 2")  # joins q3 into q2
    assert grouper.add("m4", None, "text 1").group == "q1"
    grouper.add("m5", None, "text 1 ")  # different key ("text 1 " is not cleaned here): no merge
    assert grouper.add("m6", A, "text 1") == ("q1", "q1")  # joins q2 (and q3) into q1
    assert grouper.resolve("q3") == grouper.resolve("q2") == "q1"
    assert grouper.resolve("q0") == "q0"


@pytest.mark.parametrize(
    "per_band", [(3, 3, 3, 3), (12, 0, 0, 0), (0, 0, 0, 12), (4, 4, 4, 0), (0, 5, 0, 7), (1, 2, 4, 5)]
)
def test_images_match_up_to_12_bits_however_the_bits_fall(per_band: tuple[int, ...]) -> None:
    rng = random.Random(sum(per_band) * 7 + per_band[0])
    bits = [16 * band + b for band, count in enumerate(per_band) for b in rng.sample(range(16), count)]
    grouper = NearDuplicateGrouper()
    grouper.add("p1", A)
    assert hamming(A, _flip(A, bits)) == 12 == MAX_DISTANCE
    assert grouper.add("p2", _flip(A, bits)) == ("p1", "p1")
    one_more = next(b for b in range(64) if b not in bits)
    apart = NearDuplicateGrouper()
    apart.add("p1", A)
    assert apart.add("p3", _flip(A, [*bits, one_more])) == ("p3", None)  # 13 bits


def test_the_index_finds_exactly_what_a_scan_finds() -> None:
    rng = np.random.default_rng(0)
    index = HashIndex(MAX_DISTANCE)
    stored: list[int] = []
    for i in range(1500):
        if stored and i % 3 == 0:  # a near copy of an earlier hash, 0 to 16 bits away
            base = stored[int(rng.integers(len(stored)))]
            value = _flip(base, [int(b) for b in rng.choice(64, int(rng.integers(0, 17)), replace=False)])
        else:
            value = int(rng.integers(0, 2**63)) * 2 + int(rng.integers(0, 2))
        owners, distances = index.near(value)
        expected = {j for j, h in enumerate(stored) if hamming(h, value) <= MAX_DISTANCE}
        assert set(owners.tolist()) == expected
        assert all(hamming(stored[o], value) == d for o, d in zip(owners.tolist(), distances.tolist()))
        index.add(value, len(stored))
        stored.append(value)


def test_a_lookup_compares_a_small_share_of_the_stored_hashes() -> None:
    rng = random.Random(1)
    grouper = NearDuplicateGrouper()
    n = 6000
    for i in range(n):
        grouper.add(f"p{i}", rng.getrandbits(64))
    scan = n * (n - 1) // 2
    assert grouper.compared < 0.08 * scan  # 4 * 697 / 65536 = 4.3% expected for random hashes


def test_exact_copies_and_keyless_records_cost_no_memory() -> None:
    grouper = NearDuplicateGrouper()
    grouper.add("p1", A, "flood")
    for i in range(100):
        assert grouper.add(f"c{i}", A, "flood") == ("p1", "p1")
        assert grouper.add(f"k{i}") == Assignment(f"k{i}", None)
        assert grouper.add(f"e{i}", None, "") == (f"e{i}", None)  # an empty key is no key
    assert grouper.remembered == 1 and len(grouper) == 301


@pytest.mark.parametrize(
    ("args", "match"),
    [((1, None, None), "record id must be a string"), (("p9", -1, None), "record p9: image hash"),
     (("p9", 2**64, None), "record p9: image hash"), (("p9", True, None), "record p9: image hash"),
     (("p9", 1.5, None), "record p9: image hash"), (("p9", None, b"x"), "record p9: text key")],
)
def test_bad_keys_are_usage_errors_naming_the_record(args: tuple, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        NearDuplicateGrouper().add(*args)


def test_bad_max_distance_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="max_distance"):
        NearDuplicateGrouper(64)
