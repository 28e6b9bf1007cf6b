#!/bin/sh
# Rows that fail within the default budget, run with a longer one to see whether they fail for
# want of sequences or at all, seeds 9000 onwards. Paper setting: Exp. 4 at T = 500 (2 trials,
# about 7 times the paper's mean) and Exp. 2c at q = 100 (3 trials, about 13 times). Modern
# setting: Exp. 2b (3 trials, 100,000 sequences, about 18 times). Rows whose results.json exists
# are skipped.
set -e
run() {  # setting row trials budget
  [ -f "results/longer-$1/$2/results.json" ] && return 0
  lstmkit reproduce "$2" --setting "$1" --trials "$3" --seed 9000 --max-sequences "$4" \
    --workers 1 --quiet --resume --out "results/longer-$1/$2"
}
run paper exp4-T500 2 1500000
run paper exp2c-q100-p100 3 400000
run modern exp2b 3 100000
