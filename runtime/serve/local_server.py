"""The same HTTP API without Ray: one process, uvicorn, the Predictor called per request (no cross-request
batching). It serves the tests that measure the ingress itself (memory, decode budget) in a process of its
own, and a machine without Ray: `python -m crisis_tool.runtime.serve.local_server --bundle B --port P`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path
from typing import Any

from crisis_tool.runtime.records import Record, RecordError
from crisis_tool.runtime.serve.options import LOOPBACK, PredictorOptions, ServeOptions
from crisis_tool.runtime.serve.service import ServiceCore


class LocalService(ServiceCore):
    """A ServiceCore that runs each request's records as one Predictor call in a worker thread."""

    batches = 0
    batched_records = 0

    async def predict_records(self, items: list[Record | RecordError]) -> list[Any]:
        predictions = await asyncio.to_thread(self.predictor.predict, items)
        self.batches += 1
        self.batched_records += len(items)
        self.trimmer.maybe_trim()
        return predictions

    def stats(self) -> dict[str, Any]:
        return {"batches": self.batches, "batched_records": self.batched_records, **self.guard_stats()}


def serve_local(predictor_options: PredictorOptions, serve_options: ServeOptions) -> None:
    """Load, warm up and serve on `host:port` until interrupted (uvicorn's own signal handling)."""
    import uvicorn

    from crisis_tool.runtime.serve.api import build_api

    service = LocalService(predictor_options, serve_options)
    service.warm_up()
    tls = serve_options.tls_cert is not None
    uvicorn.run(build_api(service), host=serve_options.host, port=serve_options.port, log_level="warning",
                access_log=False, ssl_certfile=str(serve_options.tls_cert) if tls else None,
                ssl_keyfile=str(serve_options.tls_key) if tls else None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--host", default=LOOPBACK)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--body-timeout-s", type=float, default=ServeOptions.body_timeout_s)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    serve_local(PredictorOptions(bundle=args.bundle.resolve(), threads=args.threads),
                ServeOptions(host=args.host, port=args.port, body_timeout_s=args.body_timeout_s))


if __name__ == "__main__":
    main()
