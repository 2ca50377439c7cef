// The passes of L2BN on (N, C) input (paper eq. 1), one sample row of C values at a time.
//
// With one value per (n, c), per-row statistics would be as large as the input (and a fresh
// array that size costs more in page faults than a pass), so these kernels fold each row
// into per-channel sums right away and write outputs from rank-one coefficients:
//
//   channel_sums:  s1[c] += xh, s2[c] += xh^2 with xh = x * inv (forward reduction)
//   channel_dev:   d1[c] += xh - mu[c], d2[c] += (xh - mu[c])^2 (ill-conditioned channels)
//   row_output:    y = x * (gain[c] * inv) + shift[c]
//   grad_channel:  t1[c] += dy, t2[c] += dy * (xh - mu[c])     (backward reduction)
//   projection:    e = sum_c xh * (gain * dy - c1 - alpha * (xh - mu))  (l2 projection)
//   grad_row:      dx = inv * (gain * dy + beta) - inv^2 * (alpha + proj) * x
#pragma once

#include <cstdint>

#include "passes.h"

namespace l2bn {

template <typename T>
L2BN_INLINE void channel_sums(const T* x, int64_t c, double inv, double* s1, double* s2) {
#pragma omp simd
  for (int64_t k = 0; k < c; ++k) {
    const double v = x[k] * inv;
    s1[k] += v;
    s2[k] += v * v;
  }
}

template <typename T>
L2BN_INLINE void channel_dev(
    const T* x, int64_t c, double inv, const double* mu, double* d1, double* d2) {
#pragma omp simd
  for (int64_t k = 0; k < c; ++k) {
    const double v = x[k] * inv - mu[k];
    d1[k] += v;
    d2[k] += v * v;
  }
}

template <typename T>
L2BN_INLINE void row_output(
    T* out, const T* x, int64_t c, T inv, const T* gain, const T* shift) {
#pragma omp simd
  for (int64_t k = 0; k < c; ++k) {
    out[k] = x[k] * (gain[k] * inv) + shift[k];
  }
}

template <typename T>
L2BN_INLINE void grad_channel(
    const T* dy, const T* x, int64_t c, double inv, const double* mu, double* t1, double* t2) {
#pragma omp simd
  for (int64_t k = 0; k < c; ++k) {
    const double d = dy[k];
    t1[k] += d;
    t2[k] += d * (x[k] * inv - mu[k]);
  }
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

}  // namespace l2bn
