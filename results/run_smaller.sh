#!/bin/sh
# Rows run smaller than the paper's trial counts (fewer trials; budgets at most the default, most
# of them the paper's mean), for rows that do not fit the 2-core machine at full size. Chains a
# and b side by side, one core each, then c and d, then e and f, then g, h and i one at a time
# (a q = p = 1000 row needs up to ~9 GB, so two of them side by side can run out of memory);
# rows whose results.json exists are skipped.
set -e
run() {  # folder row setting trials budget [cell]
  [ -f "results/$1/$2/results.json" ] && return 0
  lstmkit reproduce "$2" --setting "$3" ${6:+--cell "$6"} --trials "$4" --seed 9000 \
    --max-sequences "$5" --workers 1 --quiet --resume --out "results/$1/$2"
}
chain_a() {
  run smaller-modern exp2c-q1000-p50 modern 2 203000
  run smaller-modern exp2c-q1000-p200 modern 2 75000
  run smaller-modern exp2c-q1000-p100 modern 2 135000
  run smaller-modern exp2c-q1000-p500 modern 2 49000
}
chain_b() {
  run smaller-paper exp2b paper 3 20000
  run smaller-paper exp2c-q500-p500 paper 3 38000
  run smaller-modern exp2c-q1000-p1000 modern 2 49000
}
chain_c() {
  run smaller-paper exp2c-q1000-p50 paper 2 203000
  run smaller-paper exp2c-q1000-p100 paper 2 135000
  run smaller-paper exp2c-q1000-p200 paper 2 75000
}
# The columns the modern LSTM was run beside: modern-fb1 and the plain RNN on the longer rows.
chain_d() {
  run smaller-modern-fb1 exp4-T1000 modern-fb1 2 853000
}
chain_e() {
  run_rnn exp4-T1000 1 853000
}
# One trial each where even a smaller run costs most of an hour on one core.
chain_f() {
  run smaller-paper exp2c-q1000-p500 paper 1 49000
  run smaller-modern-fb1 exp2c-q500-p500 modern-fb1 1 38000
}
chain_g() {
  run_rnn exp2c-q500-p500 1 38000
  run smaller-paper exp2c-q1000-p1000 paper 1 49000
}
# The modern-fb1 and plain-RNN cells of the q = 1000 rows, one trial each, with 30,000
# sequences: twice what the modern LSTM needed on these rows (13,000-15,000), a fraction of the
# paper's mean, because at the paper's mean one failing trial costs up to 40 minutes.
chain_h() {
  for p in 50 100 200 500 1000; do
    run smaller-modern-fb1 exp2c-q1000-p$p modern-fb1 1 30000
  done
}
chain_i() {
  for p in 50 100 200 500 1000; do run_rnn exp2c-q1000-p$p 1 30000; done
}
run_rnn() {  # row trials budget: the plain RNN under the modern recipe
  run smaller-rnn "$1" modern "$2" "$3" rnn
}
case "${1:-all}" in
  a) chain_a ;;
  b) chain_b ;;
  c) chain_c ;;
  d) chain_d ;;
  e) chain_e ;;
  f) chain_f ;;
  g) chain_g ;;
  h) chain_h ;;
  i) chain_i ;;
  *) chain_a & chain_b & wait; chain_c & chain_d & wait; chain_e & chain_f & wait
     chain_g; chain_h; chain_i ;;
esac
