// The LSTM family's named configuration (every flag and offset a kernel reads) and its
// elementwise rows: one batch row of one step, forward and backward. The general rows handle
// every flag (missing or coupled gates, peepholes, any activations, memory blocks, carried gate
// activations); the one-pass rows (AVX-512 intrinsics, or vectorised scalar code) cover the
// common cell at full speed.
#pragma once

#include "config.h"
#include "layer_norm.h"

namespace lstmkit {

#define LSTMKIT_LSTM_CONFIG(X)                                                                  \
  X(int64_t, hidden, "cells per direction (H)")                                                 \
  X(int64_t, block_size, "cells per memory block; gates have one unit per block")               \
  X(int64_t, out, "width of h: H, or the projection size")                                     \
  X(int64_t, rows, "width of a step's pre-activation row (all blocks i, f, g, o present)")      \
  X(int64_t, off_i, "offset of the input-gate block in the row (-1: no input gate)")            \
  X(int64_t, off_f, "offset of the forget-gate block (-1: none)")                               \
  X(int64_t, off_g, "offset of the candidate block (H wide)")                                   \
  X(int64_t, off_o, "offset of the output-gate block (-1: none)")                               \
  X(int64_t, carried, "width of the gate activations carried to the next step (0: none)")       \
  X(int64_t, aoff_i, "offset of the input gate within the carried activations (-1: none)")      \
  X(int64_t, aoff_f, "offset of the forget gate within them (-1: none)")                        \
  X(int64_t, aoff_o, "offset of the output gate within them (-1: none)")                        \
  X(bool, coupled, "f = 1 - i")                                                                 \
  X(bool, peephole, "gates see the cell state through diagonal weights")                        \
  X(bool, proj, "h is projected by weight_hr")                                                  \
  X(bool, hidden_recurrence, "the row receives W_hh h(t-1)")                                    \
  X(bool, reverse, "run from the last step to the first")                                       \
  X(bool, truncated_gradient, "the 1997 truncated gradient: no state gradient through h or the gates")   \
  X(Act, gate_activation, "activation of i, f, o")                                                     \
  X(Act, input_activation, "activation of the candidate g")                                            \
  X(Act, output_activation, "activation of the cell state in h")                                      \
  X(bool, layer_norm, "layer-normalise W_hh h(t-1) (gain) and c before h (gain and shift)")

LSTMKIT_CONFIG_STRUCT(LstmConfig, LSTMKIT_LSTM_CONFIG)

// What the LSTM kernels read: the named configuration with the sizes of this call and a few
// quantities derived from it.
struct LstmCfg {
  int64_t T, B, H, s, nb, out, G, R, KS, KG, koff;
  int64_t off_i, off_f, off_g, off_o;  // pre-activation block offsets (-1: absent)
  int64_t aoff_i, aoff_f, aoff_o;      // offsets of the gate activations within a (G)
  bool coupled, peep, proj, hidden_rec, gate_rec, rev, trunc;
  bool ln_rec, ln_c;  // layer norm of W_hh h(t-1) and of c (layer_norm.h)
  int ga, ia, oa;
};

inline void check_block(int64_t off, int64_t width, int64_t limit, const char* name) {
  TORCH_CHECK(off == -1 || (off >= 0 && off + width <= limit), "lstmkit engine: LstmConfig.",
              name, " = ", off, " does not fit a block of ", width, " in ", limit);
}

inline LstmCfg lstm_cfg(const LstmConfig& v, int64_t T, int64_t B) {
  TORCH_CHECK(v.hidden >= 0 && v.block_size >= 1 && v.hidden % v.block_size == 0 && v.out >= 0 &&
                  (v.proj || v.out == v.hidden) && v.carried >= 0 && v.off_g >= 0,
              "lstmkit engine: bad LstmConfig (hidden ", v.hidden, ", block_size ", v.block_size,
              ", out ", v.out, ", carried ", v.carried, ", off_g ", v.off_g, ")");
  LstmCfg c{};
  c.T = T;
  c.B = B;
  c.H = v.hidden;
  c.s = v.block_size;
  c.nb = c.H / c.s;
  c.out = v.out;
  c.R = v.rows;
  c.off_i = v.off_i;
  c.off_f = v.off_f;
  c.off_g = v.off_g;
  c.off_o = v.off_o;
  check_block(c.off_i, c.nb, c.R, "off_i");
  check_block(c.off_f, c.nb, c.R, "off_f");
  check_block(c.off_g, c.H, c.R, "off_g");
  check_block(c.off_o, c.nb, c.R, "off_o");
  TORCH_CHECK(!v.coupled || (c.off_i >= 0 && c.off_f < 0),
              "lstmkit engine: LstmConfig.coupled needs an input gate and no forget block");
  c.G = v.carried;
  c.gate_rec = c.G > 0;
  c.aoff_i = c.gate_rec ? v.aoff_i : -1;
  c.aoff_f = c.gate_rec ? v.aoff_f : -1;
  c.aoff_o = c.gate_rec ? v.aoff_o : -1;
  check_block(c.aoff_i, c.nb, c.G, "aoff_i");
  check_block(c.aoff_f, c.nb, c.G, "aoff_f");
  check_block(c.aoff_o, c.nb, c.G, "aoff_o");
  TORCH_CHECK(!c.gate_rec || ((c.aoff_i >= 0) == (c.off_i >= 0) &&
                              (c.aoff_f >= 0) == (c.off_f >= 0) &&
                              (c.aoff_o >= 0) == (c.off_o >= 0)),
              "lstmkit engine: LstmConfig carries a gate the row does not have, or drops one");
  c.coupled = v.coupled;
  c.peep = v.peephole;
  c.proj = v.proj;
  c.hidden_rec = v.hidden_recurrence;
  c.rev = v.reverse;
  c.trunc = v.truncated_gradient;
  c.ga = v.gate_activation;
  c.ia = v.input_activation;
  c.oa = v.output_activation;
  c.ln_c = v.layer_norm;
  c.ln_rec = v.layer_norm && c.hidden_rec;
  TORCH_CHECK(!(v.layer_norm && c.gate_rec),
              "lstmkit engine: LstmConfig.layer_norm with carried gate activations is not covered");
  // The recurrent input of a step is [h(t-1) | a(t-1)]; without hidden recurrence only a(t-1)
  // enters the GEMM.
  c.KS = c.out + c.G;
  c.koff = c.hidden_rec ? 0 : c.out;
  c.KG = c.KS - c.koff;
  return c;
}


using at::Tensor;

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
                  const T* pf, const T* po, T* tmp, const LnParams<T>* ln = nullptr) {
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
  if (ln && ln->g_c) ln_forward(t_h, ln->g_c, ln->b_c, t_h, H, false);
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
// candidate and output activation, input and output gates present, float. With AVX-512 sixteen
// units at a time go through every equation while in registers, instead of ten passes over the
// row; the reciprocals are rcp14 plus one Newton step (relative error about 2^-28) rather than
// divisions, which were the slowest part of the pass. Other builds run the same pass as scalar
// code that the compiler vectorises.
template <bool PEEP, bool COUPLED, bool HAS_F>
void lstm_fwd_row_std(const LstmCfg& c, float* __restrict z, const float* __restrict cp,
                      float* __restrict cn, float* __restrict m, const float* __restrict pi,
                      const float* __restrict pf, const float* __restrict po) {
  float* __restrict zi = z + c.off_i;
  float* __restrict zf = HAS_F ? z + c.off_f : z;
  float* __restrict zg = z + c.off_g;
  float* __restrict zo = z + c.off_o;
#if defined(__AVX512F__)
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
#else
  // Elsewhere the same one pass as scalar code the compiler vectorises for the target (AVX2: 8
  // lanes at a time): the general row's values (the same fsigmoid and ftanh), computed while in
  // registers instead of in ten passes over the row.
#pragma omp simd
  for (int64_t j = 0; j < c.H; ++j) {
    const float cj = cp[j];
    float ai = zi[j];
    if constexpr (PEEP) ai += pi[j] * cj;
    const float i = fsigmoid(ai);
    float f = 1.0f;
    if constexpr (COUPLED) {
      f = 1.0f - i;
    } else if constexpr (HAS_F) {
      float af = zf[j];
      if constexpr (PEEP) af += pf[j] * cj;
      f = fsigmoid(af);
      zf[j] = f;
    }
    const float g = ftanh(zg[j]);
    const float cnew = f * cj + i * g;
    float ao = zo[j];
    if constexpr (PEEP) ao += po[j] * cnew;
    const float o = fsigmoid(ao);
    zi[j] = i;
    zg[j] = g;
    zo[j] = o;
    cn[j] = cnew;
    m[j] = o * ftanh(cnew);
  }
#endif
}

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
  return !c.ln_c && !c.ln_rec && c.s == 1 && c.ga == SIGMOID && c.ia == TANH && c.oa == TANH &&
         c.off_i >= 0 && c.off_o >= 0;
}


struct FwdRows {
  template <bool PEEP, bool COUPLED, bool HAS_F>
  static StdRow get() {
    return &lstm_fwd_row_std<PEEP, COUPLED, HAS_F>;
  }
};

// The one-pass forward row for this cell, or null where the general row must run.
StdRow std_row(const LstmCfg& c) { return std_cell(c) ? pick_row<FwdRows>(c) : nullptr; }

// One row of the backward elementwise pass. g: the row's saved activated gates; dm: gradient of
// o * act(c); da: gradient of the carried gate activations a(t) (or null); dc: in, the gradient
// of c(t); out, of c(t-1). dz: the pre-activation gradients. tmp: 5 * H scratch, and with a
// layer norm of c (ln) also tmp[6H, 7H) (lstm.h keeps dm in tmp[5H, 6H)); the norm's gain and
// shift gradients accumulate into dln [2, H].
template <typename T>
void lstm_bwd_row(const LstmCfg& c, const T* g, const T* cp, const T* cn, const T* dm,
                  const T* da, T* dc, T* dz, const T* pi, const T* pf, const T* po, T* tmp,
                  const LnParams<T>* ln = nullptr, T* dln = nullptr) {
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
  const bool ln_c = ln && ln->g_c;
  T* t_x = tmp + 6 * H;  // the normalised c(t) (layer norm only)
  T rstd_c = 0;
  if (ln_c) {
    copy_row(t_x, cn, H);
    rstd_c = ln_forward(t_x, ln->g_c, ln->b_c, t_a, H, false);
  } else {
    copy_row(t_a, cn, H);
  }
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
  if (ln_c) {
    ln_backward(static_cast<const T*>(t_x), rstd_c, ln->g_c, static_cast<const T*>(t_d), t_d,
                dln, dln + H, H);
  }
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

}  // namespace lstmkit
