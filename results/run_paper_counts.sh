#!/bin/sh
# The paper setting at the paper's trial counts on the rows not yet run at them: budgets three
# times the paper's mean, seeds 100 onwards (as results/trial-counts/), trials side by side.
# Rows whose results.json exists are skipped, and a row cut short continues from its trials'
# checkpoints, so the script can be rerun to continue.
set -e
run() {  # row trials budget
  [ -f "results/trial-counts/$1/results.json" ] && return 0
  lstmkit reproduce "$1" --setting paper --trials "$2" --seed 100 --max-sequences "$3" \
    --workers "${WORKERS:-1}" --quiet --resume --out "results/trial-counts/$1"
}
run exp2b 10 20000
run exp2c-q100-p100 20 93000
run exp2c-q200-p200 20 99000
run exp3c 10 808950
run exp6b 10 1713300
run exp5-T100 10 1446000
run exp4-T500 10 627000
run exp4-T1000 10 2559000
