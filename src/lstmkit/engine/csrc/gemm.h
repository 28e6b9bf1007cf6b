// The GEMMs of the time loops: C[M,N] (+)= A[M,K] op(W), row-major.
//
// gemm() calls the BLAS torch was built with (sgemm_/dgemm_ exported by libtorch_cpu, MKL on
// x86) directly, or ATen's addmm where the symbol is absent; StepGemm is the per-step product
// of a few batch rows with a weight that stays the same for the whole sequence, packed once
// into panels for a register-blocked AVX-512 kernel where the build has AVX-512.
#pragma once

#include "settings.h"

namespace lstmkit {

using at::Tensor;

}  // namespace lstmkit
extern "C" {
void sgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc) __attribute__((weak));
void dgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b,
            const int* ldb, const double* beta, double* c, const int* ldc)
    __attribute__((weak));
}
namespace lstmkit {
// ---------------------------------------------------------------------------------------------
// GEMM: C[M,N] = alpha * A[M,K] * op(W) + beta * C, row-major with leading dimensions.
// op(W) = W^T for W [N,K] (trans_w) or W for W [K,N].

template <typename T>
void gemm_aten(bool trans_w, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
               const T* W, int64_t ldw, T beta, T* C, int64_t ldc) {
  auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  auto a = at::from_blob(const_cast<T*>(A), {M, K}, {lda, 1}, opts);
  auto w = trans_w ? at::from_blob(const_cast<T*>(W), {N, K}, {ldw, 1}, opts).t()
                   : at::from_blob(const_cast<T*>(W), {K, N}, {ldw, 1}, opts);
  auto c = at::from_blob(C, {M, N}, {ldc, 1}, opts);
  if (beta == T(0)) {
    c.copy_(at::mm(a, w).mul_(alpha));
  } else {
    c.copy_(at::addmm(c, a, w, beta, alpha));
  }
}

template <typename T>
void blas(const char* ta, const char* tb, int m, int n, int k, T alpha, const T* a, int lda,
          const T* b, int ldb, T beta, T* c, int ldc);

template <>
void blas<float>(const char* ta, const char* tb, int m, int n, int k, float alpha, const float* a,
                 int lda, const float* b, int ldb, float beta, float* c, int ldc) {
  sgemm_(ta, tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
}

template <>
void blas<double>(const char* ta, const char* tb, int m, int n, int k, double alpha,
                  const double* a, int lda, const double* b, int ldb, double beta, double* c,
                  int ldc) {
  dgemm_(ta, tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
}

template <typename T>
bool have_blas() {
  if constexpr (std::is_same_v<T, float>) return sgemm_ != nullptr;
  return dgemm_ != nullptr;
}



// Below this many multiply-adds a BLAS call costs more than its arithmetic (the nets of the
// paper's experiments: a few dozen rows per step), so plain loops do it.
constexpr int64_t kTinyGemm = 4096;

template <typename T>
void tiny_gemm(bool trans_w, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
               const T* W, int64_t ldw, T beta, T* C, int64_t ldc) {
  for (int64_t m = 0; m < M; ++m) {
    const T* a = A + m * lda;
    T* c = C + m * ldc;
    for (int64_t n = 0; n < N; ++n) {
      T acc = T(0);
      if (trans_w) {
        const T* w = W + n * ldw;
        for (int64_t k = 0; k < K; ++k) acc += a[k] * w[k];
      } else {
        for (int64_t k = 0; k < K; ++k) acc += a[k] * W[k * ldw + n];
      }
      c[n] = (beta == T(0) ? T(0) : beta * c[n]) + alpha * acc;
    }
  }
}

template <typename T>
void gemm(bool trans_w, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
          const T* W, int64_t ldw, T beta, T* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) {
    if (beta != T(1)) {
      for (int64_t m = 0; m < M; ++m)
        for (int64_t n = 0; n < N; ++n) C[m * ldc + n] = beta == T(0) ? T(0) : beta * C[m * ldc + n];
    }
    return;
  }
  if (M * N * K <= kTinyGemm) {
    tiny_gemm<T>(trans_w, M, N, K, alpha, A, lda, W, ldw, beta, C, ldc);
    return;
  }
  if (settings().use_blas && have_blas<T>()) {
    // Column-major view: C^T[N,M] = op(W)^T[N,K] * A^T[K,M].
    blas<T>(trans_w ? "T" : "N", "N", static_cast<int>(N), static_cast<int>(M),
            static_cast<int>(K), alpha, W, static_cast<int>(ldw), A, static_cast<int>(lda), beta,
            C, static_cast<int>(ldc));
  } else {
    gemm_aten<T>(trans_w, M, N, K, alpha, A, lda, W, ldw, beta, C, ldc);
  }
}

// ---------------------------------------------------------------------------------------------
// Per-step GEMMs with the weight packed once per sequence (float; AVX-512, or AVX2 with FMA).
//
// Every step multiplies a few batch rows (B, or B/P per thread) by the same weight matrix. A
// general BLAS call re-packs its operands each time and is tuned for large M; at M = 8 to 32 it
// ran at about half the kernel's speed here (benchmarks/bench_step_gemm.py). Packing op(W) once
// per sequence into panels of two vector widths and running a register-blocked kernel (AVX-512:
// up to 12 rows x 32 columns of accumulators; AVX2: 6 rows x 16 columns; one broadcast of A and
// two panel loads per k) keeps the FMA units busy at small M. Elsewhere (double, neither
// instruction set, set_kernel(false)) the step calls the BLAS.

#if defined(__AVX512F__)
#define LSTMKIT_PACKED_GEMM 1
constexpr int64_t kPanel = 32;
constexpr int kMaxRows = 12;
constexpr int64_t kLanes = 16;
using Vec = __m512;
using Mask = __mmask16;

inline Mask lane_mask(int64_t n) {
  return n >= kLanes ? Mask(0xFFFF) : (n <= 0 ? Mask(0) : Mask((1u << n) - 1));
}
inline Vec load_masked(const float* p, Mask m) { return _mm512_maskz_loadu_ps(m, p); }
inline void store_masked(float* p, Mask m, Vec v) { _mm512_mask_storeu_ps(p, m, v); }
inline Vec zero_vec() { return _mm512_setzero_ps(); }
inline Vec load_vec(const float* p) { return _mm512_load_ps(p); }
inline Vec broadcast(const float* p) { return _mm512_set1_ps(*p); }
inline Vec fmadd(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
#elif defined(__AVX2__) && defined(__FMA__)
#define LSTMKIT_PACKED_GEMM 1
constexpr int64_t kPanel = 16;
constexpr int kMaxRows = 6;
constexpr int64_t kLanes = 8;
using Vec = __m256;
using Mask = __m256i;

inline Mask lane_mask(int64_t n) {
  const int32_t k = static_cast<int32_t>(std::max<int64_t>(0, std::min<int64_t>(n, kLanes)));
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(k), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
inline Vec load_masked(const float* p, Mask m) { return _mm256_maskload_ps(p, m); }
inline void store_masked(float* p, Mask m, Vec v) { _mm256_maskstore_ps(p, m, v); }
inline Vec zero_vec() { return _mm256_setzero_ps(); }
inline Vec load_vec(const float* p) { return _mm256_load_ps(p); }
inline Vec broadcast(const float* p) { return _mm256_broadcast_ss(p); }
inline Vec fmadd(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
#endif

#if defined(LSTMKIT_PACKED_GEMM)
template <int MR>
void panel_kernel(int64_t K, const float* __restrict A, int64_t lda, const float* __restrict Wp,
                  float* __restrict C, int64_t ldc, bool accumulate, Mask m0, Mask m1) {
  Vec c0[MR], c1[MR];
  for (int r = 0; r < MR; ++r) {
    c0[r] = accumulate ? load_masked(C + r * ldc, m0) : zero_vec();
    c1[r] = accumulate ? load_masked(C + r * ldc + kLanes, m1) : zero_vec();
  }
  for (int64_t k = 0; k < K; ++k) {
    const Vec w0 = load_vec(Wp + k * kPanel);
    const Vec w1 = load_vec(Wp + k * kPanel + kLanes);
    for (int r = 0; r < MR; ++r) {
      const Vec a = broadcast(A + r * lda + k);
      c0[r] = fmadd(a, w0, c0[r]);
      c1[r] = fmadd(a, w1, c1[r]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    store_masked(C + r * ldc, m0, c0[r]);
    store_masked(C + r * ldc + kLanes, m1, c1[r]);
  }
}

template <int MR>
void panel_rows(int64_t K, const float* A, int64_t lda, const float* Wp, float* C, int64_t ldc,
                bool accumulate, Mask m0, Mask m1, int rows) {
  if constexpr (MR > 1) {
    if (rows < MR) return panel_rows<MR - 1>(K, A, lda, Wp, C, ldc, accumulate, m0, m1, rows);
  }
  panel_kernel<MR>(K, A, lda, Wp, C, ldc, accumulate, m0, m1);
}
#endif

template <typename T>
class StepGemm {
 public:
  // C[M,N] (+)= A[M,K] op(W) for every step; op(W) = W^T for W [N,K] (trans_w) or W for W [K,N].
  StepGemm(bool trans_w, int64_t N, int64_t K, const T* W, int64_t ldw)
      : trans_(trans_w), N_(N), K_(K), W_(W), ldw_(ldw) {
#if defined(LSTMKIT_PACKED_GEMM)
    if constexpr (std::is_same_v<T, float>) {
      if (settings().use_kernel && N > 0 && K > 0 && W != nullptr) pack();
    }
#endif
  }

  void operator()(int64_t M, const T* A, int64_t lda, bool accumulate, T* C, int64_t ldc) const {
    if (M == 0 || N_ == 0) return;
#if defined(LSTMKIT_PACKED_GEMM)
    if constexpr (std::is_same_v<T, float>) {
      if (packed_) {
        const int64_t panels = (N_ + kPanel - 1) / kPanel;
        // Outside the row split (small batches) the panels, which write disjoint columns, are
        // shared among the threads as the BLAS would; inside it this runs inline.
        const int64_t grain =
            std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(1, M * K_ * kPanel));
        at::parallel_for(0, panels, grain, [&](int64_t p_begin, int64_t p_end) {
          for (int64_t p = p_begin; p < p_end; ++p) {
            const int64_t n0 = p * kPanel, nv = std::min<int64_t>(kPanel, N_ - n0);
            const Mask m0 = lane_mask(nv), m1 = lane_mask(nv - kLanes);
            const float* wp = packed_.get() + p * K_ * kPanel;
            if (accumulate && p + 1 < p_end) {
              // The next panel's C rows (this step's slice of the input projection) are cold.
              for (int64_t r = 0; r < M; ++r) {
                _mm_prefetch(reinterpret_cast<const char*>(C + r * ldc + n0 + kPanel), _MM_HINT_T0);
                _mm_prefetch(reinterpret_cast<const char*>(C + r * ldc + n0 + kPanel + kLanes),
                             _MM_HINT_T0);
              }
            }
            // Equal row blocks: e.g. 16 rows as 8 + 8 keeps every block's FMA chains long.
            const int64_t blocks = (M + kMaxRows - 1) / kMaxRows;
            const int64_t per = (M + blocks - 1) / blocks;
            for (int64_t r = 0; r < M; r += per) {
              const int rows = static_cast<int>(std::min<int64_t>(per, M - r));
              panel_rows<kMaxRows>(K_, A + r * lda, lda, wp, C + r * ldc + n0, ldc, accumulate, m0,
                                   m1, rows);
            }
          }
        });
        return;
      }
    }
#endif
    gemm<T>(trans_, M, N_, K_, T(1), A, lda, W_, ldw_, accumulate ? T(1) : T(0), C, ldc);
  }

 private:
#if defined(LSTMKIT_PACKED_GEMM)
  void pack() {
    const int64_t panels = (N_ + kPanel - 1) / kPanel;
    const size_t bytes = static_cast<size_t>(panels * K_ * kPanel) * sizeof(float);
    packed_.reset(static_cast<float*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64)));
    if (!packed_) return;
    float* dst = packed_.get();
    const float* W = reinterpret_cast<const float*>(W_);
    at::parallel_for(0, panels, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        float* d = dst + p * K_ * kPanel;
        const int64_t n0 = p * kPanel, nv = std::min<int64_t>(kPanel, N_ - n0);
        // Writes in order; the reads walk a panel's rows of W side by side, whose cache lines
        // are reused for consecutive k (writing in W's order instead strides every store).
        for (int64_t k = 0; k < K_; ++k) {
          float* dk = d + k * kPanel;
          for (int64_t j = 0; j < nv; ++j) {
            dk[j] = trans_ ? W[(n0 + j) * ldw_ + k] : W[k * ldw_ + n0 + j];
          }
          for (int64_t j = nv; j < kPanel; ++j) dk[j] = 0.0f;
        }
      }
    });
  }
#endif
  struct Free {
    void operator()(float* p) const { std::free(p); }
  };
  bool trans_;
  int64_t N_, K_;
  const T* W_;
  int64_t ldw_;
  std::unique_ptr<float, Free> packed_;
};

}  // namespace lstmkit
