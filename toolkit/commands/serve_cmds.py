"""`crisis-tool serve` (HTTP with Ray Serve, or from one process with --no-ray) and `crisis-tool label` (files
with Ray Data).

Option defaults live in `crisis_tool.runtime.serve.options`; the work lives in `crisis_tool.runtime.serve`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer

from crisis_tool.commands.aliases import deprecated_alias
from crisis_tool.commands.predict_cmd import DEVICE_HELP, EXIT_SOME_FAILED, _check_bundle_arg, parse_providers
from crisis_tool.runtime.backends import backend_names
from crisis_tool.runtime.errors import UsageError
from crisis_tool.runtime.serve.options import LabelOptions, PredictorOptions, ServeOptions, read_token_digest

_PRED, _SERVE, _LABEL = PredictorOptions(), ServeOptions(), LabelOptions()
LABEL_INTERRUPT_GRACE_S = 5.0  # after Ctrl-C: time to keep the partials and stop Ray before a forced exit

BUNDLE = typer.Option(..., "--bundle", help="Bundle folder written by `crisis-tool export`.")
BACKEND = typer.Option(_PRED.backend, "--backend",
                       help=f"Backend: {', '.join(backend_names())} (the registry; default auto).")
PRECISION = typer.Option(None, "--precision", help="fp32, fp16 or int8 (default: the bundle's own precision).")
PROVIDERS = typer.Option(None, "--providers", help="ONNX Runtime providers in order, e.g. 'cpu' or 'cuda,cpu'.")
THREADS = typer.Option(None, "--threads", min=1, help="Intra-op threads per replica or actor (onnxruntime).")
DEVICE = typer.Option(None, "--device", help=DEVICE_HELP)
MAX_IMAGE_BYTES = typer.Option(_PRED.max_image_bytes, "--max-image-bytes", min=1,
                               help="Largest image (encoded bytes) a record may carry; larger is that record's error.")
DECODE = typer.Option(_PRED.decode, "--decode", help="exact (full-size decode, as in training) or fast (JPEGs "
                      "decode at reduced scale, at least twice the model's input size, then the same resize).")
PUBKEY = typer.Option(None, "--pubkey", help="Ed25519 public key (.pub): refuse a bundle not signed by it.")
ADDRESS = typer.Option(None, "--address", help="Join this Ray cluster (e.g. 'auto' or 'HOST:6379') instead of "
                       "starting a local Ray.")


def _predictor_options(
    bundle: Path, backend: str, precision: str | None, providers: str | None, threads: int | None,
    device: str | None, max_image_bytes: int, decode: str, pubkey: Path | None = None,
) -> PredictorOptions:
    names = parse_providers(providers)
    return PredictorOptions(bundle=bundle.resolve(), backend=backend, precision=precision,
                            providers=tuple(names) if names else None, threads=threads, device=device,
                            max_image_bytes=max_image_bytes, decode=decode,
                            pubkey=pubkey.resolve() if pubkey is not None else None)


def register(app: typer.Typer) -> None:
    """Add the `serve` and `label` commands to `app`."""

    @app.command("serve")
    def serve(
        bundle: Path = BUNDLE,
        backend: str = BACKEND,
        precision: str | None = PRECISION,
        providers: str | None = PROVIDERS,
        threads: int | None = THREADS,
        device: str | None = DEVICE,
        max_image_bytes: int = MAX_IMAGE_BYTES,
        decode: str = DECODE,
        pubkey: Path | None = PUBKEY,
        address: str | None = ADDRESS,
        host: str = typer.Option(_SERVE.host, "--host", help="Address to listen on (loopback unless you say so)."),
        proxy_location: str = typer.Option(_SERVE.proxy_location, "--proxy-location", help="Ray Serve's HTTP "
                                           "proxies: EveryNode (each node with a replica) or HeadOnly."),
        port: int = typer.Option(_SERVE.port, "--port", min=1, max=65535, help="HTTP port."),
        replicas: int = typer.Option(_SERVE.replicas, "--replicas", min=1, help="Replicas (each one Predictor)."),
        min_replicas: int | None = typer.Option(None, "--min-replicas", min=0, help="Autoscaling lower bound."),
        max_replicas: int | None = typer.Option(None, "--max-replicas", min=1, help="Autoscaling upper bound."),
        gpus_per_replica: float = typer.Option(_SERVE.gpus_per_replica, "--gpus-per-replica", min=0.0),
        cpus_per_replica: float = typer.Option(_SERVE.cpus_per_replica, "--cpus-per-replica", min=0.0),
        batch_size: int = typer.Option(_SERVE.batch_size, "--batch-size", min=1,
                                       help="Records per model batch, gathered across requests."),
        max_batch: int | None = typer.Option(None, "--max-batch", min=1, hidden=True,
                                             help="Deprecated: --batch-size."),
        batch_wait_ms: float = typer.Option(_SERVE.batch_wait_ms, "--batch-wait-ms", min=0.0,
                                            help="How long a batch waits to fill."),
        max_ongoing_requests: int = typer.Option(_SERVE.max_ongoing_requests, "--max-ongoing-requests", min=1,
                                                 help="Requests in flight per replica."),
        max_body_bytes: int = typer.Option(_SERVE.max_body_bytes, "--max-body-bytes", min=1,
                                           help="Largest request body accepted."),
        max_held_bytes: int = typer.Option(_SERVE.max_held_bytes, "--max-held-bytes", min=1,
                                           help="Request bodies held at once per replica (more: 503 + "
                                                "Retry-After, before the body is read)."),
        max_records: int = typer.Option(_SERVE.max_records, "--max-records", min=1, help="Records per request."),
        body_timeout_s: float = typer.Option(_SERVE.body_timeout_s, "--body-timeout-s", min=0.1,
                                             help="A request body must arrive within this time (else 408); "
                                                  "a connection that sends no request head is closed then."),
        max_uploads_per_client: int = typer.Option(_SERVE.max_uploads_per_client, "--max-uploads-per-client",
                                                   min=1, help="Bodies one client may have arriving at once "
                                                   "(more: 429)."),
        max_uploads_total: int = typer.Option(_SERVE.max_uploads_total, "--max-uploads-total", min=1,
                                              help="Bodies arriving at once, all clients (more: the oldest is cut)."),
        max_image_pixels: int = typer.Option(_SERVE.max_image_pixels, "--max-image-pixels", min=1,
                                             help="Pixels one image may declare (413 before decoding)."),
        max_request_pixels: int = typer.Option(_SERVE.max_request_pixels, "--max-request-pixels", min=1,
                                               help="Pixels the images of one request may declare together."),
        token_file: Path | None = typer.Option(None, "--token-file", help="File holding a bearer token that "
                                               "every request except health checks must send."),
        tls_cert: Path | None = typer.Option(None, "--tls-cert", help="PEM certificate: serve HTTPS."),
        tls_key: Path | None = typer.Option(None, "--tls-key", help="PEM private key of --tls-cert."),
        model_name: str | None = typer.Option(None, "--model-name", help="Model name on the v2 routes "
                                              "(default: the bundle folder's name)."),
        drain_s: float = typer.Option(_SERVE.drain_s, "--drain-s", min=0.0, help="On shutdown, answer 503 and "
                                      "wait at most this long for requests in flight."),
        no_ray: bool = typer.Option(False, "--no-ray", help="Serve from this one process (FastAPI on uvicorn), "
                                    "without Ray: no replicas or cluster, the least overhead on one small machine."),
    ) -> None:
        """Serve a bundle over HTTP (POST /v1/predict, v2 /v2/models/NAME/infer), batching records across
        requests: with Ray Serve (replicas, a cluster), or from this process alone with --no-ray."""
        from crisis_tool.runtime.serve.local_server import RunningLocal, serve_local
        from crisis_tool.runtime.serve.server import RunningServer, serve_until_stopped

        _check_bundle_arg(bundle)
        if no_ray:
            ray_only = {"--address": address is not None, "--replicas": replicas != _SERVE.replicas,
                        "--min-replicas": min_replicas is not None, "--max-replicas": max_replicas is not None,
                        "--proxy-location": proxy_location != _SERVE.proxy_location}
            given = [name for name, set_ in ray_only.items() if set_]
            if given:
                raise UsageError(f"--no-ray serves from one process: {', '.join(given)} need(s) Ray")
        options = ServeOptions(
            host=host, port=port, address=address, proxy_location=proxy_location, replicas=replicas,
            min_replicas=min_replicas, max_replicas=max_replicas, gpus_per_replica=gpus_per_replica,
            cpus_per_replica=cpus_per_replica,
            batch_size=deprecated_alias(batch_size, max_batch, "--max-batch", "--batch-size", unset=_SERVE.batch_size),
            batch_wait_ms=batch_wait_ms, max_ongoing_requests=max_ongoing_requests,
            max_body_bytes=max_body_bytes, max_held_bytes=max_held_bytes, max_records=max_records,
            body_timeout_s=body_timeout_s,
            max_uploads_per_client=max_uploads_per_client, max_uploads_total=max_uploads_total,
            max_image_pixels=max_image_pixels, max_request_pixels=max_request_pixels,
            token_sha256=read_token_digest(token_file) if token_file is not None else None,
            tls_cert=tls_cert, tls_key=tls_key, model_name=model_name or "", drain_s=drain_s,
        )
        predictor = _predictor_options(bundle, backend, precision, providers, threads, device, max_image_bytes,
                                       decode, pubkey)

        def announce(server: RunningServer | RunningLocal) -> None:
            how = "one process, no Ray" if no_ray else "Ray Serve"
            typer.echo(f"serving {bundle} at {server.url} ({how}; POST /v1/predict, GET /healthz /readyz "
                       "/v1/model); Ctrl-C stops", err=True)

        if no_ray:
            serve_local(predictor, options, announce)
        else:
            serve_until_stopped(predictor, options, announce)

    @app.command("label")
    def label(
        bundle: Path = BUNDLE,
        input_: list[str] = typer.Option(..., "--input", help="JSONL, TSV or Parquet files, folders or globs "
                                         "(repeat the option for several)."),
        output: Path = typer.Option(..., "--output", help="Folder for NAME.predictions.<format> per input."),
        image_root: Path | None = typer.Option(None, "--image-root", help="Folder image paths are relative to "
                                               "(required for a TSV)."),
        output_format: str = typer.Option(_LABEL.output_format, "--format", help="jsonl or parquet."),
        backend: str = BACKEND,
        precision: str | None = PRECISION,
        providers: str | None = PROVIDERS,
        threads: int | None = THREADS,
        device: str | None = DEVICE,
        max_image_bytes: int = MAX_IMAGE_BYTES,
        decode: str = DECODE,
        pubkey: Path | None = PUBKEY,
        address: str | None = ADDRESS,
        concurrency: int = typer.Option(_LABEL.concurrency, "--concurrency", min=1, help="Predictor actors."),
        batch_size: int = typer.Option(_LABEL.batch_size, "--batch-size", min=1, help="Records per actor call."),
        gpus_per_actor: float = typer.Option(_LABEL.gpus_per_actor, "--gpus-per-actor", min=0.0),
        cpus_per_actor: float = typer.Option(_LABEL.cpus_per_actor, "--cpus-per-actor", min=0.0),
        llava_file: Path | None = typer.Option(None, "--llava-file", help="LLaVA captions by image id (what "
                                               "`crisis-tool caption` writes), for bundles trained on llava text."),
        verbose: bool = typer.Option(False, "--verbose/--quiet", help="Show Ray's own log lines (quiet: "
                                     "warnings only)."),
        review_queue: Path | None = typer.Option(
            None, "--review-queue", help="Also write the run's review queue (JSONL): least confident first, one "
            "post per near-duplicate group, for `crisis-tool review`."),
        review_budget: int | None = typer.Option(None, "--review-budget", min=0,
                                                 help="At most this many posts in the review queue."),
        groups: bool = typer.Option(True, "--groups/--no-groups", help="Near-duplicate groups (image pHash, "
                                    "normalised text) across every file of the run."),
    ) -> None:
        """Label files with Ray Data; Ctrl-C keeps partial outputs and a rerun resumes them."""
        from crisis_tool.progress import progress_bar
        from crisis_tool.runtime.interrupts import EXIT_INTERRUPTED, prompt_interrupt
        from crisis_tool.runtime.serve.label import run_label

        _check_bundle_arg(bundle)
        options = LabelOptions(
            inputs=tuple(input_), output=output, image_root=image_root, output_format=output_format,
            address=address, concurrency=concurrency, batch_size=batch_size, gpus_per_actor=gpus_per_actor,
            cpus_per_actor=cpus_per_actor, review_queue=review_queue, review_budget=review_budget,
        )
        predictor = replace(_predictor_options(bundle, backend, precision, providers, threads, device,
                                               max_image_bytes, decode, pubkey),
                            llava_file=llava_file.resolve() if llava_file is not None else None, groups=groups)
        predictor.llava_texts()  # a missing or malformed caption file: one line before Ray starts
        try:
            with prompt_interrupt(grace_s=LABEL_INTERRUPT_GRACE_S):
                summary = run_label(predictor, options, progress=progress_bar, verbose=verbose)
        except KeyboardInterrupt:
            raise typer.Exit(EXIT_INTERRUPTED) from None
        rate = summary.rows / max(summary.seconds, 1e-9)
        resumed = f", {len(summary.resumed)} resumed" if summary.resumed else ""
        typer.echo(
            f"{len(summary.written)} files written{resumed}, {len(summary.skipped)} already complete (skipped); "
            f"{summary.rows} records, {summary.errors} errors, {rate:.1f} records/s -> {output}",
            err=True,
        )
        if summary.queued is not None:
            typer.echo(f"review queue: {summary.queued} posts, least confident first -> {review_queue}", err=True)
        if address and summary.nodes:
            typer.echo(f"answers per Ray node: {', '.join(f'{n}={c}' for n, c in sorted(summary.nodes.items()))}"
                       + (f"; resumed {summary.retries}x after losing a node" if summary.retries else ""), err=True)
        if summary.errors:
            raise typer.Exit(EXIT_SOME_FAILED)
