"""Making the inside of a recurrent net visible: training curves, gradient flow, gate activity.

Figures use matplotlib (a dependency of lstmkit, imported only when a figure is drawn) through
its object-oriented API, so they render on machines without a screen and leave the matplotlib
backend a user has chosen unchanged.
"""
