// The full-size passes of L2BN (DESIGN.md): every other step costs O(N * C).
//
//   sums:         s1[n, c] = sum_m x,  s2[n, c] = sum_m x^2               (forward reduction)
//   grad_sums:    t1[n, c] = sum_m dy, t2[n, c] = sum_m dy * (x - h[n, c]) (backward reduction)
//   centred:      sum_m (x - mean[n, c]) and its square, for rows whose one-pass variance
//                 would cancel (rare)
//   affine:       out = p[n, c] * u + q[n, c] * v + r[n, c]                 (outputs, eqs. 2-3)
//   sum_squares:  sum of x^2 over one contiguous block                     (eval: ||x[n]||^2)
//
// Each kernel handles a range of rows (row-wise layout) or of samples / positions
// (channel-last layout); train.cpp and eval.cpp spread the ranges over threads with
// at::parallel_for. Sums are accumulated in double.
//
// Included only through kernel_table.h, once per instruction set: everything here has
// internal linkage (an anonymous namespace), so that each kernels_<isa>.cpp keeps its own
// copy, compiled for its instruction set, and the linker never merges copies of different
// instruction sets. The standard headers come from kernels.h, before any target pragma.
#pragma once

#include "kernels.h"

#if defined(__GNUC__)
#define L2BN_INLINE inline __attribute__((always_inline))
#else
#define L2BN_INLINE inline
#endif

namespace l2bn {
namespace {

// ---- reductions ---------------------------------------------------------------------------

// Number of independent partial sums of a contiguous reduction: enough vector accumulators
// to hide the latency of the adds.
constexpr int64_t kLanes = 16;

// (sum_i u(i), sum_i v(i)) over [0, len), where term(i, u, v) sets u and v.
template <typename F>
L2BN_INLINE void reduce_pair(int64_t len, const F& term, double* out_u, double* out_v) {
  double a[kLanes] = {}, b[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= len; i += kLanes) {
#pragma omp simd
    for (int64_t l = 0; l < kLanes; ++l) {
      double u, v;
      term(i + l, u, v);
      a[l] += u;
      b[l] += v;
    }
  }
  double su = 0, sv = 0;
  for (; i < len; ++i) {
    double u, v;
    term(i, u, v);
    su += u;
    sv += v;
  }
  for (int64_t l = 0; l < kLanes; ++l) {
    su += a[l];
    sv += b[l];
  }
  *out_u = su;
  *out_v = sv;
}

template <typename T>
L2BN_INLINE void sums_rows(
    const T* x, int64_t m, int64_t r0, int64_t r1, double* s1, double* s2) {
  for (int64_t r = r0; r < r1; ++r) {
    const T* row = x + r * m;
    reduce_pair(
        m,
        [row](int64_t i, double& u, double& v) {
          u = row[i];
          v = u * u;
        },
        s1 + r, s2 + r);
  }
}

// Channel-last reductions: each sample is M positions of C values. Positions are taken a
// chunk of about kChunkValues values at a time (16 kB of float32: contiguous, and within
// L1 while its channel blocks are summed); within a chunk each block of kLanes channels
// is summed in registers and added to the output once. Leftover channels take a plain
// loop.
// term(j, k, u, v) sets the two summands of channel k at position j.
constexpr int64_t kChunkValues = 4096;

template <typename F>
L2BN_INLINE void channel_block_sums(
    int64_t c, int64_t m, const F& term, double* out_u, double* out_v) {
  for (int64_t k = 0; k < c; ++k) {
    out_u[k] = 0;
    out_v[k] = 0;
  }
  const int64_t chunk = std::max<int64_t>(1, kChunkValues / c);
  for (int64_t j0 = 0; j0 < m; j0 += chunk) {
    const int64_t j1 = std::min(m, j0 + chunk);
    int64_t k0 = 0;
    for (; k0 + kLanes <= c; k0 += kLanes) {
      double a[kLanes] = {}, b[kLanes] = {};
      for (int64_t j = j0; j < j1; ++j) {
#pragma omp simd
        for (int64_t l = 0; l < kLanes; ++l) {
          double u, v;
          term(j, k0 + l, u, v);
          a[l] += u;
          b[l] += v;
        }
      }
      for (int64_t l = 0; l < kLanes; ++l) {
        out_u[k0 + l] += a[l];
        out_v[k0 + l] += b[l];
      }
    }
    for (int64_t j = j0; j < j1; ++j) {
      for (int64_t k = k0; k < c; ++k) {
        double u, v;
        term(j, k, u, v);
        out_u[k] += u;
        out_v[k] += v;
      }
    }
  }
}

template <typename T>
L2BN_INLINE void sums_cl(
    const T* x, int64_t c, int64_t m, int64_t n0, int64_t n1, double* s1, double* s2) {
  for (int64_t n = n0; n < n1; ++n) {
    const T* sample = x + n * c * m;
    channel_block_sums(
        c, m,
        [sample, c](int64_t j, int64_t k, double& u, double& v) {
          u = sample[j * c + k];
          v = u * u;
        },
        s1 + n * c, s2 + n * c);
  }
}

template <typename T>
L2BN_INLINE void grad_sums_rows(
    const T* dy, const T* x, const double* h, int64_t m, int64_t r0, int64_t r1, double* t1,
    double* t2) {
  for (int64_t r = r0; r < r1; ++r) {
    const T* g = dy + r * m;
    const T* row = x + r * m;
    const double shift = h[r];
    reduce_pair(
        m,
        [g, row, shift](int64_t i, double& u, double& v) {
          u = g[i];
          v = u * (static_cast<double>(row[i]) - shift);
        },
        t1 + r, t2 + r);
  }
}

template <typename T>
L2BN_INLINE void grad_sums_cl(
    const T* dy, const T* x, const double* h, int64_t c, int64_t m, int64_t n0, int64_t n1,
    double* t1, double* t2) {
  for (int64_t n = n0; n < n1; ++n) {
    const T* g = dy + n * c * m;
    const T* sample = x + n * c * m;
    const double* shift = h + n * c;
    channel_block_sums(
        c, m,
        [g, sample, shift, c](int64_t j, int64_t k, double& u, double& v) {
          u = g[j * c + k];
          v = u * (static_cast<double>(sample[j * c + k]) - shift[k]);
        },
        t1 + n * c, t2 + n * c);
  }
}

// Centred sums of the rows of samples [n0, n1) around mean[n, c]: d1 = sum (x - mean),
// d2 = sum (x - mean)^2; the corrected variance is (d2 - d1^2 / M) / M.
template <typename T>
L2BN_INLINE void centred_rows(
    const T* x, const double* mean, int64_t m, int64_t r0, int64_t r1, double* d1, double* d2) {
  for (int64_t r = r0; r < r1; ++r) {
    const T* row = x + r * m;
    const double mu = mean[r];
    reduce_pair(
        m,
        [row, mu](int64_t i, double& u, double& v) {
          u = static_cast<double>(row[i]) - mu;
          v = u * u;
        },
        d1 + r, d2 + r);
  }
}

template <typename T>
L2BN_INLINE void centred_cl(
    const T* x, const double* mean, int64_t c, int64_t m, int64_t n0, int64_t n1, double* d1,
    double* d2) {
  for (int64_t n = n0; n < n1; ++n) {
    const T* sample = x + n * c * m;
    const double* mu = mean + n * c;
    channel_block_sums(
        c, m,
        [sample, mu, c](int64_t j, int64_t k, double& u, double& v) {
          u = static_cast<double>(sample[j * c + k]) - mu[k];
          v = u * u;
        },
        d1 + n * c, d2 + n * c);
  }
}

// acc[l] += x^2 over the full blocks of kLanes values of x[0, len), *tail += the rest.
template <typename T>
L2BN_INLINE void add_squares(const T* x, int64_t len, double* acc, double* tail) {
  int64_t i = 0;
  for (; i + kLanes <= len; i += kLanes) {
#pragma omp simd
    for (int64_t l = 0; l < kLanes; ++l) {
      const double v = x[i + l];
      acc[l] += v * v;
    }
  }
  for (; i < len; ++i) {
    const double v = x[i];
    *tail += v * v;
  }
}

L2BN_INLINE double lane_total(const double* acc, double tail) {
  for (int64_t l = 0; l < kLanes; ++l) {
    tail += acc[l];
  }
  return tail;
}

template <typename T>
L2BN_INLINE double sum_squares(const T* x, int64_t len) {
  double acc[kLanes] = {}, tail = 0;
  add_squares(x, len, acc, &tail);
  return lane_total(acc, tail);
}

// ---- elementwise outputs ------------------------------------------------------------------

// Rows [r0, r1) of the row-wise layout: out = p * u (+ q * v) + r, with row r = n * C + c.
template <typename T, bool kTwoInputs>
L2BN_INLINE void affine_rows(
    T* out, const T* u, const T* v, Coef<T> p, Coef<T> q, Coef<T> r, int64_t c, int64_t m,
    int64_t r0, int64_t r1) {
  int64_t n = r0 / c, k = r0 % c;  // stepped below: no division per row
  for (int64_t row = r0; row < r1; ++row) {
    const T a = p.row(n)[k], b = r.row(n)[k];
    const T* ur = u + row * m;
    T* o = out + row * m;
    if constexpr (kTwoInputs) {
      const T e = q.row(n)[k];
      const T* vr = v + row * m;
#pragma omp simd
      for (int64_t i = 0; i < m; ++i) {
        o[i] = a * ur[i] + e * vr[i] + b;
      }
    } else {
#pragma omp simd
      for (int64_t i = 0; i < m; ++i) {
        o[i] = a * ur[i] + b;
      }
    }
    if (++k == c) {
      k = 0;
      ++n;
    }
  }
}

// Positions [j0, j1) of the channel-last layout (position j = n * M + s holds C values).
template <typename T, bool kTwoInputs>
L2BN_INLINE void affine_cl(
    T* out, const T* u, const T* v, Coef<T> p, Coef<T> q, Coef<T> r, int64_t c, int64_t m,
    int64_t j0, int64_t j1) {
  int64_t n = j0 / m, s = j0 % m;  // stepped below: no division per position
  for (int64_t j = j0; j < j1; ++j) {
    const T* a = p.row(n);
    const T* b = r.row(n);
    const T* up = u + j * c;
    T* o = out + j * c;
    if constexpr (kTwoInputs) {
      const T* e = q.row(n);
      const T* vp = v + j * c;
#pragma omp simd
      for (int64_t k = 0; k < c; ++k) {
        o[k] = a[k] * up[k] + e[k] * vp[k] + b[k];
      }
    } else {
#pragma omp simd
      for (int64_t k = 0; k < c; ++k) {
        o[k] = a[k] * up[k] + b[k];
      }
    }
    if (++s == m) {
      s = 0;
      ++n;
    }
  }
}

// ---- eval: output of one sample fused with the norm of the next -------------------------
//
// A sample is `units` units of `len` contiguous values: C rows of M (row-wise, one a and b
// per row) or M positions of C (channel-last, a[c] and b[c]). kLanes partial sums run
// across the whole sample; values past the last full block of a unit go to one more.

// out[i] = a[i * kStep] * u[i] + b[i * kStep] over one unit of len values, summing next^2
// into acc / tail when kNext.
template <typename T, int kStep, bool kNext>
L2BN_INLINE void unit_output_next(
    T* out, const T* u, const T* a, const T* b, const T* next, int64_t len, double* acc,
    double* tail) {
  int64_t i = 0;
  for (; i + kLanes <= len; i += kLanes) {
#pragma omp simd
    for (int64_t l = 0; l < kLanes; ++l) {
      out[i + l] = a[(i + l) * kStep] * u[i + l] + b[(i + l) * kStep];
      if constexpr (kNext) {
        const double v = next[i + l];
        acc[l] += v * v;
      }
    }
  }
  for (; i < len; ++i) {
    out[i] = a[i * kStep] * u[i] + b[i * kStep];
    if constexpr (kNext) {
      const double v = next[i];
      *tail += v * v;
    }
  }
}

// Output of one sample, out = a * u + b, while summing next^2 (next == nullptr: output
// only, returns 0).
template <typename T, bool kNext>
L2BN_INLINE double sample_output(
    T* out, const T* u, const T* a, const T* b, const T* next, int64_t c, int64_t m, bool cl) {
  double acc[kLanes] = {}, tail = 0;
  if (cl) {
    for (int64_t j = 0; j < m; ++j) {
      unit_output_next<T, 1, kNext>(out + j * c, u + j * c, a, b, next + j * c, c, acc, &tail);
    }
  } else {
    for (int64_t k = 0; k < c; ++k) {
      unit_output_next<T, 0, kNext>(out + k * m, u + k * m, a + k, b + k, next + k * m, m, acc,
                                    &tail);
    }
  }
  return lane_total(acc, tail);
}

template <typename T>
L2BN_INLINE double sample_output_next(
    T* out, const T* u, const T* a, const T* b, const T* next, int64_t c, int64_t m, bool cl) {
  if (next == nullptr) {
    return sample_output<T, false>(out, u, a, b, u, c, m, cl);
  }
  return sample_output<T, true>(out, u, a, b, next, c, m, cl);
}

// ||x||^2 of one sample, summed exactly as sample_output_next sums `next`.
template <typename T>
L2BN_INLINE double sample_sum_squares(const T* x, int64_t c, int64_t m, bool cl) {
  const int64_t units = cl ? m : c, len = cl ? c : m;
  double acc[kLanes] = {}, tail = 0;
  for (int64_t j = 0; j < units; ++j) {
    add_squares(x + j * len, len, acc, &tail);
  }
  return lane_total(acc, tail);
}

}  // namespace
}  // namespace l2bn
