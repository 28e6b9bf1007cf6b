#!/bin/sh
# The paper setting's Exp. 2c rows at q = 100 and 200 with a longer budget (about 13 and 12
# times the paper's mean), to see whether they fail for want of sequences or at all; three
# trials each, seeds 9000 onwards. Rows whose results.json exists are skipped.
set -e
run() {  # row trials budget
  [ -f "results/longer-paper/$1/results.json" ] && return 0
  lstmkit reproduce "$1" --setting paper --trials "$2" --seed 9000 --max-sequences "$3" \
    --workers 1 --quiet --out "results/longer-paper/$1"
}
run exp2c-q100-p100 3 400000
run exp2c-q200-p200 3 400000
