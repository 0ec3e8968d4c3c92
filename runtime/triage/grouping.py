"""Near-duplicate groups in one streaming pass: posts that share a near-duplicate image or a text key, transitively.

`NearDuplicateGrouper.add(record_id, image_hash, text_key)` is called once per record, in output order, and
returns `Assignment(group, duplicate_of)` at once, so a streaming writer can put both on the record's line:

* `group`: the id of the first record of the record's group (the record's own id when it starts one);
* `duplicate_of`: None for a record that matches no earlier record; otherwise the id of the earliest earlier
  record it matches directly (same text key, or image hash within `max_distance` bits): the post it copies.

Two images match when their pHashes differ in at most `max_distance` bits (`image_hash.MAX_DISTANCE`, 12); two
texts match when their `text_key`s are equal. Groups are the transitive closure (union-find).

Late merges: a record can join two groups that were apart until then (its image matches group A, its text group
B). The merged group keeps the older group's id (the smaller first-record position), and later records get it.
Lines already written keep the id they were given: ids are never rewritten in place. `resolve(group)` maps any
id `add` returned to the group's id now, for a second pass (e.g. the review queue) that wants final groups.

Memory, per record (never its image or text): a record that brings no new key (its image hash already stored
exactly, its text key already seen, or no key at all) costs nothing. A record that brings a new key is kept:
its id (UTF-8 bytes + 8) and union-find parent (8); a new image hash 28 bytes in the `HashIndex` (x2 while its
arrays double); a new text key one dict entry holding a 64-bit BLAKE2b digest (~110 bytes; two different texts
share a digest with probability ~n^2 / 2^65). A merge of two groups that already had lines adds one `resolve`
entry (~100 bytes + the id). Plus 1 MiB fixed. Measured: 100k records (ids of 12 characters), 89k of them
bringing a new key, grew the address space by 17.6 MB, 176 bytes per record; the test
(tests/runtime/test_triage_grouping_memory.py) caps it at 640 bytes per record.

Record ids should be unique: `resolve` looks groups up by id.
"""

from __future__ import annotations

import hashlib
from array import array
from typing import NamedTuple

from crisis_tool.runtime.errors import UsageError
from crisis_tool.runtime.triage.hash_index import HashIndex
from crisis_tool.runtime.triage.image_hash import MAX_DISTANCE

_MAX_HASH = 1 << 64


class Assignment(NamedTuple):
    """The group of one record and the earlier record it duplicates (None when it matches none)."""

    group: str
    duplicate_of: str | None


def _digest(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big")


class NearDuplicateGrouper:
    """One streaming pass over records assigning near-duplicate groups (see the module docstring)."""

    def __init__(self, max_distance: int = MAX_DISTANCE) -> None:
        self._images = HashIndex(max_distance)
        self._texts: dict[int, int] = {}
        self._parent = array("q")
        self._id_bytes = bytearray()
        self._id_end = array("q")
        self._absorbed: dict[str, int] = {}
        self._records = 0

    @property
    def max_distance(self) -> int:
        """The largest Hamming distance at which two image hashes match."""
        return self._images.max_distance

    def __len__(self) -> int:
        """Records added so far."""
        return self._records

    @property
    def remembered(self) -> int:
        """Records kept in memory: those that brought a new image hash or a new text key."""
        return len(self._parent)

    @property
    def compared(self) -> int:
        """Image-hash distance computations so far (a scan of the stored hashes would do one per stored hash)."""
        return self._images.compared

    def _id(self, node: int) -> str:
        start = self._id_end[node - 1] if node else 0
        return self._id_bytes[start : self._id_end[node]].decode("utf-8")

    def _new_node(self, record_id: str) -> int:
        node = len(self._parent)
        self._parent.append(node)
        self._id_bytes += record_id.encode("utf-8")
        self._id_end.append(len(self._id_bytes))
        return node

    def _find(self, node: int) -> int:
        parent = self._parent
        while parent[node] != node:
            parent[node] = parent[parent[node]]  # path halving
            node = parent[node]
        return node

    def _merge(self, matches: list[int]) -> int:
        """Join the groups of `matches` (earlier nodes) into the oldest one and return its root.

        The younger roots had ids emitted as groups: `_absorbed` remembers them for `resolve`.
        """
        roots = sorted({self._find(m) for m in matches})
        for young in roots[1:]:
            self._parent[young] = roots[0]
            self._absorbed[self._id(young)] = young
        return roots[0]

    def add(self, record_id: str, image_hash: int | None = None, text_key: str | None = None) -> Assignment:
        """Place one record (in output order) and return its `Assignment`; no key at all starts a new group."""
        if not isinstance(record_id, str):
            raise UsageError(f"record id must be a string, got {type(record_id).__name__}")
        if image_hash is not None and (
            isinstance(image_hash, bool) or not isinstance(image_hash, int) or not 0 <= image_hash < _MAX_HASH
        ):
            raise UsageError(f"record {record_id}: image hash must be a 64-bit unsigned integer, got {image_hash!r}")
        if text_key is not None and not isinstance(text_key, str):
            raise UsageError(f"record {record_id}: text key must be a string or None")
        self._records += 1
        matches: list[int] = []
        new_hash: int | None = None
        if image_hash is not None:
            owners, distances = self._images.near(image_hash)
            matches += owners.tolist()
            if not (distances == 0).any():
                new_hash = image_hash
        new_digest: int | None = None
        if text_key:
            digest = _digest(text_key)
            text_node = self._texts.get(digest)
            if text_node is None:
                new_digest = digest
            else:
                matches.append(text_node)
        root = self._merge(matches) if matches else None
        if new_hash is not None or new_digest is not None:
            node = self._new_node(record_id)
            if new_hash is not None:
                self._images.add(new_hash, node)
            if new_digest is not None:
                self._texts[new_digest] = node
            if root is not None:
                self._parent[node] = root
        if root is None:
            return Assignment(record_id, None)  # matches no earlier record: starts its own group
        return Assignment(self._id(root), self._id(min(matches)))

    def resolve(self, group: str) -> str:
        """The current id of the group that `add` once returned as `group` (itself unless merged since)."""
        node = self._absorbed.get(group)
        return group if node is None else self._id(self._find(node))
