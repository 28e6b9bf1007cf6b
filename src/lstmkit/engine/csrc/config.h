// The named configuration each cell family's kernels take, as Python builds it.
//
// Python computes every width and offset once (``CellSpec.layout`` in lstmkit/cells/spec.py) and
// passes them here by name (``ext.LstmConfig(hidden=..., off_i=..., ...)``): a field that is
// missing, misspelt or unknown is an error at the seam, so adding a flag cannot silently shift
// another. Each field is listed once, in the X-macro tables below, which declare the struct,
// the Python constructor and its read-only attributes (engine.cpp). The checks here only
// guard the kernels' memory accesses; they do not recompute the layout.
#pragma once

#include "vecmath.h"

namespace lstmkit {

// X(type, name, meaning)
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
  X(bool, truncated, "the 1997 truncated gradient: no state gradient through h or the gates")   \
  X(Act, gate_act, "activation of i, f, o")                                                     \
  X(Act, input_act, "activation of the candidate g")                                            \
  X(Act, output_act, "activation of the cell state in h")

#define LSTMKIT_GRU_CONFIG(X)                                                                   \
  X(int64_t, hidden, "units per direction (H)")                                                 \
  X(bool, reset_after, "torch's placement: r multiplies (R h + b); else Cho's R (r h)")          \
  X(bool, reverse, "run from the last step to the first")                                       \
  X(Act, gate_act, "activation of r and z")                                                     \
  X(Act, input_act, "activation of the candidate n")

#define LSTMKIT_RNN_CONFIG(X)                                                                   \
  X(int64_t, hidden, "units per direction (H)")                                                 \
  X(bool, reverse, "run from the last step to the first")                                       \
  X(Act, act, "the activation")

#define LSTMKIT_DECLARE_FIELD(type, name, doc) type name{};
struct LstmConfig {
  LSTMKIT_LSTM_CONFIG(LSTMKIT_DECLARE_FIELD)
};
struct GruConfig {
  LSTMKIT_GRU_CONFIG(LSTMKIT_DECLARE_FIELD)
};
struct RnnConfig {
  LSTMKIT_RNN_CONFIG(LSTMKIT_DECLARE_FIELD)
};
#undef LSTMKIT_DECLARE_FIELD

// What the LSTM kernels read: the named configuration with the sizes of this call and a few
// quantities derived from it.
struct LstmCfg {
  int64_t T, B, H, s, nb, out, G, R, KS, KG, koff;
  int64_t off_i, off_f, off_g, off_o;  // pre-activation block offsets (-1: absent)
  int64_t aoff_i, aoff_f, aoff_o;      // offsets of the gate activations within a (G)
  bool coupled, peep, proj, hidden_rec, gate_rec, rev, trunc;
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
  c.trunc = v.truncated;
  c.ga = v.gate_act;
  c.ia = v.input_act;
  c.oa = v.output_act;
  // The recurrent input of a step is [h(t-1) | a(t-1)]; without hidden recurrence only a(t-1)
  // enters the GEMM.
  c.KS = c.out + c.G;
  c.koff = c.hidden_rec ? 0 : c.out;
  c.KG = c.KS - c.koff;
  return c;
}

}  // namespace lstmkit
