"""The terminal table of a reproduction run, beside the paper's row."""

from __future__ import annotations

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
