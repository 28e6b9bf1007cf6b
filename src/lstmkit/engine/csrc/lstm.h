// The LSTM family's time loops: forward over a sequence (recurrent GEMM, then the elementwise
// rows of lstm_rows.h, then the projection) and the hand-written backward.
#pragma once

#include "gemm.h"
#include "lstm_rows.h"
#include "regularise.h"
#include "time_loop.h"

namespace lstmkit {

using at::Tensor;

// Forward over the sequence. xg [T,B,R]: x W_ih^T + b, overwritten with the activated gates.
// Returns {y [T,B,out], h_T, c_T, a_T, cells [T,B,H] or empty, rin [T+1,B,KS], c_all [T+1,B,H],
// m_all [T,B,H] or empty, c_tilde [T,B,H] or empty, ln_rec [T,B,R], ln_rstd [T,B]} (the last
// six full only when saving for backward; c_tilde, the cell update before zoneout, only with
// zoneout on c; the last two, the normalised W_hh h(t-1) and its 1/std, only with layer norm).
// ln_hh, ln_cw, ln_cb: the layer-norm gains of W_hh h and of c and the shift of c (layer norm).
template <typename T>
std::vector<Tensor> lstm_forward_impl(const LstmCfg& c, Tensor xg, const Tensor& wcat,
                                      const Tensor& peep, const Tensor& w_hr, const Tensor& h0,
                                      const Tensor& c0, const Tensor& a0, const Tensor& lengths,
                                      bool full, bool return_cells, const Reg<T>& reg,
                                      const Tensor& ln_hh, const Tensor& ln_cw,
                                      const Tensor& ln_cb) {
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
  // Regularisers: the masked recurrent input, and c~(t) before zoneout for backward.
  const bool rmasked = reg.rmask && c.hidden_rec;
  Tensor hm = rmasked ? at::empty({B, KS}, opts) : Tensor();
  Tensor ctil = reg.zc && full ? at::empty({T_, B, H}, opts) : Tensor();
  T* hm_p = rmasked ? hm.data_ptr<T>() : nullptr;
  T* ctil_p = ctil.defined() ? ctil.data_ptr<T>() : nullptr;
  const LnParams<T> lnp{ptr_or_null<T>(ln_hh), ptr_or_null<T>(ln_cw), ptr_or_null<T>(ln_cb)};
  const LnParams<T>* ln = c.ln_c ? &lnp : nullptr;
  // Layer norm of W_hh h(t-1): the step's GEMM writes the product here, not into z, and each row
  // is normalised and added to z (kept for backward when saving, else one step's worth).
  Tensor lnq = c.ln_rec ? at::empty({full ? T_ : 1, B, R}, opts) : Tensor();
  Tensor lnr = c.ln_rec ? at::empty({full ? T_ : 1, B}, opts) : Tensor();
  T* lnq_p = c.ln_rec ? lnq.data_ptr<T>() : nullptr;
  T* lnr_p = c.ln_rec ? lnr.data_ptr<T>() : nullptr;
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
  const StdRow fast = settings().use_kernel ? std_row(c) : nullptr;
  // Inference with every row valid, no projection and no carried gates: h(t) is y[t] itself, so
  // each step writes it into y and the next step reads it there (no copy through the ring).
  const bool h_in_y = !full && !c.proj && c.G == 0 && valid.len == nullptr && T_ > 0 &&
                      !reg.any();
  time_loop(T_, B, c.rev, false, [&](const Step& st, int64_t r0, int64_t r1) {
    const int64_t M = r1 - r0, t = st.t;
    T* rp = rin_p + slot(st.prev, full) * B * KS;
    T* rn = rin_p + slot(st.next, full) * B * KS;
    T* cp = c_p + slot(st.prev, full) * B * H;
    T* cn = c_p + slot(st.next, full) * B * H;
    T* z = xg_p + t * B * R;
    T* yt = y_p + t * B * c.out;
    T* mt = c.proj ? m_p + (full ? t : 0) * B * H : nullptr;
    const T* hp = h_in_y && st.k > 0 ? y_p + (c.rev ? t + 1 : t - 1) * B * c.out : rp;
    if (rmasked) {
      masked_input(reg, hp, hm_p, KS, r0, r1);
      hp = hm_p;
    }
    // With layer norm the product goes to q, is normalised row by row and added to z.
    T* q = c.ln_rec ? lnq_p + (full ? t : 0) * B * R : nullptr;
    if (c.KG > 0) {
      const int64_t active = active_rows(valid, t, r0, r1);
      if (q) {
        rec(active, hp + r0 * KS + c.koff, KS, false, q + r0 * R, R);
      } else {
        rec(active, hp + r0 * KS + c.koff, KS, true, z + r0 * R, R);
      }
    }
    for_rows<T>(
        r0, r1, grain, 4 * H, valid, t,
        [&](int64_t b, T* tmp) {
          if (q) {
            lnr_p[(full ? t : 0) * B + b] = ln_forward(q + b * R, lnp.g_hh, nullptr, z + b * R,
                                                       R, true);
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
            lstm_fwd_row<T>(c, z + b * R, cp + b * H, cn + b * H, m, a, pi, pf, po, tmp, ln);
          }
          // Zoneout: each unit of c and h keeps its previous value with weight d.
          if (reg.zc) {
            if (ctil_p) copy_row(ctil_p + (t * B + b) * H, static_cast<const T*>(cn + b * H), H);
            zone_row(cn + b * H, static_cast<const T*>(cp + b * H), reg.zc_row(t, b), H);
          }
          if (reg.zh && !c.proj) {
            zone_row(m, static_cast<const T*>(rp + b * KS), reg.zh_row(t, b), c.out);
          }
          if (!c.proj) copy_row(yt + b * c.out, static_cast<const T*>(m), c.out);
          if (cells_p) copy_row(cells_p + (t * B + b) * H, static_cast<const T*>(cn + b * H), H);
        },
        [&](int64_t b) {
          copy_row(rn + b * KS, static_cast<const T*>(rp + b * KS), KS);
          copy_row(cn + b * H, static_cast<const T*>(cp + b * H), H);
          // What is saved of a padded row is never read; zeros keep the results deterministic
          // (the step's GEMM stops at the last live row and leaves the rest unwritten).
          if (ctil_p) zero_row(ctil_p + (t * B + b) * H, H);
          if (q) {
            zero_row(q + b * R, R);
            lnr_p[(full ? t : 0) * B + b] = T(0);
          }
          if (c.proj) {
            // Backward multiplies these rows by a zero gradient; uninitialised memory could
            // hold NaN or Inf, and 0 * NaN would poison dW_hr.
            zero_row(mt + b * H, H);
          } else {
            zero_row(yt + b * c.out, c.out);
          }
          if (cells_p) zero_row(cells_p + (t * B + b) * H, H);
        });
    if (c.proj) {
      project(M, mt + r0 * H, H, false, rn + r0 * KS, KS);
      for (int64_t b = r0; b < r1; ++b) {
        if (valid(b, t)) {
          if (reg.zh) zone_row(rn + b * KS, static_cast<const T*>(rp + b * KS), reg.zh_row(t, b),
                               c.out);
          copy_row(yt + b * c.out, static_cast<const T*>(rn + b * KS), c.out);
        } else {
          copy_row(rn + b * KS, static_cast<const T*>(rp + b * KS), c.out);
          zero_row(yt + b * c.out, c.out);
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
          full ? mall : Tensor(), ctil, full ? lnq : Tensor(), full ? lnr : Tensor()};
}

// Backward over the sequence. Returns {dz [T,B,R], dh0, dc0, da0, dh_all [T,B,out] (proj only),
// dpeep [3,H] (peepholes only: the gradients of the i, f, o peephole weights), drec [T,B,R]
// (layer norm of W_hh h only: the gradient of W_hh h(t-1) itself, where dz is that of its
// normalised value), dln_c [2,H] (layer norm only: the gradients of c's gain and shift),
// dln_hh [R] (layer norm of W_hh h only: the gradient of its gain)}. ctil: c~(t), the cell
// updates before zoneout (only with zoneout on c). ln_rec, ln_rstd: what the forward saved of
// the normalised W_hh h(t-1).
template <typename T>
std::vector<Tensor> lstm_backward_impl(const LstmCfg& c, const Tensor& gates, const Tensor& wcat,
                                       const Tensor& peep, const Tensor& w_hr,
                                       const Tensor& call, const Tensor& lengths, const Tensor& dy,
                                       const Tensor& dhT, const Tensor& dcT, const Tensor& daT,
                                       const Tensor& dcells, const Reg<T>& reg,
                                       const Tensor& ctil, const Tensor& ln_hh,
                                       const Tensor& ln_cw, const Tensor& ln_cb,
                                       const Tensor& ln_rec, const Tensor& ln_rstd) {
  const int64_t T_ = c.T, B = c.B, H = c.H, R = c.R, KS = c.KS, out = c.out;
  auto opts = gates.options();
  Tensor dz = at::empty({T_, B, R}, opts);
  Tensor drin = at::empty({B, KS}, opts);
  Tensor dc = dcT.clone();
  Tensor dhall = c.proj ? at::empty({T_, B, out}, opts) : Tensor();
  Tensor dm_buf = c.proj ? at::empty({B, H}, opts) : Tensor();
  Tensor dprow = c.peep ? at::zeros({B, 3, H}, opts) : Tensor();
  T* dpr_p = c.peep ? dprow.data_ptr<T>() : nullptr;
  const LnParams<T> lnp{ptr_or_null<T>(ln_hh), ptr_or_null<T>(ln_cw), ptr_or_null<T>(ln_cb)};
  const LnParams<T>* ln = c.ln_c ? &lnp : nullptr;
  // Per-row gain and shift gradients of c's norm, summed in row order at the end (as dprow).
  Tensor dlnrow = c.ln_c ? at::zeros({B, 2, H}, opts) : Tensor();
  Tensor drr = c.ln_rec ? at::empty({T_, B, R}, opts) : Tensor();
  Tensor dghrow = c.ln_rec ? at::zeros({B, R}, opts) : Tensor();  // per row, as dlnrow
  T* dgh_p = c.ln_rec ? dghrow.data_ptr<T>() : nullptr;
  T* dln_p = c.ln_c ? dlnrow.data_ptr<T>() : nullptr;
  T* drr_p = c.ln_rec ? drr.data_ptr<T>() : nullptr;
  const T* lnq_p = c.ln_rec ? ln_rec.data_ptr<T>() : nullptr;
  const T* lnr_p = c.ln_rec ? ln_rstd.data_ptr<T>() : nullptr;
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
  const int64_t grain = grain_rows(R);
  const bool state_grad = c.KG > 0 && !c.trunc;
  const StepGemm<T> drec(false, c.KG, R, state_grad ? w_p : nullptr, c.KG);
  const StepGemm<T> dproject(false, H, out, c.proj ? hr_p : nullptr, H);
  const StdBwdRow fast = settings().use_kernel ? std_bwd_row(c) : nullptr;
  // Regularisers: zoneout's share of the h gradient for h(t-1), the unmasked state-gradient GEMM.
  const bool rmasked = reg.rmask && c.hidden_rec && state_grad;
  Tensor dkeep = reg.zh ? at::empty({B, out}, opts) : Tensor();
  Tensor dtmp = rmasked ? at::empty({B, KS}, opts) : Tensor();
  T* dkeep_p = reg.zh ? dkeep.data_ptr<T>() : nullptr;
  T* dtmp_p = rmasked ? dtmp.data_ptr<T>() : nullptr;
  const T* ctil_p = reg.zc ? ctil.data_ptr<T>() : nullptr;
  time_loop(T_, B, c.rev, true, [&](const Step& st, int64_t r0, int64_t r1) {
    const int64_t M = r1 - r0, t = st.t;
    const T* cp = c_p + st.prev * B * H;
    // With zoneout on c the rows differentiate the update c~(t), not the zoned-out c(t).
    const T* cn = ctil_p ? ctil_p + t * B * H : c_p + st.next * B * H;
    const T* gt = g_p + t * B * R;
    T* dzt = dz_p + t * B * R;
    const T* dyt = dy_p + t * B * out;
    if (c.proj) {
      T* dht = dhall_p + t * B * out;
      for (int64_t b = r0; b < r1; ++b) {
        T* dh = drin_p + b * KS;
        if (valid(b, t)) {
          for (int64_t j = 0; j < out; ++j) dht[b * out + j] = dyt[b * out + j] + dh[j];
          if (reg.zh) zone_split(dht + b * out, dkeep_p + b * out, reg.zh_row(t, b), out);
          zero_row(dh, out);
        } else {
          zero_row(dht + b * out, out);
        }
      }
      dproject(M, dht + r0 * out, out, false, dm_p + r0 * H, H);
    }
    for_rows<T>(
        r0, r1, grain, 8 * H + out, valid, t,
        [&](int64_t b, T* tmp) {
          T* dr = drin_p + b * KS;
          T* dcb = dc_p + b * H;
          if (dcells_p) {
            const T* dcl = dcells_p + (t * B + b) * H;
#pragma omp simd
            for (int64_t j = 0; j < H; ++j) dcb[j] += dcl[j];
          }
          // Zoneout: the rows see (1 - d) of each state gradient; d of it is kept for t-1.
          const T* dyb = dyt + b * out;
          T* keep_c = tmp + 7 * H;  // lstm_bwd_row uses tmp[0, 7H)
          if (reg.zc) zone_split(dcb, keep_c, reg.zc_row(t, b), H);
          if (reg.zh && !c.proj) {
            T* g = tmp + 8 * H;
#pragma omp simd
            for (int64_t j = 0; j < out; ++j) g[j] = dyb[j] + dr[j];
            zone_split(g, dkeep_p + b * out, reg.zh_row(t, b), out);
            zero_row(dr, out);
            dyb = g;
          }
          const auto zoned = [&]() {
            if (reg.zc) {
#pragma omp simd
              for (int64_t j = 0; j < H; ++j) dcb[j] += keep_c[j];
            }
            if (reg.zh) copy_row(dr, static_cast<const T*>(dkeep_p + b * out), out);
          };
          if constexpr (std::is_same_v<T, float>) {
            if (fast) {
              fast(c, gt + b * R, cp + b * H, cn + b * H, dyb, dr, dcb, dzt + b * R, pi,
                   pf, po, dpr_p ? dpr_p + b * 3 * H : nullptr);
              zoned();
              return;
            }
          }
          const T* dm;
          if (c.proj) {
            dm = dm_p + b * H;
          } else {
            T* t_m = tmp + 5 * H;
#pragma omp simd
            for (int64_t j = 0; j < H; ++j) t_m[j] = dyb[j] + dr[j];
            dm = t_m;
          }
          T* dln_b = dln_p ? dln_p + b * 2 * H : nullptr;
          lstm_bwd_row<T>(c, gt + b * R, cp + b * H, cn + b * H, dm, c.G ? dr + out : nullptr,
                          dcb, dzt + b * R, pi, pf, po, tmp, ln, dln_b);
          if (drr_p) {
            const int64_t i = t * B + b;
            ln_backward(lnq_p + i * R, lnr_p[i], lnp.g_hh, static_cast<const T*>(dzt + b * R),
                        drr_p + i * R, dgh_p + b * R, nullptr, R);
          }
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
              const T* dv = spread<T>(dzb + offs[q], tmp + H, c.nb, c.s);
              T* a = acc + q * H;
#pragma omp simd
              for (int64_t j = 0; j < H; ++j) a[j] += dv[j] * cells[j];
            }
          }
          // The state gradient of a row inside its sequence now comes only from this step.
          zero_row(dr, KS);
          zoned();
        },
        [&](int64_t b) {
          zero_row(dzt + b * R, R);
          if (drr_p) zero_row(drr_p + (t * B + b) * R, R);
        });
    const T* dsrc = drr_p ? drr_p + t * B * R : dzt;  // the gradient of what the GEMM computed
    if (rmasked) {
      // Every row of the scratch is read back, so the product covers every row.
      drec(M, dsrc + r0 * R, R, false, dtmp_p + r0 * KS + c.koff, KS);
      add_masked_grad(reg, static_cast<const T*>(dtmp_p), drin_p, KS, r0, r1);
    } else if (state_grad) {
      drec(active_rows(valid, t, r0, r1), dsrc + r0 * R, R, true, drin_p + r0 * KS + c.koff, KS);
    }
  });
  Tensor dh0 = drin.narrow(1, 0, out).clone();
  Tensor da0 = c.G ? drin.narrow(1, out, c.G).clone() : Tensor();
  Tensor dpeep = c.peep ? dprow.sum(0) : Tensor();
  Tensor dln = c.ln_c ? dlnrow.sum(0) : Tensor();
  Tensor dgh = c.ln_rec ? dghrow.sum(0) : Tensor();
  return {dz, dh0, dc, da0, dhall, dpeep, drr, dln, dgh};
}

}  // namespace lstmkit
