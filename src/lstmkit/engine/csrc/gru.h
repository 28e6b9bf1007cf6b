// The GRU's time loops, in both reset placements, forward and backward.
//
// reset_after (torch.nn.GRU): n = act(W_n x + b_in + r * (R_n h + b_hn)), so one GEMM per step
// gives all three blocks of R h. Cho et al. (2014): n = act(W_n x + b_n + R_n (r * h)), so r and
// z come first and the candidate's GEMM runs on r * h. With layer norm (reset_after only, as
// haste's LayerNormGRU) each step's R h is normalised over its 3H features before its gain and
// b_hh apply (layer_norm.h).
#pragma once

#include "config.h"
#include "gemm.h"
#include "regularise.h"
#include "layer_norm.h"
#include "time_loop.h"

namespace lstmkit {

#define LSTMKIT_GRU_CONFIG(X)                                                                   \
  X(int64_t, hidden, "units per direction (H)")                                                 \
  X(bool, reset_after, "torch's placement: r multiplies (R h + b); else Cho's R (r h)")          \
  X(bool, reverse, "run from the last step to the first")                                       \
  X(Act, gate_activation, "activation of r and z")                                                     \
  X(Act, input_activation, "activation of the candidate n")                                          \
  X(bool, layer_norm, "layer-normalise R h (gain only; reset_after)")

LSTMKIT_CONFIG_STRUCT(GruConfig, LSTMKIT_GRU_CONFIG)

// xg [T,B,3H]: x W_ih^T + b_ih (+ b_hh where it adds outside the reset gate); becomes r, z, n.
// Returns {y, h_T, hs [T+1,B,H], aux [T,B,H], ln_rec [T,B,3H], ln_rstd [T,B]} with aux =
// R_n h + b_hn (reset_after) or r * h (Cho), the last four only when saving for backward and the
// last two (the normalised R h and its 1/std) only with layer norm, whose gain is ln_hh.
template <typename T>
std::vector<Tensor> gru_forward_impl(const GruConfig& c, Tensor xg, const Tensor& w_hh,
                                     const Tensor& b_hn, const Tensor& h0, const Tensor& lengths,
                                     bool full, const Reg<T>& reg, const Tensor& ln_hh) {
  const int64_t T_ = xg.size(0), B = xg.size(1), H = c.hidden, R = 3 * H;
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
  const T* g_hh = c.layer_norm ? ln_hh.data_ptr<T>() : nullptr;
  // Layer norm saving for backward: the step's GEMM writes R h here and each row is normalised
  // in place; otherwise the product is normalised in the step's scratch rec.
  Tensor lnq = c.layer_norm && full ? at::empty({T_, B, R}, opts) : Tensor();
  Tensor lnr = c.layer_norm && full ? at::empty({T_, B}, opts) : Tensor();
  T* lnq_p = lnq.defined() ? lnq.data_ptr<T>() : nullptr;
  T* lnr_p = lnr.defined() ? lnr.data_ptr<T>() : nullptr;
  const Valid valid = make_valid(lengths);
  Tensor hm = reg.rmask ? at::empty({B, H}, opts) : Tensor();
  T* hm_p = reg.rmask ? hm.data_ptr<T>() : nullptr;
  copy_row(hs_p + slot(c.reverse ? T_ : 0, full) * B * H, h0.data_ptr<T>(), B * H);
  const int64_t grain = grain_rows(R);
  // reset_after: all three blocks at once; Cho: r and z first, then the candidate on r * h.
  const StepGemm<T> w_step(true, c.reset_after ? R : 2 * H, H, w_p, H);
  const StepGemm<T> w_step_n(true, H, H, c.reset_after ? nullptr : w_p + 2 * H * H, H);
  time_loop(T_, B, c.reverse, false, [&](const Step& s, int64_t r0, int64_t r1) {
    const int64_t M = r1 - r0;
    const T* hp = hs_p + slot(s.prev, full) * B * H;
    T* hn = hs_p + slot(s.next, full) * B * H;
    T* z = xg_p + s.t * B * R;
    T* yt = y_p + s.t * B * H;
    T* auxt = aux_p + (full ? s.t : 0) * B * H;
    // The recurrent products read h(t-1) under the recurrent-dropout mask.
    const T* hr = hp;
    if (hm_p) {
      masked_input(reg, hp, hm_p, H, r0, r1);
      hr = hm_p;
    }
    // With layer norm saving for backward the product goes where it is kept (normalised later).
    T* q = lnq_p ? lnq_p + s.t * B * R : rec_p;
    if (c.reset_after) {
      w_step(M, hr + r0 * H, H, false, q + r0 * R, R);
    } else {
      w_step(M, hr + r0 * H, H, true, z + r0 * R, R);
      // Padded rows too: their r * h is multiplied by a zero gradient, so it must be finite.
      at::parallel_for(r0, r1, grain, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          T* zr = z + b * R;
          act_fwd(c.gate_activation, zr, 2 * H);
          const T* h = hr + b * H;
          T* rh = auxt + b * H;
#pragma omp simd
          for (int64_t j = 0; j < H; ++j) rh[j] = zr[j] * h[j];
        }
      });
      w_step_n(M, auxt + r0 * H, H, true, z + r0 * R + 2 * H, R);
    }
    for_rows<T>(
        r0, r1, grain, 0, valid, s.t,
        [&](int64_t b, T*) {
          const T* h = hp + b * H;
          T* zr = z + b * R;
          T* zz = zr + H;
          T* zn = zr + 2 * H;
          if (c.reset_after) {
            const T* rr = rec_p + b * R;
            T* rn = auxt + b * H;
            if (g_hh) {
              const T rstd = ln_forward(q + b * R, g_hh, nullptr, rec_p + b * R, R, false);
              if (lnr_p) lnr_p[s.t * B + b] = rstd;
            }
#pragma omp simd
            for (int64_t j = 0; j < 2 * H; ++j) zr[j] += rr[j];
            act_fwd(c.gate_activation, zr, 2 * H);
            if (bn) {
#pragma omp simd
              for (int64_t j = 0; j < H; ++j) rn[j] = rr[2 * H + j] + bn[j];
            } else {
              copy_row(rn, rr + 2 * H, H);
            }
#pragma omp simd
            for (int64_t j = 0; j < H; ++j) zn[j] += zr[j] * rn[j];
          }
          act_fwd(c.input_activation, zn, H);
          T* ho = hn + b * H;
#pragma omp simd
          for (int64_t j = 0; j < H; ++j) ho[j] = zn[j] + zz[j] * (h[j] - zn[j]);
          if (reg.zh) zone_row(ho, h, reg.zh_row(s.t, b), H);
          copy_row(yt + b * H, static_cast<const T*>(ho), H);
        },
        [&](int64_t b) {
          copy_row(hn + b * H, hp + b * H, H);
          zero_row(yt + b * H, H);
          if (lnr_p) lnr_p[s.t * B + b] = T(0);  // never read; deterministic results
        });
  });
  Tensor hT = hs.select(0, slot(c.reverse ? 0 : T_, full)).clone();
  return {y, hT, full ? hs : Tensor(), full ? aux : Tensor(), lnq, lnr};
}

// Returns {dz [T,B,3H] (gradient of the input pre-activations), drec [T,B,3H] (reset_after:
// gradient of R h + b_hh, or with layer norm of LN(R h) + b_hh; Cho: empty, its recurrent
// gradients are dz's), dh0, drec_raw [T,B,3H] (layer norm only: the gradient of R h itself),
// dln_hh [3H] (layer norm only: the gradient of its gain)}.
// ln_hh, ln_rec, ln_rstd: the norm's gain and what the forward saved (layer norm only).
template <typename T>
std::vector<Tensor> gru_backward_impl(const GruConfig& c, const Tensor& gates,
                                      const Tensor& w_hh, const Tensor& hs, const Tensor& aux,
                                      const Tensor& lengths, const Tensor& dy,
                                      const Tensor& dhT, const Reg<T>& reg, const Tensor& ln_hh,
                                      const Tensor& ln_rec, const Tensor& ln_rstd) {
  const int64_t T_ = gates.size(0), B = gates.size(1), H = c.hidden, R = 3 * H;
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
  const bool ln = c.layer_norm && c.reset_after;
  Tensor drr = ln ? at::empty({T_, B, R}, opts) : Tensor();
  T* drr_p = ln ? drr.data_ptr<T>() : nullptr;
  // The gain's gradient per row, summed in row order at the end (independent of the threads).
  Tensor dghrow = ln ? at::zeros({B, R}, opts) : Tensor();
  T* dgh_p = ln ? dghrow.data_ptr<T>() : nullptr;
  const T* g_hh = ln ? ln_hh.data_ptr<T>() : nullptr;
  const T* lnq_p = ln ? ln_rec.data_ptr<T>() : nullptr;
  const T* lnr_p = ln ? ln_rstd.data_ptr<T>() : nullptr;
  const Valid valid = make_valid(lengths);
  const int64_t grain = grain_rows(R);
  const StepGemm<T> w_back(false, H, c.reset_after ? R : 2 * H, w_p, H);
  const StepGemm<T> w_back_n(false, H, H, c.reset_after ? nullptr : w_p + 2 * H * H, H);
  // Recurrent dropout: the gradient of the masked h(t-1) collects here, then dh += m * it.
  Tensor dtmp = reg.rmask ? at::empty({B, H}, opts) : Tensor();
  T* dtmp_p = reg.rmask ? dtmp.data_ptr<T>() : nullptr;
  time_loop(T_, B, c.reverse, true, [&](const Step& s, int64_t r0, int64_t r1) {
    const int64_t M = r1 - r0, t = s.t;
    const T* hp = hs_p + s.prev * B * H;
    const T* gt = g_p + t * B * R;
    const T* auxt = aux_p + t * B * H;
    T* dzt = dz_p + t * B * R;
    T* drt = c.reset_after ? drec_p + t * B * R : nullptr;
    const T* dyt = dy_p + t * B * H;
    for_rows<T>(
        r0, r1, grain, 0, valid, t,
        [&](int64_t b, T*) {
          T* d = dzt + b * R;
          const T* g = gt + b * R;
          const T* gr = g;
          const T* gz = g + H;
          const T* gn = g + 2 * H;
          const T* h = hp + b * H;
          T* dhb = dh_p + b * H;
          T* dr = d;
          T* dzz = d + H;
          T* dn = d + 2 * H;
          if (reg.zh) {
            // Zoneout: d of the gradient goes straight to h(t-1), (1 - d) through the update.
            const T* zd = reg.zh_row(t, b);
#pragma omp simd
            for (int64_t j = 0; j < H; ++j) {
              const T g = dyt[b * H + j] + dhb[j];
              const T dht = (T(1) - zd[j]) * g;
              dn[j] = dht * (T(1) - gz[j]);
              dzz[j] = dht * (h[j] - gn[j]);
              dhb[j] = dht * gz[j] + zd[j] * g;
            }
          } else {
#pragma omp simd
            for (int64_t j = 0; j < H; ++j) {
              T dht = dyt[b * H + j] + dhb[j];
              dn[j] = dht * (T(1) - gz[j]);
              dzz[j] = dht * (h[j] - gn[j]);
              dhb[j] = dht * gz[j];
            }
          }
          act_bwd(c.input_activation, gn, dn, H);
          act_bwd(c.gate_activation, gz, dzz, H);
          if (c.reset_after) {
            const T* rn = auxt + b * H;
#pragma omp simd
            for (int64_t j = 0; j < H; ++j) dr[j] = dn[j] * rn[j];
            act_bwd(c.gate_activation, gr, dr, H);
            T* dq = drt + b * R;
            copy_row(dq, static_cast<const T*>(d), 2 * H);
#pragma omp simd
            for (int64_t j = 0; j < H; ++j) dq[2 * H + j] = dn[j] * gr[j];
            if (drr_p) {
              const int64_t i = t * B + b;
              ln_backward(lnq_p + i * R, lnr_p[i], g_hh, static_cast<const T*>(dq),
                          drr_p + i * R, dgh_p + b * R, nullptr, R);
            }
          }
        },
        [&](int64_t b) {
          zero_row(dzt + b * R, R);
          if (drt) zero_row(drt + b * R, R);
          if (drr_p) zero_row(drr_p + (t * B + b) * R, R);
        });
    // The GEMM computed R (m *) h: its gradient is drec, or with layer norm the one through the
    // norm.
    const T* dsrc = c.reset_after && drr_p ? drr_p + t * B * R : drt;
    if (c.reset_after && dtmp_p) {
      w_back(M, dsrc + r0 * R, R, false, dtmp_p + r0 * H, H);
      add_masked_grad(reg, static_cast<const T*>(dtmp_p), dh_p, H, r0, r1);
    } else if (c.reset_after) {
      w_back(M, dsrc + r0 * R, R, true, dh_p + r0 * H, H);
    } else {
      w_back_n(M, dzt + r0 * R + 2 * H, R, false, drh_p + r0 * H, H);
      for_rows<T>(
          r0, r1, grain, 0, valid, t,
          [&](int64_t b, T*) {
            const T* gr = gt + b * R;
            const T* h = hp + b * H;
            const T* drhb = drh_p + b * H;
            T* dr = dzt + b * R;
            T* dhb = dh_p + b * H;
            if (dtmp_p) {
              // r * (m * h): the mask scales both the reset gate's input and h's gradient.
              const T* m = reg.rmask_row(b);
#pragma omp simd
              for (int64_t j = 0; j < H; ++j) {
                dr[j] = drhb[j] * m[j] * h[j];
                dhb[j] += drhb[j] * gr[j] * m[j];
              }
            } else {
#pragma omp simd
              for (int64_t j = 0; j < H; ++j) {
                dr[j] = drhb[j] * h[j];
                dhb[j] += drhb[j] * gr[j];
              }
            }
            act_bwd(c.gate_activation, gr, dr, H);
          },
          [](int64_t) {});
      if (dtmp_p) {
        w_back(M, dzt + r0 * R, R, false, dtmp_p + r0 * H, H);
        add_masked_grad(reg, static_cast<const T*>(dtmp_p), dh_p, H, r0, r1);
      } else {
        w_back(M, dzt + r0 * R, R, true, dh_p + r0 * H, H);
      }
    }
  });
  return {dz, drec, dh, drr, ln ? dghrow.sum(0) : Tensor()};
}

}  // namespace lstmkit
