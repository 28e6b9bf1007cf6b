// Vector math for the elementwise passes: exp, sigmoid and tanh (scalar code the compiler
// vectorises, and AVX-512 versions for the one-pass LSTM rows), the activations by name with
// their derivatives, and small row operations (copy, zero, block spreads of gate values).
#pragma once

#include "settings.h"

namespace lstmkit {

using at::Tensor;

// ---------------------------------------------------------------------------------------------
// Activations, named as in CellSpec (lstmkit/cells/spec.py); Python passes the names.

enum Act : int { TANH = 0, SIGMOID = 1, IDENTITY = 2, RELU = 3, PM1 = 4, PM2 = 5 };

inline const std::vector<std::pair<const char*, Act>>& act_names() {
  static const std::vector<std::pair<const char*, Act>> names = {
      {"tanh", TANH},  {"sigmoid", SIGMOID},   {"identity", IDENTITY},
      {"relu", RELU},  {"sigmoid_pm1", PM1},   {"sigmoid_pm2", PM2}};
  return names;
}

// exp for float, branch-free so loops over it vectorise (Cephes expf; about 1 ulp).
// Coefficients, shared with the AVX-512 versions below: exp(x) = 2^n * p(r), r = x - n ln 2
// (ln 2 split in two for precision), and tanh's odd polynomial for |x| < kTanhSmall.
constexpr float kExpLo = -87.0f, kExpHi = 88.0f, kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
constexpr float kExpP[6] = {1.9875691500E-4f, 1.3981999507E-3f, 8.3334519073E-3f,
                            4.1665795894E-2f, 1.6666665459E-1f, 5.0000001201E-1f};
constexpr float kTanhSmall = 0.625f;
constexpr float kTanhP[5] = {-5.70498872745E-3f, 2.06390887954E-2f, -5.37397155531E-2f,
                             1.33314422036E-1f, -3.33332819422E-1f};

inline float fexp(float x) {
  x = x < kExpLo ? kExpLo : x;
  x = x > kExpHi ? kExpHi : x;
  // Round to nearest with the 1.5 * 2^23 trick (no floorf call, which would block vectorising).
  float fx = (x * kLog2e + 12582912.0f) - 12582912.0f;
  float r = x - fx * kLn2Hi - fx * kLn2Lo;
  float r2 = r * r;
  float y = kExpP[0];
  for (int q = 1; q < 6; ++q) y = y * r + kExpP[q];
  y = y * r2 + r + 1.0f;
  int32_t bits = (static_cast<int32_t>(fx) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return y * scale;
}

inline float fsigmoid(float x) { return 1.0f / (1.0f + fexp(-x)); }

inline float ftanh(float x) {
  float ax = std::fabs(x);
  float e = fexp(2.0f * ax);
  float big = 1.0f - 2.0f / (e + 1.0f);
  float z = x * x;
  float p = kTanhP[0];
  for (int q = 1; q < 5; ++q) p = p * z + kTanhP[q];
  float small = p * z * ax + ax;
  float r = ax < kTanhSmall ? small : big;
  return std::copysign(r, x);
}

inline double fsigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
inline double ftanh(double x) { return std::tanh(x); }

// x <- act(x), in place.
template <typename T>
void act_fwd(int act, T* __restrict x, int64_t n) {
  switch (act) {
    case TANH:
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) x[j] = ftanh(x[j]);
      break;
    case SIGMOID:
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) x[j] = fsigmoid(x[j]);
      break;
    case RELU:
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) x[j] = x[j] < T(0) ? T(0) : x[j];  // NaN stays NaN
      break;
    case PM1:
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) x[j] = T(2) * fsigmoid(x[j]) - T(1);
      break;
    case PM2:
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) x[j] = T(4) * fsigmoid(x[j]) - T(2);
      break;
    default:
      break;
  }
}

// d <- d * act'(x), the derivative written in terms of the activation's output y = act(x).
template <typename T>
void act_bwd(int act, const T* __restrict y, T* __restrict d, int64_t n) {
  switch (act) {
    case TANH:
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) d[j] *= T(1) - y[j] * y[j];
      break;
    case SIGMOID:
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) d[j] *= y[j] * (T(1) - y[j]);
      break;
    case RELU:
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) d[j] = y[j] > T(0) ? d[j] : T(0);
      break;
    case PM1:  // y = 2s - 1, dy/dx = 2 s (1 - s) = (1 + y)(1 - y) / 2
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) d[j] *= T(0.5) * (T(1) + y[j]) * (T(1) - y[j]);
      break;
    case PM2:  // y = 4s - 2, dy/dx = 4 s (1 - s) = (2 + y)(2 - y) / 4
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) d[j] *= T(0.25) * (T(2) + y[j]) * (T(2) - y[j]);
      break;
    default:
      break;
  }
}

// A block's gate value repeated for each of its s cells (returns src itself when s == 1).
template <typename T>
const T* spread(const T* src, T* dst, int64_t nb, int64_t s) {
  if (s == 1) return src;
  for (int64_t k = 0; k < nb; ++k)
    for (int64_t q = 0; q < s; ++q) dst[k * s + q] = src[k];
  return dst;
}

// out[k] += sum over block k's cells of a[j] * b[j].
template <typename T>
void block_dot_add(T* __restrict out, const T* __restrict a, const T* __restrict b, int64_t nb,
                   int64_t s) {
  if (s == 1) {
#pragma omp simd
    for (int64_t k = 0; k < nb; ++k) out[k] += a[k] * b[k];
    return;
  }
  for (int64_t k = 0; k < nb; ++k) {
    T acc = 0;
    for (int64_t q = 0; q < s; ++q) acc += a[k * s + q] * b[k * s + q];
    out[k] += acc;
  }
}

template <typename T>
inline void copy_row(T* dst, const T* src, int64_t n) {
  if (n > 0 && dst != src) std::memcpy(dst, src, sizeof(T) * n);
}

template <typename T>
inline void zero_row(T* dst, int64_t n) {
  if (n > 0) std::memset(dst, 0, sizeof(T) * n);
}

#if defined(__AVX512F__)
inline __m512 v_exp(__m512 x) {  // the Cephes expf above, with scalef for the 2^n
  // The constant first: max/min return their second operand when either is NaN, so a NaN
  // input stays NaN (as in the scalar code and in torch) instead of being clamped to a number.
  x = _mm512_min_ps(_mm512_set1_ps(kExpHi), _mm512_max_ps(_mm512_set1_ps(kExpLo), x));
  const __m512 fx = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(fx, _mm512_set1_ps(kLn2Hi), x);
  r = _mm512_fnmadd_ps(fx, _mm512_set1_ps(kLn2Lo), r);
  const __m512 r2 = _mm512_mul_ps(r, r);
  __m512 y = _mm512_set1_ps(kExpP[0]);
  for (int q = 1; q < 6; ++q) y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(kExpP[q]));
  y = _mm512_add_ps(_mm512_fmadd_ps(y, r2, r), _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(y, fx);
}

inline __m512 v_recip(__m512 d) {
  const __m512 r = _mm512_rcp14_ps(d);
  return _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.0f)));
}

inline __m512 v_sigmoid(__m512 x) {
  return v_recip(_mm512_add_ps(_mm512_set1_ps(1.0f), v_exp(_mm512_sub_ps(_mm512_setzero_ps(), x))));
}

inline __m512 v_tanh(__m512 x) {  // as ftanh: a polynomial below |x| = 0.625, else via exp
  const __m512 ax = _mm512_abs_ps(x);
  const __m512 e = v_exp(_mm512_add_ps(ax, ax));
  const __m512 big = _mm512_fnmadd_ps(_mm512_set1_ps(2.0f),
                                      v_recip(_mm512_add_ps(e, _mm512_set1_ps(1.0f))),
                                      _mm512_set1_ps(1.0f));
  const __m512 z = _mm512_mul_ps(x, x);
  __m512 p = _mm512_set1_ps(kTanhP[0]);
  for (int q = 1; q < 5; ++q) p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(kTanhP[q]));
  const __m512 small = _mm512_fmadd_ps(_mm512_mul_ps(p, z), ax, ax);
  const __m512 r = _mm512_mask_blend_ps(
      _mm512_cmp_ps_mask(ax, _mm512_set1_ps(kTanhSmall), _CMP_LT_OQ), big, small);
  const __m512i sign = _mm512_and_epi32(_mm512_castps_si512(x), _mm512_set1_epi32(INT32_MIN));
  return _mm512_castsi512_ps(_mm512_or_epi32(_mm512_castps_si512(r), sign));
}
#endif

}  // namespace lstmkit
