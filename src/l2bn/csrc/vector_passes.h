// The passes of L2BN on (N, C) input (paper eq. 1), one sample row of C values at a time.
//
// With one value per (n, c), per-row statistics would be as large as the input (and a fresh
// array that size costs more in page faults than a pass), so these kernels fold each row
// into per-channel sums right away and write outputs from rank-one coefficients:
//
//   tile_sums:     s1[c] = sum xh, s2[c] = sum xh^2 over a tile of rows, xh = x * inv[row]
//                  (forward reduction)
//   tile_dev:      d1[c] = sum xh - mu[c], d2[c] = sum (xh - mu[c])^2 (ill-conditioned)
//   row_output:    y = x * (gain[c] * inv) + shift[c] (row_output_next: and the next
//                  row's sum of squares, for eval)
//   tile_grad:     t1[c] = sum dy, t2[c] = sum dy * (xh - mu[c])  (backward reduction)
//   projection:    e = sum_c xh * (gain * dy - c1 - alpha * (xh - mu))  (l2 projection)
//   grad_row:      dx = inv * (gain * dy + beta) - inv^2 * (alpha + proj) * x
#pragma once

#include <cstdint>

#include "passes.h"

namespace l2bn {
namespace {  // internal linkage, as passes.h

// The tile reductions are channel_block_sums (passes.h) with rows in place of positions:
// a tile of a few rows stays in cache while blocks of channels are summed in registers.
template <typename T>
L2BN_INLINE void tile_sums(
    const T* x, int64_t rows, int64_t c, const double* inv, double* s1, double* s2) {
  channel_block_sums(
      c, rows,
      [=](int64_t r, int64_t k, double& u, double& v) {
        u = x[r * c + k] * inv[r];
        v = u * u;
      },
      s1, s2);
}

template <typename T>
L2BN_INLINE void tile_dev(
    const T* x, int64_t rows, int64_t c, const double* inv, const double* mu, double* d1,
    double* d2) {
  channel_block_sums(
      c, rows,
      [=](int64_t r, int64_t k, double& u, double& v) {
        u = x[r * c + k] * inv[r] - mu[k];
        v = u * u;
      },
      d1, d2);
}

template <typename T>
L2BN_INLINE void row_output(
    T* out, const T* x, int64_t c, T inv, const T* gain, const T* shift) {
#pragma omp simd
  for (int64_t k = 0; k < c; ++k) {
    out[k] = x[k] * (gain[k] * inv) + shift[k];
  }
}

// row_output of one row while summing next^2 (the lane order of sum_squares): eval.
template <typename T>
L2BN_INLINE double row_output_next(
    T* out, const T* x, int64_t c, T inv, const T* gain, const T* shift, const T* next) {
  double acc[kLanes] = {}, tail = 0;
  int64_t k = 0;
  for (; k + kLanes <= c; k += kLanes) {
#pragma omp simd
    for (int64_t l = 0; l < kLanes; ++l) {
      out[k + l] = x[k + l] * (gain[k + l] * inv) + shift[k + l];
      const double v = next[k + l];
      acc[l] += v * v;
    }
  }
  for (; k < c; ++k) {
    out[k] = x[k] * (gain[k] * inv) + shift[k];
    const double v = next[k];
    tail += v * v;
  }
  return lane_total(acc, tail);
}

template <typename T>
L2BN_INLINE void tile_grad(
    const T* dy, const T* x, int64_t rows, int64_t c, const double* inv, const double* mu,
    double* t1, double* t2) {
  channel_block_sums(
      c, rows,
      [=](int64_t r, int64_t k, double& u, double& v) {
        u = dy[r * c + k];
        v = u * (x[r * c + k] * inv[r] - mu[k]);
      },
      t1, t2);
}

template <typename T>
L2BN_INLINE double projection(
    const T* dy, const T* x, int64_t c, double inv, const double* gain, const double* c1,
    const double* alpha, const double* mu) {
  double e = 0, ignored = 0;
  reduce_pair(
      c,
      [=](int64_t k, double& u, double& v) {
        const double xh = x[k] * inv;
        u = 0;
        v = xh * (gain[k] * dy[k] - c1[k] - alpha[k] * (xh - mu[k]));
      },
      &ignored, &e);
  return e;
}

template <typename T>
L2BN_INLINE void grad_row(
    T* out, const T* dy, const T* x, int64_t c, T inv, T inv2, T proj, const T* gain,
    const T* beta, const T* alpha) {
#pragma omp simd
  for (int64_t k = 0; k < c; ++k) {
    out[k] = inv * (gain[k] * dy[k] + beta[k]) - inv2 * (alpha[k] + proj) * x[k];
  }
}

}  // namespace
}  // namespace l2bn
