"""``lstmkit report DIR``: one self-contained HTML page from a folder of results.

``DIR`` holds a ``results.json`` (one ``lstmkit reproduce --out`` run), or subfolders that each
hold one, plus any PNG figures (training curves, ``lstmkit gradflow`` and ``lstmkit inspect``
output) and ``gradflow.json`` files. The page has a summary table of every run beside the
paper's row, each run's settings and trials, and every figure embedded as a base64 data URI with
its own CSS inline, so it opens offline and can be mailed as one file.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
from pathlib import Path
from typing import Any

from ..reproduce.records import RunResult
from ..reproduce.report import SUMMARY_COLUMNS, criteria_notes, format_number, summary_rows
from ._common import plural
from .gradflow import REPORT_LAGS

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f2f2f2; } td.l, th.l { text-align: left; }
tr.paper td { background: #fbf6e6; font-style: italic; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.85em; color: #555; }
.ok { color: #1a7f37; } .fail { color: #b42318; }
ul.notes { font-size: 0.9em; color: #b42318; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _num(value: Any, fmt: str = "{:,.0f}") -> str:
    return _e(format_number(value, fmt))


def _table(header: list[str], rows: list[list[str]], classes: list[str] | None = None,
           left: int = 1) -> str:
    """An HTML table; cells are already escaped; the first ``left`` columns align left."""
    def cells(tag: str, values: list[str]) -> str:
        return "".join(f'<{tag}{" class=l" if i < left else ""}>{v}</{tag}>'
                       for i, v in enumerate(values))
    body = "".join(f'<tr{" class=" + c if c else ""}>{cells("td", r)}</tr>'
                   for r, c in zip(rows, classes or [""] * len(rows)))
    return f"<table><tr>{cells('th', header)}</tr>{body}</table>"


def _image(path: Path, root: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    name = path.relative_to(root).as_posix()
    return (f'<figure><img alt="{_e(name)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_e(name)}</figcaption></figure>")


def find(root: str | Path) -> tuple[list[Path], list[Path], list[Path]]:
    """``results.json``, ``gradflow.json`` and PNG files under ``root``, sorted by path."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"DIR: {root} is not a folder")
    results = sorted(root.rglob("results.json"))
    gradflows = sorted(root.rglob("gradflow.json"))
    images = sorted(root.rglob("*.png"))
    if not (results or gradflows or images):
        raise ValueError(f"DIR: no results.json, gradflow.json or PNG under {root}")
    return results, gradflows, images


def _load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not readable JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def _run_section(path: Path, res: RunResult, root: Path, images: list[Path]) -> str:
    title = f"{res.experiment}: {res.setting} setting, cell {res.cell}"
    # The task and its parameters as the run recorded them, beside the experiment's title, so
    # a run with non-default parameters (another T, say) reads as what it was.
    params = res.task_params
    task = (res.task or "?") + (
        " (" + ", ".join(f"{k}={v}" for k, v in params.items()) + ")" if params else "")
    parts = [f"<h2>{_e(title)}</h2>", f"<p>{_e(res.title)}; task {_e(task)} "
             f"<small>({_e(path.relative_to(root).as_posix())})</small></p>"]
    parts.append(_table(["setting", "value"],
                        [[_e(k), _e("-" if v is None else v)]
                         for k, v in res.settings.to_dict().items()], left=2))
    rows = []
    for t in res.trials:
        test = t.test
        ok = '<span class="ok">yes</span>' if t.success else '<span class="fail">no</span>'
        wrong = "- / -" if test is None else \
            f"{format_number(test.wrong, '{:g}')} / {format_number(test.size, '{:g}')}"
        rows.append([_e(t.seed), ok, _num(t.sequences), _e(wrong), _num(t.wall_s)])
    parts.append(_table(["seed", "success", "sequences", "test wrong", "wall s"], rows))
    # Why the failed trials failed, in the words of the table in the terminal.
    notes = criteria_notes(res)
    if notes:
        parts.append('<ul class="notes">' + "".join(f"<li>{_e(n)}</li>" for n in notes)
                     + "</ul>")
    for image in images:
        if image.parent == path.parent:
            parts.append(_image(image, root))
    return "\n".join(parts)


def _count(value: Any, noun: str) -> str:
    """``plural`` for a count read from a file, which may be missing or not a number."""
    return plural(value, noun) if isinstance(value, int) else f"{value} {noun}s"


def _gradflow_section(path: Path, data: dict[str, Any], root: Path) -> str:
    lags = [g for g in REPORT_LAGS if g < len(data.get("lags", []))]
    rows = []
    for stage, cells in data.get("stages", {}).items():
        for cell, quantities in cells.items():
            for q, values in quantities.items():
                rows.append([_e(stage), _e(cell), _e(f"‖∂L/∂{q}(t)‖")]
                            + [_num(values["mean"][g], "{:.2e}") for g in lags])
    s = data.get("settings", {})
    return (f"<h2>Gradient flow ({_e(path.relative_to(root).as_posix())})</h2>"
            f"<p>Loss {_e(s.get('loss', ''))}; hidden size {_e(s.get('hidden'))}, "
            f"{_e(_count(s.get('seeds'), 'seed'))} of "
            f"{_e(_count(s.get('batch_size'), 'sequence'))}; gradient: "
            f"{_e(s.get('gradient', ''))}.</p>"
            + _table(["stage", "cell", "gradient"] + [f"lag {g}" for g in lags], rows, left=3))


def render(root: str | Path) -> str:
    """The HTML page for the results folder ``root``."""
    root = Path(root)
    results, gradflows, images = find(root)
    runs = [(p, RunResult.read(p)) for p in results]
    body = [f"<h1>lstmkit results: {_e(root.resolve().name)}</h1>"]
    if runs:
        summary = summary_rows([res for _, res in runs], paper_labels=True)
        rows = [[_e(c) for c in cells] for _, cells in summary]
        classes = ["paper" if is_paper else "" for is_paper, _ in summary]
        body.append("<h2>Summary</h2><p>Paper rows (H&amp;S 1997) in italics.</p>")
        body.append(_table(list(SUMMARY_COLUMNS), rows, classes, left=2))
    used: set[Path] = set()
    for path, res in runs:
        body.append(_run_section(path, res, root, images))
        used.update(i for i in images if i.parent == path.parent)
    for path in gradflows:
        body.append(_gradflow_section(path, _load(path), root))
    rest = [i for i in images if i not in used]
    if rest:
        body.append("<h2>Figures</h2>")
        body.extend(_image(i, root) for i in rest)
    return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            f"<title>lstmkit report: {_e(root.resolve().name)}</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_report(root: str | Path, out: str | Path | None = None) -> Path:
    """Write :func:`render`'s page to ``out`` (default ``ROOT/report.html``); returns the path."""
    page = render(root)
    path = Path(out) if out is not None else Path(root) / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def _command(args: argparse.Namespace) -> int:
    path = write_report(args.dir, args.out)
    print(f"wrote {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``lstmkit report`` to the command line."""
    p = sub.add_parser("report", help="turn a results folder into one self-contained HTML page")
    p.add_argument("dir", help="folder with results.json (or subfolders with one) and figures")
    p.add_argument("--out", default=None, help="HTML file to write (default DIR/report.html)")
    p.set_defaults(func=_command)
