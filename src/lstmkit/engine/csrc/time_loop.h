// The one time loop every cell family runs, and how it is threaded.
//
// Batch rows are independent through the whole recurrence, so with P threads each thread runs
// every step for its own B/P rows: one fork/join per sequence instead of several per step (each
// per-step GEMM and elementwise pass would otherwise fork and join, which costs tens of
// microseconds per step when idle OpenMP threads sleep). Inside the OpenMP region the BLAS runs
// each thread's GEMM on that thread alone (MKL's default for nested calls). With too few rows per
// thread the per-step GEMM is better split across its columns (StepGemm's panels, or the BLAS's
// own threads): below settings().split_min_rows rows per thread the steps run on all rows at
// once, each step's GEMM threaded by columns, and the elementwise pass by row chunks.
//
// Lengths (right padding): a row whose sequence has ended is "padded" at that step; the cell
// families keep its state, write zero outputs and pass its state gradient through unchanged.
#pragma once

#include "settings.h"

namespace lstmkit {

using at::Tensor;

template <typename T>
const T* ptr_or_null(const Tensor& t) {
  return t.defined() && t.numel() > 0 ? t.data_ptr<T>() : nullptr;
}

// Row ranges for at::parallel_for: enough elementwise work per task to pay for the fork.
inline int64_t grain_rows(int64_t row_work) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, row_work));
}

// Which rows are still inside their sequence at time t.
struct Valid {
  const int64_t* len = nullptr;
  inline bool operator()(int64_t b, int64_t t) const { return len == nullptr || t < len[b]; }
};

inline Valid make_valid(const Tensor& lengths) {
  Valid v;
  if (lengths.defined() && lengths.numel() > 0) v.len = lengths.data_ptr<int64_t>();
  return v;
}

// How many thread parts the rows of a batch of B are split into (1: not split).
// How many rows from r0 a step's GEMM must cover: up to the last row of [r0, r1) still inside
// its sequence at step t. The rows after it are finished (their GEMM results would be thrown
// away); with the batch sorted longest first, as the engine's Python side sorts it, that is
// every finished row.
inline int64_t active_rows(const Valid& valid, int64_t t, int64_t r0, int64_t r1) {
  if (valid.len == nullptr) return r1 - r0;
  int64_t last = r1;
  while (last > r0 && !valid(last - 1, t)) --last;
  return last - r0;
}

inline int64_t split_parts(int64_t B) {
  if (settings().split_min_rows <= 0 || at::in_parallel_region()) return 1;
  const int64_t P = at::get_num_threads();
  return std::max<int64_t>(1, std::min<int64_t>(P, B / settings().split_min_rows));
}

// run(r0, r1) does all steps for rows [r0, r1); split across threads by rows where that pays.
template <typename F>
void over_rows(int64_t B, const F& run) {
  const int64_t parts = split_parts(B);
  if (parts <= 1) {
    run(int64_t(0), B);
    return;
  }
  at::parallel_for(0, B, (B + parts - 1) / parts, run);
}

// Buffer slot of state index i (0..T): every index when saving for backward, else a ring of 2.
inline int64_t slot(int64_t i, bool full) { return full ? i : (i & 1); }

// One step as a loop body sees it. States are indexed 0..T: the state before time t is `prev`,
// the one after it `next` (t and t + 1 forward in time; t + 1 and t in the reverse direction).
struct Step {
  int64_t t;     // time index of the step's input and output
  int64_t k;     // position in processing order (0: the first step this loop runs)
  int64_t prev;  // state index the step reads
  int64_t next;  // state index the step writes (forward) or whose gradient it consumes
};

// The time loop: body(step, r0, r1) for every step of a T-step sequence, each thread for its rows
// [r0, r1). Steps run in the direction's order (reverse: from t = T-1 down), and in the opposite
// order for backward.
template <typename F>
void time_loop(int64_t T, int64_t B, bool reverse, bool backward, const F& body) {
  over_rows(B, [&](int64_t r0, int64_t r1) {
    for (int64_t k = 0; k < T; ++k) {
      const int64_t pos = backward ? T - 1 - k : k;
      const int64_t t = reverse ? T - 1 - pos : pos;
      body(Step{t, k, reverse ? t + 1 : t, reverse ? t : t + 1}, r0, r1);
    }
  });
}

// One step's elementwise pass over rows [r0, r1) in parallel chunks: row(b, scratch) for rows
// inside their sequence, padded(b) for rows past their end. Each chunk gets `scratch` values of
// working memory of its own.
template <typename T, typename Row, typename Pad>
void for_rows(int64_t r0, int64_t r1, int64_t grain, int64_t scratch, const Valid& valid,
              int64_t t, const Row& row, const Pad& padded) {
  at::parallel_for(r0, r1, grain, [&](int64_t b0, int64_t b1) {
    std::vector<T> tmp(static_cast<size_t>(scratch));
    for (int64_t b = b0; b < b1; ++b) {
      if (valid(b, t)) {
        row(b, tmp.data());
      } else {
        padded(b);
      }
    }
  });
}

}  // namespace lstmkit
