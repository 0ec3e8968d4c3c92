"""The second pass of `crisis-tool label`: near-duplicate groups across every file of one run, and its review queue.

The actors answer records in parallel and in any order, so they cannot number groups; instead each answer line
in a file's partial carries its post's grouping keys under `TRIAGE_KEY` (`triage_keys`: the image's 64-bit pHash
and a 64-bit digest of the normalised text, plus, when a review queue was asked for, the post's image path and
text). When every file of the run is answered, `group_run` reads the partials once, in input order (file by
file, record by record), puts each answered line through one `NearDuplicateGrouper` (`group`, `duplicate_of`),
drops the keys and writes the outputs: first every output to a temporary beside it, then all renamed into place,
then the partials removed. So groups span all files labelled in one run (a rerun that resumes a partial run is the
same run; files completed by an earlier run keep the groups they got). It costs one read and one write of the
answers, no model work; memory is the grouper's (about 180 bytes per post that brings a new key; see
`runtime.triage.grouping`) plus, with a review queue, its few hundred bytes per post.

Group ids are record ids, so ids should be unique across the files of a run (tweet ids are).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from crisis_tool.runtime.serve.label_output import partial_paths, write_parquet
from crisis_tool.runtime.triage.grouping import NearDuplicateGrouper
from crisis_tool.runtime.triage.queue_writer import ReviewQueueWriter
from crisis_tool.runtime.triage.text_key import text_key

TRIAGE_KEY = "_triage"  # the private field of a partial's line; never in an output


def triage_keys(image_hash: int | None, text: str | None, post: bool = False, image: str | None = None
                ) -> dict[str, Any]:
    """The grouping keys of one answered post (hex strings, None when absent); with `post`, its image and text."""
    key = text_key(text)
    keys: dict[str, Any] = {
        "image": None if image_hash is None else f"{int(image_hash):016x}",
        "text": None if key is None else hashlib.blake2b(key.encode("utf-8"), digest_size=8).hexdigest(),
    }
    if post:
        keys |= {"post_image": image, "post_text": text}
    return keys


@dataclass(frozen=True)
class RunFile:
    """One file of the run: its answered partial becomes `out` (JSONL or Parquet)."""

    out: Path
    output_format: str

    @property
    def partial(self) -> Path:
        return partial_paths(self.out)[0]

    @property
    def staged(self) -> Path:
        """The temporary the grouped lines go to (a `.NAME.*.partial` name: a killed run's is cleaned later)."""
        return self.out.with_name(f".{self.out.name}.grouped.partial")


def group_run(files: Sequence[RunFile], groups: bool = True, review_queue: ReviewQueueWriter | None = None
              ) -> list[Path]:
    """Group every answered line of `files` (in order), write the outputs and return them (see module docstring)."""
    grouper = NearDuplicateGrouper() if groups else None
    if review_queue is not None and grouper is not None:
        review_queue.resolve = grouper.resolve  # the queue folds groups as they are at the end of the run
    for run_file in files:
        _stage(run_file, grouper, review_queue)
    for run_file in files:
        if run_file.output_format == "jsonl":
            os.replace(run_file.staged, run_file.out)
        else:
            write_parquet(run_file.staged, run_file.out)
            run_file.staged.unlink()
    for run_file in files:
        for path in partial_paths(run_file.out):
            path.unlink(missing_ok=True)
    return [run_file.out for run_file in files]


def _stage(run_file: RunFile, grouper: NearDuplicateGrouper | None, queue: ReviewQueueWriter | None) -> None:
    with open(run_file.partial, encoding="utf-8") as lines, open(run_file.staged, "w", encoding="utf-8") as out:
        for raw in lines:
            line = json.loads(raw)
            keys = line.pop(TRIAGE_KEY, None) or {}
            if grouper is not None and not line.get("error") and line.get("id") is not None:
                image = keys.get("image")
                assignment = grouper.add(str(line["id"]), None if image is None else int(image, 16), keys.get("text"))
                line["group"], line["duplicate_of"] = assignment.group, assignment.duplicate_of
            if queue is not None:
                queue.add(line, SimpleNamespace(image=keys.get("post_image"), text=keys.get("post_text")))
            out.write(json.dumps(line, ensure_ascii=False) + "\n")
        out.flush()
        os.fsync(out.fileno())
