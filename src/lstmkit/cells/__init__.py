"""Cell specs (the variants as data) and the readable reference step functions."""

from .layout import Layout, layout
from .reference import param_shapes, scan, step
from .spec import ACTIVATIONS, PRESETS, CellSpec, get_spec, lstm1997, names

__all__ = [
    "ACTIVATIONS",
    "PRESETS",
    "CellSpec",
    "Layout",
    "get_spec",
    "layout",
    "lstm1997",
    "names",
    "param_shapes",
    "scan",
    "step",
]
