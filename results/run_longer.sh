#!/bin/sh
# Paper-setting rows that fail within the default budget, run with a longer one to see whether
# they fail for want of sequences or at all: Exp. 4 at T = 500 (2 trials, about 7 times the
# paper's mean) and Exp. 2c at q = 100 (3 trials, about 13 times), seeds 9000
# onwards. Rows whose results.json exists are skipped.
set -e
run() {  # row trials budget
  [ -f "results/longer-paper/$1/results.json" ] && return 0
  lstmkit reproduce "$1" --setting paper --trials "$2" --seed 9000 --max-sequences "$3" \
    --workers 1 --quiet --out "results/longer-paper/$1"
}
run exp4-T500 2 1500000
run exp2c-q100-p100 3 400000
