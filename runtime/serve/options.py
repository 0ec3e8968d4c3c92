"""Options of `serve` and `label`, declared once: the Typer commands read their defaults from here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from crisis_tool.runtime.errors import UsageError
from crisis_tool.runtime.predictor_options import PredictorOptions

__all__ = ["LOOPBACK", "OUTPUT_FORMATS", "LabelOptions", "PredictorOptions", "ServeOptions", "is_loopback",
           "read_token_digest"]

LOOPBACK = "127.0.0.1"
OUTPUT_FORMATS = ("jsonl", "parquet")
PROXY_LOCATIONS = ("EveryNode", "HeadOnly")


@dataclass(frozen=True)
class ServeOptions:
    """`crisis-tool serve`: where to listen, how to batch, how many replicas, what a request may hold.

    Hardening (see `http_guard`, `connection_guard` and `decode_budget`): a request body must arrive within
    `body_timeout_s`, and a connection that sends no request head is closed after it; one client may have at
    most `max_uploads_per_client` bodies in flight (more are refused with 429) and all clients together
    `max_uploads_total` (the oldest is cut to admit a new one); bodies held at once stay within
    `max_held_bytes` (503 + Retry-After beyond it); the images of one request may declare at most
    `max_image_pixels` each and `max_request_pixels` together (413 before decoding).
    """

    host: str = LOOPBACK
    port: int = 8000
    address: str | None = None  # join this Ray cluster instead of starting a local one
    proxy_location: str = "EveryNode"  # Ray Serve's HTTP proxies: every node with a replica, or the head only
    replicas: int = 1
    min_replicas: int | None = None  # both bounds set: autoscaling instead of a fixed count
    max_replicas: int | None = None
    gpus_per_replica: float = 0.0
    cpus_per_replica: float = 1.0
    batch_size: int = 16  # records per model batch, gathered across requests (batcher.RecordBatcher)
    batch_wait_ms: float = 10.0
    # per replica; a request whose body is still arriving holds one, so this stays above max_uploads_total
    max_ongoing_requests: int = 512
    max_body_bytes: int = 16 * 1024 * 1024
    # request bodies one replica (or the --no-ray server) holds at once (each counted at its Content-Length, or
    # max_body_bytes when it has none); a request beyond it gets 503 + Retry-After before its body is read
    max_held_bytes: int = 256 * 1024 * 1024
    max_records: int = 256  # records in one request
    body_timeout_s: float = 10.0
    max_uploads_per_client: int = 64
    max_uploads_total: int = 256
    max_image_pixels: int = 50_000_000
    max_request_pixels: int = 200_000_000
    token_sha256: str | None = None  # sha256 of the bearer token (--token-file); None: no auth
    tls_cert: Path | None = None
    tls_key: Path | None = None
    model_name: str = ""  # the v2 model name ("" = the bundle folder's name)
    drain_s: float = 10.0  # on shutdown: answer 503 + Retry-After, wait this long at most for requests in flight
    app_name: str = "crisis-tool"

    def validate(self) -> None:
        """UsageError for inconsistent values (Typer checks the single-value bounds)."""
        if self.proxy_location not in PROXY_LOCATIONS:
            raise UsageError(f"--proxy-location must be one of {', '.join(PROXY_LOCATIONS)}, "
                             f"not {self.proxy_location!r}")
        if (self.min_replicas is None) != (self.max_replicas is None):
            raise UsageError("--min-replicas and --max-replicas go together (autoscaling bounds)")
        if self.min_replicas is not None and self.max_replicas is not None and not (
            0 <= self.min_replicas <= self.max_replicas and self.max_replicas >= 1
        ):
            raise UsageError("autoscaling bounds need 0 <= --min-replicas <= --max-replicas, max at least 1")
        if self.max_ongoing_requests < self.batch_size:
            raise UsageError("--max-ongoing-requests must be at least --batch-size, or batches cannot fill")
        if self.max_ongoing_requests < self.max_uploads_total + self.batch_size:
            raise UsageError("--max-ongoing-requests must be at least --max-uploads-total + --batch-size, or slow "
                             "uploads could hold every request slot")
        if self.max_held_bytes < self.max_body_bytes:
            raise UsageError("--max-held-bytes must be at least --max-body-bytes, or the largest request could "
                             "never be held")
        if self.max_uploads_per_client > self.max_uploads_total:
            raise UsageError("--max-uploads-per-client cannot be above --max-uploads-total")
        if self.max_image_pixels > self.max_request_pixels:
            raise UsageError("--max-image-pixels cannot be above --max-request-pixels")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise UsageError("--tls-cert and --tls-key go together")
        for option, path in (("--tls-cert", self.tls_cert), ("--tls-key", self.tls_key)):
            if path is not None and not Path(path).is_file():
                raise UsageError(f"{option} {path}: no such file")

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert else "http"

    @property
    def base_url(self) -> str:
        """Where clients reach the server, e.g. http://127.0.0.1:8000 (an IPv6 host in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def bind_warning(self) -> str | None:
        """A one-line warning when listening beyond this machine without a token (None otherwise)."""
        if is_loopback(self.host) or self.token_sha256 is not None:
            return None
        return (f"warning: listening on {self.host} without --token-file: anyone who can reach this address "
                "can use the model" + ("" if self.tls_cert else ", over plain HTTP"))


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_token_digest(path: Path) -> str:
    """sha256 (hex) of the bearer token in `path` (surrounding whitespace removed); UsageError if unusable."""
    import hashlib

    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--token-file {path}: cannot read it ({exc})") from None
    if len(token) < 16 or any(c.isspace() for c in token):
        raise UsageError(f"--token-file {path}: the token must be one word of at least 16 characters")
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class LabelOptions:
    """`crisis-tool label`: which files, where results go, and the size of the actor pool."""

    inputs: tuple[str, ...] = ()
    output: Path = Path("labels")
    image_root: Path | None = None
    output_format: str = "jsonl"
    address: str | None = None
    concurrency: int = 1  # Predictor actors
    batch_size: int = 64  # records per actor call
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0
    review_queue: Path | None = None  # also write the review queue of the run (JSONL)
    review_budget: int | None = None  # at most this many posts in it

    def validate(self) -> None:
        if not self.inputs:
            raise UsageError("label needs at least one --input")
        if self.output_format not in OUTPUT_FORMATS:
            raise UsageError(f"--format must be one of {', '.join(OUTPUT_FORMATS)}, not {self.output_format!r}")
