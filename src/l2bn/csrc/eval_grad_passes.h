// The per-sample passes of the eval-mode backward (eval_backward.cpp), compiled once per
// instruction set as the other passes (kernel_table.h): y = gain[c] * (x / rho[n] -
// mean[c]) + beta[c] with gain = gamma * invstd. Per sample, one pass for the per-channel
// sums u = sum_s dy * x and v = sum_s dy and one for ||x[n]||^2 (each square in double),
// then one for
//   dx = gain * dy / rho - x * t / (rho^2 * k * ||x||),   t = sum_c gain * u
// (k = sqrt(D) under `scale`; no term through the norm where it was clamped by l2_eps).
// Every value is taken in double, so that where dy lies along x (a loss like ||y||^2 / 2)
// the difference of the two terms loses nothing before dx is rounded to the input's dtype.
//
// Included only through kernel_table.h (internal linkage, as passes.h).
#pragma once

#include "kernels.h"
#include "passes.h"

namespace l2bn {
namespace {

// sum of g * x and of g over a row of `len` values, in double, in four accumulators each
// (consecutive additions do not wait for each other; with this instruction set's vectors,
// four lanes' worth each).
template <typename T>
L2BN_INLINE void eval_row_sums(const T* x, const T* g, int64_t len, double* sum_gx,
                               double* sum_g) {
  double a0 = 0, a1 = 0, a2 = 0, a3 = 0, b0 = 0, b1 = 0, b2 = 0, b3 = 0;
  int64_t s = 0;
  for (; s + 4 <= len; s += 4) {
    const double g0 = g[s], g1 = g[s + 1], g2 = g[s + 2], g3 = g[s + 3];
    a0 += g0 * static_cast<double>(x[s]);
    a1 += g1 * static_cast<double>(x[s + 1]);
    a2 += g2 * static_cast<double>(x[s + 2]);
    a3 += g3 * static_cast<double>(x[s + 3]);
    b0 += g0;
    b1 += g1;
    b2 += g2;
    b3 += g3;
  }
  for (; s < len; ++s) {
    a0 += static_cast<double>(g[s]) * static_cast<double>(x[s]);
    b0 += g[s];
  }
  *sum_gx = (a0 + a1) + (a2 + a3);
  *sum_g = (b0 + b1) + (b2 + b3);
}

template <typename T>
L2BN_INLINE void eval_grads(T* out, const T* dy, const T* x, const EvalGradCoefs& k,
                            int64_t i0, int64_t i1, double* xh_dy, double* dy_sum,
                            double* scratch) {
  const int64_t c = k.c, m = k.m, d = c * m;
  const double k_div = k.scale ? k.sqrt_d : 1.0;
  double* u = scratch;  // the sample's sums, then its dx coefficients
  double* v = scratch + c;
  double* coef = scratch + 2 * c;
  for (int64_t i = i0; i < i1; ++i) {
    const T* xs = x + i * d;
    const T* gs = dy + i * d;
    if (!k.channels_last) {  // c rows of m positions
      for (int64_t j = 0; j < c; ++j) {
        eval_row_sums(xs + j * m, gs + j * m, m, &u[j], &v[j]);
      }
    } else {  // m positions of c channels: each channel's sums in its own element
      std::fill(u, u + c, 0.0);
      std::fill(v, v + c, 0.0);
      for (int64_t s = 0; s < m; ++s) {
        const T* xr = xs + s * c;
        const T* gr = gs + s * c;
#pragma omp simd
        for (int64_t j = 0; j < c; ++j) {
          u[j] += static_cast<double>(gr[j]) * static_cast<double>(xr[j]);
          v[j] += static_cast<double>(gr[j]);
        }
      }
    }
    // The sample's squared norm, each square in double: rho's rounding would reach
    // dweight, through sum_n u / rho - mean * v, where channel means are large.
    const double norm_sq = exact_sum_squares<T>(xs, d);
    bool active = false;
    const double r = sample_scale(norm_sq, k.l2_eps, k.sqrt_d, k.scale, &active);
    const double inv_r = 1.0 / r;  // one division a sample, not one a channel
    if (xh_dy != nullptr) {
#pragma omp simd
      for (int64_t j = 0; j < c; ++j) {
        xh_dy[j] += u[j] * inv_r;
        dy_sum[j] += v[j];
      }
    }
    if (out == nullptr) {
      continue;
    }
    double t0 = 0, t1 = 0, t2 = 0, t3 = 0;  // t in four chains
    int64_t j = 0;
    for (; j + 4 <= c; j += 4) {
      t0 += k.gain[j] * u[j];
      t1 += k.gain[j + 1] * u[j + 1];
      t2 += k.gain[j + 2] * u[j + 2];
      t3 += k.gain[j + 3] * u[j + 3];
    }
    for (; j < c; ++j) {
      t0 += k.gain[j] * u[j];
    }
    const double t = (t0 + t1) + (t2 + t3);
    const double through_norm = active ? t / (r * r * k_div * std::sqrt(norm_sq)) : 0.0;
#pragma omp simd
    for (int64_t q = 0; q < c; ++q) {
      coef[q] = k.gain[q] * inv_r;
    }
    T* os = out + i * d;
    if (!k.channels_last) {
      for (int64_t q = 0; q < c; ++q) {
        const double a = coef[q];
        const T* gq = gs + q * m;
        const T* xq = xs + q * m;
        T* oq = os + q * m;
#pragma omp simd
        for (int64_t s = 0; s < m; ++s) {
          oq[s] = static_cast<T>(a * static_cast<double>(gq[s]) -
                                 static_cast<double>(xq[s]) * through_norm);
        }
      }
    } else {
      for (int64_t s = 0; s < m; ++s) {
        const T* gr = gs + s * c;
        const T* xr = xs + s * c;
        T* orow = os + s * c;
#pragma omp simd
        for (int64_t q = 0; q < c; ++q) {
          orow[q] = static_cast<T>(coef[q] * static_cast<double>(gr[q]) -
                                   static_cast<double>(xr[q]) * through_norm);
        }
      }
    }
  }
}

}  // namespace
}  // namespace l2bn
