"""Tables of reproduction runs beside the paper's rows: for the terminal and for RESULTS.md."""

from __future__ import annotations

from typing import Any

from .records import RunResult


def format_number(value: Any, fmt: str = "{:,.0f}") -> str:
    """``value`` in ``fmt``, "-" for None."""
    if value is None:
        return "-"
    try:
        return fmt.format(value)
    except (TypeError, ValueError):  # a value of the wrong kind from a file: show it as it is
        return str(value)


#: Columns of :func:`summary_rows`, shared by the terminal table and ``lstmkit report``.
SUMMARY_COLUMNS = ("experiment", "who", "trials", "success", "mean seq", "median seq",
                   "test wrong", "wall s")


def summary_rows(results: list[RunResult], *, paper_labels: bool = False
                 ) -> list[tuple[bool, list[str]]]:
    """Rows of :data:`SUMMARY_COLUMNS` as text: each experiment's paper row (flag True; labelled
    with the paper's table when ``paper_labels``), then one row per run (flag False)."""
    rows: list[tuple[bool, list[str]]] = []
    seen: set[str] = set()
    for res in results:
        exp = res.experiment
        paper = res.paper
        if paper is not None and exp not in seen:
            seen.add(exp)
            who = (paper.label or "paper") if paper_labels else "paper (H&S 1997)"
            rows.append((True, [exp, who, format_number(paper.trials, "{}"),
                                format_number(paper.success_rate, "{:.0%}"),
                                format_number(paper.sequences), "-",
                                paper.test or "-", "-"]))
        s = res.summary
        wrong = (f"{s.mean_test_wrong:.1f} / {s.test_size or 0:.0f}"
                 if s.mean_test_wrong is not None else "-")
        rows.append((False, [exp, _who(res), format_number(s.trials, "{}"),
                             format_number(s.success_rate, "{:.0%}"),
                             format_number(s.mean_sequences),
                             format_number(s.median_sequences), wrong,
                             format_number(s.wall_s)]))
    return rows


def _who(res: RunResult) -> str:
    """The run's setting and cell, with the task parameters it changed."""
    who = f"{res.setting} {res.cell}"
    if res.changed_params:
        who += " (" + ", ".join(f"{k}={v}" for k, v in res.changed_params.items()) + ")"
    return who


_WIDTHS = (-18, -28, 7, 9, 11, 12, 16, 8)  # negative: left-aligned


def table(results: list[RunResult]) -> str:
    """One line per run (experiment, setting, cell) plus the paper's line for each experiment."""
    def line(cells: list[str] | tuple[str, ...]) -> str:
        return "".join(f"{c:<{-w}}" if w < 0 else f"{c:>{w}}" for c, w in zip(cells, _WIDTHS))

    header = line(SUMMARY_COLUMNS)
    notes = [note for res in results for note in criteria_notes(res)]
    return "\n".join([header, "-" * len(header)]
                     + [line(cells) for _, cells in summary_rows(results)]
                     + ([""] + notes if notes else []))


def criteria_notes(res: RunResult) -> list[str]:
    """Why the failed trials of ``res`` count as failed: which stopping criterion they did not
    meet within the budget (in words where the results say them), and how many diverged.

    The success column counts trials that met every criterion during training; the test
    column is a separate test after training, so "0% success" can sit beside a perfect test.
    """
    trials = res.trials
    failed = [t for t in trials if not t.success]
    if not failed:
        return []
    rules = res.settings.criteria_rules
    names = list(res.settings.criteria or rules)
    within = f" within {format_number(res.settings.max_sequences)} sequences"
    who = f"{res.experiment} {res.setting} {res.cell}"
    notes = []
    diverged = sum(1 for t in failed if t.diverged)
    if diverged:
        notes.append(f"{who}: {diverged} of {len(trials)} trials diverged")
    for name in names:
        missed = [t for t in failed if not t.diverged and name not in t.milestones]
        if not missed:
            continue
        rule = rules.get(name)
        text = (f"{who}: {len(missed)} of {len(trials)} trials did not meet {name}{within}"
                + (f": {rule}" if rule else ""))
        if all(t.test is not None and t.test.wrong == 0 for t in missed):
            text += "; the test after training, with 0 wrong, is not this criterion"
        notes.append(text)
    return notes


def _cell(res: RunResult) -> str:
    """One run as a table cell: successes/trials, mean sequences, test errors, budget."""
    summary = res.summary
    text = f"{summary.successes}/{summary.trials}"
    if summary.diverged:
        text += f" ({summary.diverged} diverged)"
    if summary.mean_sequences is not None:
        text += f", {summary.mean_sequences:,.0f} seq"
    if summary.mean_test_wrong is not None and summary.test_size is not None:
        text += f", {summary.mean_test_wrong:.0f} of {summary.test_size:.0f} wrong"
    text += f" (budget {res.settings.max_sequences:,}"
    if res.changed_params:
        text += "; " + ", ".join(f"{k}={v}" for k, v in res.changed_params.items())
    return text + ")"


def markdown(results: list[RunResult]) -> str:
    """RESULTS.md's table: one row per experiment, the paper beside each setting and cell."""
    rows: dict[str, dict[str, str]] = {}
    papers: dict[str, str] = {}
    for res in results:
        exp = res.experiment
        paper = res.paper
        if paper is not None:
            rate = paper.success_rate
            papers[exp] = (("" if rate is None else f"{rate:.0%}, ")
                           + (f"{paper.sequences:,} seq" if paper.sequences else "-")
                           + (f", {paper.test}" if paper.test else ""))
        if res.setting == "paper" and res.cell == "lstm1997":
            column = "paper setting"
        elif res.cell == "lstm" and res.setting == "modern":
            column = "modern lstm"
        else:
            column = f"{res.cell} ({res.setting})"
        rows.setdefault(exp, {})[column] = _cell(res)
    columns = ["paper setting", "modern lstm"]
    columns += sorted({c for r in rows.values() for c in r} - set(columns))
    lines = ["| experiment | H&S 1997 (LSTM) | " + " | ".join(f"lstmkit {c}" for c in columns)
             + " |", "|---" * (len(columns) + 2) + "|"]
    for exp, cells in rows.items():
        lines.append(f"| {exp} | {papers.get(exp, '-')} | "
                     + " | ".join(cells.get(c, "not run") for c in columns) + " |")
    notes = [note for res in results for note in criteria_notes(res)]
    if notes:
        lines += ["", "Failed trials:", ""] + [f"- {note}" for note in notes]
    lines += ["", "Commands (each reruns its cell of the table):", "", "```"]
    lines += [command(res) for res in results]
    lines.append("```")
    return "\n".join(lines)


def command(res: RunResult) -> str:
    """The ``lstmkit reproduce`` command line that reruns ``res``."""
    parts = ["lstmkit reproduce", res.experiment, "--setting", res.setting]
    default_cell = "lstm1997" if res.setting == "paper" else "lstm"
    if res.cell != default_cell:
        parts += ["--cell", res.cell]
    parts += ["--trials", str(res.summary.trials), "--seed",
              str(min(t.seed for t in res.trials)),
              "--max-sequences", str(res.settings.max_sequences)]
    for key, value in res.changed_params.items():
        parts += ["--task-param", f"{key}={value}"]
    return " ".join(parts)
