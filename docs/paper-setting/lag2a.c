/* H&S 1997 Exp. 2a (noise-free long time lag, p = 100) with the paper's own learning rule, for
 * testing one hypothesis at a time (docs/paper-setting-notes.md). Independent of lstmkit.
 *
 * The net of §5.2 and Table 10 row 2a: 101 one-hot inputs, 101 logistic outputs; one memory cell
 * with an input gate and no output gate, g logistic in [0, 1], h the identity; the cell and its
 * gate read the inputs only, the outputs read the inputs and the cell; no biases; weights in
 * [-0.2, 0.2]; learning rate 1. Trained by Appendix A.1 (forward partials ds/dw, error through
 * the cell state only), weights changed after every time step. The cell joins the net (its
 * readout starts at its initial values) when the mean loss of a window of 100 sequences is not
 * 1 % below the previous window's ("once the error has stopped decreasing"). Success: with the
 * weights frozen, on both sequences the absolute error of every output unit is below 0.25 at
 * the sequence end (Table 11's ABS(0.25); "every" checks every step), checked every 10 sequences.
 *
 * Build: cc -O2 -o lag2a lag2a.c -lm
 * Run:   ./lag2a SEED MAX_SEQUENCES [FLAG...]
 * Prints "RESULT seed S added A success N" (or "fail N"); every 1,000 sequences after the cell
 * joined (stderr): the worst error of the test, the largest cell readout weight, and per
 * sequence the cell state at the end and the x and y outputs at the end.
 * Flags (each one departure from the paper, for the experiments):
 *   seq        sum each sequence's updates and apply them at its end
 *   every      success needs every step below 0.25, not only the end
 *   add=N      the cell joins after N sequences instead of on the plateau
 *   gate=X     the input gate's initial weights shifted by X (X < 0: the gate starts nearly shut)
 *   centered   g in [-1, 1] instead of [0, 1]
 *   xy         the cell feeds only the x and y output units
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define P 100
#define N (P + 1)

static unsigned long long rng_state;
static double urand(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return (double)(rng_state >> 11) * (1.0 / 9007199254740992.0);
}
static double sg(double x) { return 1 / (1 + exp(-x)); }

static int per_seq, centered, xy_only;
static double G(double x) { return centered ? 2 * sg(x) - 1 : sg(x); }
static double Gd(double x) { double s = sg(x); return (centered ? 2 : 1) * s * (1 - s); }

static double wc[N], wi[N], V[N][N], Vc[N];        /* cell, gate, input->output, cell->output */
static double aV[N][N], awc[N], awi[N], aVc[N];    /* one sequence's summed updates (seq) */
static int seqs[2][P + 1];

/* Present sequence l (training when learn); *end and *all: largest error at the end, anywhere. */
static void present(int l, int learn, int cell, double *end, double *all, double *s_end) {
  const int *s = seqs[l];
  double state = 0, ds_c[N] = {0}, ds_i[N] = {0};
  *end = *all = 0;
  for (int t = 0; t < P; t++) {
    int a = s[t], b = s[t + 1];
    double yin = sg(wi[a]), g = G(wc[a]);
    state += yin * g;
    ds_c[a] += Gd(wc[a]) * yin;                      /* eq. 27, one-hot input */
    ds_i[a] += g * yin * (1 - yin);                  /* eq. 25 */
    double yc = cell ? state : 0, e_s = 0;
    for (int k = 0; k < N; k++) {
      double y = sg(V[k][a] + Vc[k] * yc), e = (k == b) - y, ae = fabs(e);
      if (ae > *all) *all = ae;
      if (t == P - 1 && ae > *end) *end = ae;
      if (!learn) continue;
      double e_k = y * (1 - y) * e;                  /* eq. 19 */
      e_s += Vc[k] * e_k;                            /* eq. 23, h' = 1, no output gate */
      int readout = cell && (!xy_only || k >= P - 1);
      if (per_seq) { aV[k][a] += e_k; if (readout) aVc[k] += e_k * yc; }
      else { V[k][a] += e_k; if (readout) Vc[k] += e_k * yc; }
    }
    if (!learn || !cell) continue;
    for (int m = 0; m < N; m++) {
      if (ds_c[m] == 0 && ds_i[m] == 0) continue;
      if (per_seq) { awc[m] += e_s * ds_c[m]; awi[m] += e_s * ds_i[m]; }
      else { wc[m] += e_s * ds_c[m]; wi[m] += e_s * ds_i[m]; }
    }
  }
  if (s_end) *s_end = state;
  if (learn && per_seq) {
    for (int k = 0; k < N; k++) {
      for (int m = 0; m < N; m++) { V[k][m] += aV[k][m]; aV[k][m] = 0; }
      Vc[k] += aVc[k]; aVc[k] = 0;
    }
    for (int m = 0; m < N; m++) { wc[m] += awc[m]; wi[m] += awi[m]; awc[m] = awi[m] = 0; }
  }
}

static double loss_of(int l, int cell) {
  const int *s = seqs[l];
  double state = 0, loss = 0;
  for (int t = 0; t < P; t++) {
    int a = s[t];
    state += sg(wi[a]) * G(wc[a]);
    for (int k = 0; k < N; k++) {
      double e = (k == s[t + 1]) - sg(V[k][a] + Vc[k] * (cell ? state : 0));
      loss += e * e;
    }
  }
  return loss;
}

int main(int argc, char **argv) {
  if (argc < 3) { fprintf(stderr, "usage: %s SEED MAX_SEQUENCES [FLAG...]\n", argv[0]); return 2; }
  int seed = atoi(argv[1]), max_seq = atoi(argv[2]), every = 0, add_at = 0;
  double gate_shift = 0;
  for (int i = 3; i < argc; i++) {
    const char *f = argv[i];
    if (!strcmp(f, "seq")) per_seq = 1;
    else if (!strcmp(f, "every")) every = 1;
    else if (!strcmp(f, "centered")) centered = 1;
    else if (!strcmp(f, "xy")) xy_only = 1;
    else if (!strncmp(f, "add=", 4)) add_at = atoi(f + 4);
    else if (!strncmp(f, "gate=", 5)) gate_shift = atof(f + 5);
    else { fprintf(stderr, "unknown flag %s\n", f); return 2; }
  }
  rng_state = 88172645463325252ULL ^ ((unsigned long long)seed * 2654435761ULL + 777);
  for (int i = 0; i < 20; i++) urand();
  for (int l = 0; l < 2; l++) {                     /* (x, a_1..a_99, x) and (y, ..., y) */
    seqs[l][0] = seqs[l][P] = P - 1 + l;
    for (int t = 1; t < P; t++) seqs[l][t] = t - 1;
  }
  const double u = 0.2;
  double Vc0[N];
  for (int k = 0; k < N; k++) {
    for (int m = 0; m < N; m++) V[k][m] = (2 * urand() - 1) * u;
    Vc0[k] = (2 * urand() - 1) * u;
  }
  for (int m = 0; m < N; m++) { wc[m] = (2 * urand() - 1) * u; wi[m] = (2 * urand() - 1) * u + gate_shift; }
  int added = 0, count = 0;
  double total = 0, previous = -1, end, all;
  for (int k = 1; k <= max_seq; k++) {
    int l = urand() < 0.5;
    total += loss_of(l, added > 0);
    present(l, 1, added > 0, &end, &all, NULL);
    count++;
    if (!added && (add_at ? k == add_at : count == 100)) {
      double mean = total / count;
      if (add_at || (previous >= 0 && mean > previous * 0.99)) {
        added = k;
        for (int q = 0; q < N; q++) Vc[q] = xy_only && q < P - 1 ? 0 : Vc0[q];
      }
      previous = mean;
      total = 0;
      count = 0;
    }
    if (!added || k % 10) continue;
    double worst = 0, s_end[2];
    for (int q = 0; q < 2; q++) {
      present(q, 0, 1, &end, &all, &s_end[q]);
      double w = every ? all : end;
      if (w > worst) worst = w;
    }
    if (worst < 0.25) { printf("RESULT seed %d added %d success %d\n", seed, added, k); return 0; }
    if (k % 1000 == 0) {
      double mx = 0;
      for (int q = 0; q < N; q++) if (fabs(Vc[q]) > mx) mx = fabs(Vc[q]);
      fprintf(stderr, "seed %d seq %d worst %.3f max|cell readout| %.2f", seed, k, worst, mx);
      for (int q = 0; q < 2; q++)
        fprintf(stderr, " | %s-sequence: state %.2f, x out %.2f, y out %.2f", q ? "y" : "x", s_end[q],
                sg(V[P - 1][P - 2] + Vc[P - 1] * s_end[q]), sg(V[P][P - 2] + Vc[P] * s_end[q]));
      fprintf(stderr, "\n");
    }
  }
  printf("RESULT seed %d added %d fail %d\n", seed, added, max_seq);
  return 0;
}
