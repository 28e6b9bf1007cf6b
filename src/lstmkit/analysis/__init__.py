"""Making the inside of a recurrent net visible: training curves, gradient flow, gate activity.

Figures use matplotlib (a dependency of lstmkit, imported only when a figure is drawn) with the
non-interactive Agg backend, so they render on machines without a screen.
"""
