"""Making the inside of a recurrent net visible: training curves, gradient flow, gate activity.

Figures use matplotlib (an optional extra, ``pip install lstmkit[plot]``) with the non-interactive
Agg backend, so they render on machines without a screen.
"""
