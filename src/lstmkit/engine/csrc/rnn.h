// The Elman RNN's time loops: h(t) = act(x W_ih^T + b + h(t-1) W_hh^T), forward and backward.
#pragma once

#include "config.h"
#include "gemm.h"
#include "regularise.h"
#include "time_loop.h"

namespace lstmkit {

#define LSTMKIT_RNN_CONFIG(X)                                                                   \
  X(int64_t, hidden, "units per direction (H)")                                                 \
  X(bool, reverse, "run from the last step to the first")                                       \
  X(Act, input_activation, "the activation")

LSTMKIT_CONFIG_STRUCT(RnnConfig, LSTMKIT_RNN_CONFIG)

// xg [T,B,H]: x W_ih^T + b, overwritten with h(t). Returns {y, h_T, hs [T+1,B,H]} (hs only when
// saving for backward).
template <typename T>
std::vector<Tensor> rnn_forward_impl(const RnnConfig& c, Tensor xg, const Tensor& w_hh,
                                     const Tensor& h0, const Tensor& lengths, bool full,
                                     const Reg<T>& reg) {
  const int64_t T_ = xg.size(0), B = xg.size(1), H = c.hidden;
  auto opts = xg.options();
  Tensor hs = at::empty({full ? T_ + 1 : 2, B, H}, opts);
  Tensor y = at::empty({T_, B, H}, opts);
  T* hs_p = hs.data_ptr<T>();
  T* xg_p = xg.data_ptr<T>();
  T* y_p = y.data_ptr<T>();
  const Valid valid = make_valid(lengths);
  copy_row(hs_p + slot(c.reverse ? T_ : 0, full) * B * H, h0.data_ptr<T>(), B * H);
  const int64_t grain = grain_rows(H);
  const StepGemm<T> rec(true, H, H, w_hh.data_ptr<T>(), H);
  Tensor hm = reg.rmask ? at::empty({B, H}, opts) : Tensor();
  T* hm_p = reg.rmask ? hm.data_ptr<T>() : nullptr;
  time_loop(T_, B, c.reverse, false, [&](const Step& s, int64_t r0, int64_t r1) {
    const T* hp = hs_p + slot(s.prev, full) * B * H;
    T* hn = hs_p + slot(s.next, full) * B * H;
    T* z = xg_p + s.t * B * H;
    T* yt = y_p + s.t * B * H;
    const T* hr = hp;
    if (hm_p) {  // recurrent dropout: the product reads m * h(t-1)
      masked_input(reg, hp, hm_p, H, r0, r1);
      hr = hm_p;
    }
    rec(r1 - r0, hr + r0 * H, H, true, z + r0 * H, H);
    for_rows<T>(
        r0, r1, grain, 0, valid, s.t,
        [&](int64_t b, T*) {
          act_fwd(c.input_activation, z + b * H, H);
          copy_row(hn + b * H, static_cast<const T*>(z + b * H), H);
          // Zoneout mixes the state; z keeps the update h~(t), which backward reads.
          if (reg.zh) zone_row(hn + b * H, hp + b * H, reg.zh_row(s.t, b), H);
          copy_row(yt + b * H, static_cast<const T*>(hn + b * H), H);
        },
        [&](int64_t b) {
          copy_row(hn + b * H, hp + b * H, H);
          zero_row(yt + b * H, H);
        });
  });
  Tensor hT = hs.select(0, slot(c.reverse ? 0 : T_, full)).clone();
  return {y, hT, full ? hs : Tensor()};
}

// hact [T,B,H]: the saved h(t). Returns {dz [T,B,H], dh0}.
template <typename T>
std::vector<Tensor> rnn_backward_impl(const RnnConfig& c, const Tensor& hact, const Tensor& w_hh,
                                      const Tensor& lengths, const Tensor& dy, const Tensor& dhT,
                                      const Reg<T>& reg) {
  const int64_t T_ = hact.size(0), B = hact.size(1), H = c.hidden;
  Tensor dz = at::empty({T_, B, H}, hact.options());
  Tensor dh = dhT.clone();
  T* dz_p = dz.data_ptr<T>();
  T* dh_p = dh.data_ptr<T>();
  const T* g_p = hact.data_ptr<T>();
  const T* dy_p = dy.data_ptr<T>();
  const Valid valid = make_valid(lengths);
  const int64_t grain = grain_rows(H);
  const StepGemm<T> drec(false, H, H, w_hh.data_ptr<T>(), H);
  Tensor dtmp = reg.rmask ? at::empty({B, H}, hact.options()) : Tensor();
  T* dtmp_p = reg.rmask ? dtmp.data_ptr<T>() : nullptr;
  time_loop(T_, B, c.reverse, true, [&](const Step& s, int64_t r0, int64_t r1) {
    T* dzt = dz_p + s.t * B * H;
    for_rows<T>(
        r0, r1, grain, 0, valid, s.t,
        [&](int64_t b, T*) {
          T* d = dzt + b * H;
          const T* dyb = dy_p + (s.t * B + b) * H;
          T* dhb = dh_p + b * H;
#pragma omp simd
          for (int64_t j = 0; j < H; ++j) d[j] = dyb[j] + dhb[j];
          if (reg.zh) {
            zone_split(d, dhb, reg.zh_row(s.t, b), H);  // d of it goes straight to h(t-1)
          } else {
            zero_row(dhb, H);
          }
          act_bwd(c.input_activation, g_p + (s.t * B + b) * H, d, H);
        },
        [&](int64_t b) { zero_row(dzt + b * H, H); });
    if (dtmp_p) {
      drec(r1 - r0, dzt + r0 * H, H, false, dtmp_p + r0 * H, H);
      add_masked_grad(reg, static_cast<const T*>(dtmp_p), dh_p, H, r0, r1);
    } else {
      drec(r1 - r0, dzt + r0 * H, H, true, dh_p + r0 * H, H);
    }
  });
  return {dz, dh};
}

}  // namespace lstmkit
