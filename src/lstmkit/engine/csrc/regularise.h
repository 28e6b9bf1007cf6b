// Recurrent dropout and zoneout inside the time loops (lstmkit/regularise.py draws the masks).
//
// Recurrent dropout: h(t-1) enters the recurrent product as m * h(t-1), with one mask m [B, W]
// per sequence; the state itself is not masked. Forward multiplies the rows the step's GEMM reads
// into a scratch copy; backward runs the state-gradient GEMM into scratch and adds m times it.
//
// Zoneout: after the cell's ordinary update x~(t), x(t) = d * x(t-1) + (1 - d) * x~(t) with d
// [T, B, W] per unit (0/1 in training, p in eval). Backward splits the gradient g of x(t): the
// update gets (1 - d) * g, and d * g goes straight to x(t-1). The LSTM's cell update saves c~(t),
// which its backward row reads in place of c(t).
//
// Each family's loop calls these helpers at its seams; without masks the pointers are null and
// the loops are unchanged.
#pragma once

#include "time_loop.h"

namespace lstmkit {

// The masks of one layer-direction call, as raw rows (null: that regulariser is off).
template <typename T>
struct Reg {
  const T* rmask = nullptr;  // [B, W]: multiplies h(t-1) where it enters the recurrent product
  const T* zc = nullptr;     // [T, B, H]: zoneout weight of c(t-1) (LSTM family)
  const T* zh = nullptr;     // [T, B, W]: zoneout weight of h(t-1)
  int64_t B = 0, W = 0, H = 0;

  bool any() const { return rmask || zc || zh; }
  const T* rmask_row(int64_t b) const { return rmask + b * W; }
  const T* zc_row(int64_t t, int64_t b) const { return zc + (t * B + b) * H; }
  const T* zh_row(int64_t t, int64_t b) const { return zh + (t * B + b) * W; }
};

template <typename T>
Reg<T> make_reg(const Tensor& rmask, const Tensor& zc, const Tensor& zh, int64_t B, int64_t W,
                int64_t H) {
  Reg<T> r;
  r.rmask = ptr_or_null<T>(rmask);
  r.zc = ptr_or_null<T>(zc);
  r.zh = ptr_or_null<T>(zh);
  r.B = B;
  r.W = W;
  r.H = H;
  return r;
}

// dst = m * src over n values.
template <typename T>
inline void mul_row(T* dst, const T* src, const T* m, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) dst[j] = m[j] * src[j];
}

// dst += m * src over n values.
template <typename T>
inline void add_mul_row(T* dst, const T* src, const T* m, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) dst[j] += m[j] * src[j];
}

// Zoneout forward: x = d * prev + (1 - d) * x.
template <typename T>
inline void zone_row(T* x, const T* prev, const T* d, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) x[j] = d[j] * prev[j] + (T(1) - d[j]) * x[j];
}

// Zoneout backward: g (the gradient of x(t)) splits into keep = d * g, for x(t-1), and
// g = (1 - d) * g, for the update.
template <typename T>
inline void zone_split(T* g, T* keep, const T* d, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    keep[j] = d[j] * g[j];
    g[j] -= keep[j];
  }
}

// Recurrent dropout forward: rows [r0, r1) of the recurrent input (row stride ld) copied into
// dst with their first W values times the mask, so the step's GEMM reads m * h(t-1).
template <typename T>
void masked_input(const Reg<T>& reg, const T* src, T* dst, int64_t ld, int64_t r0, int64_t r1) {
  for (int64_t b = r0; b < r1; ++b) {
    mul_row(dst + b * ld, src + b * ld, reg.rmask_row(b), reg.W);
    if (ld > reg.W) copy_row(dst + b * ld + reg.W, src + b * ld + reg.W, ld - reg.W);
  }
}

// Recurrent dropout backward: the state gradient of rows [r0, r1) gains the GEMM's result
// (row stride ld) with its first W values times the mask.
template <typename T>
void add_masked_grad(const Reg<T>& reg, const T* src, T* dst, int64_t ld, int64_t r0,
                     int64_t r1) {
  for (int64_t b = r0; b < r1; ++b) {
    add_mul_row(dst + b * ld, src + b * ld, reg.rmask_row(b), reg.W);
    T* d = dst + b * ld;
    const T* s = src + b * ld;
#pragma omp simd
    for (int64_t j = reg.W; j < ld; ++j) d[j] += s[j];
  }
}

// Zoneout masks from a counter-based hash (regularise.py's _hash_mask computes the same stream
// with torch ops): value n of the mask is 1 when u(n) < thr, with
// u(n) = mix32(mix32(lo(n) ^ s0) ^ (s1 + hi(n))) and mix32 Wellons' "lowbias32" bijection. One
// pass of integer arithmetic the compiler vectorises, where torch's bernoulli_ costs about
// 13 ns a value: for an LSTM training step with zoneout on c and h that drawing was a third of
// the step.
inline uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

template <typename T>
void hash_mask_fill(T* out, int64_t n, uint32_t s0, uint32_t s1, uint32_t thr) {
  const int64_t chunk = int64_t(1) << 32;
  for (int64_t base = 0; base < n; base += chunk) {
    const int64_t len = std::min<int64_t>(chunk, n - base);
    const uint32_t hi = s1 + static_cast<uint32_t>(base >> 32);
    T* o = out + base;
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) {
      const uint32_t u = mix32(mix32(static_cast<uint32_t>(i) ^ s0) ^ hi);
      o[i] = u < thr ? T(1) : T(0);
    }
  }
}

}  // namespace lstmkit
