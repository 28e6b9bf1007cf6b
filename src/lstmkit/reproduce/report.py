"""Tables of reproduction runs beside the paper's rows: for the terminal and for RESULTS.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _num(value: float | None, fmt: str = "{:,.0f}") -> str:
    return "-" if value is None else fmt.format(value)


def table(results: list[dict[str, Any]]) -> str:
    """One line per run (experiment, setting, cell) plus the paper's line for each experiment."""
    header = (f"{'experiment':<18}{'who':<28}{'trials':>7}{'success':>9}{'mean seq':>11}"
              f"{'median seq':>12}{'test wrong':>16}{'wall s':>8}")
    lines = [header, "-" * len(header)]
    seen: set[str] = set()
    for res in results:
        paper = res.get("paper")
        if res["experiment"] not in seen and paper is not None:
            seen.add(res["experiment"])
            rate = paper.get("success_rate")
            lines.append(
                f"{res['experiment']:<18}{'paper (H&S 1997)':<28}"
                f"{_num(paper.get('trials'), '{}'):>7}"
                f"{_num(rate, '{:.0%}'):>9}{_num(paper.get('sequences')):>11}{'-':>12}"
                f"{paper.get('test') or '-':>16}{'-':>8}"
            )
        s = res["summary"]
        wrong = (f"{s['mean_test_wrong']:.1f} / {s['test_size']:.0f}"
                 if s.get("mean_test_wrong") is not None else "-")
        who = f"{res['setting']} {res['cell']}"
        if res.get("changed_params"):
            who += " (" + ", ".join(f"{k}={v}" for k, v in res["changed_params"].items()) + ")"
        lines.append(
            f"{res['experiment']:<18}{who:<28}{s['trials']:>7}{s['success_rate']:>9.0%}"
            f"{_num(s['mean_sequences']):>11}{_num(s['median_sequences']):>12}{wrong:>16}"
            f"{s['wall_s']:>8.0f}"
        )
    return "\n".join(lines)


def load_results(folder: str | Path) -> list[dict[str, Any]]:
    """Every ``results.json`` under ``folder`` (recursively), in path order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"folder: expected a directory of reproduce results, got {folder}")
    found = []
    for path in sorted(folder.rglob("results.json")):
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"results file {path}: not readable JSON ({err})") from None
    if not found:
        raise ValueError(f"folder: no results.json under {folder}")
    return found


def _cell(summary: dict[str, Any], settings: dict[str, Any], changed: dict[str, Any]) -> str:
    """One run as a table cell: successes/trials, mean sequences, test errors, budget."""
    text = f"{summary['successes']}/{summary['trials']}"
    if summary.get("diverged"):
        text += f" ({summary['diverged']} diverged)"
    if summary["mean_sequences"] is not None:
        text += f", {summary['mean_sequences']:,.0f} seq"
    if summary.get("mean_test_wrong") is not None:
        text += f", {summary['mean_test_wrong']:.0f} of {summary['test_size']:.0f} wrong"
    text += f" (budget {settings['max_sequences']:,}"
    if changed:
        text += "; " + ", ".join(f"{k}={v}" for k, v in changed.items())
    return text + ")"


def markdown(results: list[dict[str, Any]]) -> str:
    """RESULTS.md's table: one row per experiment, the paper beside each setting and cell."""
    rows: dict[str, dict[str, str]] = {}
    papers: dict[str, str] = {}
    for res in results:
        exp = res["experiment"]
        paper = res.get("paper")
        if paper is not None:
            rate = paper.get("success_rate")
            papers[exp] = (("" if rate is None else f"{rate:.0%}, ")
                           + (f"{paper['sequences']:,} seq" if paper.get("sequences") else "-")
                           + (f", {paper['test']}" if paper.get("test") else ""))
        column = "paper setting" if res["setting"] == "paper" and res["cell"] == "lstm1997" \
            else ("modern lstm" if res["cell"] == "lstm" else f"{res['cell']} ({res['setting']})")
        rows.setdefault(exp, {})[column] = _cell(res["summary"], res["settings"],
                                                 res.get("changed_params") or {})
    columns = ["paper setting", "modern lstm"]
    columns += sorted({c for r in rows.values() for c in r} - set(columns))
    lines = ["| experiment | H&S 1997 (LSTM) | " + " | ".join(f"lstmkit {c}" for c in columns)
             + " |", "|---" * (len(columns) + 2) + "|"]
    for exp, cells in rows.items():
        lines.append(f"| {exp} | {papers.get(exp, '-')} | "
                     + " | ".join(cells.get(c, "not run") for c in columns) + " |")
    lines += ["", "Commands (each reruns its cell of the table):", "", "```"]
    lines += [command(res) for res in results]
    lines.append("```")
    return "\n".join(lines)


def command(res: dict[str, Any]) -> str:
    """The ``lstmkit reproduce`` command line that reruns ``res`` (a results.json record)."""
    parts = ["lstmkit reproduce", res["experiment"], "--setting", res["setting"]]
    default_cell = "lstm1997" if res["setting"] == "paper" else "lstm"
    if res["cell"] != default_cell:
        parts += ["--cell", res["cell"]]
    parts += ["--trials", str(res["summary"]["trials"]), "--seed",
              str(min(t["seed"] for t in res["trials"])),
              "--max-sequences", str(res["settings"]["max_sequences"])]
    for key, value in (res.get("changed_params") or {}).items():
        parts += ["--task-param", f"{key}={value}"]
    return " ".join(parts)
