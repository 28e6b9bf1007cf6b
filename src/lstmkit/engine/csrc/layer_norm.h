// Layer normalisation of one batch row (Ba et al. 2016), forward and backward, for the cells whose
// normalised quantities depend on the previous step: a step's recurrent product R h(t-1) (LSTM
// and GRU) and the LSTM's cell state. Each is normalised over its own features (the whole row of
// R h, the H cells of c), so it is row-local and runs inside the time loop beside the cell's
// elementwise pass. The input projection's normalisation does not depend on the recurrence and
// runs once for all steps in Python (engine/_function.py).
//
// Conventions, as F.layer_norm with the reference's eps: xhat = (q - mean) * rstd with
// rstd = 1 / sqrt(var + eps) and the biased variance; the result is xhat * gain (+ shift).
#pragma once

#include "vecmath.h"

namespace lstmkit {

constexpr double kLayerNormEps = 1e-5;

// T as written, so that a null argument does not take part in deducing T.
template <typename T>
using Same = typename std::common_type<T>::type;

// The per-call layer-norm parameters a row reads (null where the cell normalises nothing there).
template <typename T>
struct LnParams {
  const T* g_hh = nullptr;  // gain of the recurrent product [rows]
  const T* g_c = nullptr;   // gain and shift of the cell state [H] (LSTM)
  const T* b_c = nullptr;
};

// Normalises q[0..n) in place to xhat and, in the same pass, writes xhat * g (+ b) to out, or
// adds xhat * g to it with `accumulate` (out may be q: it then ends as xhat * g (+ b)); returns
// rstd. The statistics take two passes (mean, then the centred variance) in T: the centred sum
// does not lose the variance to cancellation as E[q^2] - mean^2 would.
template <typename T>
T ln_forward(T* q, const T* g, const Same<T>* b, T* out, int64_t n, bool accumulate) {
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; ++j) sum += q[j];
  const T mean = sum / T(n);
  T sq = 0;
#pragma omp simd reduction(+ : sq)
  for (int64_t j = 0; j < n; ++j) {
    const T d = q[j] - mean;
    sq += d * d;
  }
  const T rstd = T(1) / std::sqrt(sq / T(n) + T(kLayerNormEps));
  if (accumulate) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      const T x = (q[j] - mean) * rstd;
      q[j] = x;
      out[j] += x * g[j];
    }
  } else if (b) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      const T x = (q[j] - mean) * rstd;
      q[j] = x;
      out[j] = x * g[j] + b[j];
    }
  } else {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      const T x = (q[j] - mean) * rstd;
      q[j] = x;
      out[j] = x * g[j];
    }
  }
  return rstd;
}

// Backward through xhat * g: d is the gradient of the result, dq receives that of q (the
// normalised input; it may be d itself); dg and db (null: not wanted) accumulate the gain's and
// shift's gradients. With u = d * g: dq = rstd * (u - mean(u) - xhat * mean(u * xhat)).
template <typename T>
void ln_backward(const T* xhat, T rstd, const T* g, const T* d, Same<T>* dq, Same<T>* dg,
                 Same<T>* db, int64_t n) {
  T su = 0, sux = 0;
#pragma omp simd reduction(+ : su, sux)
  for (int64_t j = 0; j < n; ++j) {
    const T u = d[j] * g[j];
    su += u;
    sux += u * xhat[j];
  }
  // One pass for the parameters' gradients and the input's: d is read before dq is written.
  const T mu = su / T(n), mux = sux / T(n);
  if (dg && db) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      const T dj = d[j], xj = xhat[j];
      dg[j] += dj * xj;
      db[j] += dj;
      dq[j] = rstd * (dj * g[j] - mu - xj * mux);
    }
  } else if (dg) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      const T dj = d[j], xj = xhat[j];
      dg[j] += dj * xj;
      dq[j] = rstd * (dj * g[j] - mu - xj * mux);
    }
  } else {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) dq[j] = rstd * (d[j] * g[j] - mu - xhat[j] * mux);
  }
}

}  // namespace lstmkit
