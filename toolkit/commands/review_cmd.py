"""`crisis-tool review`: the local review page over a review queue; decisions go to corrections.jsonl."""

from __future__ import annotations

from pathlib import Path

import typer

from crisis_tool.commands.predict_cmd import _check_bundle_arg

TOKEN_ENV = "CRISIS_REVIEW_TOKEN"


def register(app: typer.Typer) -> None:
    """Add the `review` command to `app`."""

    @app.command("review")
    def review(
        queue: Path = typer.Option(..., "--queue", help="Review queue JSONL (written by --review-queue)."),
        bundle: Path = typer.Option(..., "--bundle", help="The bundle that made the queue (its heads' labels)."),
        labels: Path = typer.Option(..., "--labels", help="corrections.jsonl: decisions are appended (fsync); "
                                    "reopening resumes where it stopped."),
        host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (loopback by default)."),
        port: int = typer.Option(8600, "--port", min=0, max=65535, help="HTTP port (0: any free port)."),
        token: str | None = typer.Option(None, "--token", envvar=TOKEN_ENV, help="Require this token: open the page "
                                         "once with ?token=T, or send 'Authorization: Bearer T'."),
        image_root: Path | None = typer.Option(None, "--image-root", help="Folder relative image paths resolve "
                                               "against (default: the queue's folder)."),
        reviewer: str | None = typer.Option(None, "--reviewer", help="Your name, stored with each decision."),
    ) -> None:
        """Review the least confident posts in a local web page; each decision is saved at once."""
        from crisis_tool.review.app import create_app
        from crisis_tool.review.server import LOOPBACK_NAMES, bind, is_loopback, open_review, require_web_stack, serve

        require_web_stack()
        _check_bundle_arg(bundle)
        state = open_review(queue, bundle, labels, image_root, reviewer)
        loopback = is_loopback(host)
        app_ = create_app(state, token=token, allowed_hosts=LOOPBACK_NAMES if loopback else None)
        sock = bind(host, port)
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{shown}:{sock.getsockname()[1]}/" + ("?token=" + token if token else "")
        progress = state.progress()
        typer.echo(f"review page: {url}  ({progress['total']} posts, {progress['reviewed']} reviewed; "
                   f"decisions go to {labels}). Ctrl-C stops.", err=True)
        if not loopback and not token:
            typer.echo(f"warning: listening on {host} without --token: anyone who can reach it can label", err=True)
        try:
            serve(app_, sock)
        finally:
            state.store.close()
