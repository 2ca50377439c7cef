// Independent partial sums and their sum by halving: the one definition of the order in
// which lane sums add, shared by the per-instruction-set passes (passes.h) and the O(N * C)
// statistics of train.cpp. Internal linkage (an anonymous namespace), as passes.h: each
// translation unit keeps its own copy, compiled for its instruction set. The standard
// headers come from kernels.h, before any target pragma.
#pragma once

#include "kernels.h"

#if defined(__GNUC__)
#define L2BN_INLINE inline __attribute__((always_inline))
#else
#define L2BN_INLINE inline
#endif

namespace l2bn {
namespace {

// Number of independent partial sums of a contiguous reduction: enough vector accumulators
// to hide the latency of the adds.
constexpr int64_t kLanes = 16;

// s[0] + ... + s[kW - 1] by halving (log2 kW dependent adds, not kW - 1): a fixed cost of
// every row, and rows are short in small maps (4x4, short 1d inputs) and (N, C) input.
// Each level is a loop of constant length, so that the wide ones vectorize (a loop over
// the levels compiles to scalar code through memory).
template <int64_t kW>
L2BN_INLINE double tree_sum(double* s) {
  if constexpr (kW == 1) {
    return s[0];
  } else {
#pragma omp simd
    for (int64_t l = 0; l < kW / 2; ++l) {
      s[l] += s[l + kW / 2];
    }
    return tree_sum<kW / 2>(s);
  }
}

// Sum of p[0..len) in kLanes independent lanes added by halving, the leftover values first.
inline double lane_sum(const double* p, int64_t len) {
  double lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= len; i += kLanes) {
#pragma omp simd
    for (int64_t l = 0; l < kLanes; ++l) {
      lanes[l] += p[i + l];
    }
  }
  double tail = 0;
  for (; i < len; ++i) {
    tail += p[i];
  }
  return tail + tree_sum<kLanes>(lanes);
}

}  // namespace
}  // namespace l2bn
