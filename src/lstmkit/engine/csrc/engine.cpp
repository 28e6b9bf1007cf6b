// lstmkit fused CPU engine: the bindings Python calls (lstmkit/engine/_function.py).
//
// One translation unit, built on first use by torch.utils.cpp_extension (lstmkit/engine/_build.py);
// the kernels live in headers by job:
//
//   settings.h   process-wide switches (GEMM path, row split) that tests flip
//   gemm.h       the BLAS binding and the packed AVX-512 per-step GEMM (StepGemm)
//   vecmath.h    exp/sigmoid/tanh, the activations by name, row operations
//   time_loop.h  the one time loop every cell family runs, and its threading over batch rows
//   config.h     the named configurations Python passes (one field list per family)
//   lstm.h, lstm_rows.h, gru.h, rnn.h   one cell family each: its step and its backward
//   regularise.h recurrent dropout and zoneout inside those loops (masks drawn in Python)
//   layer_norm.h the row-local layer norm of the recurrent product and the cell state
//
// The Python side does the work that is one big operation per sequence (input projection with
// the bias folded in; weight, bias and input gradients as GEMMs over all steps); the kernels do
// what must run once per time step:
//
//   forward:  one recurrent GEMM into the step's pre-activations, then one fused elementwise pass
//             per batch row (activations, peepholes, cell update, output), saving the activated
//             gates in place of the pre-activations and every state for backward;
//   backward: one fused elementwise pass per row that turns the state gradients into the
//             pre-activation gradients dz, then one GEMM dz * [W_hh | W_gh] for the recurrent
//             state gradient (skipped under the 1997 truncated gradient).
//
// Every entry point takes its operands and configuration by name and returns a dict of named
// results (None where a result does not apply).

#include <optional>
#include <set>
#include <string>

#include "gru.h"
#include "lstm.h"
#include "rnn.h"
#include "train_steps.h"

namespace lstmkit {
namespace {

namespace py = pybind11;

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

void check_steps(const Tensor& t, int64_t T, int64_t B, int64_t width, const char* name) {
  TORCH_CHECK(t.defined() && t.dim() == 3 && t.is_contiguous() && t.device().is_cpu() &&
                  t.size(0) == T && t.size(1) == B && t.size(2) == width,
              "lstmkit engine: ", name, " must be a contiguous CPU tensor [", T, ", ", B, ", ",
              width, "], got ", t.defined() ? t.sizes() : at::IntArrayRef{});
}

// The kernels' results by name; an undefined tensor (a result that does not apply) is None.
// An optional operand (the regularisers' masks): None is an empty tensor, "absent".
using Opt = std::optional<Tensor>;
Tensor opt(const Opt& t) { return t.has_value() ? *t : Tensor(); }

// The regularisers' masks (empty: off): rmask [B, W], zc [T, B, H], zh [T, B, W].
void check_masks(const Tensor& rmask, const Tensor& zc, const Tensor& zh, const Tensor& like,
                 int64_t T, int64_t B, int64_t W, int64_t H) {
  check_operand(rmask, like, rmask.defined() && rmask.numel() > 0, B * W,
                "the recurrent dropout mask");
  check_operand(zc, like, zc.defined() && zc.numel() > 0, T * B * H, "the cell zoneout mask");
  check_operand(zh, like, zh.defined() && zh.numel() > 0, T * B * W, "the hidden zoneout mask");
}

py::dict named(std::initializer_list<const char*> names, const std::vector<Tensor>& values) {
  TORCH_CHECK(names.size() == values.size(), "lstmkit engine: result names do not match");
  py::dict out;
  size_t i = 0;
  for (const char* name : names) {
    const Tensor& v = values[i++];
    out[name] = v.defined() ? py::cast(v) : py::none();
  }
  return out;
}

// The layer-norm parameters of an LSTM call: the gain of W_hh h (rows) and c's gain and shift.
void check_lstm_ln(const LstmCfg& c, const Tensor& like, const Tensor& ln_hh, const Tensor& ln_cw,
                   const Tensor& ln_cb) {
  check_operand(ln_hh, like, c.ln_rec, c.R, "ln_hh_weight");
  check_operand(ln_cw, like, c.ln_c, c.H, "ln_c_weight");
  check_operand(ln_cb, like, c.ln_c, c.H, "ln_c_bias");
}

py::dict lstm_forward(const LstmConfig& cfg, Tensor xg, Tensor wcat, Tensor peep, Tensor w_hr,
                      Tensor h0, Tensor c0, Tensor a0, Tensor lengths, bool save,
                      bool return_cells, Opt rmask_, Opt zc_, Opt zh_, Opt ln_hh_, Opt ln_cw_,
                      Opt ln_cb_) {
  const Tensor rmask = opt(rmask_);
  const Tensor zc = opt(zc_);
  const Tensor zh = opt(zh_);
  const Tensor ln_hh = opt(ln_hh_), ln_cw = opt(ln_cw_), ln_cb = opt(ln_cb_);
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
  check_lstm_ln(c, xg, ln_hh, ln_cw, ln_cb);
  check_lengths(lengths, B);
  check_masks(rmask, zc, zh, xg, c.T, B, c.out, c.H);
  std::vector<Tensor> res;
  AT_DISPATCH_FLOATING_TYPES(xg.scalar_type(), "lstm_forward", [&] {
    res = lstm_forward_impl<scalar_t>(c, xg, wcat, peep, w_hr, h0, c0, a0, lengths, save,
                                      return_cells,
                                      make_reg<scalar_t>(rmask, zc, zh, B, c.out, c.H), ln_hh,
                                      ln_cw, ln_cb);
  });
  return named({"y", "h", "c", "a", "cells", "rec_in", "c_all", "m_all", "c_tilde", "ln_rec",
                "ln_rstd"},
               res);
}

py::dict lstm_backward(const LstmConfig& cfg, Tensor gates, Tensor wcat, Tensor peep, Tensor w_hr,
                       Tensor c_all, Tensor lengths, Tensor dy, Tensor dh, Tensor dc, Tensor da,
                       Tensor dcells, Opt rmask_, Opt zc_, Opt zh_, Opt c_tilde_, Opt ln_hh_,
                       Opt ln_cw_, Opt ln_cb_, Opt ln_rec_, Opt ln_rstd_) {
  const Tensor rmask = opt(rmask_);
  const Tensor zc = opt(zc_);
  const Tensor zh = opt(zh_);
  const Tensor c_tilde = opt(c_tilde_);
  const Tensor ln_hh = opt(ln_hh_), ln_cw = opt(ln_cw_), ln_cb = opt(ln_cb_);
  const Tensor ln_rec = opt(ln_rec_), ln_rstd = opt(ln_rstd_);
  TORCH_CHECK(gates.dim() == 3, "lstmkit engine: gates must be [T,B,R]");
  const LstmCfg c = lstm_cfg(cfg, gates.size(0), gates.size(1));
  check_steps(gates, c.T, c.B, c.R, "gates");
  check_steps(c_all, c.T + 1, c.B, c.H, "c_all");
  check_steps(dy, c.T, c.B, c.out, "dy");
  check_operand(wcat, gates, c.KG > 0 && !c.trunc, c.R * c.KG, "the recurrent weight");
  check_operand(peep, gates, c.peep, 3 * c.H, "the peephole weights");
  check_operand(w_hr, gates, c.proj, c.out * c.H, "the projection weight");
  check_operand(dh, gates, true, c.B * c.out, "dh");
  check_operand(dc, gates, true, c.B * c.H, "dc");
  check_operand(da, gates, c.G > 0, c.B * c.G, "da");
  check_operand(dcells, gates, dcells.defined() && dcells.numel() > 0, c.T * c.B * c.H, "dcells");
  check_lstm_ln(c, gates, ln_hh, ln_cw, ln_cb);
  check_operand(ln_rec, gates, c.ln_rec, c.T * c.B * c.R, "ln_rec");
  check_operand(ln_rstd, gates, c.ln_rec, c.T * c.B, "ln_rstd");
  check_lengths(lengths, c.B);
  check_masks(rmask, zc, zh, gates, c.T, c.B, c.out, c.H);
  if (zc.defined() && zc.numel() > 0) check_steps(c_tilde, c.T, c.B, c.H, "c_tilde");
  std::vector<Tensor> res;
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "lstm_backward", [&] {
    res = lstm_backward_impl<scalar_t>(c, gates, wcat, peep, w_hr, c_all, lengths, dy, dh, dc,
                                       da, dcells,
                                       make_reg<scalar_t>(rmask, zc, zh, c.B, c.out, c.H),
                                       c_tilde, ln_hh, ln_cw, ln_cb, ln_rec, ln_rstd);
  });
  return named({"dz", "dh0", "dc0", "da0", "dh_all", "dpeep", "drec", "dln_c", "dln_hh"}, res);
}

py::dict gru_forward(const GruConfig& c, Tensor xg, Tensor w_hh, Tensor b_hn, Tensor h0,
                     Tensor lengths, bool save, Opt rmask_, Opt zh_, Opt ln_hh_) {
  const Tensor rmask = opt(rmask_);
  const Tensor zh = opt(zh_);
  const Tensor ln_hh = opt(ln_hh_);
  TORCH_CHECK(!c.layer_norm || c.reset_after,
              "lstmkit engine: GruConfig.layer_norm needs reset_after");
  TORCH_CHECK(c.hidden >= 0, "lstmkit engine: GruConfig.hidden must be >= 0");
  TORCH_CHECK(xg.dim() == 3, "lstmkit engine: xg must be [T,B,3H]");
  const int64_t B = xg.size(1);
  check_steps(xg, xg.size(0), B, 3 * c.hidden, "xg");
  check_operand(w_hh, xg, true, 3 * c.hidden * c.hidden, "weight_hh");
  check_operand(b_hn, xg, b_hn.defined() && b_hn.numel() > 0, c.hidden, "the candidate bias");
  check_operand(h0, xg, true, B * c.hidden, "h0");
  check_operand(ln_hh, xg, c.layer_norm, 3 * c.hidden, "ln_hh_weight");
  check_lengths(lengths, B);
  check_masks(rmask, Tensor(), zh, xg, xg.size(0), B, c.hidden, c.hidden);
  std::vector<Tensor> res;
  AT_DISPATCH_FLOATING_TYPES(xg.scalar_type(), "gru_forward", [&] {
    res = gru_forward_impl<scalar_t>(
        c, xg, w_hh, b_hn, h0, lengths, save,
        make_reg<scalar_t>(rmask, Tensor(), zh, B, c.hidden, c.hidden), ln_hh);
  });
  return named({"y", "h", "h_all", "aux", "ln_rec", "ln_rstd"}, res);
}

py::dict gru_backward(const GruConfig& c, Tensor gates, Tensor w_hh, Tensor h_all, Tensor aux,
                      Tensor lengths, Tensor dy, Tensor dh, Opt rmask_, Opt zh_, Opt ln_hh_,
                      Opt ln_rec_, Opt ln_rstd_) {
  const Tensor rmask = opt(rmask_);
  const Tensor zh = opt(zh_);
  const Tensor ln_hh = opt(ln_hh_), ln_rec = opt(ln_rec_), ln_rstd = opt(ln_rstd_);
  TORCH_CHECK(!c.layer_norm || c.reset_after,
              "lstmkit engine: GruConfig.layer_norm needs reset_after");
  TORCH_CHECK(gates.dim() == 3, "lstmkit engine: gates must be [T,B,3H]");
  const int64_t T = gates.size(0), B = gates.size(1), H = c.hidden;
  check_steps(gates, T, B, 3 * H, "gates");
  check_steps(h_all, T + 1, B, H, "h_all");
  check_steps(aux, T, B, H, "aux");
  check_steps(dy, T, B, H, "dy");
  check_operand(w_hh, gates, true, 3 * H * H, "weight_hh");
  check_operand(dh, gates, true, B * H, "dh");
  check_operand(ln_hh, gates, c.layer_norm, 3 * H, "ln_hh_weight");
  check_operand(ln_rec, gates, c.layer_norm, T * B * 3 * H, "ln_rec");
  check_operand(ln_rstd, gates, c.layer_norm, T * B, "ln_rstd");
  check_lengths(lengths, B);
  check_masks(rmask, Tensor(), zh, gates, T, B, H, H);
  std::vector<Tensor> res;
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "gru_backward", [&] {
    res = gru_backward_impl<scalar_t>(c, gates, w_hh, h_all, aux, lengths, dy, dh,
                                      make_reg<scalar_t>(rmask, Tensor(), zh, B, H, H), ln_hh,
                                      ln_rec, ln_rstd);
  });
  return named({"dz", "drec", "dh0", "drec_raw", "dln_hh"}, res);
}

py::dict rnn_forward(const RnnConfig& c, Tensor xg, Tensor w_hh, Tensor h0, Tensor lengths,
                     bool save, Opt rmask_, Opt zh_) {
  const Tensor rmask = opt(rmask_);
  const Tensor zh = opt(zh_);
  TORCH_CHECK(c.hidden >= 0 && xg.dim() == 3, "lstmkit engine: xg must be [T,B,H]");
  const int64_t B = xg.size(1);
  check_steps(xg, xg.size(0), B, c.hidden, "xg");
  check_operand(w_hh, xg, true, c.hidden * c.hidden, "weight_hh");
  check_operand(h0, xg, true, B * c.hidden, "h0");
  check_lengths(lengths, B);
  check_masks(rmask, Tensor(), zh, xg, xg.size(0), B, c.hidden, c.hidden);
  std::vector<Tensor> res;
  AT_DISPATCH_FLOATING_TYPES(xg.scalar_type(), "rnn_forward", [&] {
    res = rnn_forward_impl<scalar_t>(
        c, xg, w_hh, h0, lengths, save,
        make_reg<scalar_t>(rmask, Tensor(), zh, B, c.hidden, c.hidden));
  });
  return named({"y", "h", "h_all"}, res);
}

py::dict rnn_backward(const RnnConfig& c, Tensor hact, Tensor w_hh, Tensor lengths, Tensor dy,
                      Tensor dh, Opt rmask_, Opt zh_) {
  const Tensor rmask = opt(rmask_);
  const Tensor zh = opt(zh_);
  TORCH_CHECK(hact.dim() == 3, "lstmkit engine: hact must be [T,B,H]");
  const int64_t T = hact.size(0), B = hact.size(1);
  check_steps(hact, T, B, c.hidden, "hact");
  check_steps(dy, T, B, c.hidden, "dy");
  check_operand(w_hh, hact, true, c.hidden * c.hidden, "weight_hh");
  check_operand(dh, hact, true, B * c.hidden, "dh");
  check_lengths(lengths, B);
  check_masks(rmask, Tensor(), zh, hact, T, B, c.hidden, c.hidden);
  std::vector<Tensor> res;
  AT_DISPATCH_FLOATING_TYPES(hact.scalar_type(), "rnn_backward", [&] {
    res = rnn_backward_impl<scalar_t>(c, hact, w_hh, lengths, dy, dh,
                                      make_reg<scalar_t>(rmask, Tensor(), zh, B, c.hidden,
                                                         c.hidden));
  });
  return named({"dz", "dh0"}, res);
}

// Steps [first, last) of a trial group's on-line training (train_steps.h); the tensors are
// updated in place and the first step not taken is returned.
int64_t lstm_train_steps(const LstmConfig& cfg, Tensor packed, Tensor exp_avg, Tensor exp_avg_sq,
                         Tensor adam_steps, Tensor live, Tensor index, std::vector<int64_t> sizes,
                         Tensor x, Tensor targets, Tensor mask, Tensor scale, Tensor steps,
                         std::string activation, bool shortcut, std::string optimizer, double lr,
                         double clip, Tensor history, Tensor hist_avg, Tensor hist_avg_sq,
                         Tensor hist_steps, Tensor outputs, Tensor losses, int64_t first,
                         int64_t last) {
  TORCH_CHECK(packed.dim() == 2 && packed.is_contiguous() &&
                  packed.scalar_type() == at::kFloat && packed.device().is_cpu(),
              "lstmkit engine: packed must be a contiguous float32 CPU tensor [slots, N]");
  const int64_t S = packed.size(0), N = packed.size(1);
  TORCH_CHECK(x.dim() == 4 && targets.dim() == 4 && mask.dim() == 4 && x.is_contiguous() &&
                  targets.is_contiguous() && mask.is_contiguous() && x.size(0) == steps.numel() &&
                  targets.size(0) == x.size(0) && mask.size(0) == x.size(0) &&
                  mask.size(3) == S && targets.size(3) % S == 0,
              "lstmkit engine: x, targets and mask must be [n, T, B, .] for the same n");
  for (const Tensor* t : {&x, &targets, &mask, &scale, &outputs, &losses, &history}) {
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous() && t->device().is_cpu(),
                "lstmkit engine: train_steps takes contiguous float32 CPU tensors");
  }
  TORCH_CHECK(outputs.sizes() == targets.sizes() && losses.size(0) == x.size(0) &&
                  losses.size(1) == S && scale.sizes() == losses.sizes(),
              "lstmkit engine: outputs, losses or scale do not match the steps");
  if (optimizer == "adam") {
    TORCH_CHECK(exp_avg.sizes() == packed.sizes() && exp_avg_sq.sizes() == packed.sizes() &&
                    exp_avg.is_contiguous() && exp_avg_sq.is_contiguous() &&
                    adam_steps.numel() == S && adam_steps.scalar_type() == at::kDouble &&
                    hist_avg.sizes() == history.sizes() &&
                    hist_avg_sq.sizes() == history.sizes() &&
                    hist_steps.numel() == x.size(0) * S &&
                    hist_steps.scalar_type() == at::kDouble,
                "lstmkit engine: Adam's state does not match the packed weights");
  }
  TORCH_CHECK(steps.scalar_type() == at::kLong && steps.is_contiguous() &&
                  index.scalar_type() == at::kLong && live.scalar_type() == at::kBool &&
                  live.numel() == S,
              "lstmkit engine: steps and index must be int64, live bool [slots]");
  TORCH_CHECK(0 <= first && first <= last && last <= x.size(0) &&
                  history.sizes() == at::IntArrayRef({x.size(0), S, N}),
              "lstmkit engine: bad step range or history");
  int64_t total = 0;
  for (int64_t s : sizes) total += s;
  TORCH_CHECK(index.numel() == total && (total == 0 || (index.min().item<int64_t>() >= 0 &&
                                                         index.max().item<int64_t>() <= S * N)),
              "lstmkit engine: index must hold ", total, " positions in [0, ", S * N, "]");
  for (int64_t j = first; j < last; ++j) {
    const int64_t t = steps.data_ptr<int64_t>()[j];
    TORCH_CHECK(t >= 1 && t <= x.size(1), "lstmkit engine: step ", j, " has ", t,
                " time steps, expected 1 to ", x.size(1));
  }
  TrainStepsArgs a{packed, exp_avg, exp_avg_sq, adam_steps, live, index, sizes, x, targets,
                   mask, scale, steps, activation, optimizer, shortcut, lr, clip};
  a.history = history;
  a.hist_avg = hist_avg;
  a.hist_avg_sq = hist_avg_sq;
  a.hist_steps = hist_steps;
  a.outputs = outputs;
  a.losses = losses;
  return lstm_train_steps_impl(cfg, a, first, last);
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

// ---------------------------------------------------------------------------------------------
// Binding the named configurations: a constructor that takes every field by keyword (a missing
// or unknown one is a TypeError naming it) and read-only attributes.

template <typename V>
V take_field(py::kwargs& kw, const char* cls, const char* name) {
  if (!kw.contains(name)) {
    throw py::type_error(std::string(cls) + ": missing field '" + name + "'");
  }
  py::object value = kw[name];
  if constexpr (std::is_same_v<V, Act>) {
    const std::string text = py::str(value);
    for (const auto& [act_name, act] : act_names()) {
      if (text == act_name) return act;
    }
    throw py::value_error(std::string(cls) + "." + name + ": unknown activation '" + text + "'");
  } else {
    return value.cast<V>();
  }
}

py::object field_value(int64_t v) { return py::int_(v); }
py::object field_value(bool v) { return py::bool_(v); }
py::object field_value(Act v) {
  for (const auto& [act_name, act] : act_names()) {
    if (act == v) return py::str(act_name);
  }
  return py::none();
}

void reject_unknown(const py::kwargs& kw, const char* cls, const std::set<std::string>& known) {
  for (const auto& item : kw) {
    const std::string key = py::str(item.first);
    if (!known.count(key)) throw py::type_error(std::string(cls) + ": unknown field '" + key + "'");
  }
}

#define LSTMKIT_TAKE(type, name, doc) c.name = take_field<type>(kw, cls, #name);
#define LSTMKIT_NAME(type, name, doc) #name,
#define LSTMKIT_ATTR(type, name, doc) \
  cls_obj.def_property_readonly(#name, [](const Cfg& c) { return field_value(c.name); }, doc);

#define LSTMKIT_BIND_CONFIG(CFG, TABLE)                                                          \
  {                                                                                              \
    using Cfg = CFG;                                                                             \
    py::class_<Cfg> cls_obj(m, #CFG);                                                            \
    cls_obj.def(py::init([](py::kwargs kw) {                                                     \
      static const char* cls = #CFG;                                                             \
      Cfg c;                                                                                     \
      TABLE(LSTMKIT_TAKE)                                                                        \
      reject_unknown(kw, cls, {TABLE(LSTMKIT_NAME)});                                            \
      return c;                                                                                  \
    }));                                                                                         \
    TABLE(LSTMKIT_ATTR)                                                                          \
    cls_obj.attr("fields") = std::vector<std::string>{TABLE(LSTMKIT_NAME)};                      \
  }

}  // namespace
}  // namespace lstmkit

using namespace lstmkit;

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  LSTMKIT_BIND_CONFIG(LstmConfig, LSTMKIT_LSTM_CONFIG)
  LSTMKIT_BIND_CONFIG(GruConfig, LSTMKIT_GRU_CONFIG)
  LSTMKIT_BIND_CONFIG(RnnConfig, LSTMKIT_RNN_CONFIG)
  using py::arg;
  m.def("lstm_forward", &lstm_forward, arg("cfg"), arg("xg"), arg("wcat"), arg("peep"),
        arg("w_hr"), arg("h0"), arg("c0"), arg("a0"), arg("lengths"), arg("save"),
        arg("return_cells"), arg("rmask") = py::none(), arg("zc") = py::none(),
        arg("zh") = py::none(), arg("ln_hh") = py::none(), arg("ln_cw") = py::none(),
        arg("ln_cb") = py::none());
  m.def("lstm_backward", &lstm_backward, arg("cfg"), arg("gates"), arg("wcat"), arg("peep"),
        arg("w_hr"), arg("c_all"), arg("lengths"), arg("dy"), arg("dh"), arg("dc"), arg("da"),
        arg("dcells"), arg("rmask") = py::none(), arg("zc") = py::none(), arg("zh") = py::none(),
        arg("c_tilde") = py::none(), arg("ln_hh") = py::none(), arg("ln_cw") = py::none(),
        arg("ln_cb") = py::none(), arg("ln_rec") = py::none(), arg("ln_rstd") = py::none());
  m.def("gru_forward", &gru_forward, arg("cfg"), arg("xg"), arg("w_hh"), arg("b_hn"), arg("h0"),
        arg("lengths"), arg("save"), arg("rmask") = py::none(), arg("zh") = py::none(),
        arg("ln_hh") = py::none());
  m.def("gru_backward", &gru_backward, arg("cfg"), arg("gates"), arg("w_hh"), arg("h_all"),
        arg("aux"), arg("lengths"), arg("dy"), arg("dh"), arg("rmask") = py::none(),
        arg("zh") = py::none(), arg("ln_hh") = py::none(), arg("ln_rec") = py::none(),
        arg("ln_rstd") = py::none());
  m.def("rnn_forward", &rnn_forward, arg("cfg"), arg("xg"), arg("w_hh"), arg("h0"),
        arg("lengths"), arg("save"), arg("rmask") = py::none(), arg("zh") = py::none());
  m.def("rnn_backward", &rnn_backward, arg("cfg"), arg("hact"), arg("w_hh"), arg("lengths"),
        arg("dy"), arg("dh"), arg("rmask") = py::none(), arg("zh") = py::none());
  m.def("lstm_train_steps", &lstm_train_steps, arg("cfg"), arg("packed"), arg("exp_avg"),
        arg("exp_avg_sq"), arg("adam_steps"), arg("live"), arg("index"), arg("sizes"), arg("x"),
        arg("targets"), arg("mask"), arg("scale"), arg("steps"), arg("activation"),
        arg("shortcut"), arg("optimizer"), arg("lr"), arg("clip"), arg("history"),
        arg("hist_avg"), arg("hist_avg_sq"), arg("hist_steps"), arg("outputs"), arg("losses"),
        arg("first"), arg("last"));
  m.def(
      "hash_mask",
      [](Tensor out, int64_t s0, int64_t s1, int64_t thr) {
        TORCH_CHECK(out.is_contiguous() && out.device().is_cpu() &&
                        (out.scalar_type() == at::kFloat || out.scalar_type() == at::kDouble),
                    "lstmkit engine: hash_mask needs a contiguous float CPU tensor");
        TORCH_CHECK(s0 >= 0 && s0 <= 0xFFFFFFFFLL && s1 >= 0 && s1 <= 0xFFFFFFFFLL && thr >= 0 &&
                        thr <= 0xFFFFFFFFLL,
                    "lstmkit engine: hash_mask seeds and threshold are 32-bit");
        AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "hash_mask", [&] {
          hash_mask_fill<scalar_t>(out.data_ptr<scalar_t>(), out.numel(), uint32_t(s0),
                                   uint32_t(s1), uint32_t(thr));
        });
        return out;
      },
      arg("out"), arg("s0"), arg("s1"), arg("thr"));
  m.def("gemm_loop", &gemm_loop, arg("a"), arg("w"), arg("c"), arg("n_steps"),
        arg("accumulate") = true, arg("trans_w") = true);
  // Test switches: each returns the previous value.
  m.def("set_blas", [](bool use) { return std::exchange(settings().use_blas, use); });
  m.def("set_kernel", [](bool use) { return std::exchange(settings().use_kernel, use); });
  m.def("set_split", [](int64_t min_rows) {
    return std::exchange(settings().split_min_rows, min_rows);
  });
  m.def("has_kernel", []() {
#if defined(__AVX512F__)
    return true;
#else
    return false;
#endif
  });
  // Which per-step GEMM float32 steps run here, for benchmark records.
  m.def("step_gemm", []() {
#if defined(__AVX512F__)
    return std::string("packed AVX-512 kernel");
#elif defined(LSTMKIT_PACKED_GEMM)
    return std::string("packed AVX2 kernel");
#else
    return std::string("BLAS");
#endif
  });
  m.def("split_parts", &split_parts);
  m.def("has_blas", []() { return sgemm_ != nullptr && dgemm_ != nullptr; });
}
