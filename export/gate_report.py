"""Gate reports as text: a short line per failed gate, and the attempts of the end-to-end fallback.

A leaf: it reads the parity report dictionaries that `validate`, `fallback` and `engine_parity` write, and
imports none of them.
"""

from __future__ import annotations

from typing import Any

from crisis_tool.runtime.parity import violations

MAX_LINE = 118  # one refusal line (the export indents it by 2); every number stays in the parity report


def failures(parity: dict[str, dict[str, Any]]) -> list[str]:
    """'precision graph: violations' of every failed gate in a {precision: report} mapping, one short line each
    (at most MAX_LINE characters: a long `why` is cut).

    A failed end-to-end entry also says how many fallback combinations were tried; every number, every
    candidate and every combination is in the manifest's parity report (and `failure_details`).
    """
    out = []
    for precision, report in parity.items():
        for name, entry in report.items():
            if isinstance(entry, dict) and entry.get("passed") is False:
                line = f"{precision} {name}: {', '.join(violations(entry)) or 'failed'}"
                if entry.get("fallback"):
                    line += f" (fallback tried {len(entry['fallback'])} combinations)"
                elif entry.get("why"):
                    line += f" ({_cut(str(entry['why']), MAX_LINE - len(line) - 3)})"
                out.append(line)
    return out


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 3, 0)] + "..."


def failure_details(parity: dict[str, dict[str, Any]]) -> list[str]:
    """Every fallback attempt and int8 candidate behind the failures, one line each."""
    out = []
    for precision, report in parity.items():
        for name, entry in report.items():
            if not isinstance(entry, dict):
                continue
            if entry.get("passed") is False:
                out += [f"{precision} {name} tried {describe_attempt(a)}" for a in entry.get("fallback", [])]
            for candidate, numbers in (entry.get("candidates") or {}).items():
                out.append(f"{precision} {name} candidate {candidate}: {candidate_numbers(numbers)}")
    return out


def candidate_numbers(c: dict[str, Any]) -> str:
    if "error" in c:
        return "cannot run"
    key = "top1_agreement" if "top1_agreement" in c else "min_cosine"
    verdict = "pass" if c.get("passed") else "fail"
    timing = f", {c['seconds'] * 1e3:.3g} ms" if "seconds" in c else ""
    return f"{key} {c.get(key, float('nan')):.6g} ({verdict}{timing})"


def attempt_numbers(entry: dict[str, Any]) -> str:
    interval = entry.get("top1_interval")
    ci = f" [{interval[0]:.4f}, {interval[1]:.4f}]" if interval else ""
    return f"top1 {entry.get('top1_agreement', float('nan')):.6g}{ci} on n={entry.get('n')}"


def describe_attempt(entry: dict[str, Any]) -> str:
    """One attempt of `fallback` as text: which graphs were fp32, the candidate of each other graph, and the
    end-to-end numbers."""
    fp32 = "+".join(entry["fp32"]) if entry["fp32"] else "none"
    reduced = [f"{g}={name}" for g, name in (entry.get("graphs") or {}).items() if name != "fp32"]
    verdict = "pass" if entry.get("passed") else "fail"
    return (f"fp32={fp32}" + (f" ({', '.join(reduced)})" if reduced else "")
            + f": {attempt_numbers(entry)}, min_cosine {entry.get('min_cosine', float('nan')):.6g} ({verdict})")
