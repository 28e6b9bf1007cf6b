// Process-wide switches of the engine, in one place: which GEMM path the steps take and when batch
// rows are split across threads. The defaults are the fast paths; tests flip them (through the
// bindings' set_* functions, which return the previous value) to cover the fallbacks.
#pragma once

#include <torch/extension.h>
#include <ATen/Parallel.h>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

namespace lstmkit {

struct Settings {
  bool use_blas = true;         // false: GEMMs through ATen's addmm instead of sgemm_/dgemm_
  bool use_kernel = true;       // false: no packed step kernel and no one-pass rows
  int64_t split_min_rows = 4;   // minimum batch rows per thread for the row split (0: never)
};

inline Settings& settings() {
  static Settings s;
  return s;
}

}  // namespace lstmkit
