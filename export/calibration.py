"""Calibration and gate inputs: real records (`--calib-data`) or, said loudly, generated ones.

`--calib-data` takes what `predict` reads (JSONL, a TSV with `--image-root`, a folder of images) through the
runtime's own readers, image preprocessing, text rule (`record_text`) and tokenizer, or a CrisisMMD root with
`--task` and `--split`. The same records feed int8 calibration (TensorRT and static Q/DQ) and the fp32/fp16/int8 parity
gates. Records that cannot be used (no image, no text at all, an unreadable image) are skipped and counted,
as `predict` would report them as errors.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from crisis_tool.export.options import DEFAULT_GATE_RECORDS
from crisis_tool.runtime.errors import CrisisToolError, DataError, UsageError

if TYPE_CHECKING:
    from crisis_tool.export.options import ExportOptions
CALIBRATION_RECORDS = 128  # static quantization / TensorRT calibration ranges come from the first ones
GENERATED = "generated"

Batch = tuple[np.ndarray, np.ndarray]  # (pixel_values [B,3,H,W] float32, input_ids [B,L] int64)


@dataclass(frozen=True)
class CalibrationSpec:
    """Where calibration / gate records come from; `data=None` means generated inputs."""

    data: Path | None = None
    image_root: Path | None = None
    task: str | None = None
    split: str | None = None
    splits: str = "settingA"
    limit: int = DEFAULT_GATE_RECORDS

    def check(self) -> None:
        """UsageError for inconsistent options (before any work is done)."""
        if self.data is None and (self.task or self.split or self.image_root):
            raise UsageError("--task, --split and --image-root describe --calib-data: pass --calib-data too")
        if (self.task is None) != (self.split is None):
            raise UsageError("a CrisisMMD --calib-data root needs both --task and --split")
        if self.limit < 1:
            raise UsageError(f"--calib-n must be >= 1 (got {self.limit})")
        if self.data is not None and str(self.data) != "-" and not Path(self.data).exists():
            raise UsageError(f"--calib-data {self.data} not found")
        if self.data is not None and str(self.data) == "-":
            raise UsageError("--calib-data cannot read stdin: give a file, a folder or a CrisisMMD root")
        if self.task is not None:
            from crisis_tool.data.crisismmd import SPLITS, resolve_task, split_path

            spec = resolve_task(self.task)  # UsageError naming the known tasks
            if self.split not in SPLITS:
                raise UsageError(f"--split {self.split!r}: choose from {', '.join(SPLITS)}")
            split_file = split_path(Path(self.data), spec, str(self.split), self.splits)  # type: ignore[arg-type]
            if not split_file.is_file():
                raise UsageError(f"--calib-data {self.data}: no {self.split} split for task {spec.name} "
                                 f"({split_file} not found; `crisis-tool check-data {self.data}` lists what is)")
        elif self.data is not None and Path(self.data).suffix.lower() == ".tsv" and self.image_root is None:
            raise UsageError(f"--calib-data {self.data}: a TSV needs --image-root (the folder its image paths are "
                             "under, e.g. the CrisisMMD folder holding data_image/)")

    def describe(self) -> str:
        if self.data is None:
            return GENERATED
        if self.task:
            return f"crisismmd:{self.data} task={self.task} split={self.split} ({self.splits})"
        return f"records:{self.data}"


@dataclass
class GateData:
    """Gate batches (batch 1, an odd batch, then max-batch chunks); the first ones also calibrate."""

    source: str
    batches: list[Batch]
    skipped: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return sum(int(p.shape[0]) for p, _ in self.batches)

    @property
    def generated(self) -> bool:
        return self.source == GENERATED

    def describe(self) -> str:
        """The manifest's top-level `calibration`: "generated", or the records' source with n (gate records)
        and how many of them calibrated."""
        if self.generated:
            return GENERATED
        return f"{self.source} n={self.n} (calibration {min(self.n, CALIBRATION_RECORDS)})"


def batch_plan(n: int, top: int) -> list[int]:
    """Batch sizes covering n records: 1, an odd batch (3), then chunks of `top` (the last may be smaller)."""
    sizes: list[int] = []
    for first in (1, min(3, top)):
        if sum(sizes) + first <= n and first not in sizes:
            sizes.append(first)
    rest = n - sum(sizes)
    while rest > 0:
        sizes.append(min(top, rest))
        rest -= sizes[-1]
    return sizes


def _source_records(spec: CalibrationSpec) -> Iterable[Any]:
    from crisis_tool.runtime.records import Record, read_records

    if spec.task is None:
        return read_records(spec.data, spec.image_root)  # type: ignore[arg-type]
    from crisis_tool.data.crisismmd import load_split

    root = Path(spec.data)  # type: ignore[arg-type]
    return (Record(ex.image_id, ex.text, str(root / ex.image), ex.llava_text, i, str(root))
            for i, ex in enumerate(load_split(root, spec.task, str(spec.split), spec.splits), start=1))


def usable_records(spec: CalibrationSpec, preprocess: dict[str, Any], text_source: str
                   ) -> Iterator[tuple[np.ndarray, str] | None]:
    """(pixel_values [3,H,W], text by the one rule) per record, None for a record that cannot be used.

    The text is `record_text(...).text`, as predict feeds the encoder (it may be "" for a tweet that cleans to
    nothing); a record with no text at all (`empty_input`) is skipped, as predict reports it as an error.
    """
    from crisis_tool.runtime.preprocess import PreprocessConfig, load_image, preprocess_image
    from crisis_tool.runtime.record_text import record_text
    from crisis_tool.runtime.records import Record

    cfg = PreprocessConfig.from_dict(preprocess)
    for record in _source_records(spec):
        if not isinstance(record, Record) or not record.image:
            yield None
            continue
        composed = record_text(record.text, record.llava_text, text_source)
        if composed.empty_input:
            yield None
            continue
        text = composed.text
        try:
            pixels = preprocess_image(load_image(record.image), cfg)
        except (CrisisToolError, OSError, ValueError):
            yield None
            continue
        yield pixels.astype(np.float32, copy=False), text


def load_gate_data(spec: CalibrationSpec, *, preprocess: dict[str, Any], tokenizer: Any, text_source: str,
                   max_batch: int) -> GateData:
    """Up to `spec.limit` usable records as gate batches (tokenized per batch, trimmed as the runtime does)."""
    pixels: list[np.ndarray] = []
    texts: list[str] = []
    skipped = 0
    for item in usable_records(spec, preprocess, text_source):
        if item is None:
            skipped += 1
            continue
        pixels.append(item[0])
        texts.append(item[1])
        if len(pixels) >= spec.limit:
            break
    if not pixels:
        raise DataError(f"--calib-data {spec.data}: no usable record (each needs a readable image and text; "
                        f"{skipped} skipped)")
    batches, start = [], 0
    for size in batch_plan(len(pixels), max_batch):
        chunk = slice(start, start + size)
        batches.append((np.stack(pixels[chunk]), tokenizer.tokenize(texts[chunk], trim=True).astype(np.int64)))
        start += size
    notes = []
    if len(pixels) < spec.limit:
        notes.append(f"only {len(pixels)} usable records (asked for {spec.limit})")
    if skipped:
        notes.append(f"{skipped} records skipped (no image, no text or an unreadable image)")
    return GateData(spec.describe(), batches, skipped, notes)


def generated_gate_data(batches: list[int], image_size: int, sot: int, eot: int, context_length: int
                        ) -> GateData:
    """Seeded generated inputs (the gates' batches also calibrate)."""
    from crisis_tool.export.validate import generated_inputs

    inputs = generated_inputs(batches, image_size, sot, eot, context_length)
    note = ("no --calib-data: calibration and the reduced-precision gates use GENERATED inputs, whose ranges "
            "are not those of real photos and tweets")
    return GateData(GENERATED, inputs, 0, [note])


def warn(text: str) -> None:
    """One loud line on stderr."""
    print(f"warning: {text}", file=sys.stderr, flush=True)


def calibration_feeds(component: str, cases: list[Any], limit: int = CALIBRATION_RECORDS
                      ) -> list[dict[str, np.ndarray]]:
    """Feeds of one graph from the first gate cases (up to `limit` records; the head gets reference embeddings)."""
    feeds, count = [], 0
    for case in cases:
        if count >= limit:
            break
        count += case.batch
        if component == "image_encoder":
            feeds.append({"pixel_values": case.pixel_values})
        elif component == "text_encoder":
            feeds.append({"input_ids": case.input_ids})
        else:
            feeds.append({"image_embeds": case.image_embeds, "text_embeds": case.text_embeds})
    return feeds


def spec_from_options(opts: ExportOptions) -> CalibrationSpec:
    """The CalibrationSpec of an export request (`--calib-data` and the options that describe it)."""
    data = opts.calib_data
    return CalibrationSpec(
        data=Path(data) if data is not None else None,
        image_root=Path(opts.calib_image_root) if opts.calib_image_root is not None else None,
        task=opts.calib_task,
        split=opts.calib_split,
        splits=opts.calib_splits,
        limit=opts.calib_n,
    )


def gate_data_for(spec: CalibrationSpec, *, preprocess: dict[str, Any], tokenizer: Any, text_source: str,
                  max_batch: int, batches: list[int]) -> GateData:
    """Records from `spec`, or generated inputs at `batches` (with a loud warning on stderr)."""
    if spec.data is not None:
        data = load_gate_data(spec, preprocess=preprocess, tokenizer=tokenizer, text_source=text_source,
                              max_batch=max_batch)
        for note in data.notes:
            warn(f"--calib-data: {note}")
        return data
    data = generated_gate_data(batches, int(preprocess["size"]), int(tokenizer.sot_token_id),
                               int(tokenizer.eot_token_id), int(tokenizer.context_length))
    warn(data.notes[0])
    return data
