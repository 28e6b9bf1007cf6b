/* H&S 1997 Exp. 1 (embedded Reber grammar) with the paper's own learning rule, for testing one
 * hypothesis at a time about why the paper setting does not learn (docs/paper-setting-notes.md).
 *
 * Independent of lstmkit: the net of §5.1 (3 blocks of 2 cells or 4 of 1; gates and cells read
 * the current input and every cell and gate of the previous step; only the gates are biased; the
 * output units are unbiased logistic units that read the cells only; h in [-1, 1], g in [-2, 2];
 * weights in [-0.2, 0.2], output-gate biases -1, -2, -3 (-4)), trained by the truncated
 * RTRL-style rule of Appendix A.1 (eqs. 19-28: forward partials ds/dw, error only through the
 * cell state), weights changed after every time step, 256 training and 256 disjoint test strings,
 * exemplars drawn at random from the training set, success when on both sets the possible next
 * symbols are always the most active outputs (checked every 100 strings unless every=N).
 *
 * Build: cc -O2 -o reber97 reber97.c -lm
 * Run:   ./reber97 SEED BLOCKS CELLS_PER_BLOCK ALPHA MAX_STRINGS [FLAG...]
 * Prints "RESULT seed S success N" or "RESULT seed S fail N"; every 2,000 strings (stderr) the
 * mean loss per string and the wrong steps of both sets by kind: after the first B, after the
 * second symbol, after the inner B, inside the inner string, the symbol before last (the one that
 * needs the second symbol), the last.
 * Flags (each one departure from the paper, for the experiments):
 *   perseq    sum each string's updates and apply them at its end
 *   swap      h in [-2, 2] and g in [-1, 1] (Table 10's caption)
 *   multihot  targets: every possible next symbol 1 (not the actual next symbol)
 *   obias     biased output units
 *   shortcut  input units connected to the output units
 *   lr2       error signal 2 (t - y) (E differentiated without the appendix's 1/2)
 *   linout    linear output units
 *   igb=X     input-gate biases X (X < 0: X, 2X, 3X, ... by block)
 *   distinct  256 different training strings
 *   data=FILE the training and test strings from FILE (512 lines: 256 training strings, then
 *             256 test strings, e.g. lstmkit's, see docs/paper-setting-notes.md, E21) instead of
 *             generating them from SEED (the weights still come from SEED)
 *   every=N   test both sets after every N training strings instead of every 100 (E22; N must
 *             divide 2,000, the interval of the progress report)
 *   states    also print, at the symbol before last (mean over both sets), each cell's |s| and
 *             h'(s), each block's output gate, and its input gate at t = 1 and t = 3
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NS 7
#define MAXT 200
#define MAXC 8
#define MAXB 8
#define MAXZ 40

static unsigned long long rng_state;
static double urand(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return (double)(rng_state >> 11) * (1.0 / 9007199254740992.0);
}

static const char *SYM = "BTPSXVE";
static int sym_index(char c) { return (int)(strchr(SYM, c) - SYM); }
/* The inner Reber graph: node -> two (symbol, next node) edges; node 5 is the end. */
static const char *REBER[5] = {"T1P2", "S1X3", "T2V4", "X2S5", "P3V5"};

/* One embedded Reber string: B, T|P, B, inner symbols, E, the same T|P, E. */
static int generate(int *out) {
  int n = 0, node = 0, second = urand() < 0.5 ? 1 : 2;
  out[n++] = 0;
  out[n++] = second;
  out[n++] = 0;
  while (node != 5) {
    const char *e = REBER[node];
    int k = urand() < 0.5 ? 0 : 2;
    out[n++] = sym_index(e[k]);
    node = e[k + 1] - '0';
  }
  out[n++] = 6;
  out[n++] = second;
  out[n++] = 6;
  return n;
}

/* possible[t][k]: symbol k may follow the first t + 1 symbols of s. */
static void possible_next(const int *s, int n, unsigned char possible[][NS]) {
  memset(possible, 0, (size_t)n * NS);
  possible[0][1] = possible[0][2] = 1;
  possible[1][0] = 1;
  int node = 0;
  for (int t = 2; t < n - 1; t++) {
    if (t > 2 && node < 5) {
      const char *e = REBER[node];
      node = sym_index(e[0]) == s[t] ? e[1] - '0' : e[3] - '0';
    }
    if (s[t] == 6) possible[t][s[1]] = 1;               /* inner E: the second symbol again */
    else if (node < 5) {
      possible[t][sym_index(REBER[node][0])] = possible[t][sym_index(REBER[node][2])] = 1;
    } else possible[t][6] = 1;                          /* inner end, or the closing T|P */
  }
}

static int B, S, C, NR, NZ; /* blocks, cells per block, cells, recurrent sources, sources + 1 */
static double Wc[MAXC][MAXZ], Wi[MAXB][MAXZ], Wo[MAXB][MAXZ], Wk[NS][MAXC + NS], Wkb[NS];
static double dWc[MAXC][MAXZ], dWi[MAXB][MAXZ], dWo[MAXB][MAXZ], dWk[NS][MAXC + NS], dWkb[NS];
static int per_seq, swap_ranges, multihot, out_bias, shortcut, lr2, lin_out;
static double alpha;
static long wrong_by_kind[6];
static int show_states;
/* At the symbol before last: sums of |s|, h'(s) per cell, output gate per block; input gate
 * per block at t = 1 (the second symbol) and t = 3 (the first inner symbol). */
static double at_s[MAXC], at_hd[MAXC], at_out[MAXB], at_in1[MAXB], at_in3[MAXB];
static long at_n;

static double sg(double x) { return 1 / (1 + exp(-x)); }
static double H(double x) { return swap_ranges ? 4 * sg(x) - 2 : 2 * sg(x) - 1; }
static double Hd(double x) { double s = sg(x); return (swap_ranges ? 4 : 2) * s * (1 - s); }
static double G(double x) { return swap_ranges ? 2 * sg(x) - 1 : 4 * sg(x) - 2; }
static double Gd(double x) { double s = sg(x); return (swap_ranges ? 2 : 4) * s * (1 - s); }

static void apply_updates(void) {
  for (int c = 0; c < C; c++)
    for (int m = 0; m < NZ; m++) { Wc[c][m] += dWc[c][m]; dWc[c][m] = 0; }
  for (int b = 0; b < B; b++)
    for (int m = 0; m < NZ; m++) {
      Wi[b][m] += dWi[b][m]; dWi[b][m] = 0;
      Wo[b][m] += dWo[b][m]; dWo[b][m] = 0;
    }
  for (int k = 0; k < NS; k++) {
    for (int m = 0; m < C + NS; m++) { Wk[k][m] += dWk[k][m]; dWk[k][m] = 0; }
    Wkb[k] += dWkb[k]; dWkb[k] = 0;
  }
}

/* Present one string (training when learn); returns its loss; *ok: every step correct. */
static double present(const int *s, int n, int learn, int *ok) {
  static unsigned char possible[MAXT][NS];
  possible_next(s, n, possible);
  double r[MAXZ] = {0}, z[MAXZ], state[MAXC] = {0}, ds_c[MAXC][MAXZ], ds_i[MAXC][MAXZ];
  memset(ds_c, 0, sizeof ds_c);
  memset(ds_i, 0, sizeof ds_i);
  double loss = 0;
  *ok = 1;
  for (int t = 0; t < n - 1; t++) {
    /* Sources of every hidden unit: current input, previous cells and gates, bias. */
    for (int m = 0; m < NZ; m++) z[m] = 0;
    z[s[t]] = 1;
    for (int m = 0; m < NR; m++) z[NS + m] = r[m];
    z[NZ - 1] = 1;
    double net_c[MAXC], g[MAXC], yin[MAXB], yout[MAXB], yc[MAXC], y[NS], e_k[NS];
    for (int b = 0; b < B; b++) {
      double ni = 0, no = 0;
      for (int m = 0; m < NZ; m++) { ni += Wi[b][m] * z[m]; no += Wo[b][m] * z[m]; }
      yin[b] = sg(ni);
      yout[b] = sg(no);
    }
    for (int c = 0; c < C; c++) {
      int b = c / S;
      net_c[c] = 0;
      for (int m = 0; m < NZ - 1; m++) net_c[c] += Wc[c][m] * z[m]; /* cells: no bias */
      g[c] = G(net_c[c]);
      state[c] += yin[b] * g[c];
      yc[c] = yout[b] * H(state[c]);
      for (int m = 0; m < NZ; m++) {               /* eqs. 25 and 27 */
        ds_c[c][m] += Gd(net_c[c]) * yin[b] * z[m];
        ds_i[c][m] += g[c] * yin[b] * (1 - yin[b]) * z[m];
      }
    }
    for (int k = 0; k < NS; k++) {
      double net = out_bias ? Wkb[k] : 0;
      for (int c = 0; c < C; c++) net += Wk[k][c] * yc[c];
      if (shortcut) net += Wk[k][C + s[t]];
      y[k] = lin_out ? net : sg(net);
    }
    if (!learn && t == n - 3) {
      at_n++;
      for (int c = 0; c < C; c++) { at_s[c] += fabs(state[c]); at_hd[c] += Hd(state[c]); }
      for (int b = 0; b < B; b++) at_out[b] += yout[b];
    }
    for (int b = 0; !learn && (t == 1 || t == 3) && b < B; b++) (t == 1 ? at_in1 : at_in3)[b] += yin[b];
    double lo = 1e9, hi = -1e9;
    for (int k = 0; k < NS; k++) {
      if (possible[t][k]) { if (y[k] < lo) lo = y[k]; }
      else if (y[k] > hi) hi = y[k];
    }
    if (!(lo > hi)) {
      *ok = 0;
      if (!learn) wrong_by_kind[t <= 2 ? t : t == n - 3 ? 4 : t == n - 2 ? 5 : 3]++;
    }
    for (int k = 0; k < NS; k++) {
      double target = multihot ? possible[t][k] : k == s[t + 1];
      double e = target - y[k];
      loss += e * e;
      e_k[k] = (lin_out ? 1 : y[k] * (1 - y[k])) * e * (lr2 ? 2 : 1); /* eq. 19 */
    }
    if (learn) {
      double back[MAXC];
      for (int c = 0; c < C; c++) {
        back[c] = 0;
        for (int k = 0; k < NS; k++) back[c] += Wk[k][c] * e_k[k];
      }
      for (int k = 0; k < NS; k++) {
        for (int c = 0; c < C; c++) dWk[k][c] += alpha * e_k[k] * yc[c];
        if (shortcut) dWk[k][C + s[t]] += alpha * e_k[k];
        if (out_bias) dWkb[k] += alpha * e_k[k];
      }
      for (int b = 0; b < B; b++) {                 /* eq. 21 */
        double e_out = 0;
        for (int c = b * S; c < (b + 1) * S; c++) e_out += H(state[c]) * back[c];
        e_out *= yout[b] * (1 - yout[b]);
        for (int m = 0; m < NZ; m++) dWo[b][m] += alpha * e_out * z[m];
      }
      for (int c = 0; c < C; c++) {                 /* eqs. 23, 24, 26, 28 */
        int b = c / S;
        double e_s = yout[b] * Hd(state[c]) * back[c];
        for (int m = 0; m < NZ - 1; m++) dWc[c][m] += alpha * e_s * ds_c[c][m];
        for (int m = 0; m < NZ; m++) dWi[b][m] += alpha * e_s * ds_i[c][m];
      }
      if (!per_seq) apply_updates();
    }
    for (int c = 0; c < C; c++) r[c] = yc[c];
    for (int b = 0; b < B; b++) { r[C + b] = yin[b]; r[C + B + b] = yout[b]; }
  }
  if (learn && per_seq) apply_updates();
  return loss;
}

static int same(const int *a, int na, const int *b, int nb) {
  return na == nb && !memcmp(a, b, sizeof(int) * (size_t)na);
}

/* Whether every string of both sets is predicted right, stopping at the first wrong one: the
 * cheap form of the success check, so that it can run after every training string. */
static int passes(int train[][MAXT], const int *train_n, int test[][MAXT], const int *test_n) {
  int ok;
  for (int j = 0; j < 256; j++) { present(train[j], train_n[j], 0, &ok); if (!ok) return 0; }
  for (int j = 0; j < 256; j++) { present(test[j], test_n[j], 0, &ok); if (!ok) return 0; }
  return 1;
}

int main(int argc, char **argv) {
  if (argc < 6) {
    fprintf(stderr, "usage: %s SEED BLOCKS CELLS_PER_BLOCK ALPHA MAX_STRINGS [FLAG...]\n", argv[0]);
    return 2;
  }
  int seed = atoi(argv[1]), max_strings = atoi(argv[5]), distinct = 0, igb_set = 0, every = 100;
  const char *datafile = 0;
  double igb = 0;
  B = atoi(argv[2]);
  S = atoi(argv[3]);
  alpha = atof(argv[4]);
  for (int i = 6; i < argc; i++) {
    const char *f = argv[i];
    if (!strcmp(f, "perseq")) per_seq = 1;
    else if (!strcmp(f, "swap")) swap_ranges = 1;
    else if (!strcmp(f, "multihot")) multihot = 1;
    else if (!strcmp(f, "obias")) out_bias = 1;
    else if (!strcmp(f, "shortcut")) shortcut = 1;
    else if (!strcmp(f, "lr2")) lr2 = 1;
    else if (!strcmp(f, "linout")) lin_out = 1;
    else if (!strcmp(f, "distinct")) distinct = 1;
    else if (!strcmp(f, "states")) show_states = 1;
    else if (!strncmp(f, "data=", 5)) datafile = f + 5;
    else if (!strncmp(f, "every=", 6)) {
      every = atoi(f + 6);
      /* The progress report comes from the full test every 2,000 strings, so N must divide it. */
      if (every < 1 || 2000 % every) { fprintf(stderr, "every=N: N must divide 2000, got %s\n", f + 6); return 2; }
    }
    else if (!strncmp(f, "igb=", 4)) { igb_set = 1; igb = atof(f + 4); }
    else { fprintf(stderr, "unknown flag %s\n", f); return 2; }
  }
  C = B * S;
  NR = C + 2 * B;
  NZ = NS + NR + 1;
  if (B < 1 || B > MAXB || C > MAXC || NZ > MAXZ) { fprintf(stderr, "net too large\n"); return 2; }
  rng_state = 88172645463325252ULL ^ ((unsigned long long)seed * 2654435761ULL + 12345);
  for (int i = 0; i < 20; i++) urand();
  static int train[256][MAXT], test[256][MAXT], train_n[256], test_n[256];
  if (datafile) {
    FILE *fp = fopen(datafile, "r");
    char line[MAXT + 2];
    if (!fp) { fprintf(stderr, "cannot read %s\n", datafile); return 2; }
    for (int i = 0; i < 512; i++) {
      if (!fgets(line, sizeof line, fp)) { fprintf(stderr, "short data\n"); return 2; }
      int *dst = i < 256 ? train[i] : test[i - 256], n = 0;
      for (char *p = line; *p && *p != '\n' && n < MAXT; p++) dst[n++] = sym_index(*p);
      if (i < 256) train_n[i] = n; else test_n[i - 256] = n;
    }
    fclose(fp);
  }
  for (int i = 0; !datafile && i < 256;) {
    train_n[i] = generate(train[i]);
    int dup = 0;
    for (int j = 0; distinct && j < i && !dup; j++) dup = same(train[j], train_n[j], train[i], train_n[i]);
    if (!dup) i++;
  }
  for (int i = 0; !datafile && i < 256;) {
    test_n[i] = generate(test[i]);
    int dup = 0;
    for (int j = 0; j < 256 && !dup; j++) dup = same(train[j], train_n[j], test[i], test_n[i]);
    if (!dup) i++;
  }
  const double u = 0.2;
  for (int c = 0; c < C; c++)
    for (int m = 0; m < NZ; m++) Wc[c][m] = m == NZ - 1 ? 0 : (2 * urand() - 1) * u;
  for (int b = 0; b < B; b++)
    for (int m = 0; m < NZ; m++) { Wi[b][m] = (2 * urand() - 1) * u; Wo[b][m] = (2 * urand() - 1) * u; }
  for (int b = 0; b < B; b++) {
    Wo[b][NZ - 1] = -(b + 1);
    if (igb_set) Wi[b][NZ - 1] = igb < 0 ? igb * (b + 1) : igb;
  }
  for (int k = 0; k < NS; k++) {
    for (int m = 0; m < C + NS; m++) Wk[k][m] = (2 * urand() - 1) * u;
    Wkb[k] = (2 * urand() - 1) * u;
  }
  double total = 0;
  int count = 0, ok;
  for (int k = 1; k <= max_strings; k++) {
    int i = (int)(urand() * 256);
    total += present(train[i], train_n[i], 1, &ok);
    count++;
    if (k % every) continue;
    if (k % 2000 && !passes(train, train_n, test, test_n)) continue;
    int all = 1, wrong = 0;
    memset(wrong_by_kind, 0, sizeof wrong_by_kind);
    memset(at_s, 0, sizeof at_s); memset(at_hd, 0, sizeof at_hd); memset(at_out, 0, sizeof at_out);
    memset(at_in1, 0, sizeof at_in1); memset(at_in3, 0, sizeof at_in3); at_n = 0;
    for (int j = 0; j < 256; j++) { present(train[j], train_n[j], 0, &ok); if (!ok) { all = 0; wrong++; } }
    for (int j = 0; j < 256; j++) { present(test[j], test_n[j], 0, &ok); if (!ok) { all = 0; wrong++; } }
    if (k % 2000 == 0) {
      fprintf(stderr, "seed %d strings %d loss/string %.3f wrong strings %d of 512, wrong steps "
              "by kind %ld %ld %ld %ld %ld %ld\n", seed, k, total / count, wrong,
              wrong_by_kind[0], wrong_by_kind[1], wrong_by_kind[2], wrong_by_kind[3],
              wrong_by_kind[4], wrong_by_kind[5]);
      if (show_states) {
        fprintf(stderr, "  before last: |s|");
        for (int c = 0; c < C; c++) fprintf(stderr, " %.2f", at_s[c] / at_n);
        fprintf(stderr, "; h'(s)");
        for (int c = 0; c < C; c++) fprintf(stderr, " %.2f", at_hd[c] / at_n);
        fprintf(stderr, "; output gates");
        for (int b = 0; b < B; b++) fprintf(stderr, " %.2f", at_out[b] / at_n);
        fprintf(stderr, "; input gates at t=1/t=3");
        for (int b = 0; b < B; b++) fprintf(stderr, " %.2f/%.2f", at_in1[b] / at_n, at_in3[b] / at_n);
        fprintf(stderr, "\n");
      }
      total = 0;
      count = 0;
    }
    if (all) { printf("RESULT seed %d success %d\n", seed, k); return 0; }
  }
  printf("RESULT seed %d fail %d\n", seed, max_strings);
  return 0;
}
