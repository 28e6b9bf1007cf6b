"""Rerun the tables of Hochreiter & Schmidhuber (1997): experiments, networks, runner, report.

``lstmkit reproduce exp4-T100 --trials 10`` trains the paper's network under the paper's rules
and prints the outcome beside the paper's row; :func:`run` is the same from Python.
"""

from .experiments import EXPERIMENTS, Experiment, get, names
from .runner import Terminated, compare, run, run_trial

__all__ = ["EXPERIMENTS", "Experiment", "Terminated", "get", "compare", "names", "run",
           "run_trial"]
