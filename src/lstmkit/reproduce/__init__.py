"""Rerun the tables of Hochreiter & Schmidhuber (1997): experiments, networks, runner, report.

``lstmkit reproduce exp4-T100 --trials 10`` trains the paper's network under the paper's rules
and prints the outcome beside the paper's row; :func:`run` is the same from Python and returns
a :class:`RunResult`, the record ``results.json`` holds (:meth:`RunResult.read` loads one).
"""

from .experiments import EXPERIMENTS, Experiment, get, names
from .records import RunResult, TrialRecord, load_results
from .runner import Terminated, compare, run, run_trial

__all__ = ["EXPERIMENTS", "Experiment", "RunResult", "Terminated", "TrialRecord", "get",
           "compare", "load_results", "names", "run", "run_trial"]
