// How a cell family declares the named configuration Python passes to its kernels.
//
// Python computes every width and offset once (lstmkit/cells/layout.py) and passes them, with
// the cell's flags, by name: ``ext.LstmConfig(hidden=..., off_i=..., peephole=..., ...)``. A field
// that is missing, misspelt or unknown is an error at the seam, so adding a flag cannot silently
// shift another. Each family lists its fields once, in an X-macro table beside its kernels
// (LSTMKIT_LSTM_CONFIG in lstm_rows.h, LSTMKIT_GRU_CONFIG in gru.h, LSTMKIT_RNN_CONFIG in rnn.h);
// the table declares the struct (LSTMKIT_CONFIG_STRUCT) and, in engine.cpp, the Python
// constructor and read-only attributes. Fields named like a CellSpec attribute (peephole,
// gate_activation, ...) are filled from the spec by that name; the rest come from the layout.
#pragma once

#include "vecmath.h"

// X(type, name, meaning) for every row of TABLE.
#define LSTMKIT_DECLARE_FIELD(type, name, doc) type name{};
#define LSTMKIT_CONFIG_STRUCT(NAME, TABLE) \
  struct NAME {                            \
    TABLE(LSTMKIT_DECLARE_FIELD)           \
  };
