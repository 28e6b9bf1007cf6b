#!/bin/sh
# The modern setting at the paper's trial counts (30 trials for Exp. 1, 20 for Exp. 2c, 10
# elsewhere), default budgets, seeds 3000 onwards (none of them used elsewhere in RESULTS.md),
# trials side by side. Rows whose results.json exists are skipped.
set -e
for row in exp3a exp6a exp3b exp2a exp1 exp3c exp6b exp2c-q50-p50 exp5-T100 exp2c-q100-p100 \
    exp2c-q200-p200 exp2b exp4-T500 exp4-T1000 exp2c-q500-p500; do
  n=10; [ "$row" = exp1 ] && n=30; case "$row" in exp2c*) n=20 ;; esac
  [ -f "results/trial-counts-modern/$row/results.json" ] && continue
  lstmkit reproduce "$row" --setting modern --trials "$n" --seed 3000 --workers "${WORKERS:-1}" \
    --quiet --resume --out "results/trial-counts-modern/$row"
done
