#!/bin/sh
# The plain-RNN baseline in the modern setting at the paper's trial counts (10 trials a row, 30
# for Exp. 1, 20 for Exp. 2c): a tanh RNN with the modern LSTM's weight count, the modern
# setting's optimiser, readout and default budget, seeds 3000 onwards (those of the modern LSTM
# runs), trials side by side.
set -e
for row in exp3a exp6a exp2a exp3b exp4-T100 exp1 exp2b exp3c exp2c-q50-p50 exp2c-q100-p100 \
    exp2c-q200-p200 exp6b exp5-T100 exp4-T500; do
  n=10; [ "$row" = exp1 ] && n=30
  case "$row" in exp2c*) n=20 ;; esac
  [ -f "results/trial-counts-rnn/$row/results.json" ] && continue
  lstmkit reproduce "$row" --setting modern --cell rnn --trials "$n" --seed 3000 \
    --workers "${WORKERS:-1}" --quiet --resume --out "results/trial-counts-rnn/$row"
done
