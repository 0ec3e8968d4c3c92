"""The bundle manifest, typed: the one place that names manifest keys and bundle files.

`manifest.json` is parsed against this schema (one line per problem, never a traceback) and covered by a
digest: `manifest.sha256` holds the sha256 of the canonical JSON (sorted keys, no spaces) of the whole
manifest, so no field, label list included, can change without failing `verify`. Every path the manifest
names is relative, stays inside the bundle and (checked by `Bundle.load(verify=True)`) is listed in `files`
with its sha256 and size.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from crisis_tool.runtime.atomic_files import atomic_write_text
from crisis_tool.runtime.errors import BundleError
from crisis_tool.runtime.file_guard import open_regular, read_capped, regular_file_size
from crisis_tool.runtime.manifest_schema import ManifestReader, resolve_inside, unsafe_relpath
from crisis_tool.runtime.model_spec import (
    LEGACY_HEAD_GRAPH,
    PRECISIONS,
    TASK_NAME,
    GraphSpec,
    HeadSpec,
    ModelSpec,
    TensorSpec,
)
from crisis_tool.runtime.triage.review_threshold import FLAG_ALL

FORMAT_VERSION = 3
LEGACY_FORMAT_VERSION = 2  # one head, named by `task`/`labels`: still read, as a one-head spec
MANIFEST_NAME = "manifest.json"
MANIFEST_DIGEST_NAME = "manifest.sha256"
MANIFEST_SIGNATURE_NAME = "manifest.sig"  # written after the manifest (crisis_tool.runtime.signing)
HEAD_WEIGHTS_NAME = "head.safetensors"  # the one head of a format-2 bundle
MODEL_CONFIG_NAME = "model_config.json"
TOKENIZER_DIR = "tokenizer"
ENGINE_DIR = "engines"
MAX_MANIFEST_BYTES = 16 << 20


def graph_file_name(graph: str, precision: str) -> str:
    """`image_encoder.onnx` for fp32, `image_encoder.int8.onnx` for a variant."""
    return f"{graph}.onnx" if precision == "fp32" else f"{graph}.{precision}.onnx"


def engine_file_name(graph: str, precision: str) -> str:
    return f"{ENGINE_DIR}/{graph}.{precision}.engine"


def engine_sidecar_name(graph: str, precision: str) -> str:
    return f"{ENGINE_DIR}/{graph}.{precision}.json"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a regular file's bytes (a FIFO or device is refused, never read)."""
    digest = hashlib.sha256()
    with open_regular(path) as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def canonical_digest(data: Any) -> str:
    """sha256 of the canonical JSON of `data` (sorted keys, compact separators, ASCII)."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    size: int

    @classmethod
    def parse(cls, r: ManifestReader) -> FileEntry:
        sha, size = r.get("sha256", str), r.get("size", int)
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha) or size < 0:
            raise r.fail("sha256", "must be 64 lowercase hex digits with a size >= 0")
        return cls(sha, size)


@dataclass(frozen=True)
class GraphEntry:
    """One ONNX graph of a precision: its file and the I/O it was exported with (from the graph table)."""

    file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @classmethod
    def for_graph(cls, spec: GraphSpec, file: str) -> GraphEntry:
        return cls(file, spec.inputs, spec.outputs)

    @classmethod
    def parse(cls, r: ManifestReader) -> GraphEntry:
        def tensors(key: str) -> tuple[TensorSpec, ...]:
            items = r.get(key, list)
            out = []
            for i, item in enumerate(items):
                t = ManifestReader(item, f"{r.where}.{key}[{i}]", r.origin)
                shape = t.get("shape", list)
                if not all(isinstance(d, (str, int)) and not isinstance(d, bool) for d in shape):
                    raise t.fail("shape", "must list dim names or sizes")
                out.append(TensorSpec(t.get("name", str), t.get("dtype", str), tuple(shape)))
            return tuple(out)

        return cls(r.relpath("file"), tensors("inputs"), tensors("outputs"))

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "inputs": [t.to_dict() for t in self.inputs],
                "outputs": [t.to_dict() for t in self.outputs]}


@dataclass(frozen=True)
class EngineEntry:
    """One TensorRT engine: its file and the machine it was built for (engines are not portable)."""

    file: str
    trt_version: str
    gpu_name: str
    compute_capability: str
    precision: str | None = None
    source_graph: str | None = None
    profile: dict[str, Any] = field(default_factory=dict)
    fp32_layers: int | None = None

    @classmethod
    def parse(cls, r: ManifestReader) -> EngineEntry:
        source = r.get("source_graph", str, None)
        if source is not None and unsafe_relpath(source):
            raise r.fail("source_graph", f"{source!r} {unsafe_relpath(source)}")
        return cls(r.relpath("file"), r.get("trt_version", str), r.get("gpu_name", str),
                   r.get("compute_capability", str), r.get("precision", str, None), source,
                   r.get("profile", dict, {}), r.get("fp32_layers", int, None))

    @property
    def profile_max_batch(self) -> int | None:
        """The smallest batch upper bound of the engine's optimization profile (None if unknown)."""
        limits = [s["max"][0] for s in self.profile.values()
                  if isinstance(s, dict) and isinstance(s.get("max"), list) and s["max"]]
        ints = [int(v) for v in limits if isinstance(v, int) and not isinstance(v, bool)]
        return min(ints) if ints else None

    def to_dict(self) -> dict[str, Any]:
        out = {"file": self.file, "trt_version": self.trt_version, "gpu_name": self.gpu_name,
               "compute_capability": self.compute_capability, "precision": self.precision,
               "source_graph": self.source_graph, "profile": self.profile, "fp32_layers": self.fp32_layers}
        return {k: v for k, v in out.items() if v is not None}


@dataclass(frozen=True)
class TokenizerEntry:
    vocab_file: str
    context_length: int
    sot_token_id: int
    eot_token_id: int

    @classmethod
    def parse(cls, r: ManifestReader) -> TokenizerEntry:
        entry = cls(r.relpath("vocab_file"), r.get("context_length", int), r.get("sot_token_id", int),
                    r.get("eot_token_id", int))
        if not 2 <= entry.context_length <= 4096:
            raise r.fail("context_length", f"{entry.context_length} is out of range (2..4096)")
        return entry

    def to_dict(self) -> dict[str, Any]:
        return {"vocab_file": self.vocab_file, "context_length": self.context_length,
                "sot_token_id": self.sot_token_id, "eot_token_id": self.eot_token_id}


def parse_head(r: ManifestReader) -> HeadSpec:
    """One head of the spec: task, labels, graph, weights file, temperature and review threshold."""
    task = r.get("task", str)
    if not TASK_NAME.match(task):
        raise r.fail("task", f"{task!r} is not a task name (lower-case letters, digits, '_')")
    labels = r.get("labels", list)
    if not labels or not all(isinstance(x, str) for x in labels) or len(set(labels)) != len(labels):
        raise r.fail("labels", "must be a non-empty list of distinct strings")
    graph = r.get("graph", str)
    if not TASK_NAME.match(graph):
        raise r.fail("graph", f"{graph!r} is not a graph name")
    temperature = r.get("temperature", (int, float), 1.0)
    if not math.isfinite(temperature) or not 0.01 <= temperature <= 100:
        raise r.fail("temperature", f"{temperature!r} is out of range (0.01..100)")
    threshold = r.get("review_threshold", (int, float), None)
    if isinstance(temperature, bool) or isinstance(threshold, bool):
        raise r.fail("temperature", "and review_threshold must be numbers")
    if threshold is not None and not (0.0 <= threshold <= 1.0 or threshold == FLAG_ALL):
        raise r.fail("review_threshold", f"{threshold!r} is out of range (0..1, or {FLAG_ALL} to flag every post)")
    return HeadSpec(task, tuple(labels), graph, r.relpath("weights"), float(temperature),
                    None if threshold is None else float(threshold), r.get("explain", bool, False),
                    r.get("explain_tokens", bool, False))


def parse_spec(r: ManifestReader, version: int) -> ModelSpec:
    """The model spec of a format-3 manifest, or the one head a format-2 manifest names by task/labels."""
    if version == LEGACY_FORMAT_VERSION:
        labels = r.get("labels", list)
        if not labels or not all(isinstance(x, str) for x in labels) or len(set(labels)) != len(labels):
            raise r.fail("labels", "must be a non-empty list of distinct strings")
        return ModelSpec((HeadSpec(r.get("task", str), tuple(labels), LEGACY_HEAD_GRAPH, HEAD_WEIGHTS_NAME),))
    heads = r.child("spec").get("heads", list)
    parsed = tuple(parse_head(ManifestReader(h, f"spec.heads[{i}]", r.origin)) for i, h in enumerate(heads))
    if not parsed:
        raise r.fail("spec.heads", "must list at least one head")
    for field_name in ("task", "graph", "weights"):
        values = [getattr(h, field_name) for h in parsed]
        if len(set(values)) != len(values):
            raise r.fail("spec.heads", f"name a {field_name} twice")
    return ModelSpec(parsed)


@dataclass(frozen=True)
class Manifest:
    """What a bundle holds and how it was made. Written by export, read by everything else."""

    crisis_tool_version: str
    created_utc: str
    spec: ModelSpec
    text_source: str
    preprocess: dict[str, Any]
    tokenizer: TokenizerEntry
    dims: dict[str, int]  # fixed sizes shared by every graph: H, W (image), D (embedding width)
    precision: str
    max_batch: int
    opset: int
    graphs: dict[str, dict[str, GraphEntry]]  # precision -> graph -> entry
    engines: dict[str, dict[str, EngineEntry]] = field(default_factory=dict)  # precision -> graph -> entry
    parity: dict[str, Any] = field(default_factory=dict)
    validated: dict[str, Any] = field(default_factory=dict)
    forced: bool = False
    embeddings: str = "unnormalized"
    versions: dict[str, str] = field(default_factory=dict)
    calibration: str | None = None  # what calibrated / gated the variants: "generated" or "<--calib-data> n=N"
    encoders: dict[str, Any] = field(default_factory=dict)  # {"model": ..., "pretrained": ..., "random": bool}
    files: dict[str, FileEntry] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    # ------------------------------------------------------------------ one-head views
    @property
    def task(self) -> str:
        """The first head's task (the only one of a one-head bundle)."""
        return self.spec.heads[0].task

    @property
    def labels(self) -> tuple[str, ...]:
        """The first head's labels (the only ones of a one-head bundle)."""
        return self.spec.heads[0].labels

    @property
    def random_encoders(self) -> bool:
        """True when the encoders were exported with random weights (`--pretrained none`)."""
        return bool(self.encoders.get("random"))

    # ------------------------------------------------------------------ reading
    @classmethod
    def from_dict(cls, data: Any, origin: str = MANIFEST_NAME) -> Manifest:
        """Parse a decoded manifest.json; BundleError naming the first field that is wrong."""
        r = ManifestReader(data, "", origin)
        version = r.get("format_version", int)
        if version not in (LEGACY_FORMAT_VERSION, FORMAT_VERSION):
            raise BundleError(f"{origin}: bundle format {version!r} is not supported (expected {FORMAT_VERSION}); "
                              "re-export it with this crisis-tool: crisis-tool export --model RUN_DIR --out BUNDLE")
        spec = parse_spec(r, version)
        dims_reader = r.child("dims")
        dims = {k: dims_reader.get(k, int) for k in ("H", "W", "D")}
        if version == LEGACY_FORMAT_VERSION and dims_reader.get("C", int) != len(spec.heads[0].labels):
            raise r.fail("dims.C", f"is {dims_reader.data['C']} but there are {len(spec.heads[0].labels)} labels")
        graphs = {p: r.child("graphs").mapping(p, GraphEntry.parse) for p in r.child("graphs").data}
        engines = {p: r.child("engines", {}).mapping(p, EngineEntry.parse) for p in r.child("engines", {}).data}
        manifest = cls(
            crisis_tool_version=r.get("crisis_tool_version", str), created_utc=r.get("created_utc", str),
            spec=spec, text_source=r.get("text_source", str),
            preprocess=r.get("preprocess", dict), tokenizer=TokenizerEntry.parse(r.child("tokenizer")),
            dims=dims, precision=r.get("precision", str), max_batch=r.get("max_batch", int),
            opset=r.get("opset", int), graphs=graphs, engines=engines, parity=r.get("parity", dict, {}),
            validated=r.get("validated", dict, {}), forced=r.get("forced", bool, False),
            embeddings=r.get("embeddings", str, "unnormalized"), versions=r.get("versions", dict, {}),
            calibration=r.get("calibration", str, None), encoders=r.get("encoders", dict, {}),
            files=r.mapping("files", FileEntry.parse), format_version=version,
        )
        manifest._check_consistency(r)
        return manifest

    def _check_consistency(self, r: ManifestReader) -> None:
        specs = self.spec.graphs()
        for section, table in (("graphs", self.graphs), ("engines", self.engines)):
            for precision, entries in table.items():
                if precision not in PRECISIONS:
                    raise r.fail(f"{section}.{precision}", f"is not a precision ({', '.join(PRECISIONS)})")
                unknown = sorted(set(entries) - set(specs))
                if unknown:
                    raise r.fail(f"{section}.{precision}", f"names unknown graph(s) {', '.join(unknown)}")
        for precision, graphs in self.graphs.items():
            for name, entry in graphs.items():
                if (entry.inputs, entry.outputs) != (specs[name].inputs, specs[name].outputs):
                    raise r.fail(f"graphs.{precision}.{name}", "does not match the model spec's inputs/outputs")
        fp32 = self.graphs.get("fp32", {})
        if set(fp32) != set(specs):
            raise r.fail("graphs.fp32", f"must hold every graph ({', '.join(specs)})")
        if self.precision not in self.graphs:
            raise r.fail("precision", f"{self.precision!r} has no graphs")
        for rel in self.files:
            problem = unsafe_relpath(rel)
            if problem:
                raise r.fail("files", f"entry {rel!r} {problem}")
        if self.max_batch < 1:
            raise r.fail("max_batch", "must be >= 1")

    @classmethod
    def load(cls, root: str | Path) -> Manifest:
        """Read and parse `root/manifest.json` (a regular file, at most 16 MB)."""
        return cls.from_dict(read_manifest_json(root), str(Path(root) / MANIFEST_NAME))

    # ------------------------------------------------------------------ writing
    def to_dict(self) -> dict[str, Any]:
        """The manifest as JSON data, always in the current format (a format-2 manifest is re-written as 3)."""
        return {
            "format_version": FORMAT_VERSION, "crisis_tool_version": self.crisis_tool_version,
            "created_utc": self.created_utc, "spec": self.spec.to_dict(),
            "text_source": self.text_source, "preprocess": self.preprocess, "tokenizer": self.tokenizer.to_dict(),
            "dims": dict(self.dims), "precision": self.precision, "max_batch": self.max_batch, "opset": self.opset,
            "embeddings": self.embeddings, "encoders": self.encoders,
            "graphs": {p: {g: e.to_dict() for g, e in gs.items()} for p, gs in self.graphs.items()},
            "engines": {p: {g: e.to_dict() for g, e in es.items()} for p, es in self.engines.items()},
            "parity": self.parity, "validated": self.validated, "forced": self.forced, "versions": self.versions,
            **({"calibration": self.calibration} if self.calibration is not None else {}),
            "files": {rel: {"sha256": f.sha256, "size": f.size} for rel, f in self.files.items()},
        }

    def digest(self) -> str:
        return canonical_digest(self.to_dict())

    def with_file_table(self, root: Path) -> Manifest:
        """This manifest with `files` set to every file under `root` but the manifest and its digest."""
        skip = set(UNHASHED_NAMES)
        table = {}
        for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
            rel = path.relative_to(root).as_posix()
            if rel not in skip:
                table[rel] = FileEntry(sha256_file(path), path.stat().st_size)
        return replace(self, files=table)

    def save(self, root: Path) -> Manifest:
        """Hash every file of `root`, then write `manifest.json` and `manifest.sha256` (atomically, last)."""
        final = self.with_file_table(root)
        data = final.to_dict()
        atomic_write_text(Path(root) / MANIFEST_NAME, json.dumps(data, indent=2) + "\n")
        atomic_write_text(Path(root) / MANIFEST_DIGEST_NAME, canonical_digest(data) + "\n")
        return final

    # ------------------------------------------------------------------ checking
    def referenced_files(self) -> list[str]:
        """Every bundle path the manifest names (graphs, engines, tokenizer vocabulary, model files)."""
        refs = [self.tokenizer.vocab_file, MODEL_CONFIG_NAME, *(h.weights for h in self.spec.heads)]
        refs += [e.file for gs in self.graphs.values() for e in gs.values()]
        refs += [e.file for es in self.engines.values() for e in es.values()]
        return list(dict.fromkeys(refs))

    def verify(self, root: str | Path) -> None:
        """Check the digest, that every referenced path is listed, and every listed file's size and sha256."""
        root = Path(root)
        digest_path = root / MANIFEST_DIGEST_NAME
        try:
            stored = read_capped(digest_path, 1024).decode("ascii", errors="replace").strip()
        except Exception as exc:  # noqa: BLE001 - UnsafeFileError and friends: one line
            raise BundleError(f"{root}: missing or unreadable {MANIFEST_DIGEST_NAME} ({exc})") from None
        try:
            actual = canonical_digest(read_manifest_json(root))
        except ValueError:  # a number JSON reads as inf (1e400) has no canonical form: not what export wrote
            actual = "not canonical JSON"
        if stored != actual:
            raise BundleError(f"{root}: {MANIFEST_NAME} was altered (its digest does not match "
                              f"{MANIFEST_DIGEST_NAME})")
        if not self.files:
            raise BundleError(f"{root}: manifest lists no files")
        extra = unlisted_files(root, self.files)
        if extra:  # a tool could load a file nobody hashed: refused, not just noted
            more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
            raise BundleError(f"{root}: file {extra[0]}{more} is in the bundle but not in the manifest "
                              "(unverified; remove it or re-export)")
        unlisted = [rel for rel in self.referenced_files() if rel not in self.files]
        if unlisted:
            raise BundleError(f"{root}: manifest names {unlisted[0]} but does not list it in 'files' (unverified)")
        for rel, meta in sorted(self.files.items()):
            path = resolve_inside(root, rel)
            if not path.exists():
                raise BundleError(f"{root}: missing file {rel}")
            try:  # the size first: a file swapped for a huge one is refused without reading it
                altered = regular_file_size(path) != meta.size or sha256_file(path) != meta.sha256
            except Exception as exc:  # noqa: BLE001 - a FIFO or device named as a bundle file
                raise BundleError(f"{root}: file {rel} cannot be read ({exc})") from None
            if altered:
                raise BundleError(f"{root}: file {rel} was altered (sha256 does not match the manifest)")


UNHASHED_NAMES = (MANIFEST_NAME, MANIFEST_DIGEST_NAME, MANIFEST_SIGNATURE_NAME)


def unlisted_files(root: str | Path, files: dict[str, FileEntry]) -> list[str]:
    """Files (and links, FIFOs, ...) under `root` that the manifest's file table does not list, sorted."""
    root = Path(root)
    found = (p.relative_to(root).as_posix() for p in root.rglob("*") if not p.is_dir() or p.is_symlink())
    return sorted(rel for rel in found if rel not in files and rel not in UNHASHED_NAMES)


def read_manifest_json(root: str | Path) -> Any:
    """The decoded `manifest.json` of `root`: BundleError (one line) when missing, unsafe or not JSON."""
    path = Path(root) / MANIFEST_NAME
    if not path.exists():
        raise BundleError(f"{root}: not a bundle (no {MANIFEST_NAME})")
    try:
        raw = read_capped(path, MAX_MANIFEST_BYTES)
        return json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: unreadable manifest ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - UnsafeFileError (FIFO, device, too large): one line
        raise BundleError(f"{path}: unreadable manifest ({exc})") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


__all__ = [
    "ENGINE_DIR", "FORMAT_VERSION", "HEAD_WEIGHTS_NAME", "LEGACY_FORMAT_VERSION", "MANIFEST_DIGEST_NAME",
    "MANIFEST_NAME", "MODEL_CONFIG_NAME", "TOKENIZER_DIR", "EngineEntry", "FileEntry", "GraphEntry", "Manifest",
    "TokenizerEntry",
    "canonical_digest", "engine_file_name", "graph_file_name", "read_manifest_json",
    "sha256_file", "MANIFEST_SIGNATURE_NAME", "UNHASHED_NAMES", "unlisted_files",
]
