// The Elman RNN's time loops: h(t) = act(x W_ih^T + b + h(t-1) W_hh^T), forward and backward.
#pragma once

#include "config.h"
#include "gemm.h"
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
                                     const Tensor& h0, const Tensor& lengths, bool full) {
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
  time_loop(T_, B, c.reverse, false, [&](const Step& s, int64_t r0, int64_t r1) {
    const T* hp = hs_p + slot(s.prev, full) * B * H;
    T* hn = hs_p + slot(s.next, full) * B * H;
    T* z = xg_p + s.t * B * H;
    T* yt = y_p + s.t * B * H;
    rec(r1 - r0, hp + r0 * H, H, true, z + r0 * H, H);
    for_rows<T>(
        r0, r1, grain, 0, valid, s.t,
        [&](int64_t b, T*) {
          act_fwd(c.input_activation, z + b * H, H);
          copy_row(hn + b * H, static_cast<const T*>(z + b * H), H);
          copy_row(yt + b * H, static_cast<const T*>(z + b * H), H);
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
                                      const Tensor& lengths, const Tensor& dy, const Tensor& dhT) {
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
          act_bwd(c.input_activation, g_p + (s.t * B + b) * H, d, H);
          zero_row(dhb, H);
        },
        [&](int64_t b) { zero_row(dzt + b * H, H); });
    drec(r1 - r0, dzt + r0 * H, H, true, dh_p + r0 * H, H);
  });
  return {dz, dh};
}

}  // namespace lstmkit
