"""Tables of reproduction runs beside the paper's rows: for the terminal and for RESULTS.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def format_number(value: Any, fmt: str = "{:,.0f}") -> str:
    """``value`` in ``fmt``, "-" for None."""
    if value is None:
        return "-"
    try:
        return fmt.format(value)
    except (TypeError, ValueError):  # a hand-edited results file: show what is there
        return str(value)


#: Columns of :func:`summary_rows`, shared by the terminal table and ``lstmkit report``.
SUMMARY_COLUMNS = ("experiment", "who", "trials", "success", "mean seq", "median seq",
                   "test wrong", "wall s")


def summary_rows(results: list[dict[str, Any]], *, paper_labels: bool = False
                 ) -> list[tuple[bool, list[str]]]:
    """Rows of :data:`SUMMARY_COLUMNS` as text: each experiment's paper row (flag True; labelled
    with the paper's table when ``paper_labels``), then one row per run (flag False)."""
    rows: list[tuple[bool, list[str]]] = []
    seen: set[str] = set()
    for res in results:
        exp = str(res.get("experiment", "?"))
        paper = res.get("paper")
        if paper and exp not in seen:
            seen.add(exp)
            who = (paper.get("label") or "paper") if paper_labels else "paper (H&S 1997)"
            rows.append((True, [exp, who, format_number(paper.get("trials"), "{}"),
                                format_number(paper.get("success_rate"), "{:.0%}"),
                                format_number(paper.get("sequences")), "-",
                                paper.get("test") or "-", "-"]))
        s = res.get("summary") or {}
        wrong = (f"{s['mean_test_wrong']:.1f} / {s.get('test_size') or 0:.0f}"
                 if s.get("mean_test_wrong") is not None else "-")
        who = f"{res.get('setting', '?')} {res.get('cell', '?')}"
        if res.get("changed_params"):
            who += " (" + ", ".join(f"{k}={v}" for k, v in res["changed_params"].items()) + ")"
        rows.append((False, [exp, who, format_number(s.get("trials"), "{}"),
                             format_number(s.get("success_rate"), "{:.0%}"),
                             format_number(s.get("mean_sequences")),
                             format_number(s.get("median_sequences")), wrong,
                             format_number(s.get("wall_s"))]))
    return rows


_WIDTHS = (-18, -28, 7, 9, 11, 12, 16, 8)  # negative: left-aligned


def table(results: list[dict[str, Any]]) -> str:
    """One line per run (experiment, setting, cell) plus the paper's line for each experiment."""
    def line(cells: list[str] | tuple[str, ...]) -> str:
        return "".join(f"{c:<{-w}}" if w < 0 else f"{c:>{w}}" for c, w in zip(cells, _WIDTHS))

    header = line(SUMMARY_COLUMNS)
    notes = [note for res in results for note in criteria_notes(res)]
    return "\n".join([header, "-" * len(header)]
                     + [line(cells) for _, cells in summary_rows(results)]
                     + ([""] + notes if notes else []))


def criteria_notes(res: dict[str, Any]) -> list[str]:
    """Why the failed trials of ``res`` count as failed: which stopping criterion they did not
    meet within the budget (in words where the results say them), and how many diverged.

    The success column counts trials that met every criterion during training; the test
    column is a separate test after training, so "0% success" can sit beside a perfect test.
    """
    trials = [t for t in res.get("trials") or [] if isinstance(t, dict)]
    failed = [t for t in trials if not t.get("success")]
    if not failed:
        return []
    settings = res.get("settings") or {}
    rules = settings.get("criteria_rules") or {}
    names = list(settings.get("criteria") or rules)
    budget = settings.get("max_sequences")
    within = f" within {format_number(budget)} sequences" if budget is not None else ""
    who = f"{res.get('experiment', '?')} {res.get('setting', '?')} {res.get('cell', '?')}"
    notes = []
    diverged = sum(1 for t in failed if t.get("diverged"))
    if diverged:
        notes.append(f"{who}: {diverged} of {len(trials)} trials diverged")
    for name in names:
        missed = [t for t in failed if not t.get("diverged")
                  and name not in (t.get("milestones") or {})]
        if not missed:
            continue
        rule = rules.get(name)
        text = (f"{who}: {len(missed)} of {len(trials)} trials did not meet {name}{within}"
                + (f": {rule}" if rule else ""))
        tests = [t.get("test") or {} for t in missed]
        if all(test.get("wrong") == 0 for test in tests):
            text += "; the test after training, with 0 wrong, is not this criterion"
        notes.append(text)
    return notes


def load_results(folder: str | Path) -> list[dict[str, Any]]:
    """Every ``results.json`` under ``folder`` (recursively), in path order.

    Each file is checked for what the tables read from it; a file that lacks a key or holds the
    wrong kind of value is refused with one ``ValueError`` naming the file and the key.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"folder: expected a directory of reproduce results, got {folder}")
    found = []
    for path in sorted(folder.rglob("results.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"results file {path}: not readable JSON ({err})") from None
        problem = check_record(record)
        if problem:
            raise ValueError(f"results file {path}: {problem}")
        found.append(record)
    if not found:
        raise ValueError(f"folder: no results.json under {folder}")
    return found


_NUMBER = (int, float)
_OPTIONAL_NUMBER = (int, float, type(None))
# Key paths the tables read, with the JSON kinds they accept.
_REQUIRED: tuple[tuple[str, tuple[type, ...], str], ...] = (
    ("experiment", (str,), "a string"),
    ("setting", (str,), "a string"),
    ("cell", (str,), "a string"),
    ("summary", (dict,), "an object"),
    ("summary.trials", (int,), "an integer"),
    ("summary.successes", (int,), "an integer"),
    ("summary.mean_sequences", _OPTIONAL_NUMBER, "a number or null"),
    ("settings", (dict,), "an object"),
    ("settings.max_sequences", (int,), "an integer"),
    ("trials", (list,), "a list"),
)
_OPTIONAL: tuple[tuple[str, tuple[type, ...], str], ...] = (
    ("paper", (dict, type(None)), "an object or null"),
    ("paper.sequences", _OPTIONAL_NUMBER, "a number or null"),
    ("paper.success_rate", _OPTIONAL_NUMBER, "a number or null"),
    ("paper.test", (str, type(None)), "a string or null"),
    ("changed_params", (dict,), "an object"),
    ("summary.diverged", (int,), "an integer"),
    ("summary.mean_test_wrong", _OPTIONAL_NUMBER, "a number or null"),
    ("summary.test_size", _OPTIONAL_NUMBER, "a number or null"),
    ("summary.wall_s", _OPTIONAL_NUMBER, "a number or null"),
    ("summary.median_sequences", _OPTIONAL_NUMBER, "a number or null"),
    ("summary.success_rate", _OPTIONAL_NUMBER, "a number or null"),
)
_MISSING = object()


def _lookup(record: Any, dotted: str) -> Any:
    value = record
    for part in dotted.split("."):
        if not isinstance(value, dict):
            return _MISSING
        value = value.get(part, _MISSING)
    return value


def _kind_ok(value: Any, kinds: tuple[type, ...]) -> bool:
    # JSON true/false load as bool, which Python counts as an int.
    return isinstance(value, kinds) and not isinstance(value, bool)


def check_record(record: Any) -> str | None:
    """What is wrong with a ``results.json`` record for the tables (``"missing key
    'summary.trials'"``), or None when nothing is."""
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    for key, kinds, what in _REQUIRED:
        value = _lookup(record, key)
        if value is _MISSING:
            return f"missing key {key!r}"
        if not _kind_ok(value, kinds):
            return f"{key}: expected {what}, got {json.dumps(value)[:40]}"
    for key, kinds, what in _OPTIONAL:
        value = _lookup(record, key)
        if value is not _MISSING and not _kind_ok(value, kinds):
            return f"{key}: expected {what}, got {json.dumps(value)[:40]}"
    summary = record["summary"]
    if summary.get("mean_test_wrong") is not None and summary.get("test_size") is None:
        return "missing key 'summary.test_size' (needed with summary.mean_test_wrong)"
    if not record["trials"]:
        return "trials: expected at least one trial, got none"
    for k, trial in enumerate(record["trials"]):
        if not isinstance(trial, dict):
            return f"trials[{k}]: expected an object, got {json.dumps(trial)[:40]}"
        if "seed" not in trial:
            return f"missing key 'trials[{k}].seed'"
        if not _kind_ok(trial["seed"], (int,)):
            return f"trials[{k}].seed: expected an integer, got {json.dumps(trial['seed'])[:40]}"
    return None


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
    notes = [note for res in results for note in criteria_notes(res)]
    if notes:
        lines += ["", "Failed trials:", ""] + [f"- {note}" for note in notes]
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
