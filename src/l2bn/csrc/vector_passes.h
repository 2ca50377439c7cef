// The passes of L2BN on (N, C) input (paper eq. 1), one sample row of C values at a time.
//
// With one value per (n, c), per-row statistics would be as large as the input (and a fresh
// array that size costs more in page faults than a pass), so these kernels fold each row
// into per-channel sums right away and write outputs from rank-one coefficients:
//
//   tile_sums:     s1[c] += sum d, s2[c] += sum d^2 over a tile of rows, d = xh - shift[c],
//                  xh = x * inv[row] (forward reduction; float input in float lanes)
//   tile_dev:      d1[c] += sum xh - mu[c], d2[c] += sum (xh - mu[c])^2 (ill-conditioned)
//   row_output:    y = x * (gain[c] * inv) + shift[c] (row_output_next: and the next
//                  row's sum of squares, for eval; rows_output: a range of rows)
//   rows_scales:   rho = max(||x[n]||, l2_eps) / sqrt(D) and 1 / rho of each row of a tile
//   tile_grad:     t1[c] += sum dy, t2[c] += sum dy * (xh - mu[c])  (backward reduction;
//                  fast float: row by row, not in channel blocks)
//   projection:    e = sum_c xh * (gain * dy - c1 - alpha * (xh - mu))  (l2 projection)
//
// Every tile kernel adds to its outputs. `fast` (well-conditioned channels: mean at most a
// few standard deviations) lets float input use float lanes where differences of nearly
// equal values could otherwise cancel.
//   grad_row:      dx = inv * (gain * dy + beta) - inv^2 * (alpha + proj) * x
//   finish_row:    dx = inv * g - inv^2 * proj * x, g = gain * dy + beta - alpha * inv * x
//                  written by the projection (fast float)
//   grad_rows:     projection and grad_row (or finish_row) of each sample (m rows) of a range
#pragma once

#include <cstdint>

#include "passes.h"

namespace l2bn {
namespace {  // internal linkage, as passes.h

// The tile reductions are channel_block_sums (passes.h) with rows in place of positions:
// a tile of at most kMaxTileRows rows stays in cache while blocks of channels are summed
// in registers. Float input: float lanes, folded into double every kFold rows in channel
// blocks, and once per tile (at most kMaxTileRows rows: the backward's kGradTileRows,
// kernels.h) in span_sums.
constexpr int64_t kMaxTileRows = kGradTileRows;

// Channels per span of the row-by-row float sums (span_sums: tile_grad, and tile_sums at
// C > kGradSpan): 2 kB of float partials each.
// Row by row, each row's span is read contiguously and the partials stay in L1; in channel
// blocks (add_channel_block_sums_f) the tile is swept with a stride of C values, which
// measured slower here (1 thread, reduction alone: 1024x512 118 -> 91 us, 256x2048
// 186 -> 114 us, 4096x128 116 -> 85 us).
constexpr int64_t kGradSpan = 512;
// Rows of at most this many channels: tile_grad sums a tile in channel blocks, in registers
// across its rows (row by row, each row's add reads the float partials the previous row
// stored; at C = 32 that chain measured 10% of the backward: 16384x32 backward operator,
// 1 thread, 1.18 -> 1.03 of ATen's).
constexpr int64_t kGradBlockMax = 64;
static_assert(kMaxTileRows >= kFold, "the forward's tiles (kFold rows) fit the row arrays");

// Row by row (rows in order, each read contiguously) into float partial sums of a span of
// kGradSpan channels kept in L1, then folded into double: o1, o2 += the sums over the
// tile's at most kFold rows. term(r, k, u, v) sets row r's pair of float terms of channel
// k; the first row sets the partials, the others add to them.
template <typename Term>
L2BN_INLINE void span_sums(int64_t rows, int64_t c, const Term& term, double* o1,
                           double* o2) {
  if (rows == 0) {
    return;
  }
  alignas(64) float pa[kGradSpan], pb[kGradSpan];
  for (int64_t k0 = 0; k0 < c; k0 += kGradSpan) {
    const int64_t w = std::min(kGradSpan, c - k0);
#pragma omp simd
    for (int64_t k = 0; k < w; ++k) {
      float u, v;
      term(0, k0 + k, u, v);
      pa[k] = u;
      pb[k] = v;
    }
    for (int64_t r = 1; r < rows; ++r) {
#pragma omp simd
      for (int64_t k = 0; k < w; ++k) {
        float u, v;
        term(r, k0 + k, u, v);
        pa[k] += u;
        pb[k] += v;
      }
    }
    double* u = o1 + k0;
    double* v = o2 + k0;
#pragma omp simd
    for (int64_t k = 0; k < w; ++k) {
      u[k] += pa[k];
      v[k] += pb[k];
    }
  }
}

template <typename T>
L2BN_INLINE void tile_sums(
    const T* x, int64_t rows, int64_t c, const double* inv, const T* shift, double* s1,
    double* s2) {
  if constexpr (std::is_same_v<T, float>) {
    float in[kMaxTileRows];
    for (int64_t r = 0; r < rows; ++r) {
      in[r] = static_cast<float>(inv[r]);
    }
    if (c > kGradSpan) {
      span_sums(
          rows, c,
          [x, c, shift, &in](int64_t r, int64_t k, float& u, float& v) {
            u = x[r * c + k] * in[r] - shift[k];
            v = u * u;
          },
          s1, s2);
      return;
    }
    add_channel_block_sums_f(
        c, rows, Streams<float>{x, nullptr},
        [x, c, shift, &in](int64_t r, int64_t k, auto& u, auto& v) {
          using V = std::decay_t<decltype(u)>;
          u = load<V>(x + r * c + k) * in[r] - load<V>(shift + k);
          v = u * u;
        },
        s1, s2);
  } else {
    add_channel_block_sums(
        c, rows, Streams<T>{x, nullptr},
        [=](int64_t r, int64_t k, double& u, double& v) {
          u = x[r * c + k] * inv[r] - shift[k];
          v = u * u;
        },
        s1, s2);
  }
}

template <typename T>
L2BN_INLINE void tile_dev(
    const T* x, int64_t rows, int64_t c, const double* inv, const double* mu, double* d1,
    double* d2) {
  add_channel_block_sums(
      c, rows, Streams<T>{x, nullptr},
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

// Rows shorter than one step of sum_squares (32 values) are summed a group of kVD rows at a
// time: double vectors of kVD lanes, the lanes of several rows side by side.
typedef double vd __attribute__((vector_size(L2BN_VECTOR_BYTES)));
constexpr int kVD = static_cast<int>(kVF / 2);  // doubles a vector

L2BN_INLINE vd load_vd(const double* p) {
  vd v;
  __builtin_memcpy(&v, p, sizeof(vd));
  return v;
}

// Index p of the halving step that adds lane l + L / 2 of a row to its lane l (kHigh: the
// l + L / 2 operand) when vectors a and b hold R rows of L lanes each (R * L = kVD, a's rows
// first): row j = p / (L / 2) of the 2R rows, lane l = p % (L / 2).
template <int kR, int kL, bool kHigh>
constexpr int halving_index(int p) {
  const int j = p / (kL / 2), l = p % (kL / 2) + (kHigh ? kL / 2 : 0);
  return (j < kR ? 0 : kVD) + (j % kR) * kL + l;
}

template <int kR, int kL, int... P>
L2BN_INLINE vd halving_step(vd a, vd b, std::integer_sequence<int, P...>) {
  return __builtin_shufflevector(a, b, halving_index<kR, kL, false>(P)...) +
         __builtin_shufflevector(a, b, halving_index<kR, kL, true>(P)...);
}

// v[0, kN): kN vectors of kVD / kN rows of kN lanes each, rows in order; halves the lanes
// until one vector holds the kVD rows' sums, in row order.
template <int kN>
L2BN_INLINE vd halve_rows(vd* v) {
  if constexpr (kN == 1) {
    return v[0];
  } else {
    constexpr int kR = kVD / kN, kL = kN;  // rows per vector, lanes per row
#pragma GCC unroll 16
    for (int i = 0; i < kN / 2; ++i) {
      v[i] = halving_step<kR, kL>(v[2 * i], v[2 * i + 1],
                                  std::make_integer_sequence<int, kVD>{});
    }
    return halve_rows<kN / 2>(v);
  }
}

// Half of a float vector's lanes (kHigh: the upper half) widened to double.
template <bool kHigh, int... P>
L2BN_INLINE vd widen_half(vf s, std::integer_sequence<int, P...>) {
  return __builtin_convertvector(__builtin_shufflevector(s, s, (kHigh ? kVD : 0) + P...), vd);
}

// The rows [0, rows) in groups of kVD: row(r, v, tail) sets row r's lanes after the first
// level of tree_sum<kVF> (v) and the double sum of its values after its whole vectors
// (tail); out(r, tail, lanes) takes them with the rest of the halving (tree_sum's bits),
// row by row in order.
template <typename Row, typename Out>
L2BN_INLINE void halve_row_groups(int64_t rows, const Row& row, const Out& out) {
  for (int64_t r0 = 0; r0 < rows; r0 += kVD) {
    const int64_t n = std::min<int64_t>(kVD, rows - r0);
    vd v[kVD];
    double tail[kVD];
#pragma GCC unroll 16
    for (int64_t r = 0; r < kVD; ++r) {
      v[r] = vd{};
      tail[r] = 0;
      if (r < n) {
        row(r0 + r, v[r], tail[r]);
      }
    }
    const vd lanes = halve_rows<kVD>(v);
    for (int64_t r = 0; r < n; ++r) {
      out(r0 + r, tail[r], lanes[r]);
    }
  }
}

// Squared norms of short float rows (c < SquareSum<float>::kWidth values: one step of
// sum_squares is longer than the row), kVD rows at a time, in the bits of sum_squares: each
// row's whole vectors squared and added in float (SquareSum::rest and fold), widened to
// double and added by halving (tree_sum) with the lanes of kVD rows side by side in
// vectors, so that each level of the halving is one add for kVD rows instead of one a row;
// then the values after the whole vectors, one by one in double, before the lanes
// (SquareSum::total). Row by row, the lane sums were most of an (N, 16) norm.
L2BN_INLINE void short_rows_sum_squares(const float* x, int64_t rows, int64_t c,
                                        double* out) {
  constexpr auto half = std::make_integer_sequence<int, kVD>{};
  halve_row_groups(
      rows,
      [&](int64_t r, vd& v, double& tail) {
        SquareSum<float> acc;
        acc.rest(x + r * c, c);
        const vf s = acc.lanes();
        tail = acc.tail;
        v = widen_half<false>(s, half) + widen_half<true>(s, half);  // lanes l and l + kVD
      },
      [&](int64_t r, double tail, double lanes) { out[r] = tail + lanes; });
}

// Rows [0, rows) of a tile (one sample each): inv[r] = 1 / rho with rho = max(||row r||,
// l2_eps) / divisor (divisor: sqrt(C) under the scale of eq. 3, else 1) and, when given,
// rho[r] and active[r] = ||row r|| > l2_eps; the norms summed as sum_squares sums them. The
// bits of sample_scale (common.h), in loops without branches compiled for this instruction
// set, so that a tile's square roots and divisions go in the widest vectors (row by row,
// each waits on its own: a fixed cost of every row, which dominates (N, C) input with few
// channels). One call a tile instead of one a row.
template <typename T>
L2BN_INLINE void rows_scales(const T* x, int64_t rows, int64_t c, double l2_eps,
                             double divisor, double* rho, bool* active, double* inv) {
  bool done = false;
  if constexpr (std::is_same_v<T, float>) {
    if (c < SquareSum<float>::kWidth) {
      short_rows_sum_squares(x, rows, c, inv);  // the squared norms, for now
      done = true;
    }
  }
  if (!done) {
    for (int64_t r = 0; r < rows; ++r) {
      inv[r] = sum_squares<T>(x + r * c, c);  // the squared norms, for now
    }
  } else {
    for (int64_t r = 0; r < rows; ++r) {
      inv[r] = finite_squares(inv[r], x + r * c, c);
    }
  }
#pragma omp simd
  for (int64_t r = 0; r < rows; ++r) {
    inv[r] = std::sqrt(inv[r]);  // the norms
  }
  if (active != nullptr) {
    for (int64_t r = 0; r < rows; ++r) {
      active[r] = inv[r] > l2_eps;
    }
  }
#pragma omp simd
  for (int64_t r = 0; r < rows; ++r) {
    const double clamped = inv[r] < l2_eps ? l2_eps : inv[r];  // std::max: NaN stays NaN
    const double rho_r = clamped / divisor;  // x / 1.0 == x: sample_scale's bits unscaled
    if (rho != nullptr) {
      rho[r] = rho_r;
    }
    inv[r] = 1.0 / rho_r;
  }
}

// row_output of rows [i0, i1), each with its inv[i] (1 / rho, rounded once, from double).
template <typename T>
L2BN_INLINE void rows_output(
    T* out, const T* x, int64_t c, int64_t i0, int64_t i1, const double* inv, const T* gain,
    const T* shift) {
  for (int64_t i = i0; i < i1; ++i) {
    row_output<T>(out + i * c, x + i * c, c, static_cast<T>(inv[i]), gain, shift);
  }
}

// row_output of one row while summing next^2 (in the steps of sum_squares): eval.
template <typename T>
L2BN_INLINE double row_output_next(
    T* out, const T* x, int64_t c, T inv, const T* gain, const T* shift, const T* next) {
  constexpr int64_t w = SquareSum<T>::kWidth;
  SquareSum<T> acc;
  int64_t k = 0;
  for (; k + w <= c; k += w) {
#pragma omp simd
    for (int64_t l = 0; l < w; ++l) {
      out[k + l] = x[k + l] * (gain[k + l] * inv) + shift[k + l];
    }
    acc.step(next + k);
  }
  acc.rest(next + k, c - k);
  for (; k < c; ++k) {
    out[k] = x[k] * (gain[k] * inv) + shift[k];
  }
  return finite_squares(acc.total(), next, c);
}

template <typename T>
L2BN_INLINE void tile_grad(
    const T* dy, const T* x, int64_t rows, int64_t c, const double* inv, const double* mu,
    const T* mu_t, bool fast, double* t1, double* t2) {
  if constexpr (std::is_same_v<T, float>) {
    if (fast) {
      float in[kMaxTileRows];
      for (int64_t r = 0; r < rows; ++r) {
        in[r] = static_cast<float>(inv[r]);
      }
      const auto term = [dy, x, c, mu_t, &in](int64_t r, int64_t k, auto& u, auto& v) {
        using V = std::decay_t<decltype(u)>;
        u = load<V>(dy + r * c + k);
        v = u * (load<V>(x + r * c + k) * in[r] - load<V>(mu_t + k));
      };
      if (c <= kGradBlockMax) {
        add_channel_block_sums_f(c, rows, Streams<float>{dy, x}, term, t1, t2);
      } else {
        span_sums(rows, c, term, t1, t2);
      }
      return;
    }
  }
  add_channel_block_sums(
      c, rows, Streams<T>{dy, x},
      [=](int64_t r, int64_t k, double& u, double& v) {
        u = dy[r * c + k];
        v = u * (x[r * c + k] * inv[r] - mu[k]);
      },
      t1, t2);
}

// What projection_lanes also does at each vector (and each value after the vectors) of its
// row: nothing, or the finish_row of the row before (FinishedRow, below).
struct NoOtherRow {
  L2BN_INLINE void vector(int64_t) const {}
  L2BN_INLINE void one(int64_t) const {}
};

// The fast float projection of one row before its lanes are added: g written to g_out
// (when given), x * g summed into se (float lanes folded into double: FoldedLanes) and, for
// the values after the whole vectors, returned in double. projection adds them. `other`
// runs at the same positions of another row.
template <typename OtherRow = NoOtherRow>
L2BN_INLINE double projection_lanes(
    const float* dy, const float* x, int64_t c, float inv_f, const float* gain_t,
    const float* alpha_t, const float* beta2_t, float* g_out, FoldedLanes& se,
    const OtherRow& other = OtherRow{}) {
  constexpr int kN = static_cast<int>(32 / kVF);
  vf pe[kN];
#pragma GCC unroll 8
  for (int q = 0; q < kN; ++q) {
    pe[q] = vf{};
  }
  double te = 0;
  // The kVF values at i: g (written to g_out), and x * g added to pe[q].
  const auto add_vector = [&](int64_t i, int q) {
    const vf xq = load<vf>(x + i);
    const vf g = load<vf>(gain_t + i) * load<vf>(dy + i) + load<vf>(beta2_t + i) -
                 load<vf>(alpha_t + i) * xq * inv_f;
    if (g_out != nullptr) {
      __builtin_memcpy(g_out + i, &g, sizeof(vf));
    }
    pe[q] += xq * g;
    other.vector(i);
  };
  int64_t k = 0;
  int steps = 0;
  for (; k + 32 <= c; k += 32) {
#pragma GCC unroll 8
    for (int q = 0; q < kN; ++q) {
      add_vector(k + q * kVF, q);
    }
    if (++steps == kFold || k + 64 > c) {
#pragma GCC unroll 8
      for (int q = 0; q < kN; ++q) {
        se.fold(pe[q]);
        pe[q] = vf{};
      }
      steps = 0;
    }
  }
  // Whole vectors left (the last step folded its lanes): one term a lane each, folded
  // once; then the values one by one.
  if (k + kVF <= c) {
    for (int q = 0; k + kVF <= c; k += kVF, ++q) {
      add_vector(k, q);
    }
#pragma GCC unroll 8
    for (int q = 0; q < kN; ++q) {
      se.fold(pe[q]);
    }
  }
  for (; k < c; ++k) {
    const float g = gain_t[k] * dy[k] + beta2_t[k] - alpha_t[k] * x[k] * inv_f;
    if (g_out != nullptr) {
      g_out[k] = g;
    }
    te += static_cast<double>(x[k]) * g;
    other.one(k);
  }
  return te;
}

// e = sum_c xh * (gain * dy - c1 - alpha * (xh - mu)). Fast float form: the same sum as
// inv * sum_c x * g, g = gain * dy + beta2 - alpha * inv * x (beta2 = alpha * mu - c1: g is
// the gradient of the normalized value), each g in float and the products in float lanes
// folded into double every kFold steps; g cancels when the means dominate, hence only for
// well-conditioned channels. One sum a row, not two: its fold and lane sum are a fixed
// cost of every row, which dominates short rows.
// With `g_out` (float input, `fast` only), each g is also written there: dx is then
// inv * g - inv^2 * proj * x (finish_row), two streams instead of grad_row's five.
template <typename T>
L2BN_INLINE double projection(
    const T* dy, const T* x, int64_t c, double inv, const double* gain, const double* c1,
    const double* alpha, const double* mu, const T* gain_t, const T* alpha_t, const T* beta2_t,
    bool fast, T* g_out = nullptr) {
  if constexpr (std::is_same_v<T, float>) {
    if (fast) {
      FoldedLanes se;
      const double te = projection_lanes(dy, x, c, static_cast<float>(inv), gain_t, alpha_t,
                                         beta2_t, g_out, se);
      return inv * (te + se.sum());
    }
  }
  return reduce_one(c, [=](int64_t k) {
    const double xh = x[k] * inv;
    return xh * (gain[k] * dy[k] - c1[k] - alpha[k] * (xh - mu[k]));
  });
}

// projection of rows shorter than 32 values (fast float, one row a sample): e[r] for the
// rows [0, rows) of a tile, g written to g_out, kVD rows at a time with their lanes added
// by halving side by side in vectors (short_rows_sum_squares): projection's bits.
L2BN_INLINE void short_projections(const float* dy, const float* x, float* g_out, int64_t rows,
                                   int64_t c, const double* inv, const RowGradCoefs<float>& k,
                                   double* e) {
  halve_row_groups(
      rows,
      [&](int64_t r, vd& v, double& te) {
        FoldedLanes se;
        te = projection_lanes(dy + r * c, x + r * c, c, static_cast<float>(inv[r]), k.gain_t,
                              k.alpha_t, k.beta2_t, g_out + r * c, se);
        if (se.any) {  // else the lanes are zeros and sum to 0, as FoldedLanes::sum()
          v = load_vd(se.v) + load_vd(se.v + kVD);
        }
      },
      [&](int64_t r, double te, double lanes) { e[r] = inv[r] * (te + lanes); });
}

// (inv2: inv^2, or inv for a sample of huge norm, x_scale then inv: SquareFactor.)
template <typename T>
L2BN_INLINE void grad_row(
    T* out, const T* dy, const T* x, int64_t c, T inv, T inv2, T proj, const T* gain,
    const T* beta, const T* alpha, T x_scale) {
#pragma omp simd
  for (int64_t k = 0; k < c; ++k) {
    out[k] = inv * (gain[k] * dy[k] + beta[k]) - inv2 * (alpha[k] + proj) * (x[k] * x_scale);
  }
}

// dx = inv * g - q * x over a row whose g the projection wrote to out (q = inv^2 * proj, or
// inv * proj with x_scale inv: SquareFactor).
template <typename T>
L2BN_INLINE void finish_row(T* out, const T* x, int64_t c, T inv, T q, T x_scale) {
#pragma omp simd
  for (int64_t k = 0; k < c; ++k) {
    out[k] = inv * out[k] - q * (x[k] * x_scale);
  }
}

// Samples [i0, i1) of dx, k.m rows each: each sample's projection e (the sum of its rows'
// projections; zero where the sample's norm was clamped, divided by D = C * m under
// `scale`), then grad_row of each of its rows, in one call (per-row work through the kernel
// table measured about 30 ns of fixed cost a row). Samples go in tiles that stay in L1
// (at most kGradTile): the tile's inverse norms, then its projections, then its rows of dx,
// so that the latency of each sample's division and lane sums overlaps the next sample's
// work instead of holding up its own output (16384x32 backward, 1 thread, 806 -> 423 us
// with the single-sum projection). Each sample is read twice, the second time from L1.
// (Coefficient rows p, q, r per sample, dx = p * dy + q * x + r as grad_output, measured no
// faster on 2x2 to 4x4 maps: slower at 2x2 and 3x3, within the noise at 4x4.)
constexpr int64_t kGradTile = 16;

// finish_row of a row whose g the projection wrote to out, a vector (or a value) at a
// time: projection_lanes runs it inside the next row's projection (pipelined_grad_rows).
struct FinishedRow {
  float* out;
  const float* x;
  float inv, q, x_scale;
  L2BN_INLINE void vector(int64_t i) const {
    const vf r = inv * load<vf>(out + i) - q * (load<vf>(x + i) * x_scale);
    __builtin_memcpy(out + i, &r, sizeof(vf));
  }
  L2BN_INLINE void one(int64_t k) const { out[k] = inv * out[k] - q * (x[k] * x_scale); }
};

// grad_rows of rows of kPipelinedMin to kPipelinedMax values, one a sample (fast float):
// each row's projection runs in one loop with the finish of the row before it, so that the
// loads of dy and x keep coming while the previous row's dx is written from L1. With the
// projections of a tile first and then their rows of dx, the memory streams stopped for
// each tile's second pass: from cold caches (the output's memory, and dy and x, out of L2)
// that pass cost 1.16-1.21x ATen's at 1024x512, 2 threads, 1.00-1.02x pipelined
// (benchmarks/bench_cold_backward.py). The loop keeps five rows in L1 (dy, x and dx of one
// row, x and dx of the one before): 20 kB at 1024 values. At 4096 they no longer fit, and
// the pipelined pass measured slower than tiles of one row (64x4096: 0.91-1.15x ATen's
// warm against 0.74x).
constexpr int64_t kPipelinedMin = 32;
constexpr int64_t kPipelinedMax = 1024;
L2BN_INLINE void pipelined_grad_rows(float* out, const float* dy, const float* x, int64_t c,
                                     int64_t i0, int64_t i1, const RowGradCoefs<float>& k,
                                     double per_value) {
  FinishedRow before{};
  for (int64_t i = i0; i < i1; ++i) {
    const double inv = 1.0 / k.rho[i];
    const float inv_f = static_cast<float>(inv);
    FoldedLanes se;
    const double te =
        i == i0 ? projection_lanes(dy + i * c, x + i * c, c, inv_f, k.gain_t, k.alpha_t,
                                   k.beta2_t, out + i * c, se)
                : projection_lanes(dy + i * c, x + i * c, c, inv_f, k.gain_t, k.alpha_t,
                                   k.beta2_t, out + i * c, se, before);
    const double proj = k.active[i] ? inv * (te + se.sum()) * per_value : 0.0;
    const SquareFactor<float> f(inv);
    before = FinishedRow{out + i * c, x + i * c, inv_f, static_cast<float>(f.rest * proj),
                         f.x_scale};
  }
  if (i1 > i0) {
    finish_row<float>(before.out, before.x, c, before.inv, before.q, before.x_scale);
  }
}

template <typename T>
L2BN_INLINE void grad_rows(
    T* out, const T* dy, const T* x, int64_t c, int64_t i0, int64_t i1,
    const RowGradCoefs<T>& k) {
  const int64_t d = c * k.m;
  const double per_value = k.scale ? 1.0 / static_cast<double>(d) : 1.0;
  // dy and x of a tile within 16 kB, half of L1.
  const int64_t tile = std::clamp<int64_t>(8 * 1024 / (d * static_cast<int64_t>(sizeof(T))), 1,
                                           kGradTile);
  const bool store = std::is_same_v<T, float> && k.fast;
  if constexpr (std::is_same_v<T, float>) {
    if (store && k.m == 1 && c >= kPipelinedMin && c <= kPipelinedMax) {
      pipelined_grad_rows(out, dy, x, c, i0, i1, k, per_value);
      return;
    }
  }
  // Rows shorter than 32 values, one a sample: their projections a group at a time.
  const bool short_rows = store && k.m == 1 && c < 32;
  double inv[kGradTile], proj[kGradTile], short_e[kGradTile];
  for (int64_t t0 = i0; t0 < i1; t0 += tile) {
    const int64_t rows = std::min(tile, i1 - t0);
    for (int64_t r = 0; r < rows; ++r) {
      inv[r] = 1.0 / k.rho[t0 + r];
    }
    if constexpr (std::is_same_v<T, float>) {
      if (short_rows) {
        short_projections(dy + t0 * d, x + t0 * d, out + t0 * d, rows, c, inv, k, short_e);
      }
    }
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = t0 + r;
      const T* g = dy + i * d;
      const T* xs = x + i * d;
      double e = 0;
      if (short_rows) {
        e += short_e[r];
      } else if (k.active[i] || store) {
        for (int64_t j = 0; j < k.m; ++j) {
          e += projection<T>(g + j * c, xs + j * c, c, inv[r], k.gain, k.c1, k.alpha, k.mu,
                             k.gain_t, k.alpha_t, k.beta2_t, k.fast,
                             store ? out + i * d + j * c : nullptr);
        }
      }
      proj[r] = k.active[i] ? e * per_value : 0.0;
    }
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = t0 + r;
      const SquareFactor<T> f(inv[r]);
      const T inv_t = static_cast<T>(inv[r]);
      if (store) {
        finish_row<T>(out + i * d, x + i * d, d, inv_t, static_cast<T>(f.rest * proj[r]),
                      f.x_scale);
        continue;
      }
      const T inv2_t = static_cast<T>(f.rest), proj_t = static_cast<T>(proj[r]);
      for (int64_t j = 0; j < k.m; ++j) {
        grad_row<T>(out + i * d + j * c, dy + i * d + j * c, x + i * d + j * c, c, inv_t,
                    inv2_t, proj_t, k.gain_t, k.beta_t, k.alpha_t, f.x_scale);
      }
    }
  }
}

}  // namespace
}  // namespace l2bn
