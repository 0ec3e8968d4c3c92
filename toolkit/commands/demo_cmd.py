"""`crisis-tool demo`: the whole chain on an embedded default, offline, in a few minutes on a CPU.

make-demo-data -> train one head per task (tiny random-weight CLIP) -> evaluate every head -> export one
bundle with three heads (fp32 + int8, parity gates) -> predict (lean runtime, with the review queue) -> bench.
Each step is the CLI command a user would type, printed before it runs.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import typer

from crisis_tool.runtime.errors import CrisisToolError


def demo_steps(out: Path, clip_model: str, pretrained: str, bench_seconds: float) -> list[list[str]]:
    """The commands of the demo, in order."""
    data, run, bundle = out / "data", out / "run", out / "bundle"
    return [
        ["make-demo-data", "--out", str(data), "--n-train", "120", "--n-dev", "40", "--n-test", "40"],
        ["train", "--data", str(data), "--task", "all", "--out", str(run), "--clip-model", clip_model,
         "--pretrained", pretrained, "--text", "tweet+llava", "--llava-file", str(data / "llava.jsonl"),
         "--optimizer", "adamw", "--lr", "3e-3", "--epochs", "30", "--cache-dir", str(out / "cache")],
        ["evaluate", "--model", str(run), "--data", str(data), "--split", "test", "--llava-file",
         str(data / "llava.jsonl"), "--json", str(out / "test_metrics.json"), "--cache-dir", str(out / "cache")],
        ["export", "--model", str(run), "--out", str(bundle), "--precision", "int8", "--max-batch", "32"],
        ["predict", "--bundle", str(bundle), "--input",
         str(data / "crisismmd_datasplit_settingA" / "task_damage_text_img_test.tsv"),
         "--image-root", str(data), "--llava-file", str(data / "llava.jsonl"),
         "--output", str(out / "predictions.jsonl"), "--review-queue",
         str(out / "review_queue.jsonl"), "--review-budget", "20"],
        ["bench", "--bundle", str(bundle), "--data", str(data), "--split", "test", "--llava-file",
         str(data / "llava.jsonl"), "--batch-sizes", "1,8", "--seconds", str(bench_seconds),
         "--json", str(out / "bench.json"), "--markdown", str(out / "bench.md"), "--plot", str(out / "bench.png")],
    ]


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo_cmd(
        out: Path = typer.Option(Path("demo_out"), "--out", help="Folder for data, run dir, bundle and reports."),
        clip_model: str = typer.Option("crisis-tiny", help="CLIP architecture (ViT-B-32 needs weights)."),
        pretrained: str = typer.Option("none", help="CLIP weights; `none` = random (offline demo)."),
        bench_seconds: float = typer.Option(2.0, help="Time budget per bench row."),
    ) -> None:
        """Run the whole chain on synthetic data: data, train, evaluate, export, predict, bench."""
        from crisis_tool.cli import run

        out.mkdir(parents=True, exist_ok=True)
        for argv in demo_steps(out, clip_model, pretrained, bench_seconds):
            typer.secho(f"\n$ crisis-tool {shlex.join(argv)}", bold=True, err=True)
            code = run(argv)
            if code not in (0, 3):  # 3: some records failed in predict, which the summary reports
                raise CrisisToolError(f"demo step `crisis-tool {argv[0]}` failed with exit code {code}")
        typer.echo(f"\nDemo finished. Files under {out}/: data/ (synthetic CrisisMMD), run/ (trained head), "
                   f"bundle/ (ONNX graphs + manifest, three heads), predictions.jsonl, review_queue.jsonl, "
                   f"test_metrics.json, "
                   f"bench.md, bench.json, bench.png")
