// The O(N * C) statistics of training between the passes over x (train.cpp), in double:
// loops over the channels, compiled per instruction set like the passes (kernel_table.h),
// so that they run in the widest vectors the processor has. Small maps with many channels
// (2x2, 4x4) have a quarter or an eighth as many of these values as of x. Each sum over the
// samples adds them in order, one channel per lane: no split depends on the thread count.
// Internal linkage, as passes.h.
#pragma once

#include "kernels.h"

namespace l2bn {
namespace {

// Channel statistics of xh = x / rho (eq. 2) from the row moments xm, xv [N, C] and
// inv[i] = 1 / rho[i]: mean[k] = sum_i xm[i, k] inv[i] / N and the biased variance
// var[k] = sum_i (xv[i, k] inv[i]^2 + (xm[i, k] inv[i] - mean[k])^2) / N (within-row plus
// between-row: no difference of nearly equal sums).
inline void channel_moments(const double* xm, const double* xv, const double* inv, int64_t n,
                            int64_t c, double* mean, double* var) {
  std::fill(mean, mean + c, 0.0);
  std::fill(var, var + c, 0.0);
  for (int64_t i = 0; i < n; ++i) {
    const double* xmi = xm + i * c;
#pragma omp simd
    for (int64_t k = 0; k < c; ++k) {
      mean[k] += xmi[k] * inv[i];
    }
  }
  for (int64_t k = 0; k < c; ++k) {
    mean[k] /= static_cast<double>(n);
  }
  for (int64_t i = 0; i < n; ++i) {
    const double* xmi = xm + i * c;
    const double* xvi = xv + i * c;
#pragma omp simd
    for (int64_t k = 0; k < c; ++k) {
      const double d = xmi[k] * inv[i] - mean[k];
      var[k] += xvi[k] * inv[i] * inv[i] + d * d;
    }
  }
  for (int64_t k = 0; k < c; ++k) {
    var[k] /= static_cast<double>(n);
  }
}

// Backward: dbeta[k] = sum_i t1[i, k] and dgamma[k] = sum_i t2[i, k] inv[i] (the latter
// before its invstd factor) from the per-row sums t1, t2 [N, C] of the reduction pass.
inline void channel_grad_sums(const double* t1, const double* t2, const double* inv, int64_t n,
                              int64_t c, double* dbeta, double* dgamma) {
  std::fill(dbeta, dbeta + c, 0.0);
  std::fill(dgamma, dgamma + c, 0.0);
  for (int64_t i = 0; i < n; ++i) {
    const double* r1 = t1 + i * c;
    const double* r2 = t2 + i * c;
#pragma omp simd
    for (int64_t k = 0; k < c; ++k) {
      dbeta[k] += r1[k];
      dgamma[k] += r2[k] * inv[i];
    }
  }
}

// Backward: proj[i] = e[i] * inv_d with e[i] = sum_c xh * dxh of sample i, the projection of
// the l2 normalization (l2bn/_impl/pytorch.py, input_grad), from the row moments and the
// per-row sums; zero for samples whose norm was clamped (active[i] false). The per-channel
// factors: gain = weight * invstd, e_beta and e_gamma (ProjectionFactors).
inline void projections(const double* xm, const double* xv, const double* t1, const double* t2,
                        const double* inv, const bool* active, const ProjectionFactors& f,
                        int64_t n, int64_t c, double* proj) {
  // The factors in locals: read through f, they would be loaded again after every store
  // to proj, and the loop over the channels would not vectorize as contiguous loads.
  const double* mu = f.mu;
  const double* gain = f.gain;
  const double* e_beta = f.e_beta;
  const double* e_gamma = f.e_gamma;
  for (int64_t i = 0; i < n; ++i) {
    const double in = inv[i], in2 = in * in;
    const double* xmi = xm + i * c;
    const double* xvi = xv + i * c;
    const double* t1i = t1 + i * c;
    const double* t2i = t2 + i * c;
    double e = 0;
#pragma omp simd reduction(+ : e)
    for (int64_t k = 0; k < c; ++k) {
      const double m = xmi[k] * in, v = xvi[k] * in2;
      const double xh_dy = t2i[k] * in + mu[k] * t1i[k];  // sum_s xh * dy
      const double xh_zc = v + m * (m - mu[k]);  // sum_s xh * z, over invstd * M
      e += gain[k] * (xh_dy - e_beta[k] * m - e_gamma[k] * xh_zc);
    }
    proj[i] = active[i] ? e * f.inv_d : 0.0;
  }
}

}  // namespace
}  // namespace l2bn
