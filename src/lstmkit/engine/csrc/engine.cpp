// lstmkit fused CPU engine: the time loops of every cell spec, forward and hand-written backward.
//
// One translation unit, built on first use by torch.utils.cpp_extension (lstmkit/engine/_build.py).
// The Python side (lstmkit/engine/_function.py) does the work that is one big operation per
// sequence (input projection with the bias folded in, weight/bias/input gradients as GEMMs over
// all steps); this file does what must run once per time step:
//
//   forward:  one recurrent GEMM into the step's pre-activations, then one fused elementwise pass
//             per batch row (activations, peepholes, cell update, output), saving the activated
//             gates in place of the pre-activations and every state for backward;
//   backward: one fused elementwise pass per row that turns the state gradients into the
//             pre-activation gradients dz, then one GEMM dz * [W_hh | W_gh] for the recurrent
//             state gradient (skipped under the 1997 truncated gradient).
//
// Threads: batch rows are independent, so each thread runs the whole sequence for its share of
// the rows (over_rows), with one fork/join per sequence rather than several per step.
// Row-major everywhere. The per-step GEMMs run a register-blocked AVX-512 kernel on a weight
// packed once per sequence (StepGemm) where the build has AVX-512, and otherwise call the BLAS
// torch was built with (sgemm_/dgemm_ exported by libtorch_cpu, MKL on x86) directly, falling
// back to ATen's addmm when the symbol is absent.
// Lengths (right padding): a row whose sequence has ended keeps its state, outputs zero and passes
// its state gradient through unchanged.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

extern "C" {
void sgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc) __attribute__((weak));
void dgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b,
            const int* ldb, const double* beta, double* c, const int* ldc)
    __attribute__((weak));
}

namespace {

using at::Tensor;

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

bool g_use_blas = true;  // set_blas(false) forces the ATen path (tests)

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
  if (g_use_blas && have_blas<T>()) {
    // Column-major view: C^T[N,M] = op(W)^T[N,K] * A^T[K,M].
    blas<T>(trans_w ? "T" : "N", "N", static_cast<int>(N), static_cast<int>(M),
            static_cast<int>(K), alpha, W, static_cast<int>(ldw), A, static_cast<int>(lda), beta,
            C, static_cast<int>(ldc));
  } else {
    gemm_aten<T>(trans_w, M, N, K, alpha, A, lda, W, ldw, beta, C, ldc);
  }
}

// ---------------------------------------------------------------------------------------------
// Per-step GEMMs with the weight packed once per sequence (float, AVX-512).
//
// Every step multiplies a few batch rows (B, or B/P per thread) by the same weight matrix. A
// general BLAS call re-packs its operands each time and is tuned for large M; at M = 8 to 32 it
// ran at about half the kernel's speed here (benchmarks/bench_step_gemm.py). Packing op(W) once
// per sequence into panels of 32 columns and running a register-blocked kernel (up to 12 rows x
// 32 columns of accumulators, one broadcast of A and two panel loads per k) keeps the FMA units
// busy at small M. Elsewhere (double, no AVX-512, set_kernel(false)) the step calls the BLAS.

bool g_use_kernel = true;

#if defined(__AVX512F__)
constexpr int64_t kPanel = 32;
constexpr int kMaxRows = 12;

template <int MR>
void panel_kernel(int64_t K, const float* __restrict A, int64_t lda, const float* __restrict Wp,
                  float* __restrict C, int64_t ldc, bool accumulate, __mmask16 m0, __mmask16 m1) {
  __m512 c0[MR], c1[MR];
  for (int r = 0; r < MR; ++r) {
    c0[r] = accumulate ? _mm512_maskz_loadu_ps(m0, C + r * ldc) : _mm512_setzero_ps();
    c1[r] = accumulate ? _mm512_maskz_loadu_ps(m1, C + r * ldc + 16) : _mm512_setzero_ps();
  }
  for (int64_t k = 0; k < K; ++k) {
    const __m512 w0 = _mm512_load_ps(Wp + k * kPanel);
    const __m512 w1 = _mm512_load_ps(Wp + k * kPanel + 16);
    for (int r = 0; r < MR; ++r) {
      const __m512 a = _mm512_set1_ps(A[r * lda + k]);
      c0[r] = _mm512_fmadd_ps(a, w0, c0[r]);
      c1[r] = _mm512_fmadd_ps(a, w1, c1[r]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    _mm512_mask_storeu_ps(C + r * ldc, m0, c0[r]);
    _mm512_mask_storeu_ps(C + r * ldc + 16, m1, c1[r]);
  }
}

template <int MR>
void panel_rows(int64_t K, const float* A, int64_t lda, const float* Wp, float* C, int64_t ldc,
                bool accumulate, __mmask16 m0, __mmask16 m1, int rows) {
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
#if defined(__AVX512F__)
    if constexpr (std::is_same_v<T, float>) {
      if (g_use_kernel && N > 0 && K > 0 && W != nullptr) pack();
    }
#endif
  }

  void operator()(int64_t M, const T* A, int64_t lda, bool accumulate, T* C, int64_t ldc) const {
    if (M == 0 || N_ == 0) return;
#if defined(__AVX512F__)
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
            const __mmask16 m0 = nv >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << nv) - 1);
            const __mmask16 m1 = nv >= 32 ? __mmask16(0xFFFF)
                                          : (nv > 16 ? __mmask16((1u << (nv - 16)) - 1) : 0);
            const float* wp = packed_.get() + p * K_ * kPanel;
            if (accumulate && p + 1 < p_end) {
              // The next panel's C rows (this step's slice of the input projection) are cold.
              for (int64_t r = 0; r < M; ++r) {
                _mm_prefetch(reinterpret_cast<const char*>(C + r * ldc + n0 + kPanel), _MM_HINT_T0);
                _mm_prefetch(reinterpret_cast<const char*>(C + r * ldc + n0 + kPanel + 16),
                             _MM_HINT_T0);
              }
            }
            // Equal row blocks: 16 rows as 8 + 8 keeps every block's FMA chains long enough.
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
#if defined(__AVX512F__)
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
        // Writes in order; the reads walk 32 rows of W side by side, whose cache lines are
        // reused for 16 consecutive k (writing in W's order instead strides every store).
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

// ---------------------------------------------------------------------------------------------
// Activations. Codes match lstmkit/engine/_function.py: ACT_CODES.

enum Act : int { TANH = 0, SIGMOID = 1, IDENTITY = 2, RELU = 3, PM1 = 4, PM2 = 5 };

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

template <typename T>
const T* ptr_or_null(const Tensor& t) {
  return t.defined() && t.numel() > 0 ? t.data_ptr<T>() : nullptr;
}

// Row ranges for at::parallel_for: enough elementwise work per task to pay for the fork.
inline int64_t grain_rows(int64_t row_work) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, row_work));
}

// Which rows are still inside their sequence at time t.
struct Valid {
  const int64_t* len = nullptr;
  inline bool operator()(int64_t b, int64_t t) const { return len == nullptr || t < len[b]; }
};

Valid make_valid(const Tensor& lengths) {
  Valid v;
  if (lengths.defined() && lengths.numel() > 0) v.len = lengths.data_ptr<int64_t>();
  return v;
}

// Batch rows are independent through the whole recurrence, so with P threads each thread can run
// every step for its own B/P rows: one fork/join per sequence instead of several per step (each
// per-step GEMM and elementwise pass would otherwise fork and join, which costs tens of
// microseconds per step when idle OpenMP threads sleep). Inside the OpenMP region the BLAS runs
// each thread's GEMM on that thread alone (MKL's default for nested calls). Too few rows per thread
// and the per-step GEMM is better split across its columns (StepGemm's panels, or the BLAS's own
// threads): below g_split_min_rows rows per thread the steps run on all rows at once, each step's
// GEMM threaded by columns. set_split(0) turns splitting off.
int64_t g_split_min_rows = 4;

int64_t split_parts(int64_t B) {
  if (g_split_min_rows <= 0 || at::in_parallel_region()) return 1;
  const int64_t P = at::get_num_threads();
  return std::max<int64_t>(1, std::min<int64_t>(P, B / g_split_min_rows));
}

// run(r0, r1) does all steps for rows [r0, r1); split across threads by rows where that pays.
template <typename F>
void over_rows(int64_t B, const F& run) {
  const int64_t parts = split_parts(B);
  if (parts <= 1) {
    run(int64_t(0), B);
    return;
  }
  at::parallel_for(0, B, (B + parts - 1) / parts, run);
}

// Buffer slot of state index i (0..T): every index when saving for backward, else a ring of 2.
inline int64_t slot(int64_t i, bool full) { return full ? i : (i & 1); }

// =============================================================================================
// LSTM family

struct LstmCfg {
  int64_t T, B, H, s, nb, out, G, R, KS, KG, koff;
  int64_t off_i, off_f, off_g, off_o;     // pre-activation block offsets (-1: absent)
  int64_t aoff_i, aoff_f, aoff_o;         // offsets of the gate activations within a (G)
  bool coupled, peep, proj, hidden_rec, gate_rec, rev, trunc;
  int ga, ia, oa;
};

// cfg: [H, block_size, out, has_i, has_f, has_o, coupled, peephole, proj, hidden_recurrence,
//       gate_recurrence, reverse, truncated, gate_act, input_act, output_act]
LstmCfg lstm_cfg(const std::vector<int64_t>& v, int64_t T, int64_t B) {
  TORCH_CHECK(v.size() == 16, "lstmkit engine: bad LSTM config");
  TORCH_CHECK(v[0] >= 0 && v[1] >= 1 && v[0] % v[1] == 0 && (v[8] != 0 || v[2] == v[0]),
              "lstmkit engine: bad LSTM config (hidden ", v[0], ", block size ", v[1],
              ", output ", v[2], ")");
  LstmCfg c{};
  c.T = T;
  c.B = B;
  c.H = v[0];
  c.s = v[1];
  c.nb = c.H / c.s;
  c.out = v[2];
  bool has_i = v[3], has_f = v[4], has_o = v[5];
  c.coupled = v[6];
  c.peep = v[7];
  c.proj = v[8];
  c.hidden_rec = v[9];
  c.gate_rec = v[10];
  c.rev = v[11];
  c.trunc = v[12];
  c.ga = static_cast<int>(v[13]);
  c.ia = static_cast<int>(v[14]);
  c.oa = static_cast<int>(v[15]);
  int64_t off = 0;
  c.off_i = has_i ? off : -1;
  off += has_i ? c.nb : 0;
  c.off_f = has_f ? off : -1;
  off += has_f ? c.nb : 0;
  c.off_g = off;
  off += c.H;
  c.off_o = has_o ? off : -1;
  off += has_o ? c.nb : 0;
  c.R = off;
  int64_t n_gates = int64_t(has_i) + int64_t(has_f) + int64_t(has_o);
  c.G = c.gate_rec ? n_gates * c.nb : 0;
  int64_t a = 0;
  c.aoff_i = has_i ? a : -1;
  a += has_i ? c.nb : 0;
  c.aoff_f = has_f ? a : -1;
  a += has_f ? c.nb : 0;
  c.aoff_o = has_o ? a : -1;
  c.KS = c.out + c.G;
  c.koff = c.hidden_rec ? 0 : c.out;
  c.KG = c.KS - c.koff;
  return c;
}

// The gate activations a row carries to the next step (gate recurrence), from its activated z.
template <typename T>
void store_carried(const LstmCfg& c, const T* z, T* a) {
  if (c.off_i >= 0) copy_row(a + c.aoff_i, z + c.off_i, c.nb);
  if (c.off_f >= 0) copy_row(a + c.aoff_f, z + c.off_f, c.nb);
  if (c.off_o >= 0) copy_row(a + c.aoff_o, z + c.off_o, c.nb);
}

// One row of the forward elementwise pass. z: the row's pre-activations (becomes the activated
// gates), cp/cn: previous/new cell state, m: o * act(c) (h without projection), a: gate
// activations carried to the next step (or null). tmp: 4 * H scratch.
template <typename T>
void lstm_fwd_row(const LstmCfg& c, T* z, const T* cp, T* cn, T* m, T* a, const T* pi,
                  const T* pf, const T* po, T* tmp) {
  const int64_t H = c.H, nb = c.nb, s = c.s;
  T* zi = c.off_i >= 0 ? z + c.off_i : nullptr;
  T* zf = c.off_f >= 0 ? z + c.off_f : nullptr;
  T* zg = z + c.off_g;
  T* zo = c.off_o >= 0 ? z + c.off_o : nullptr;
  T* t_i = tmp;
  T* t_f = tmp + H;
  T* t_o = tmp + 2 * H;
  T* t_h = tmp + 3 * H;
  if (c.peep) {
    if (zi) block_dot_add(zi, pi, cp, nb, s);
    if (zf) block_dot_add(zf, pf, cp, nb, s);
  }
  if (zi && zf && zf == zi + nb) {
    act_fwd(c.ga, zi, 2 * nb);
  } else {
    if (zi) act_fwd(c.ga, zi, nb);
    if (zf) act_fwd(c.ga, zf, nb);
  }
  act_fwd(c.ia, zg, H);
  const T* iv = zi ? spread<T>(zi, t_i, nb, s) : nullptr;
  if (c.coupled) {
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) cn[j] = (T(1) - iv[j]) * cp[j] + iv[j] * zg[j];
  } else {
    const T* fv = zf ? spread<T>(zf, t_f, nb, s) : nullptr;
    if (iv && fv) {
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) cn[j] = fv[j] * cp[j] + iv[j] * zg[j];
    } else if (iv) {
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) cn[j] = cp[j] + iv[j] * zg[j];
    } else if (fv) {
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) cn[j] = fv[j] * cp[j] + zg[j];
    } else {
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) cn[j] = cp[j] + zg[j];
    }
  }
  if (zo) {
    if (c.peep) block_dot_add(zo, po, static_cast<const T*>(cn), nb, s);
    act_fwd(c.ga, zo, nb);
  }
  copy_row(t_h, static_cast<const T*>(cn), H);
  act_fwd(c.oa, t_h, H);
  if (zo) {
    const T* ov = spread<T>(zo, t_o, nb, s);
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) m[j] = ov[j] * t_h[j];
  } else {
    copy_row(m, static_cast<const T*>(t_h), H);
  }
  if (a) store_carried(c, static_cast<const T*>(z), a);
}

// The same row in one pass, for the common cell: one cell per block, sigmoid gates, tanh
// candidate and output activation, input and output gates present, float, AVX-512. Sixteen units
// at a time go through every equation while in registers, instead of ten passes over the row;
// the reciprocals are rcp14 plus one Newton step (relative error about 2^-28) rather than
// divisions, which were the slowest part of the pass. Other builds run the general row.
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

template <bool PEEP, bool COUPLED, bool HAS_F>
void lstm_fwd_row_std(const LstmCfg& c, float* __restrict z, const float* __restrict cp,
                      float* __restrict cn, float* __restrict m, const float* __restrict pi,
                      const float* __restrict pf, const float* __restrict po) {
  float* __restrict zi = z + c.off_i;
  float* __restrict zf = HAS_F ? z + c.off_f : z;
  float* __restrict zg = z + c.off_g;
  float* __restrict zo = z + c.off_o;
  const __m512 one = _mm512_set1_ps(1.0f);
  for (int64_t j = 0; j < c.H; j += 16) {
    const __mmask16 k = c.H - j >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (c.H - j)) - 1);
    const __m512 cj = _mm512_maskz_loadu_ps(k, cp + j);
    __m512 ai = _mm512_maskz_loadu_ps(k, zi + j);
    if constexpr (PEEP) ai = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, pi + j), cj, ai);
    const __m512 i = v_sigmoid(ai);
    __m512 f = one;
    if constexpr (COUPLED) {
      f = _mm512_sub_ps(one, i);
    } else if constexpr (HAS_F) {
      __m512 af = _mm512_maskz_loadu_ps(k, zf + j);
      if constexpr (PEEP) af = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, pf + j), cj, af);
      f = v_sigmoid(af);
      _mm512_mask_storeu_ps(zf + j, k, f);
    }
    const __m512 g = v_tanh(_mm512_maskz_loadu_ps(k, zg + j));
    const __m512 cnew = _mm512_fmadd_ps(f, cj, _mm512_mul_ps(i, g));
    __m512 ao = _mm512_maskz_loadu_ps(k, zo + j);
    if constexpr (PEEP) ao = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, po + j), cnew, ao);
    const __m512 o = v_sigmoid(ao);
    _mm512_mask_storeu_ps(zi + j, k, i);
    _mm512_mask_storeu_ps(zg + j, k, g);
    _mm512_mask_storeu_ps(zo + j, k, o);
    _mm512_mask_storeu_ps(cn + j, k, cnew);
    _mm512_mask_storeu_ps(m + j, k, _mm512_mul_ps(o, v_tanh(cnew)));
  }
}
#endif

using StdRow = void (*)(const LstmCfg&, float*, const float*, float*, float*, const float*,
                        const float*, const float*);

// Rows::get<PEEP, COUPLED, HAS_F>() for this cell's flags (a coupled cell has no forget gate).
template <typename Rows>
auto pick_row(const LstmCfg& c) {
  const bool f = c.off_f >= 0;
  if (c.coupled) {
    return c.peep ? Rows::template get<true, true, false>()
                  : Rows::template get<false, true, false>();
  }
  if (c.peep) {
    return f ? Rows::template get<true, false, true>() : Rows::template get<true, false, false>();
  }
  return f ? Rows::template get<false, false, true>() : Rows::template get<false, false, false>();
}

// Whether this cell is the common one the one-pass rows are written for.
bool std_cell(const LstmCfg& c) {
  return c.s == 1 && c.ga == SIGMOID && c.ia == TANH && c.oa == TANH && c.off_i >= 0 &&
         c.off_o >= 0;
}

#if defined(__AVX512F__)
struct FwdRows {
  template <bool PEEP, bool COUPLED, bool HAS_F>
  static StdRow get() {
    return &lstm_fwd_row_std<PEEP, COUPLED, HAS_F>;
  }
};
#endif

// The one-pass forward row for this cell, or null where the general row must run.
StdRow std_row(const LstmCfg& c) {
#if defined(__AVX512F__)
  if (std_cell(c)) return pick_row<FwdRows>(c);
#endif
  (void)c;
  return nullptr;
}

// One row of the backward elementwise pass. g: the row's saved activated gates; dm: gradient of
// o * act(c); da: gradient of the carried gate activations a(t) (or null); dc: in, the gradient
// of c(t); out, of c(t-1). dz: the pre-activation gradients. tmp: 5 * H scratch.
template <typename T>
void lstm_bwd_row(const LstmCfg& c, const T* g, const T* cp, const T* cn, const T* dm,
                  const T* da, T* dc, T* dz, const T* pi, const T* pf, const T* po, T* tmp) {
  const int64_t H = c.H, nb = c.nb, s = c.s;
  const T* gi = c.off_i >= 0 ? g + c.off_i : nullptr;
  const T* gf = c.off_f >= 0 ? g + c.off_f : nullptr;
  const T* gg = g + c.off_g;
  const T* go = c.off_o >= 0 ? g + c.off_o : nullptr;
  T* dzi = c.off_i >= 0 ? dz + c.off_i : nullptr;
  T* dzf = c.off_f >= 0 ? dz + c.off_f : nullptr;
  T* dzg = dz + c.off_g;
  T* dzo = c.off_o >= 0 ? dz + c.off_o : nullptr;
  T* t_a = tmp;          // act(c(t))
  T* t_d = tmp + H;      // scratch
  T* t_s1 = tmp + 2 * H;  // spread scratch
  T* t_s2 = tmp + 3 * H;
  T* t_s3 = tmp + 4 * H;
  copy_row(t_a, cn, H);
  act_fwd(c.oa, t_a, H);
  // output gate
  if (go) {
    if (da) {
      copy_row(dzo, da + c.aoff_o, nb);
    } else {
      zero_row(dzo, nb);
    }
    block_dot_add(dzo, dm, static_cast<const T*>(t_a), nb, s);
    act_bwd(c.ga, go, dzo, nb);
    const T* ov = spread<T>(go, t_s1, nb, s);
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) t_d[j] = dm[j] * ov[j];
  } else {
    copy_row(t_d, dm, H);
  }
  act_bwd(c.oa, static_cast<const T*>(t_a), t_d, H);
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) dc[j] += t_d[j];
  if (go && c.peep) {
    const T* dov = spread<T>(static_cast<const T*>(dzo), t_s1, nb, s);
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) dc[j] += dov[j] * po[j];
  }
  // candidate
  const T* iv = gi ? spread<T>(gi, t_s2, nb, s) : nullptr;
  if (iv) {
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) dzg[j] = dc[j] * iv[j];
  } else {
    copy_row(dzg, static_cast<const T*>(dc), H);
  }
  act_bwd(c.ia, gg, dzg, H);
  // input and forget gates
  if (gi) {
    if (da) {
      copy_row(dzi, da + c.aoff_i, nb);
    } else {
      zero_row(dzi, nb);
    }
    block_dot_add(dzi, static_cast<const T*>(dc), gg, nb, s);
    if (c.coupled) {
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) t_d[j] = -dc[j];
      block_dot_add(dzi, static_cast<const T*>(t_d), cp, nb, s);
    }
    act_bwd(c.ga, gi, dzi, nb);
  }
  if (gf) {
    if (da) {
      copy_row(dzf, da + c.aoff_f, nb);
    } else {
      zero_row(dzf, nb);
    }
    block_dot_add(dzf, static_cast<const T*>(dc), cp, nb, s);
    act_bwd(c.ga, gf, dzf, nb);
  }
  // dc(t-1)
  if (c.coupled) {
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) dc[j] *= T(1) - iv[j];
  } else if (gf) {
    const T* fv = spread<T>(gf, t_s1, nb, s);
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) dc[j] *= fv[j];
  }
  if (c.peep) {
    if (gi) {
      const T* v = spread<T>(static_cast<const T*>(dzi), t_s3, nb, s);
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) dc[j] += v[j] * pi[j];
    }
    if (gf) {
      const T* v = spread<T>(static_cast<const T*>(dzf), t_s3, nb, s);
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) dc[j] += v[j] * pf[j];
    }
  }
}

// Forward over the sequence. xg [T,B,R]: x W_ih^T + b, overwritten with the activated gates.
// Returns {y [T,B,out], h_T, c_T, a_T, cells [T,B,H] or empty, rin [T+1,B,KS], c_all [T+1,B,H],
// m_all [T,B,H] or empty} (the last three full only when saving for backward).
template <typename T>
std::vector<Tensor> lstm_forward_impl(const LstmCfg& c, Tensor xg, const Tensor& wcat,
                                      const Tensor& peep, const Tensor& w_hr, const Tensor& h0,
                                      const Tensor& c0, const Tensor& a0, const Tensor& lengths,
                                      bool full, bool return_cells) {
  const int64_t T_ = c.T, B = c.B, H = c.H, R = c.R, KS = c.KS;
  auto opts = xg.options();
  const int64_t n_states = full ? T_ + 1 : 2;
  Tensor rin = at::empty({n_states, B, KS}, opts);
  Tensor call = at::empty({n_states, B, H}, opts);
  Tensor mall = c.proj ? at::empty({full ? T_ : 1, B, H}, opts) : Tensor();
  Tensor y = at::empty({T_, B, c.out}, opts);
  Tensor cells = return_cells ? at::empty({T_, B, H}, opts) : Tensor();
  T* rin_p = rin.data_ptr<T>();
  T* c_p = call.data_ptr<T>();
  T* xg_p = xg.data_ptr<T>();
  T* y_p = y.data_ptr<T>();
  T* cells_p = return_cells ? cells.data_ptr<T>() : nullptr;
  T* m_p = c.proj ? mall.data_ptr<T>() : nullptr;
  const T* w_p = ptr_or_null<T>(wcat);
  const T* hr_p = ptr_or_null<T>(w_hr);
  const T* pe = ptr_or_null<T>(peep);
  const T* pi = pe ? pe : nullptr;
  const T* pf = pe ? pe + H : nullptr;
  const T* po = pe ? pe + 2 * H : nullptr;
  const Valid valid = make_valid(lengths);
  {
    const int64_t i0 = slot(c.rev ? T_ : 0, full);
    T* r0 = rin_p + i0 * B * KS;
    const T* h0p = h0.data_ptr<T>();
    const T* a0p = c.G ? a0.data_ptr<T>() : nullptr;
    for (int64_t b = 0; b < B; ++b) {
      copy_row(r0 + b * KS, h0p + b * c.out, c.out);
      if (c.G) copy_row(r0 + b * KS + c.out, a0p + b * c.G, c.G);
    }
    copy_row(c_p + i0 * B * H, c0.data_ptr<T>(), B * H);
  }
  const int64_t grain = grain_rows(R);
  const StepGemm<T> rec(true, R, c.KG, c.KG > 0 ? w_p : nullptr, c.KG);
  const StepGemm<T> project(true, c.out, H, c.proj ? hr_p : nullptr, H);
  const StdRow fast = g_use_kernel ? std_row(c) : nullptr;
  // Inference with every row valid, no projection and no carried gates: h(t) is y[t] itself, so
  // each step writes it into y and the next step reads it there (no copy through the ring).
  const bool h_in_y = !full && !c.proj && c.G == 0 && valid.len == nullptr && T_ > 0;
  over_rows(B, [&](int64_t r0, int64_t r1) {
    const int64_t M = r1 - r0;
    for (int64_t step = 0; step < T_; ++step) {
      const int64_t t = c.rev ? T_ - 1 - step : step;
      const int64_t ip = slot(c.rev ? t + 1 : t, full), in = slot(c.rev ? t : t + 1, full);
      T* rp = rin_p + ip * B * KS;
      T* rn = rin_p + in * B * KS;
      T* cp = c_p + ip * B * H;
      T* cn = c_p + in * B * H;
      T* z = xg_p + t * B * R;
      T* yt = y_p + t * B * c.out;
      T* mt = c.proj ? m_p + (full ? t : 0) * B * H : nullptr;
      const T* hp = h_in_y && step > 0 ? y_p + (c.rev ? t + 1 : t - 1) * B * c.out : rp;
      if (c.KG > 0) rec(M, hp + r0 * KS + c.koff, KS, true, z + r0 * R, R);
      at::parallel_for(r0, r1, grain, [&](int64_t b0, int64_t b1) {
        std::vector<T> tmp(4 * H);
        for (int64_t b = b0; b < b1; ++b) {
          if (!valid(b, t)) {
            copy_row(rn + b * KS, static_cast<const T*>(rp + b * KS), KS);
            copy_row(cn + b * H, static_cast<const T*>(cp + b * H), H);
            if (c.proj) {
              // Backward multiplies these rows by a zero gradient; uninitialised memory could
              // hold NaN or Inf, and 0 * NaN would poison dW_hr.
              zero_row(mt + b * H, H);
            } else {
              zero_row(yt + b * c.out, c.out);
            }
            if (cells_p) zero_row(cells_p + (t * B + b) * H, H);
            continue;
          }
          T* m = c.proj ? mt + b * H : (h_in_y ? yt + b * c.out : rn + b * KS);
          T* a = c.G ? rn + b * KS + c.out : nullptr;
          bool done = false;
          if constexpr (std::is_same_v<T, float>) {
            if (fast) {
              fast(c, z + b * R, cp + b * H, cn + b * H, m, pi, pf, po);
              if (a) store_carried(c, static_cast<const T*>(z + b * R), a);
              done = true;
            }
          }
          if (!done) {
            lstm_fwd_row<T>(c, z + b * R, cp + b * H, cn + b * H, m, a, pi, pf, po, tmp.data());
          }
          if (!c.proj) copy_row(yt + b * c.out, static_cast<const T*>(m), c.out);
          if (cells_p) copy_row(cells_p + (t * B + b) * H, static_cast<const T*>(cn + b * H), H);
        }
      });
      if (c.proj) {
        project(M, mt + r0 * H, H, false, rn + r0 * KS, KS);
        for (int64_t b = r0; b < r1; ++b) {
          if (valid(b, t)) {
            copy_row(yt + b * c.out, static_cast<const T*>(rn + b * KS), c.out);
          } else {
            copy_row(rn + b * KS, static_cast<const T*>(rp + b * KS), c.out);
            zero_row(yt + b * c.out, c.out);
          }
        }
      }
    }
  });
  const int64_t iT = slot(c.rev ? 0 : T_, full);
  Tensor last = rin.select(0, iT);
  Tensor hT = h_in_y ? y.select(0, c.rev ? 0 : T_ - 1).clone() : last.narrow(1, 0, c.out).clone();
  Tensor aT = c.G ? last.narrow(1, c.out, c.G).clone() : Tensor();
  Tensor cT = call.select(0, iT).clone();
  return {y, hT, cT, aT, cells, full ? rin : Tensor(), full ? call : Tensor(),
          full ? mall : Tensor()};
}

// The backward row in one pass for the same common cell (and no projection or carried gates):
// dy + dh gives dm; dz, the peephole-weight gradients (acc: i, f, o rows of H) and dc(t-1)
// follow per unit; dh is consumed (zeroed).
template <bool PEEP, bool COUPLED, bool HAS_F>
void lstm_bwd_row_std(const LstmCfg& c, const float* __restrict gz, const float* __restrict cp,
                      const float* __restrict cn, const float* __restrict dy,
                      float* __restrict dh, float* __restrict dc, float* __restrict dz,
                      const float* __restrict pi, const float* __restrict pf,
                      const float* __restrict po, float* __restrict acc) {
  const int64_t H = c.H;
  const float* __restrict gi = gz + c.off_i;
  const float* __restrict gf = HAS_F ? gz + c.off_f : gz;
  const float* __restrict gg = gz + c.off_g;
  const float* __restrict go = gz + c.off_o;
  float* __restrict dzi = dz + c.off_i;
  float* __restrict dzf = HAS_F ? dz + c.off_f : dz;
  float* __restrict dzg = dz + c.off_g;
  float* __restrict dzo = dz + c.off_o;
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const float i = gi[j], g = gg[j], o = go[j], cpj = cp[j], cnj = cn[j];
    const float dm = dy[j] + dh[j];
    const float th = ftanh(cnj);
    const float d_o = dm * th * o * (1.0f - o);
    float dcj = dc[j] + dm * o * (1.0f - th * th);
    if constexpr (PEEP) dcj += d_o * po[j];
    const float d_g = dcj * i * (1.0f - g * g);
    const float d_i = (COUPLED ? dcj * (g - cpj) : dcj * g) * i * (1.0f - i);
    float d_f = 0.0f;
    float dprev = dcj;
    if constexpr (COUPLED) {
      dprev = dcj * (1.0f - i);
    } else if constexpr (HAS_F) {
      const float f = gf[j];
      d_f = dcj * cpj * f * (1.0f - f);
      dprev = dcj * f;
      dzf[j] = d_f;
    }
    if constexpr (PEEP) {
      dprev += d_i * pi[j];
      if constexpr (HAS_F) dprev += d_f * pf[j];
      acc[j] += d_i * cpj;
      if constexpr (HAS_F) acc[H + j] += d_f * cpj;
      acc[2 * H + j] += d_o * cnj;
    }
    dzi[j] = d_i;
    dzg[j] = d_g;
    dzo[j] = d_o;
    dc[j] = dprev;
    dh[j] = 0.0f;
  }
}

using StdBwdRow = void (*)(const LstmCfg&, const float*, const float*, const float*,
                           const float*, float*, float*, float*, const float*, const float*,
                           const float*, float*);

struct BwdRows {
  template <bool PEEP, bool COUPLED, bool HAS_F>
  static StdBwdRow get() {
    return &lstm_bwd_row_std<PEEP, COUPLED, HAS_F>;
  }
};

StdBwdRow std_bwd_row(const LstmCfg& c) {
  if (!std_cell(c) || c.proj || c.G != 0) return nullptr;
  return pick_row<BwdRows>(c);
}

// Backward over the sequence. Returns {dz [T,B,R], dh0, dc0, da0, dh_all [T,B,out] (proj only),
// dpeep [3,H] (peepholes only: the gradients of the i, f, o peephole weights)}.
template <typename T>
std::vector<Tensor> lstm_backward_impl(const LstmCfg& c, const Tensor& gates, const Tensor& wcat,
                                       const Tensor& peep, const Tensor& w_hr, const Tensor& rin,
                                       const Tensor& call, const Tensor& lengths, const Tensor& dy,
                                       const Tensor& dhT, const Tensor& dcT, const Tensor& daT,
                                       const Tensor& dcells) {
  const int64_t T_ = c.T, B = c.B, H = c.H, R = c.R, KS = c.KS, out = c.out;
  auto opts = gates.options();
  Tensor dz = at::empty({T_, B, R}, opts);
  Tensor drin = at::empty({B, KS}, opts);
  Tensor dc = dcT.clone();
  Tensor dhall = c.proj ? at::empty({T_, B, out}, opts) : Tensor();
  Tensor dm_buf = c.proj ? at::empty({B, H}, opts) : Tensor();
  Tensor dprow = c.peep ? at::zeros({B, 3, H}, opts) : Tensor();
  T* dpr_p = c.peep ? dprow.data_ptr<T>() : nullptr;
  T* drin_p = drin.data_ptr<T>();
  {
    const T* dh_src = dhT.data_ptr<T>();
    const T* da_src = c.G ? daT.data_ptr<T>() : nullptr;
    for (int64_t b = 0; b < B; ++b) {
      copy_row(drin_p + b * KS, dh_src + b * out, out);
      if (c.G) copy_row(drin_p + b * KS + out, da_src + b * c.G, c.G);
    }
  }
  T* dc_p = dc.data_ptr<T>();
  T* dz_p = dz.data_ptr<T>();
  const T* g_p = gates.data_ptr<T>();
  const T* c_p = call.data_ptr<T>();
  const T* dy_p = dy.data_ptr<T>();
  const T* dcells_p = ptr_or_null<T>(dcells);
  const T* w_p = ptr_or_null<T>(wcat);
  const T* hr_p = ptr_or_null<T>(w_hr);
  T* dhall_p = c.proj ? dhall.data_ptr<T>() : nullptr;
  T* dm_p = c.proj ? dm_buf.data_ptr<T>() : nullptr;
  const T* pe = ptr_or_null<T>(peep);
  const T* pi = pe ? pe : nullptr;
  const T* pf = pe ? pe + H : nullptr;
  const T* po = pe ? pe + 2 * H : nullptr;
  const Valid valid = make_valid(lengths);
  (void)rin;
  const int64_t grain = grain_rows(R);
  const bool state_grad = c.KG > 0 && !c.trunc;
  const StepGemm<T> drec(false, c.KG, R, state_grad ? w_p : nullptr, c.KG);
  const StepGemm<T> dproject(false, H, out, c.proj ? hr_p : nullptr, H);
  const StdBwdRow fast = g_use_kernel ? std_bwd_row(c) : nullptr;
  over_rows(B, [&](int64_t r0, int64_t r1) {
    const int64_t M = r1 - r0;
    for (int64_t step = T_ - 1; step >= 0; --step) {
      const int64_t t = c.rev ? T_ - 1 - step : step;
      const int64_t ip = c.rev ? t + 1 : t, in = c.rev ? t : t + 1;
      const T* cp = c_p + ip * B * H;
      const T* cn = c_p + in * B * H;
      const T* gt = g_p + t * B * R;
      T* dzt = dz_p + t * B * R;
      const T* dyt = dy_p + t * B * out;
      if (c.proj) {
        T* dht = dhall_p + t * B * out;
        for (int64_t b = r0; b < r1; ++b) {
          T* dh = drin_p + b * KS;
          if (valid(b, t)) {
            for (int64_t j = 0; j < out; ++j) dht[b * out + j] = dyt[b * out + j] + dh[j];
            zero_row(dh, out);
          } else {
            zero_row(dht + b * out, out);
          }
        }
        dproject(M, dht + r0 * out, out, false, dm_p + r0 * H, H);
      }
      at::parallel_for(r0, r1, grain, [&](int64_t b0, int64_t b1) {
        std::vector<T> tmp(6 * H);
        for (int64_t b = b0; b < b1; ++b) {
          if (!valid(b, t)) {
            zero_row(dzt + b * R, R);
            continue;
          }
          T* dr = drin_p + b * KS;
          T* dcb = dc_p + b * H;
          if (dcells_p) {
            const T* dcl = dcells_p + (t * B + b) * H;
#pragma omp simd
            for (int64_t j = 0; j < H; ++j) dcb[j] += dcl[j];
          }
          if constexpr (std::is_same_v<T, float>) {
            if (fast) {
              fast(c, gt + b * R, cp + b * H, cn + b * H, dyt + b * out, dr, dcb, dzt + b * R, pi,
                   pf, po, dpr_p ? dpr_p + b * 3 * H : nullptr);
              continue;
            }
          }
          const T* dm;
          if (c.proj) {
            dm = dm_p + b * H;
          } else {
            T* t_m = tmp.data() + 5 * H;
#pragma omp simd
            for (int64_t j = 0; j < H; ++j) t_m[j] = dyt[b * out + j] + dr[j];
            dm = t_m;
          }
          lstm_bwd_row<T>(c, gt + b * R, cp + b * H, cn + b * H, dm, c.G ? dr + out : nullptr,
                          dcb, dzt + b * R, pi, pf, po, tmp.data());
          if (dpr_p) {
            // Peephole gradients accumulate per row while dz and the cells are in cache; each
            // row belongs to one thread per step, and rows are summed in order at the end, so
            // the result does not depend on the thread count.
            T* acc = dpr_p + b * 3 * H;
            const T* dzb = dzt + b * R;
            const int64_t offs[3] = {c.off_i, c.off_f, c.off_o};
            for (int q = 0; q < 3; ++q) {
              if (offs[q] < 0) continue;
              const T* cells = q == 2 ? cn + b * H : cp + b * H;
              const T* dv = spread<T>(dzb + offs[q], tmp.data() + H, c.nb, c.s);
              T* a = acc + q * H;
#pragma omp simd
              for (int64_t j = 0; j < H; ++j) a[j] += dv[j] * cells[j];
            }
          }
          // The state gradient of a row inside its sequence now comes only from this step.
          zero_row(dr, KS);
        }
      });
      if (state_grad) drec(M, dzt + r0 * R, R, true, drin_p + r0 * KS + c.koff, KS);
    }
  });
  Tensor dh0 = drin.narrow(1, 0, out).clone();
  Tensor da0 = c.G ? drin.narrow(1, out, c.G).clone() : Tensor();
  Tensor dpeep = c.peep ? dprow.sum(0) : Tensor();
  return {dz, dh0, dc, da0, dhall, dpeep};
}

// The entry points read raw pointers: an operand of the wrong size or kind must stop here with
// a message, not be read past its end. (The Python side always passes them right; this guards
// direct calls.) numel 0 stands for "absent", which is allowed only where `needed` is false.
void check_operand(const Tensor& t, const Tensor& like, bool needed, int64_t numel,
                   const char* name) {
  if (!needed) return;
  TORCH_CHECK(t.defined() && t.numel() == numel, "lstmkit engine: ", name, " must have ", numel,
              " elements, got ", t.defined() ? t.numel() : 0);
  TORCH_CHECK(t.is_contiguous() && t.scalar_type() == like.scalar_type() && t.device().is_cpu(),
              "lstmkit engine: ", name, " must be a contiguous CPU tensor of ",
              like.scalar_type());
}

void check_lengths(const Tensor& lengths, int64_t B) {
  if (!lengths.defined() || lengths.numel() == 0) return;
  TORCH_CHECK(lengths.numel() == B && lengths.scalar_type() == at::kLong &&
                  lengths.is_contiguous(),
              "lstmkit engine: lengths must be ", B, " contiguous int64 values");
}

std::vector<Tensor> lstm_forward(Tensor xg, Tensor wcat, Tensor peep, Tensor w_hr, Tensor h0,
                                 Tensor c0, Tensor a0, Tensor lengths, std::vector<int64_t> cfg,
                                 bool full, bool return_cells) {
  TORCH_CHECK(xg.dim() == 3 && xg.is_contiguous() && xg.device().is_cpu(),
              "lstmkit engine: xg must be a contiguous CPU tensor [T,B,R]");
  const LstmCfg c = lstm_cfg(cfg, xg.size(0), xg.size(1));
  TORCH_CHECK(xg.size(2) == c.R, "lstmkit engine: xg has ", xg.size(2), " columns, expected ",
              c.R);
  const int64_t B = c.B;
  check_operand(wcat, xg, c.KG > 0, c.R * c.KG, "the recurrent weight");
  check_operand(peep, xg, c.peep, 3 * c.H, "the peephole weights");
  check_operand(w_hr, xg, c.proj, c.out * c.H, "the projection weight");
  check_operand(h0, xg, true, B * c.out, "h0");
  check_operand(c0, xg, true, B * c.H, "c0");
  check_operand(a0, xg, c.G > 0, B * c.G, "the initial gate activations");
  check_lengths(lengths, B);
  std::vector<Tensor> res;
  AT_DISPATCH_FLOATING_TYPES(xg.scalar_type(), "lstm_forward", [&] {
    res = lstm_forward_impl<scalar_t>(c, xg, wcat, peep, w_hr, h0, c0, a0, lengths, full,
                                      return_cells);
  });
  return res;
}

std::vector<Tensor> lstm_backward(Tensor gates, Tensor wcat, Tensor peep, Tensor w_hr, Tensor rin,
                                  Tensor call, Tensor lengths, Tensor dy, Tensor dhT, Tensor dcT,
                                  Tensor daT, Tensor dcells, std::vector<int64_t> cfg) {
  const LstmCfg c = lstm_cfg(cfg, gates.size(0), gates.size(1));
  std::vector<Tensor> res;
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "lstm_backward", [&] {
    res = lstm_backward_impl<scalar_t>(c, gates, wcat, peep, w_hr, rin, call, lengths, dy, dhT,
                                       dcT, daT, dcells);
  });
  return res;
}

// =============================================================================================
// GRU (both reset placements) and the Elman RNN

struct GruCfg {
  int64_t T, B, H;
  bool reset_after, rev;
  int ga, ia;
};

// cfg: [H, reset_after, reverse, gate_act, input_act]
GruCfg gru_cfg(const std::vector<int64_t>& v, int64_t T, int64_t B) {
  TORCH_CHECK(v.size() == 5, "lstmkit engine: bad GRU config");
  GruCfg c{T, B, v[0], v[1] != 0, v[2] != 0, static_cast<int>(v[3]), static_cast<int>(v[4])};
  return c;
}

// xg [T,B,3H]: x W_ih^T + b_ih (+ b_hh where it adds outside the reset gate); becomes r, z, n.
// Returns {y, h_T, hs [T+1,B,H], aux [T,B,H]} with aux = R_n h + b_hn (reset_after) or r * h
// (Cho), the last two only when saving for backward.
template <typename T>
std::vector<Tensor> gru_forward_impl(const GruCfg& c, Tensor xg, const Tensor& w_hh,
                                     const Tensor& b_hn, const Tensor& h0, const Tensor& lengths,
                                     bool full) {
  const int64_t T_ = c.T, B = c.B, H = c.H, R = 3 * H;
  auto opts = xg.options();
  Tensor hs = at::empty({full ? T_ + 1 : 2, B, H}, opts);
  Tensor aux = at::empty({full ? T_ : 1, B, H}, opts);
  Tensor rec = c.reset_after ? at::empty({B, R}, opts) : Tensor();
  Tensor y = at::empty({T_, B, H}, opts);
  T* hs_p = hs.data_ptr<T>();
  T* aux_p = aux.data_ptr<T>();
  T* rec_p = c.reset_after ? rec.data_ptr<T>() : nullptr;
  T* xg_p = xg.data_ptr<T>();
  T* y_p = y.data_ptr<T>();
  const T* w_p = w_hh.data_ptr<T>();
  const T* bn = ptr_or_null<T>(b_hn);
  const Valid valid = make_valid(lengths);
  copy_row(hs_p + slot(c.rev ? T_ : 0, full) * B * H, h0.data_ptr<T>(), B * H);
  const int64_t grain = grain_rows(R);
  // reset_after: all three blocks at once; Cho: r and z first, then the candidate on r * h.
  const StepGemm<T> w_step(true, c.reset_after ? R : 2 * H, H, w_p, H);
  const StepGemm<T> w_step_n(true, H, H, c.reset_after ? nullptr : w_p + 2 * H * H, H);
  over_rows(B, [&](int64_t r0, int64_t r1) {
    const int64_t M = r1 - r0;
    for (int64_t step = 0; step < T_; ++step) {
      const int64_t t = c.rev ? T_ - 1 - step : step;
      const T* hp = hs_p + slot(c.rev ? t + 1 : t, full) * B * H;
      T* hn = hs_p + slot(c.rev ? t : t + 1, full) * B * H;
      T* z = xg_p + t * B * R;
      T* yt = y_p + t * B * H;
      T* auxt = aux_p + (full ? t : 0) * B * H;
      if (c.reset_after) {
        w_step(M, hp + r0 * H, H, false, rec_p + r0 * R, R);
      } else {
        w_step(M, hp + r0 * H, H, true, z + r0 * R, R);
        at::parallel_for(r0, r1, grain, [&](int64_t b0, int64_t b1) {
          for (int64_t b = b0; b < b1; ++b) {
            T* zr = z + b * R;
            act_fwd(c.ga, zr, 2 * H);
            const T* h = hp + b * H;
            T* rh = auxt + b * H;
#pragma omp simd
            for (int64_t j = 0; j < H; ++j) rh[j] = zr[j] * h[j];
          }
        });
        w_step_n(M, auxt + r0 * H, H, true, z + r0 * R + 2 * H, R);
      }
      at::parallel_for(r0, r1, grain, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          const T* h = hp + b * H;
          if (!valid(b, t)) {
            copy_row(hn + b * H, h, H);
            zero_row(yt + b * H, H);
            continue;
          }
          T* zr = z + b * R;
          T* zz = zr + H;
          T* zn = zr + 2 * H;
          if (c.reset_after) {
            const T* rr = rec_p + b * R;
            T* rn = auxt + b * H;
#pragma omp simd
            for (int64_t j = 0; j < 2 * H; ++j) zr[j] += rr[j];
            act_fwd(c.ga, zr, 2 * H);
            if (bn) {
#pragma omp simd
              for (int64_t j = 0; j < H; ++j) rn[j] = rr[2 * H + j] + bn[j];
            } else {
              copy_row(rn, rr + 2 * H, H);
            }
#pragma omp simd
            for (int64_t j = 0; j < H; ++j) zn[j] += zr[j] * rn[j];
          }
          act_fwd(c.ia, zn, H);
          T* ho = hn + b * H;
#pragma omp simd
          for (int64_t j = 0; j < H; ++j) ho[j] = zn[j] + zz[j] * (h[j] - zn[j]);
          copy_row(yt + b * H, static_cast<const T*>(ho), H);
        }
      });
    }
  });
  Tensor hT = hs.select(0, slot(c.rev ? 0 : T_, full)).clone();
  return {y, hT, full ? hs : Tensor(), full ? aux : Tensor()};
}

// Returns {dz [T,B,3H] (gradient of the input pre-activations), drec [T,B,3H] (reset_after:
// gradient of R h + b_hh; Cho: empty, its recurrent gradients are dz's), dh0}.
template <typename T>
std::vector<Tensor> gru_backward_impl(const GruCfg& c, const Tensor& gates, const Tensor& w_hh,
                                      const Tensor& hs, const Tensor& aux, const Tensor& lengths,
                                      const Tensor& dy, const Tensor& dhT) {
  const int64_t T_ = c.T, B = c.B, H = c.H, R = 3 * H;
  auto opts = gates.options();
  Tensor dz = at::empty({T_, B, R}, opts);
  Tensor drec = c.reset_after ? at::empty({T_, B, R}, opts) : Tensor();
  Tensor drh = c.reset_after ? Tensor() : at::empty({B, H}, opts);
  Tensor dh = dhT.clone();
  T* dz_p = dz.data_ptr<T>();
  T* drec_p = c.reset_after ? drec.data_ptr<T>() : nullptr;
  T* drh_p = c.reset_after ? nullptr : drh.data_ptr<T>();
  T* dh_p = dh.data_ptr<T>();
  const T* g_p = gates.data_ptr<T>();
  const T* hs_p = hs.data_ptr<T>();
  const T* aux_p = aux.data_ptr<T>();
  const T* dy_p = dy.data_ptr<T>();
  const T* w_p = w_hh.data_ptr<T>();
  const Valid valid = make_valid(lengths);
  const int64_t grain = grain_rows(R);
  const StepGemm<T> w_back(false, H, c.reset_after ? R : 2 * H, w_p, H);
  const StepGemm<T> w_back_n(false, H, H, c.reset_after ? nullptr : w_p + 2 * H * H, H);
  over_rows(B, [&](int64_t r0, int64_t r1) {
    const int64_t M = r1 - r0;
    for (int64_t step = T_ - 1; step >= 0; --step) {
      const int64_t t = c.rev ? T_ - 1 - step : step;
      const T* hp = hs_p + (c.rev ? t + 1 : t) * B * H;
      const T* gt = g_p + t * B * R;
      const T* auxt = aux_p + t * B * H;
      T* dzt = dz_p + t * B * R;
      T* drt = c.reset_after ? drec_p + t * B * R : nullptr;
      const T* dyt = dy_p + t * B * H;
      at::parallel_for(r0, r1, grain, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          T* d = dz_p + (t * B + b) * R;
          if (!valid(b, t)) {
            zero_row(d, R);
            if (drt) zero_row(drt + b * R, R);
            continue;
          }
          const T* g = gt + b * R;
          const T* gr = g;
          const T* gz = g + H;
          const T* gn = g + 2 * H;
          const T* h = hp + b * H;
          T* dhb = dh_p + b * H;
          T* dr = d;
          T* dzz = d + H;
          T* dn = d + 2 * H;
#pragma omp simd
          for (int64_t j = 0; j < H; ++j) {
            T dht = dyt[b * H + j] + dhb[j];
            dn[j] = dht * (T(1) - gz[j]);
            dzz[j] = dht * (h[j] - gn[j]);
            dhb[j] = dht * gz[j];
          }
          act_bwd(c.ia, gn, dn, H);
          act_bwd(c.ga, gz, dzz, H);
          if (c.reset_after) {
            const T* rn = auxt + b * H;
#pragma omp simd
            for (int64_t j = 0; j < H; ++j) dr[j] = dn[j] * rn[j];
            act_bwd(c.ga, gr, dr, H);
            T* dq = drt + b * R;
            copy_row(dq, static_cast<const T*>(d), 2 * H);
#pragma omp simd
            for (int64_t j = 0; j < H; ++j) dq[2 * H + j] = dn[j] * gr[j];
          }
        }
      });
      if (c.reset_after) {
        w_back(M, drt + r0 * R, R, true, dh_p + r0 * H, H);
      } else {
        w_back_n(M, dzt + r0 * R + 2 * H, R, false, drh_p + r0 * H, H);
        at::parallel_for(r0, r1, grain, [&](int64_t b0, int64_t b1) {
          for (int64_t b = b0; b < b1; ++b) {
            if (!valid(b, t)) continue;
            const T* gr = gt + b * R;
            const T* h = hp + b * H;
            const T* drhb = drh_p + b * H;
            T* dr = dzt + b * R;
            T* dhb = dh_p + b * H;
#pragma omp simd
            for (int64_t j = 0; j < H; ++j) {
              dr[j] = drhb[j] * h[j];
              dhb[j] += drhb[j] * gr[j];
            }
            act_bwd(c.ga, gr, dr, H);
          }
        });
        w_back(M, dzt + r0 * R, R, true, dh_p + r0 * H, H);
      }
    }
  });
  return {dz, drec, dh};
}

std::vector<Tensor> gru_forward(Tensor xg, Tensor w_hh, Tensor b_hn, Tensor h0, Tensor lengths,
                                std::vector<int64_t> cfg, bool full) {
  TORCH_CHECK(xg.dim() == 3 && xg.is_contiguous(), "lstmkit engine: xg must be [T,B,3H]");
  const GruCfg c = gru_cfg(cfg, xg.size(0), xg.size(1));
  TORCH_CHECK(xg.size(2) == 3 * c.H, "lstmkit engine: xg must have 3H columns");
  check_operand(w_hh, xg, true, 3 * c.H * c.H, "weight_hh");
  check_operand(b_hn, xg, b_hn.defined() && b_hn.numel() > 0, c.H, "the candidate bias");
  check_operand(h0, xg, true, c.B * c.H, "h0");
  check_lengths(lengths, c.B);
  std::vector<Tensor> res;
  AT_DISPATCH_FLOATING_TYPES(xg.scalar_type(), "gru_forward", [&] {
    res = gru_forward_impl<scalar_t>(c, xg, w_hh, b_hn, h0, lengths, full);
  });
  return res;
}

std::vector<Tensor> gru_backward(Tensor gates, Tensor w_hh, Tensor hs, Tensor aux, Tensor lengths,
                                 Tensor dy, Tensor dhT, std::vector<int64_t> cfg) {
  const GruCfg c = gru_cfg(cfg, gates.size(0), gates.size(1));
  std::vector<Tensor> res;
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "gru_backward", [&] {
    res = gru_backward_impl<scalar_t>(c, gates, w_hh, hs, aux, lengths, dy, dhT);
  });
  return res;
}

// Elman RNN. cfg: [H, reverse, act]. xg [T,B,H] becomes h(t). Returns {y, h_T, hs}.
template <typename T>
std::vector<Tensor> rnn_forward_impl(int64_t H, bool rev, int act, Tensor xg, const Tensor& w_hh,
                                     const Tensor& h0, const Tensor& lengths, bool full) {
  const int64_t T_ = xg.size(0), B = xg.size(1);
  auto opts = xg.options();
  Tensor hs = at::empty({full ? T_ + 1 : 2, B, H}, opts);
  Tensor y = at::empty({T_, B, H}, opts);
  T* hs_p = hs.data_ptr<T>();
  T* xg_p = xg.data_ptr<T>();
  T* y_p = y.data_ptr<T>();
  const T* w_p = w_hh.data_ptr<T>();
  const Valid valid = make_valid(lengths);
  copy_row(hs_p + slot(rev ? T_ : 0, full) * B * H, h0.data_ptr<T>(), B * H);
  const int64_t grain = grain_rows(H);
  const StepGemm<T> rec(true, H, H, w_p, H);
  over_rows(B, [&](int64_t r0, int64_t r1) {
    const int64_t M = r1 - r0;
    for (int64_t step = 0; step < T_; ++step) {
      const int64_t t = rev ? T_ - 1 - step : step;
      const T* hp = hs_p + slot(rev ? t + 1 : t, full) * B * H;
      T* hn = hs_p + slot(rev ? t : t + 1, full) * B * H;
      T* z = xg_p + t * B * H;
      T* yt = y_p + t * B * H;
      rec(M, hp + r0 * H, H, true, z + r0 * H, H);
      at::parallel_for(r0, r1, grain, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          if (!valid(b, t)) {
            copy_row(hn + b * H, hp + b * H, H);
            zero_row(yt + b * H, H);
            continue;
          }
          act_fwd(act, z + b * H, H);
          copy_row(hn + b * H, static_cast<const T*>(z + b * H), H);
          copy_row(yt + b * H, static_cast<const T*>(z + b * H), H);
        }
      });
    }
  });
  Tensor hT = hs.select(0, slot(rev ? 0 : T_, full)).clone();
  return {y, hT, full ? hs : Tensor()};
}

// Returns {dz [T,B,H], dh0}.
template <typename T>
std::vector<Tensor> rnn_backward_impl(int64_t H, bool rev, int act, const Tensor& hact,
                                      const Tensor& w_hh, const Tensor& lengths, const Tensor& dy,
                                      const Tensor& dhT) {
  const int64_t T_ = hact.size(0), B = hact.size(1);
  Tensor dz = at::empty({T_, B, H}, hact.options());
  Tensor dh = dhT.clone();
  T* dz_p = dz.data_ptr<T>();
  T* dh_p = dh.data_ptr<T>();
  const T* g_p = hact.data_ptr<T>();
  const T* dy_p = dy.data_ptr<T>();
  const T* w_p = w_hh.data_ptr<T>();
  const Valid valid = make_valid(lengths);
  const int64_t grain = grain_rows(H);
  const StepGemm<T> drec(false, H, H, w_p, H);
  over_rows(B, [&](int64_t r0, int64_t r1) {
    const int64_t M = r1 - r0;
    for (int64_t step = T_ - 1; step >= 0; --step) {
      const int64_t t = rev ? T_ - 1 - step : step;
      T* dzt = dz_p + t * B * H;
      at::parallel_for(r0, r1, grain, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          T* d = dzt + b * H;
          if (!valid(b, t)) {
            zero_row(d, H);
            continue;
          }
          const T* dyb = dy_p + (t * B + b) * H;
          T* dhb = dh_p + b * H;
#pragma omp simd
          for (int64_t j = 0; j < H; ++j) d[j] = dyb[j] + dhb[j];
          act_bwd(act, g_p + (t * B + b) * H, d, H);
          zero_row(dhb, H);
        }
      });
      drec(M, dzt + r0 * H, H, true, dh_p + r0 * H, H);
    }
  });
  return {dz, dh};
}

std::vector<Tensor> rnn_forward(Tensor xg, Tensor w_hh, Tensor h0, Tensor lengths,
                                std::vector<int64_t> cfg, bool full) {
  TORCH_CHECK(cfg.size() == 3 && xg.dim() == 3 && xg.is_contiguous() && xg.size(2) == cfg[0],
              "lstmkit engine: bad RNN call");
  check_operand(w_hh, xg, true, cfg[0] * cfg[0], "weight_hh");
  check_operand(h0, xg, true, xg.size(1) * cfg[0], "h0");
  check_lengths(lengths, xg.size(1));
  std::vector<Tensor> res;
  AT_DISPATCH_FLOATING_TYPES(xg.scalar_type(), "rnn_forward", [&] {
    res = rnn_forward_impl<scalar_t>(cfg[0], cfg[1] != 0, static_cast<int>(cfg[2]), xg, w_hh, h0,
                                     lengths, full);
  });
  return res;
}

std::vector<Tensor> rnn_backward(Tensor hact, Tensor w_hh, Tensor lengths, Tensor dy, Tensor dhT,
                                 std::vector<int64_t> cfg) {
  TORCH_CHECK(cfg.size() == 3, "lstmkit engine: bad RNN config");
  std::vector<Tensor> res;
  AT_DISPATCH_FLOATING_TYPES(hact.scalar_type(), "rnn_backward", [&] {
    res = rnn_backward_impl<scalar_t>(cfg[0], cfg[1] != 0, static_cast<int>(cfg[2]), hact, w_hh,
                                      lengths, dy, dhT);
  });
  return res;
}

// The GEMMs alone, as the engine issues them per step (the benchmark's floor): n_steps times
// C[M,N] (+)= A[M,K] op(W), op(W) = W^T for W [N,K] (trans_w) or W for W [K,N]. A or C given as
// [n_steps, M, .] advances one slice per step, as the engine's step slices of the input
// projection (forward) and of dz (backward) do; given as [M, .] it is the same every step. Rows
// are split across threads exactly as the engine splits them (over_rows).
void gemm_loop(Tensor a, Tensor w, Tensor c, int64_t n_steps, bool accumulate, bool trans_w) {
  TORCH_CHECK(a.is_contiguous() && w.is_contiguous() && c.is_contiguous(),
              "lstmkit engine: gemm_loop needs contiguous tensors");
  TORCH_CHECK((a.dim() == 2 || (a.dim() == 3 && a.size(0) >= n_steps)) &&
                  (c.dim() == 2 || (c.dim() == 3 && c.size(0) >= n_steps)),
              "lstmkit engine: gemm_loop takes [M, .] or [n_steps, M, .] operands");
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "gemm_loop", [&] {
    const int64_t M = a.size(-2), K = a.size(-1), N = trans_w ? w.size(0) : w.size(1);
    TORCH_CHECK(w.dim() == 2 && (trans_w ? w.size(1) : w.size(0)) == K && c.size(-2) == M &&
                    c.size(-1) == N && w.scalar_type() == a.scalar_type() &&
                    c.scalar_type() == a.scalar_type(),
                "lstmkit engine: gemm_loop operands do not agree: a ", a.sizes(), ", w ",
                w.sizes(), ", c ", c.sizes());
    const int64_t a_step = a.dim() == 3 ? M * K : 0, c_step = c.dim() == 3 ? M * N : 0;
    const scalar_t* ap = a.data_ptr<scalar_t>();
    const scalar_t* wp = w.data_ptr<scalar_t>();
    scalar_t* cp = c.data_ptr<scalar_t>();
    const StepGemm<scalar_t> step(trans_w, N, K, wp, trans_w ? K : N);
    over_rows(M, [&](int64_t r0, int64_t r1) {
      for (int64_t i = 0; i < n_steps; ++i) {
        step(r1 - r0, ap + i * a_step + r0 * K, K, accumulate, cp + i * c_step + r0 * N, N);
      }
    });
  });
}

// Minimum batch rows per thread for the row split (0: never split). Returns the previous value.
int64_t set_split(int64_t min_rows) {
  const int64_t prev = g_split_min_rows;
  g_split_min_rows = min_rows;
  return prev;
}

void set_blas(bool use) { g_use_blas = use; }

bool has_blas() { return sgemm_ != nullptr && dgemm_ != nullptr; }

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("lstm_forward", &lstm_forward);
  m.def("lstm_backward", &lstm_backward);
  m.def("gru_forward", &gru_forward);
  m.def("gru_backward", &gru_backward);
  m.def("rnn_forward", &rnn_forward);
  m.def("rnn_backward", &rnn_backward);
  m.def("gemm_loop", &gemm_loop, py::arg("a"), py::arg("w"), py::arg("c"), py::arg("n_steps"),
        py::arg("accumulate") = true, py::arg("trans_w") = true);
  m.def("set_blas", &set_blas);
  m.def("set_split", &set_split);
  m.def("set_kernel", [](bool use) {
    const bool prev = g_use_kernel;
    g_use_kernel = use;
    return prev;
  });
  m.def("has_kernel", []() {
#if defined(__AVX512F__)
    return true;
#else
    return false;
#endif
  });
  m.def("split_parts", &split_parts);
  m.def("has_blas", &has_blas);
}
