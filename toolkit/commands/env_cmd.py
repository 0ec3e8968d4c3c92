"""`crisis-tool env`: what this machine can run (the doctor), as text or JSON."""

from __future__ import annotations

import json
from typing import Any

import typer


def report_lines(report: dict[str, Any]) -> list[str]:
    """The report as short lines (80 columns), most useful first."""
    cpu, ort, ov, gpu = report["cpu"], report["onnxruntime"], report["openvino"], report["gpu"]
    versions = report["versions"]
    lines = [f"crisis-tool {versions.get('crisis-tool') or '?'} on {report['platform']}, "
             f"Python {versions['python']}",
             f"best here: {report['best']['backend']} ({report['best']['why']})",
             f"CPU: {cpu['model']} ({cpu['arch']}); features: {', '.join(cpu['features']) or 'none of note'}"]
    if ort["installed"]:
        usable = [p for p, reason in ort["usable"].items() if reason is None]
        lines.append(f"onnxruntime {ort['version']}: usable providers {', '.join(usable) or 'none'}")
        lines += [f"  {p}: not usable: {reason}" for p, reason in ort["usable"].items() if reason]
    else:
        lines.append("onnxruntime: not installed")
    if ov["installed"]:
        devices = ", ".join(f"{d} ({name})" for d, name in ov["devices"].items()) or ov.get("error") or "none"
        lines.append(f"OpenVINO {ov.get('version', '?')}: devices {devices}")
    else:
        lines.append("OpenVINO: not installed")
    gpu_name = gpu["nvidia_gpu"] or gpu["jetson"] or "none"
    lines.append(f"NVIDIA GPU: {gpu_name}; CUDA runtime: {'found' if gpu['cuda_runtime'] else 'not found'}; "
                 f"TensorRT: {gpu['tensorrt'] or 'not installed'}")
    lines.append("backends: " + ", ".join(name if reason is None else f"{name} (no)"
                                          for name, reason in report["backends"].items()))
    lines.append("packages: " + ", ".join(f"{k} {v}" for k, v in versions.items()
                                          if v and k not in ("python", "crisis-tool")))
    if report["install"]:
        lines.append("for more, install:")
        lines += [f"  {line}" for line in report["install"]]
    return lines


def register(app: typer.Typer) -> None:
    @app.command("env")
    def env(
        as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    ) -> None:
        """What this machine can run: packages, usable onnxruntime providers, OpenVINO devices, CPU features
        (AVX-512, VNNI, AMX, bf16), GPU/CUDA/TensorRT, the best backend and precision, and what to install."""
        from crisis_tool.machine_env import machine_report

        report = machine_report()
        if as_json:
            typer.echo(json.dumps(report, indent=2))
            return
        for line in report_lines(report):
            typer.echo(line)
        typer.echo("next: crisis-tool bench --bundle BUNDLE --backends auto,"
                   f"{report['best']['backend'].replace(' fp32', '').replace(' ', '-')} to measure it")
