"""`crisis-tool caption`: describe each CrisisMMD image with LLaVA into a resumable JSONL file."""

from __future__ import annotations

from pathlib import Path

import typer

from crisis_tool.caption import DEFAULT_MODEL


def register(app: typer.Typer) -> None:
    """Add the `caption` command to `app`."""

    @app.command("caption")
    def caption(
        data: Path = typer.Option(
            ..., "--data", help="CrisisMMD root (images resolve as ROOT/<image column>)."
        ),
        task: str = typer.Option(..., "--task", help="informative, humanitarian or damage."),
        split: list[str] | None = typer.Option(
            None, "--split", help="Split to caption; repeatable. Default: train, dev, test (whichever exist)."
        ),
        model: str = typer.Option(DEFAULT_MODEL, "--model", help="Hugging Face model id or local directory."),
        out: Path = typer.Option(..., "--out", help="Output JSONL; appended to and resumed if it exists."),
        batch_size: int = typer.Option(8, "--batch-size", min=1, help="Images per generate() call."),
        max_new_tokens: int = typer.Option(96, "--max-new-tokens", min=1, help="Generated tokens per image."),
        prompt_file: Path | None = typer.Option(
            None,
            "--prompt-file",
            help="Prompt template with <image> and {tweet} (default: packaged LLaVA-1.5 prompt).",
        ),
        device: str = typer.Option("auto", "--device", help="auto, cpu or cuda (fp16 on cuda, fp32 on cpu)."),
        splits: str = typer.Option("settingA", "--splits", help="Split set: settingA, all or agreed_label."),
    ) -> None:
        """Enrich tweets with LLaVA image descriptions (greedy, deterministic, resumable).

        A rerun skips image_ids already captioned successfully and retries those recorded with an error.
        """
        from crisis_tool import caption as cap

        prompt = cap.load_prompt(prompt_file)
        items = cap.collect_items(data, task, split or None, splits)
        done = cap.prepare_output(out, model, prompt.sha256)  # refuses a file made with another model/prompt
        if all(item.image_id in done for item in items):
            typer.echo(f"{len(items)} images: all already captioned in {out}; nothing to do")
            return
        captioner = cap.load_captioner(model, device=device, max_new_tokens=max_new_tokens)
        summary = cap.caption_items(items, captioner, out, model, prompt, batch_size=batch_size)
        typer.echo(
            f"{summary.total} images: {summary.already_done} already done, {summary.generated} captioned, "
            f"{summary.errors} errors -> {out} (prompt sha256 {prompt.sha256[:12]})"
        )
