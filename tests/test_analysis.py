"""Tests of the analysis commands: the numbers behind the gradient-flow plot, the gate traces of
``lstmkit inspect``, and the self-contained HTML of ``lstmkit report`` (in a real headless
browser where Debian's chromium is installed)."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from lstmkit import cli
from lstmkit.analysis import gates, gradflow, report
from lstmkit.analysis.plots import training_curves
from lstmkit.reproduce.records import RunResult


@pytest.fixture(scope="module")
def flow() -> dict:
    torch.set_num_threads(1)
    return gradflow.run_gradflow(("rnn", "lstm", "lstm1997", "gru"), length=120, hidden=32,
                                 batch_size=8, seeds=2)


def test_rnn_gradient_vanishes_and_the_1997_carousel_keeps_it(flow: dict) -> None:
    def at(cell: str, q: str, lag: int) -> float:
        return gradflow.at_lag(flow, "init", cell, q, lag)

    # Same weight scale for every cell (torch's U(-1/sqrt(H), 1/sqrt(H))). The plain RNN loses
    # orders of magnitude per ten steps; measured ~1e-22 at lag 100 against ~1e-3 for lstm1997.
    assert at("rnn", "x", 1) > 1e-3
    assert at("rnn", "x", 100) < 1e-15
    assert at("rnn", "x", 100) < 1e-10 * at("lstm1997", "x", 100)
    # The 1997 cell has no forget gate: the error through c is the same at every lag.
    assert 0.5 < at("lstm1997", "c", 100) / at("lstm1997", "c", 1) < 2.0
    assert 0.5 < at("lstm1997", "x", 100) / at("lstm1997", "x", 1) < 2.0
    # Its truncated gradient never flows through h(t-1).
    assert all(v == 0.0 for v in flow["stages"]["init"]["lstm1997"]["h"]["mean"][1:])
    assert at("lstm1997", "h", 0) > 0.0
    # What the measurement shows about torch's initialisation: a forget gate near
    # sigmoid(0) = 0.5 halves the carried error every step, so the modern LSTM (and the GRU)
    # vanish at init about as fast as the RNN does.
    assert at("lstm", "x", 100) < 1e-12 * at("lstm", "x", 1)
    assert at("gru", "x", 100) < 1e-12 * at("gru", "x", 1)
    assert "c" not in flow["stages"]["init"]["rnn"]


def test_an_open_forget_gate_keeps_the_lstm_gradient() -> None:
    res = gradflow.run_gradflow(("lstm",), length=110, hidden=16, batch_size=4, seeds=1,
                                forget_bias=3.0)
    ratio = gradflow.at_lag(res, "init", "lstm", "c", 100) / gradflow.at_lag(
        res, "init", "lstm", "c", 1)
    assert ratio > 0.1


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru", "lstm1997", "peephole"])
def test_measured_input_gradient_is_the_layers_own_backward(cell: str) -> None:
    torch.manual_seed(0)
    layer = gradflow.build_layer(cell, 2, 8, dtype=torch.float64, backend="engine")
    x = torch.randn(15, 3, 2, dtype=torch.float64)
    u = torch.randn(8, dtype=torch.float64)
    norms = gradflow.measure(layer, x, u)
    x2 = x.clone().requires_grad_(True)
    out, _ = layer(x2)
    (out[-1] * u).sum().backward()
    torch.testing.assert_close(norms["x"], x2.grad.norm(dim=-1).mean(1))
    assert norms["x"].shape == (15,)


def test_csv_json_and_plot(flow: dict, tmp_path: Path) -> None:
    path = gradflow.write_csv(flow, tmp_path / "g.csv")
    rows = list(csv.DictReader(path.open()))
    # 4 cells, 2 quantities each plus c for the two LSTM-family cells, 120 lags.
    assert len(rows) == (4 * 2 + 2) * 120
    row = next(r for r in rows if r["cell"] == "rnn" and r["quantity"] == "x" and
               r["lag"] == "100")
    assert float(row["mean"]) == pytest.approx(gradflow.at_lag(flow, "init", "rnn", "x", 100),
                                               rel=1e-5)
    assert float(row["min"]) <= float(row["mean"]) <= float(row["max"])
    json.dumps(flow)  # what the command writes
    png = gradflow.plot(flow, tmp_path / "g.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "lag 100" in gradflow.summary_table(flow)


def test_gradflow_rejects_bad_arguments(capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["gradflow", "--cell", "nope"]) == 2
    assert cli.main(["gradflow", "--length", "1"]) == 2
    assert cli.main(["gradflow", "--task", "temporal_order"]) == 2  # lengths vary
    err = capsys.readouterr().err
    assert err.count("lstmkit gradflow: error:") == 3


def _model(cell: str) -> tuple:
    from lstmkit import tasks

    task = tasks.make("adding", T=12)
    torch.manual_seed(1)
    return gradflow.build_model(cell, task, 6), task


@pytest.mark.parametrize("cell", ["lstm", "peephole", "cifg", "lstm1997"])
def test_trace_matches_the_layer(cell: str) -> None:
    model, task = _model(cell)
    batch = task.sample(1, generator=torch.Generator().manual_seed(0))
    parts = gates.trace(model, batch.inputs[:, 0])
    with torch.no_grad():
        out, _, cells = model.layer(batch.inputs, return_cell_states=True)
        y = model(batch.inputs)
    torch.testing.assert_close(parts["h"], out[:, 0])
    torch.testing.assert_close(parts["c"], cells[:, 0])
    torch.testing.assert_close(parts["y"], y[:, 0])
    for g in ("i", "f", "o"):
        if g in parts:
            assert parts[g].shape[0] == 12 and 0.0 <= parts[g].min() <= parts[g].max() <= 1.0
    if cell == "cifg":
        torch.testing.assert_close(parts["f"], 1.0 - parts["i"])
    if cell == "lstm1997":
        assert "f" not in parts and parts["g"].abs().max() <= 2.0
        # Gates are per memory block, cell values per cell.
        blocks = 6 // model.layer.spec.block_size
        assert parts["i"].shape == (12, blocks) and parts["c"].shape == (12, 6)


def test_trace_refuses_non_lstm_cells() -> None:
    model, task = _model("gru")
    with pytest.raises(ValueError, match="LSTM gates"):
        gates.trace(model, torch.zeros(5, 2))


def test_inspect_save_load_and_figure(tmp_path: Path) -> None:
    ckpt = tmp_path / "net.pt"
    args = ["inspect", "--length", "12", "--hidden", "4", "--steps", "3",
            "--out", str(tmp_path / "a")]
    assert cli.main(args + ["--save", str(ckpt)]) == 0
    record = json.loads((tmp_path / "a" / "gates.json").read_text())
    assert len(record["parts"]["f"]) == 12 and len(record["markers"]) == 2
    inputs = torch.tensor(record["inputs"])
    assert sorted(inputs[:, 1].nonzero().flatten().tolist()) == record["markers"]
    assert (tmp_path / "a" / "gates.png").read_bytes()[:4] == b"\x89PNG"
    out_b = ["--out", str(tmp_path / "b")]
    assert cli.main(["inspect", "--length", "12", "--load", str(ckpt)] + out_b) == 0
    again = json.loads((tmp_path / "b" / "gates.json").read_text())
    assert again["parts"]["c"] == record["parts"]["c"]
    assert cli.main(["inspect", "--length", "20", "--load", str(ckpt)] + out_b) == 2
    assert cli.main(["inspect", "--cell", "gru", "--steps", "0"] + out_b) == 2


def _results(tmp_path: Path) -> Path:
    """A results folder laid out like ``lstmkit reproduce --out`` with two cells."""
    root = tmp_path / "runs"
    for cell, ok in (("lstm1997", True), ("rnn", False)):
        res = {
            "experiment": "exp4-T100", "title": "adding <problem> & friends",
            "setting": "paper", "cell": cell, "task": "adding1997",
            "task_params": {"T": 100}, "changed_params": {},
            "paper": {"label": "H&S 1997 Table 7", "success_rate": 1.0, "sequences": 74_000,
                      "trials": 10, "test": "1 wrong of 2560", "criterion": "ST2"},
            "settings": {"optimizer": "sgd", "lr": 0.5, "max_sequences": 1000},
            "summary": {"trials": 1, "successes": int(ok), "success_rate": float(ok),
                        "mean_sequences": 800.0 if ok else None,
                        "median_sequences": 800.0 if ok else None, "mean_test_wrong": 3.0,
                        "test_size": 2560, "wall_s": 12.0},
            "trials": [{"seed": 0, "success": ok, "sequences": 800 if ok else 1000,
                        "test": {"wrong": 3, "size": 2560}, "wall_s": 12.0,
                        "curve": {"sequences": [100, 500, 1000], "loss": [1.0, 0.3, 0.1],
                                  "metric": [0.1, 0.6, 0.99]}}],
        }
        folder = root / f"exp4-paper-{cell}"
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps(res))
        training_curves(RunResult.from_dict(res), folder / "curves.png")
    return root


def test_report_is_one_self_contained_page(tmp_path: Path, flow: dict) -> None:
    root = _results(tmp_path)
    (root / "gradflow.json").write_text(json.dumps(flow))
    gradflow.plot(flow, root / "gradflow.png")
    assert cli.main(["report", str(root)]) == 0
    page = (root / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 3
    assert "http://" not in page and "https://" not in page
    assert "adding &lt;problem&gt; &amp; friends" in page  # escaped
    assert page.count("H&amp;S 1997 Table 7") == 1  # the paper row once per experiment
    assert "paper lstm1997" in page and "paper rnn" in page
    assert f"{gradflow.at_lag(flow, 'init', 'rnn', 'x', 100):.2e}" in page


def test_report_single_run_and_errors(tmp_path: Path) -> None:
    root = _results(tmp_path) / "exp4-paper-rnn"
    out = tmp_path / "one.html"
    assert cli.main(["report", str(root), "--out", str(out)]) == 0
    assert out.read_text().count("<figure>") == 1
    (tmp_path / "empty").mkdir()
    assert cli.main(["report", str(tmp_path / "empty")]) == 2
    assert cli.main(["report", str(tmp_path / "missing")]) == 2
    with pytest.raises(ValueError, match="no results.json"):
        report.render(tmp_path / "empty")


def test_report_renders_in_a_headless_browser(tmp_path: Path) -> None:
    browser = next((shutil.which(b) for b in ("chromium", "chromium-browser")
                    if shutil.which(b)), None)
    if browser is None and Path("/usr/bin/chromium").exists():
        browser = "/usr/bin/chromium"
    if browser is None:
        pytest.skip("no chromium installed (Debian: apt-get install chromium)")
    root = _results(tmp_path)
    page = report.write_report(root)
    profile = tmp_path / "profile"
    result = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=90,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    assert "<table>" in dom and "paper lstm1997" in dom and "exp4-T100" in dom
    assert dom.count("data:image/png;base64,") == 2


# -- figures: colours and wording ------------------------------------------------------------


def test_every_preset_has_its_own_colour() -> None:
    from lstmkit.analysis.figures import cell_colour
    from lstmkit.cells import PRESETS

    colours = {name: cell_colour(name) for name in PRESETS}
    assert len(set(colours.values())) == len(PRESETS), colours


def _drawn_title(monkeypatch: pytest.MonkeyPatch, results: dict, path: Path) -> str:
    """The title ``gradflow.plot`` gives its figure (read before the figure is saved)."""
    from lstmkit.analysis import figures

    titles = []
    save = figures.save

    def keep(fig: Any, out: Path) -> Path:
        titles.append(fig._suptitle.get_text())
        return save(fig, out)

    monkeypatch.setattr(figures, "save", keep)
    gradflow.plot(results, path)
    return titles[0]


def test_caption_counts_in_the_right_number(
    flow: dict, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert "mean of 2 seeds x 8 sequences (band: seed range)" in gradflow.caption(flow)
    one = gradflow.run_gradflow(("rnn",), length=4, hidden=2, batch_size=1, seeds=1)
    text = _drawn_title(monkeypatch, one, tmp_path / "one.png")
    assert "one seed, mean of 1 sequence" in text
    assert "1 seeds" not in text and "1 sequences" not in text and "seed range" not in text
    assert gradflow.plural(1, "Adam step") == "1 Adam step"
    assert gradflow.plural(1000, "Adam step") == "1,000 Adam steps"


# -- size limits: refused up front, one line ------------------------------------------------


@pytest.fixture
def eight_gib(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine with 8 GiB of memory, whatever this one has."""
    from lstmkit.analysis import _limits

    monkeypatch.setattr(_limits, "physical_memory", lambda: 8 * 2**30)


@pytest.mark.parametrize("argv, expected", [
    (["gradflow", "--length", "100000000000"],
     "--length: expected an int from 2 to 20,000, got 100000000000 (the probe runs"),
    (["gradflow", "--batch", "5000"], "--batch: expected an int from 1 to 4,096, got 5000"),
    (["gradflow", "--length", "20000", "--batch", "4096", "--hidden", "256"],
     "lower --length, --batch or --hidden"),
    (["inspect", "--length", "100000000000"], "--length: expected an int from 1 to 10,000"),
    (["inspect", "--length", "10000", "--hidden", "1024"], "lower --length or --hidden"),
])
def test_sizes_beyond_the_limits_are_one_line(
    eight_gib: None, capsys: pytest.CaptureFixture, tmp_path: Path, argv: list[str],
    expected: str,
) -> None:
    out = tmp_path / "out"
    assert cli.main(argv + ["--out", str(out)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"lstmkit {argv[0]}: error: "), err
    assert expected in err[0]
    assert not out.exists()  # refused before any work
    if "GiB" in err[0]:
        assert "this machine's 8.0 GiB" in err[0]


def test_run_gradflow_checks_sizes_together(eight_gib: None) -> None:
    with pytest.raises(ValueError, match="lower length, batch_size or hidden"):
        gradflow.run_gradflow(("rnn",), length=20_000, hidden=1024, batch_size=1024, seeds=1)
    with pytest.raises(TypeError, match="seeds: expected an int, got float"):
        gradflow.run_gradflow(("rnn",), seeds=1.0)  # type: ignore[arg-type]
    # Within the limits and the memory: accepted.
    gradflow.check_arguments(length=2_000, hidden=64, batch_size=32, seeds=3)


# -- report: the run's own task parameters ---------------------------------------------------


def test_report_shows_the_runs_task_parameters(tmp_path: Path) -> None:
    root = _results(tmp_path)
    path = root / "exp4-paper-rnn" / "results.json"
    res = json.loads(path.read_text())
    res["task_params"] = {"T": 50}
    path.write_text(json.dumps(res))
    page = report.render(root)
    assert "task adding1997 (T=50)" in page and "task adding1997 (T=100)" in page


def test_report_gradflow_section_counts_in_the_right_number(tmp_path: Path, flow: dict) -> None:
    one = {**flow, "settings": {**flow["settings"], "seeds": 1}}
    (tmp_path / "gradflow.json").write_text(json.dumps(one))
    page = report.render(tmp_path)
    assert "1 seed of 8 sequences" in page and "1 seeds" not in page


# -- figures leave matplotlib's backend alone; the report reads results through the records ----


def test_analysis_leaves_the_users_matplotlib_backend_alone(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "import matplotlib\n"
        "matplotlib.use('svg')\n"
        "from lstmkit.analysis import figures, gates, gradflow, plots, report\n"
        "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()\n"
        "flow = gradflow.run_gradflow(('rnn',), length=3, hidden=2, batch_size=1, seeds=1)\n"
        "gradflow.plot(flow, sys.argv[1])\n"
        "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    png = tmp_path / "g.png"
    result = subprocess.run([sys.executable, "-c", script, str(png)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_report_says_why_the_failed_trials_failed(tmp_path: Path) -> None:
    root = _results(tmp_path)
    path = root / "exp4-paper-rnn" / "results.json"
    res = json.loads(path.read_text())
    res["settings"].update(criteria=["ST3"], criteria_rules={
        "ST3": "all of the 2,000 most recent training sequences correct"})
    path.write_text(json.dumps(res))
    page = report.render(root)
    assert page.count("did not meet") == 1  # the rnn run failed, the lstm1997 run did not
    assert ("exp4-T100 paper rnn: 1 of 1 trials did not meet ST3 within 1,000 sequences: all "
            "of the 2,000 most recent training sequences correct") in page


def test_report_refuses_a_damaged_results_file_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = _results(tmp_path)
    path = root / "exp4-paper-rnn" / "results.json"
    res = json.loads(path.read_text())
    del res["summary"]["trials"]
    path.write_text(json.dumps(res))
    assert cli.main(["report", str(root)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and str(path) in err[0] and "missing key 'summary.trials'" in err[0]
