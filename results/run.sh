#!/usr/bin/env bash
# Reruns every row of RESULTS.md, each into its own folder under results/runs/, then prints the
# table. Rows run in the order of the paper; each command is independent, so any one of them can
# be rerun alone (copy its line). Budgets and trial counts are what fit on a 2-core machine in
# about an hour; RESULTS.md says which rows are smaller than the paper's.
set -euo pipefail
cd "$(dirname "$0")/.."
K="${LSTMKIT:-.venv/bin/lstmkit} reproduce"
R=results/runs
run() { local dir=$1; shift; $K "$@" --quiet --out "$R/$dir" > /dev/null; echo "done: $dir"; }

# The paper's own setting: the lstm1997 net, on-line SGD at the paper's learning rate, and a
# plain RNN of about the same weight count under the same rules where the LSTM succeeded.
run exp1-paper        exp1 --trials 2 --max-sequences 40000
run exp2a-paper       exp2a
run exp2b-paper       exp2b
run exp2c-q50-paper   exp2c-q50-p50 --trials 2
run exp3a-paper       exp3a --trials 3
run exp3a-paper-rnn   exp3a --cell rnn
run exp3b-paper       exp3b --trials 3
run exp3b-paper-rnn   exp3b --cell rnn
run exp3c-paper       exp3c --max-sequences 60000 --trials 3
run exp4-T100-paper   exp4-T100 --trials 2
run exp5-paper        exp5-T100 --max-sequences 150000
run exp6a-paper       exp6a --trials 3
run exp6b-paper       exp6b --max-sequences 150000

# Modern setting (lstm with forget gate, Adam, batches of 16) and the plain RNN under the same
# budget and a comparable weight count.
for row in exp1 exp2a exp2b exp2c-q50-p50 exp3a exp3b exp3c exp4-T100 exp5-T100 exp6a exp6b; do
  run "$row-modern" "$row" --setting modern --trials 2 --max-sequences 60000
  run "$row-rnn"    "$row" --setting modern --cell rnn --max-sequences 60000
done

$K --summarize "$R"
