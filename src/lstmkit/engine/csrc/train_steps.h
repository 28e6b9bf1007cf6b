// Many on-line training steps of a group of small LSTM-family nets in one call: the loop that
// lstmkit/train/trials.py runs once per training sequence, moved out of Python.
//
// A reproduction trial trains a net of a few hundred weights on one sequence at a time; the
// arithmetic of a step is a few hundred thousand multiply-adds, far less than the fixed cost of
// forty Python-level tensor calls. Here one call runs a run of consecutive steps of a trial group
// (the block-diagonal network of train/trials.py): per step the input projection, the engine's
// forward, the readout, the squared-error loss and its gradient, the engine's backward, the
// weight gradients, per-trial clipping and the per-trial SGD or Adam update. The arithmetic is
// the Python step's, operation for operation, so a trial's result does not depend on which path
// trained it beyond float rounding.
//
// The layout stays in Python: `index` says, for every entry of every engine operand (input
// weights, the two biases, [W_hh | G], peepholes, projection, readout weight and bias, in that
// order, `sizes` entries each), where it sits in the packed weights [slots, N] flattened, with
// slots * N standing for a fixed zero. Gathering the operands is one index_select and the
// gradient of every weight is one index_add over the same index.
#pragma once

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "lstm.h"
#include "regularise.h"

namespace lstmkit {

struct TrainStepsArgs {
  Tensor packed, exp_avg, exp_avg_sq, adam_steps;  // [S,N] x3 and [S,1] float64 (Adam only)
  Tensor live;                                     // [S] bool: slots that learn
  Tensor index;                                    // int64, see the file comment
  std::vector<int64_t> sizes;                      // 8 operand sizes
  Tensor x, targets, mask, scale, steps;           // [n,Tm,B,I] [n,Tm,B,O] [n,Tm,B,S] [n,S] [n]
  std::string activation, optimizer;
  bool shortcut = false;
  double lr = 0.0, clip = -1.0, beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  Tensor history, hist_avg, hist_avg_sq, hist_steps;  // after each step: [n,S,N] (Adam: more)
  Tensor outputs, losses;                             // [n,Tm,B,O] [n,S]
};

enum class Readout { identity, sigmoid, tanh };

inline Readout readout_of(const std::string& name) {
  if (name == "sigmoid") return Readout::sigmoid;
  if (name == "tanh") return Readout::tanh;
  TORCH_CHECK(name == "identity", "lstmkit engine: unknown readout activation '", name, "'");
  return Readout::identity;
}

// Runs steps [first, last) and returns the first step it did not take: `last`, or a step at
// which some live slot's loss or gradient was not finite (nothing of that step is applied; the
// caller redoes it trial by trial).
//
// The engine's kernels and the GEMMs over all time steps go through ATen; everything else (the
// readout, the loss, the gathers and scatters, the norms and the update) is a plain loop over a
// few hundred numbers, where an ATen call would cost more than its work.
inline int64_t lstm_train_steps_impl(const LstmConfig& cfg, TrainStepsArgs& a, int64_t first,
                                     int64_t last) {
  using F32 = float;
  const Tensor& packed = a.packed;
  const int64_t S = packed.size(0), N = packed.size(1), SN = S * N;
  const int64_t B = a.x.size(2), I = a.x.size(3), O = a.targets.size(3), OS = O / S;
  const int64_t Tm = a.x.size(1);
  TORCH_CHECK(a.sizes.size() == 8, "lstmkit engine: train_steps takes 8 operand sizes");
  const bool adam = a.optimizer == "adam";
  TORCH_CHECK(adam || a.optimizer == "sgd", "lstmkit engine: unknown optimiser '", a.optimizer,
              "'");
  TORCH_CHECK(!cfg.layer_norm, "lstmkit engine: train_steps does not cover layer norm (a merged "
              "net would normalise over every trial's cells)");
  const Readout act = readout_of(a.activation);
  const auto opts = packed.options();
  const LstmCfg c1 = lstm_cfg(cfg, 1, B);  // the sizes; each step's own T below
  const int64_t R = c1.R, H = c1.H, OUT = c1.out, G = c1.G, KG = c1.KG, KS = c1.KS;
  const int64_t Fw = OUT + (a.shortcut ? I : 0);

  // The operands, rebuilt in place each step; these views of them stay valid.
  int64_t total = 0;
  std::vector<int64_t> off;
  for (int64_t n : a.sizes) {
    off.push_back(total);
    total += n;
  }
  TORCH_CHECK(a.sizes[0] == R * I && a.sizes[1] == R && a.sizes[2] == R &&
                  a.sizes[3] == (KG > 0 ? R * KG : 0) && a.sizes[4] == (c1.peep ? 3 * H : 0) &&
                  a.sizes[5] == (c1.proj ? OUT * H : 0) && a.sizes[6] == O * Fw &&
                  (a.sizes[7] == 0 || a.sizes[7] == O),
              "lstmkit engine: train_steps operand sizes do not match the configuration");
  Tensor ops = at::empty({total}, opts);
  F32* ops_p = ops.data_ptr<F32>();
  const Tensor w_ih = ops.narrow(0, off[0], R * I).view({R, I});
  const Tensor wcat = KG > 0 ? ops.narrow(0, off[3], R * KG).view({R, KG}) : Tensor();
  const Tensor peep = c1.peep ? ops.narrow(0, off[4], 3 * H).view({3, H}) : Tensor();
  const Tensor w_hr = c1.proj ? ops.narrow(0, off[5], OUT * H).view({OUT, H}) : Tensor();
  const F32* w_out = ops_p + off[6];
  const F32* b_out = a.sizes[7] > 0 ? ops_p + off[7] : nullptr;
  Tensor bias = at::empty({R}, opts);
  F32* bias_p = bias.data_ptr<F32>();
  const int64_t* idx = a.index.data_ptr<int64_t>();

  const Tensor no_lengths = at::empty({0}, opts.dtype(at::kLong));
  const Tensor h0 = at::zeros({B, OUT}, opts), c0 = at::zeros({B, H}, opts);
  const Tensor a0 = G ? at::zeros({B, G}, opts) : Tensor();
  Tensor grad = at::empty({SN + 1}, opts);
  F32* g = grad.data_ptr<F32>();
  Tensor d_hidden = at::empty({Tm, B, OUT}, opts);
  std::vector<F32> dz_out(static_cast<size_t>(Tm * B * O));
  std::vector<F32> dw_out(static_cast<size_t>(O * Fw)), db_out(static_cast<size_t>(O));
  std::vector<double> loss(S), norm2(S);
  std::vector<F32> coef(S);
  const bool* live = a.live.data_ptr<bool>();
  F32* P = packed.data_ptr<F32>();
  F32* m1 = adam ? a.exp_avg.data_ptr<F32>() : nullptr;
  F32* m2 = adam ? a.exp_avg_sq.data_ptr<F32>() : nullptr;
  double* nsteps = adam ? a.adam_steps.data_ptr<double>() : nullptr;
  const int64_t* steps_p = a.steps.data_ptr<int64_t>();
  const F32* scale_all = a.scale.data_ptr<F32>();
  const F32 lr = static_cast<F32>(a.lr);

  for (int64_t j = first; j < last; ++j) {
    const int64_t Tj = steps_p[j], rows = Tj * B;
    const LstmCfg c = lstm_cfg(cfg, Tj, B);
    for (int64_t k = 0; k < total; ++k) ops_p[k] = idx[k] == SN ? F32(0) : P[idx[k]];
    for (int64_t r = 0; r < R; ++r) bias_p[r] = ops_p[off[1] + r] + ops_p[off[2] + r];
    const Tensor xj = a.x.select(0, j).narrow(0, 0, Tj);
    const F32* xp = xj.data_ptr<F32>();
    const Tensor x2 = xj.reshape({rows, I});
    Tensor xg = at::addmm(bias, x2, w_ih.t()).view({Tj, B, R});
    const auto fw = lstm_forward_impl<F32>(c, xg, wcat, peep, w_hr, h0, c0, a0, no_lengths, true,
                                           false, Reg<F32>(), Tensor(), Tensor(), Tensor());
    const F32* hid = fw[0].data_ptr<F32>();

    // Readout, loss and the gradient at the readout's input, row by row.
    const F32* tg = a.targets.select(0, j).data_ptr<F32>();
    const F32* mk = a.mask.select(0, j).data_ptr<F32>();
    const F32* scale = scale_all + j * S;
    F32* yout = a.outputs.select(0, j).data_ptr<F32>();
    std::fill(loss.begin(), loss.end(), 0.0);
    std::fill(dw_out.begin(), dw_out.end(), F32(0));
    std::fill(db_out.begin(), db_out.end(), F32(0));
    F32* dh = d_hidden.data_ptr<F32>();
    for (int64_t r = 0; r < rows; ++r) {
      const F32* hr = hid + r * OUT;
      const F32* xr = xp + r * I;
      F32* dzr = dz_out.data() + r * O;
      for (int64_t o = 0; o < O; ++o) {
        const F32* w = w_out + o * Fw;
        F32 z = b_out ? b_out[o] : F32(0);
        for (int64_t f = 0; f < OUT; ++f) z += hr[f] * w[f];
        if (a.shortcut) {
          for (int64_t f = 0; f < I; ++f) z += xr[f] * w[OUT + f];
        }
        F32 y = z, slope = F32(1);
        if (act == Readout::sigmoid) {
          y = F32(1) / (F32(1) + std::exp(-z));
          slope = y * (F32(1) - y);
        } else if (act == Readout::tanh) {
          y = std::tanh(z);
          slope = F32(1) - y * y;
        }
        yout[r * O + o] = y;
        const int64_t s = o / OS;
        const F32 diff = (y - tg[r * O + o]) * mk[r * S + s];
        loss[s] += static_cast<double>(diff) * diff;
        dzr[o] = diff * (F32(2) * scale[s]) * slope;
      }
      F32* dhr = dh + r * OUT;
      for (int64_t f = 0; f < OUT; ++f) dhr[f] = F32(0);
      for (int64_t o = 0; o < O; ++o) {
        const F32 d = dzr[o];
        if (d == F32(0)) continue;
        const F32* w = w_out + o * Fw;
        F32* dw = dw_out.data() + o * Fw;
        for (int64_t f = 0; f < OUT; ++f) {
          dhr[f] += d * w[f];
          dw[f] += d * hr[f];
        }
        if (a.shortcut) {
          for (int64_t f = 0; f < I; ++f) dw[OUT + f] += d * xr[f];
        }
        db_out[o] += d;
      }
    }
    for (int64_t r = rows; r < Tm * B; ++r) {
      for (int64_t o = 0; o < O; ++o) yout[r * O + o] = F32(0);
    }

    const auto bw = lstm_backward_impl<F32>(c, xg, wcat, peep, w_hr, fw[6], no_lengths,
                                            d_hidden.narrow(0, 0, Tj), h0, c0,
                                            G ? a0 : Tensor(), Tensor(), Reg<F32>(), Tensor(),
                                            Tensor(), Tensor(), Tensor(), Tensor(), Tensor());
    const Tensor dz2 = bw[0].view({rows, R});
    const Tensor dw_ih = at::mm(dz2.t(), x2);
    const F32* dz_p = dz2.data_ptr<F32>();
    std::vector<F32> db(static_cast<size_t>(R), F32(0));
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t q = 0; q < R; ++q) db[q] += dz_p[r * R + q];
    }
    Tensor dwcat, dwhr;
    if (KG > 0) {
      const Tensor prev = fw[5].narrow(0, c.rev ? 1 : 0, Tj).reshape({rows, KS});
      dwcat = at::mm(dz2.t(), prev.narrow(1, c.koff, KG));
    }
    if (c.proj) {
      dwhr = at::mm(bw[4].reshape({rows, OUT}).t(), fw[7].reshape({rows, H}));
    }

    // Every operand's gradient into the packed weights, through the same index.
    std::fill(g, g + SN + 1, F32(0));
    const F32* parts[8] = {dw_ih.data_ptr<F32>(), db.data(), db.data(),
                           KG > 0 ? dwcat.data_ptr<F32>() : nullptr,
                           c.peep ? bw[5].data_ptr<F32>() : nullptr,
                           c.proj ? dwhr.data_ptr<F32>() : nullptr, dw_out.data(), db_out.data()};
    for (int p = 0; p < 8; ++p) {
      const int64_t* ip = idx + off[p];
      for (int64_t k = 0; k < a.sizes[p]; ++k) g[ip[k]] += parts[p][k];
    }
    bool bad = false;
    for (int64_t s = 0; s < S; ++s) {
      double n2 = 0.0;
      const F32* gs = g + s * N;
      for (int64_t k = 0; k < N; ++k) n2 += static_cast<double>(gs[k]) * gs[k];
      norm2[s] = n2;
      loss[s] *= scale[s];
      if (live[s] && !(std::isfinite(loss[s]) && std::isfinite(n2))) bad = true;
    }
    if (bad) return j;
    F32* lp = a.losses.select(0, j).data_ptr<F32>();
    for (int64_t s = 0; s < S; ++s) lp[s] = static_cast<F32>(loss[s]);

    // The update, as TrialGroup._update: only live slots learn, each clipped by its own norm.
    for (int64_t s = 0; s < S; ++s) {
      coef[s] = F32(1);
      if (a.clip >= 0) {
        const F32 norm = static_cast<F32>(std::sqrt(norm2[s]));
        coef[s] = std::min(F32(1), static_cast<F32>(a.clip) / (norm + F32(1e-6)));
      }
    }
    const F32 b1 = static_cast<F32>(a.beta1), b2 = static_cast<F32>(a.beta2);
    const F32 one_b1 = static_cast<F32>(1 - a.beta1), one_b2 = static_cast<F32>(1 - a.beta2);
    const F32 eps = static_cast<F32>(a.eps);
    for (int64_t s = 0; s < S; ++s) {
      if (!live[s]) continue;
      F32* ps = P + s * N;
      const F32* gs = g + s * N;
      const F32 cf = coef[s];
      if (!adam) {
        for (int64_t k = 0; k < N; ++k) ps[k] -= lr * (gs[k] * cf);
        continue;
      }
      nsteps[s] += 1.0;
      const double st = std::max(1.0, nsteps[s]);
      const F32 bc1 = static_cast<F32>(1 - std::pow(a.beta1, st));
      const F32 bc2_sqrt = static_cast<F32>(std::sqrt(1 - std::pow(a.beta2, st)));
      const F32 step = lr / bc1;
      F32* ms = m1 + s * N;
      F32* vs = m2 + s * N;
      for (int64_t k = 0; k < N; ++k) {
        const F32 gk = gs[k] * cf;
        ms[k] = ms[k] * b1 + gk * one_b1;
        vs[k] = vs[k] * b2 + gk * gk * one_b2;
        ps[k] -= ms[k] / (std::sqrt(vs[k]) / bc2_sqrt + eps) * step;
      }
    }
    a.history.select(0, j).copy_(packed);
    if (adam) {
      a.hist_avg.select(0, j).copy_(a.exp_avg);
      a.hist_avg_sq.select(0, j).copy_(a.exp_avg_sq);
      a.hist_steps.select(0, j).copy_(a.adam_steps);
    }
  }
  return last;
}

}  // namespace lstmkit
