#!/bin/sh
# The modern net with forget-gate bias 1 instead of chrono initialisation at the paper's trial
# counts (10 trials a row, 30 for Exp. 1, 20 for Exp. 2c), default budgets, seeds 3000 onwards
# (those of the modern runs), trials side by side. Rows whose results.json exists are skipped.
set -e
for row in exp3a exp6a exp2a exp3b exp4-T100 exp1 exp2b exp3c exp2c-q50-p50 exp5-T100 \
    exp2c-q100-p100 exp2c-q200-p200 exp6b exp4-T500; do
  n=10; [ "$row" = exp1 ] && n=30
  case "$row" in exp2c*) n=20 ;; esac
  [ -f "results/trial-counts-modern-fb1/$row/results.json" ] && continue
  lstmkit reproduce "$row" --setting modern-fb1 --trials "$n" --seed 3000 \
    --workers "${WORKERS:-1}" --quiet --resume --out "results/trial-counts-modern-fb1/$row"
done
