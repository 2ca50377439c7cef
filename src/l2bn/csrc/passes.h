// The full-size passes of L2BN (README, "How the PyTorch backend computes"): every other step costs O(N * C).
//
//   moments:      mean[n, c], second[n, c] = sum_m x / M, sum_m x^2 / M and the variance
//                 second - mean^2 of each row, in one read         (forward reduction)
//   grad_sums:    t1[n, c] = sum_m dy, t2[n, c] = sum_m dy * (x - h[n, c]) (backward reduction)
//   centred:      sum_m (x - mean[n, c]) and its square, for rows whose one-pass variance
//                 would cancel (rare)
//   scale_shift:  y = x * (gain[c] * inv[n]) + shift[c]                 (forward output)
//   grad_output:  dx = p * dy + q * x + r, p, q, r from per-channel and per-sample parts
//                                                                     (backward output)
//   affine:       out = p[n, c] * u + r[n, c]            (eval with fewer samples than threads)
//   sum_squares:  sum of x^2 over one contiguous block                     (eval: ||x[n]||^2)
//
// Each kernel handles a range of rows (row-wise layout) or of samples / positions
// (channel-last layout); train.cpp and eval.cpp spread the ranges over threads with
// at::parallel_for. Statistics are accumulated in double; sums of squares for norms alone
// (SquareSum) run in float lanes folded into double every few steps.
//
// Included only through kernel_table.h, once per instruction set: everything here has
// internal linkage (an anonymous namespace), so that each kernels_<isa>.cpp keeps its own
// copy, compiled for its instruction set, and the linker never merges copies of different
// instruction sets. The standard headers come from kernels.h, before any target pragma.
#pragma once

#include "kernels.h"
#include "lanes.h"

namespace l2bn {
namespace {

// inv^2 of a sample of huge norm (1 / rho below 2^-40 in float, 2^-400 in double: float32
// values past about 1e12): the backward's coefficient of x, -inv^2 * (...), rounded to T,
// would fall into T's subnormal range (float32 values past about 1e19) and lose its bits,
// or flush to zero; gradients of float32 input of 1e22 were 5% off, of 1e25 18%. Such
// samples take it as (-inv * (...)) * (x * inv), each factor a normal number. Other samples
// keep -inv^2 * (...) and x_scale 1 (x * 1 is x: the same bits as before).
// The same split serves a sample of tiny norm (1 / rho above 2^40 in float, 2^400 in double;
// float32 values below about 1e-12 with l2_eps near 0): there inv^2 would overflow T (from
// about 1e19 in float) and the input gradient, finite, came out infinite.
template <typename T>
struct SquareFactor {
  static constexpr double kBelow = std::is_same_v<T, float> ? 0x1p-40 : 0x1p-400;
  static constexpr double kAbove = 1.0 / kBelow;
  double rest;  // inv^2, or inv where x_scale carries the other inv
  T x_scale;
  explicit SquareFactor(double inv)
      : rest(split(inv) ? inv : inv * inv), x_scale(split(inv) ? static_cast<T>(inv) : T(1)) {}
  static bool split(double inv) { return inv < kBelow || inv > kAbove; }
};

// ---- reductions ---------------------------------------------------------------------------

// (sum_i u(i), sum_i v(i)) over [0, len), where term(i, u, v) sets u and v.
// The lanes take the first step's terms as they are, not added to zeros: zero-filling two
// arrays of kLanes doubles compiled to `rep stos` under AVX2, a fixed cost of about a
// hundred cycles a row (row-wise 2x2 training forward, AVX2, 1 thread: 3.7x slower than
// under AVX-512). Rows shorter than one step skip the lanes.
template <typename F>
L2BN_INLINE void reduce_pair(int64_t len, const F& term, double* out_u, double* out_v) {
  double su = 0, sv = 0;
  double a[kLanes], b[kLanes];  // set by the first step, read only if there was one
  const bool lanes = len >= kLanes;
  int64_t i = 0;
  if (lanes) {
#pragma omp simd
    for (int64_t l = 0; l < kLanes; ++l) {
      term(l, a[l], b[l]);
    }
    for (i = kLanes; i + kLanes <= len; i += kLanes) {
#pragma omp simd
      for (int64_t l = 0; l < kLanes; ++l) {
        double u, v;
        term(i + l, u, v);
        a[l] += u;
        b[l] += v;
      }
    }
  }
  for (; i < len; ++i) {
    double u, v;
    term(i, u, v);
    su += u;
    sv += v;
  }
  if (lanes) {
    // The lanes add by halving (4 dependent adds, not 16): a fixed cost of every row,
    // and rows of small maps (4x4, short 1d inputs) are short.
    su += tree_sum<kLanes>(a);
    sv += tree_sum<kLanes>(b);
  }
  *out_u = su;
  *out_v = sv;
}

// reduce_pair's lanes and order for one sum: sum_i term(i) over [0, len).
template <typename F>
L2BN_INLINE double reduce_one(int64_t len, const F& term) {
  double s = 0;
  double a[kLanes];  // as in reduce_pair
  const bool lanes = len >= kLanes;
  int64_t i = 0;
  if (lanes) {
#pragma omp simd
    for (int64_t l = 0; l < kLanes; ++l) {
      a[l] = term(l);
    }
    for (i = kLanes; i + kLanes <= len; i += kLanes) {
#pragma omp simd
      for (int64_t l = 0; l < kLanes; ++l) {
        a[l] += term(i + l);
      }
    }
  }
  for (; i < len; ++i) {
    s += term(i);
  }
  return lanes ? s + tree_sum<kLanes>(a) : s;
}

// mean = s1 / M, second = s2 / M and var = max(second - mean^2, 0) of row r from its sums
// (NaN stays NaN); returns whether the one-pass variance may have cancelled (kCondLimit).
L2BN_INLINE bool row_moment(double s1, double s2, double inv_m, int64_t r, double* mean,
                            double* second, double* var, uint8_t* flags) {
  const double mu = s1 * inv_m, sq = s2 * inv_m, v = sq - mu * mu;
  mean[r] = mu;
  second[r] = sq;
  var[r] = std::max(v, 0.0);
  const bool ill = (sq > 0) & (v * kCondLimit <= sq);  // branch-free, as below
  flags[r] = ill;
  return ill;
}

// Float input: a float-lane sum below kTinySquares per value may hold squares that fell
// below float's smallest normal (values under about 1e-19; under 2^-75, about 2.6e-23, they
// square to 0): its norm could be off by any amount (a sample of values near 1e-25 had a
// norm 1.8x too small), which matters where l2_eps does not clamp it (l2_eps = 0 or below
// about 1e-19). Each square loses at most 2^-149 there, so above this bound the loss is
// below 2^-49 of the sum. Below it a block is summed again with its squares in double
// (finite_squares; all-zero samples included, one more read of such a sample), and a
// channel-last row that is not all zeros is flagged for the centred pass in double
// (shifted_row_moment; an all-zero row is exact as it is).
constexpr double kTinySquares = 0x1p-100;

// row_moment from sums of d = x - shift computed in float lanes (float_block): the variance
// is trusted while E[d^2] <= kCondLimitShifted * var, a bound that keeps the error of the
// float partial sums (at most kFold terms each) below 1e-5 of the variance. The shift is
// the mean of the row's first kShiftValues values, which leaves E[d^2] close to the
// variance (1 + 1 / kShiftValues times it, on average).
constexpr double kCondLimitShifted = 16;
constexpr int64_t kShiftValues = 8;

L2BN_INLINE bool shifted_row_moment(double s1, double s2, double shift, double inv_m, int64_t r,
                                    double* mean, double* second, double* var,
                                    uint8_t* flags) {
  const double md = s1 * inv_m, sq = s2 * inv_m, d = sq - md * md, v = std::max(d, 0.0);
  const double mu = shift + md;
  mean[r] = mu;
  var[r] = v;
  // A row holding an infinite value has an infinite second moment (E[(x - shift)^2] is,
  // where v + mu^2 is inf - inf); NaN input stays NaN.
  second[r] = sq == std::numeric_limits<double>::infinity() ? sq : v + mu * mu;
  // Branch-free (& rather than &&), so that loops over rows vectorize. A row of values so
  // small that their float squares underflow (kTinySquares) is ill too, unless all zeros.
  const bool tiny = (second[r] > 0) & (second[r] < kTinySquares);
  const bool ill = ((sq > 0) & (d * kCondLimitShifted <= sq)) | tiny;
  flags[r] = ill;
  return ill;
}

template <typename T>
L2BN_INLINE int64_t moments_rows(
    const T* x, int64_t m, int64_t r0, int64_t r1, double* mean, double* second, double* var,
    uint8_t* flags) {
  const double inv_m = 1.0 / static_cast<double>(m);
  int64_t ill = 0;
  for (int64_t r = r0; r < r1; ++r) {
    const T* row = x + r * m;
    double s1, s2;
    reduce_pair(
        m,
        [row](int64_t i, double& u, double& v) {
          u = row[i];
          v = u * u;
        },
        &s1, &s2);
    ill += row_moment(s1, s2, inv_m, r, mean, second, var, flags);
  }
  return ill;
}

// Channel-last reductions: each sample is M positions of C values. Positions are taken a
// chunk of about kChunkValues values at a time (16 kB of float32: contiguous, and within
// L1 while its channel blocks are summed); within a chunk each block of kLanes channels
// is summed in registers and added to the output once. Leftover channels take a plain
// loop.
// term(j, k, u, v) sets the two summands of channel k at position j.
constexpr int64_t kChunkValues = 4096;

// The arrays a channel-block reduction reads (x, or dy and x; b may be nullptr), each laid
// out as positions of C values.
template <typename T>
struct Streams {
  const T* a;
  const T* b;
};

// Adds one value of each 64-byte line of p[i0, i1) to t[0..3].
template <typename T>
L2BN_INLINE void touch_stream(const T* p, int64_t i0, int64_t i1, T* t) {
  constexpr int64_t kStep = 64 / static_cast<int64_t>(sizeof(T));
  int64_t i = i0;
  // Four independent sums: one dependent add per line would hold the loads to its latency.
  for (; i + 4 * kStep <= i1; i += 4 * kStep) {
    for (int q = 0; q < 4; ++q) {
      t[q] += p[i + q * kStep];
    }
  }
  for (; i < i1; i += kStep) {
    t[0] += p[i];
  }
}

// Loads one value of each 64-byte line of positions [j0, j1), in order, of one stream and
// then the other. The channel blocks then sweep the chunk with a stride of C values, a
// pattern that the hardware prefetchers follow poorly on data coming from memory or L3:
// read in order first, the chunk arrives at streaming speed and the sweeps find it in
// L1/L2 (channel-last moments, 1 thread, median: 64x64x56x56 5.1 -> 2.9 ms, 256x256x14x14
// 4.5 -> 2.9 ms, 128x64x8x8 after a cache flush 155 -> 95 us). Only where a chunk has more
// than one block.
template <typename T>
L2BN_INLINE void touch_chunk(Streams<T> s, int64_t c, int64_t j0, int64_t j1) {
  T t[4] = {};
  touch_stream(s.a, j0 * c, j1 * c, t);
  if (s.b != nullptr) {
    touch_stream(s.b, j0 * c, j1 * c, t);
  }
  volatile T kept = (t[0] + t[1]) + (t[2] + t[3]);  // the loads are kept: their sum is stored
  (void)kept;
}

// channel_block_sums without zeroing the outputs first (adds to them).
template <typename T, typename F>
L2BN_INLINE void add_channel_block_sums(
    int64_t c, int64_t m, Streams<T> streams, const F& term, double* out_u, double* out_v) {
  const int64_t chunk = std::max<int64_t>(1, kChunkValues / c);
  for (int64_t j0 = 0; j0 < m; j0 += chunk) {
    const int64_t j1 = std::min(m, j0 + chunk);
    if (c > kLanes) {
      touch_chunk(streams, c, j0, j1);
    }
    int64_t k0 = 0;
    for (; k0 + kLanes <= c; k0 += kLanes) {
      // The first position sets the registers (no zero-filled arrays: reduce_pair).
      double a[kLanes], b[kLanes];
#pragma omp simd
      for (int64_t l = 0; l < kLanes; ++l) {
        term(j0, k0 + l, a[l], b[l]);
      }
      for (int64_t j = j0 + 1; j < j1; ++j) {
#pragma omp simd
        for (int64_t l = 0; l < kLanes; ++l) {
          double u, v;
          term(j, k0 + l, u, v);
          a[l] += u;
          b[l] += v;
        }
      }
#pragma omp simd
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

template <typename T, typename F>
L2BN_INLINE void channel_block_sums(
    int64_t c, int64_t m, Streams<T> streams, const F& term, double* out_u, double* out_v) {
  for (int64_t k = 0; k < c; ++k) {
    out_u[k] = 0;
    out_v[k] = 0;
  }
  add_channel_block_sums(c, m, streams, term, out_u, out_v);
}

// channel_block_sums with float terms summed in float lanes: each block of kBlockF channels
// (then of one vector) sums kFold positions in float registers, then adds them to the
// double outputs (so each float partial holds at most kFold terms); leftover channels are
// summed one at a time. term(j, k, u, v) sets two summands for channels [k, k + width) of
// position j; it is called with u, v of type float (one channel) and vf (kVF channels),
// and reads values with load<decltype(u)>.
constexpr int64_t kFold = 8;

#if defined(__GNUC__)
// Only inlined into functions of this translation unit: no vector crosses an ABI.
#pragma GCC diagnostic ignored "-Wpsabi"
// The float lanes are vectors of the instruction set's register width (kernels_<isa>.cpp
// sets L2BN_VECTOR_BYTES: 64 for AVX-512, 32 for AVX2, 16 otherwise), so that GCC keeps
// them in registers; wider vectors than the registers would be lowered through memory.
#ifndef L2BN_VECTOR_BYTES
#define L2BN_VECTOR_BYTES 16
#endif
typedef float vf __attribute__((vector_size(L2BN_VECTOR_BYTES)));
#else
#error "the float-lane kernels use GCC vector extensions"
#endif

constexpr int64_t kVF = L2BN_VECTOR_BYTES / static_cast<int64_t>(sizeof(float));
// Channels per float block: four vectors (two accumulators each, eight of the 32 AVX-512
// registers; 64 channels under AVX-512, 32 under AVX2, 16 otherwise), so that a chunk of a
// channel-last sample is swept once per block of channels. Blocks of 32 under AVX-512 swept
// each chunk of 128x64x8x8 twice: the backward's reduction measured 1.16-1.17x ATen's warm
// and 1.22x with cold data, against 0.80x and 0.91-0.92x in one block
// (benchmarks/bench_cold_backward.py --shape 128x64x8x8 --layout channels_last, 2 threads).
// Each channel's sum is the same (its own lane, the same positions in the same order).
constexpr int64_t kBlockF = kVF >= 16 ? 64 : kVF >= 8 ? 32 : 16;
constexpr int kBlockVectors = static_cast<int>(kBlockF / kVF);

template <typename V>
L2BN_INLINE V load(const float* p) {
  if constexpr (std::is_same_v<V, float>) {
    return *p;
  } else {
    V v;
    __builtin_memcpy(&v, p, sizeof(V));
    return v;
  }
}

// out[0, kVF) = v, in double: the first fold of a lane sum. Zero-filled double lanes that a
// first add_to then reads are stored with narrower stores than the vector loads that read
// them back (GCC under AVX2: 16-byte stores, 32-byte loads), which cannot forward: a stall
// of about 20 cycles a sum, most of a short row's norm.
L2BN_INLINE void set_to(double* out, vf v) {
  float lanes[kVF];
  __builtin_memcpy(lanes, &v, sizeof(vf));
#pragma omp simd
  for (int64_t l = 0; l < kVF; ++l) {
    out[l] = lanes[l];
  }
}

// out[0, kVF) += v, in double.
L2BN_INLINE void add_to(double* out, vf v) {
  float lanes[kVF];
  __builtin_memcpy(lanes, &v, sizeof(vf));
#pragma omp simd
  for (int64_t l = 0; l < kVF; ++l) {
    out[l] += lanes[l];
  }
}

// kVF double lanes that float vectors are folded into, without a zero fill (set_to's
// comment): the first fold sets them, later ones add; sum() is 0 before any fold. The same
// values as zero-filled lanes.
struct FoldedLanes {
  double v[kVF];
  bool any = false;
  L2BN_INLINE void fold(vf x) {
    if (any) {
      add_to(v, x);
    } else {
      set_to(v, x);
      any = true;
    }
  }
  L2BN_INLINE double sum() { return any ? tree_sum<kVF>(v) : 0.0; }
};

// kVectors vectors of channels [k0, k0 + kVectors * kVF): kFold positions at a time in
// float registers, then added to the double outputs.
template <int kVectors, typename F>
L2BN_INLINE void float_block(
    int64_t k0, int64_t j0, int64_t j1, const F& term, double* out_u, double* out_v) {
  for (int64_t g0 = j0; g0 < j1; g0 += kFold) {
    const int64_t g1 = std::min(j1, g0 + kFold);
    vf a[kVectors], b[kVectors];
#pragma GCC unroll 8
    for (int q = 0; q < kVectors; ++q) {
      a[q] = vf{};
      b[q] = vf{};
    }
    for (int64_t j = g0; j < g1; ++j) {
#pragma GCC unroll 8
      for (int q = 0; q < kVectors; ++q) {
        vf u, v;
        term(j, k0 + q * kVF, u, v);
        a[q] += u;
        b[q] += v;
      }
    }
#pragma GCC unroll 8
    for (int q = 0; q < kVectors; ++q) {
      add_to(out_u + k0 + q * kVF, a[q]);
      add_to(out_v + k0 + q * kVF, b[q]);
    }
  }
}

template <typename F>
L2BN_INLINE void add_channel_block_sums_f(
    int64_t c, int64_t m, Streams<float> streams, const F& term, double* out_u,
    double* out_v) {
  const int64_t chunk = std::max<int64_t>(1, kChunkValues / c);
  for (int64_t j0 = 0; j0 < m; j0 += chunk) {
    const int64_t j1 = std::min(m, j0 + chunk);
    if (c > kBlockF) {
      touch_chunk(streams, c, j0, j1);
    }
    int64_t k0 = 0;
    for (; k0 + kBlockF <= c; k0 += kBlockF) {
      float_block<kBlockVectors>(k0, j0, j1, term, out_u, out_v);
    }
    // The whole vectors left, fewer than a block's: one block of them, one sweep (a sweep
    // each measured 1.09x BatchNorm's layer at channel-last 128x32x16x16 forward+backward).
    static_assert(kBlockVectors == 4, "blocks of 1 to 3 vectors take the rest");
    switch ((c - k0) / kVF) {
      case 3:
        float_block<3>(k0, j0, j1, term, out_u, out_v);
        k0 += 3 * kVF;
        break;
      case 2:
        float_block<2>(k0, j0, j1, term, out_u, out_v);
        k0 += 2 * kVF;
        break;
      case 1:
        float_block<1>(k0, j0, j1, term, out_u, out_v);
        k0 += kVF;
        break;
      default:
        break;
    }
    for (int64_t j = j0; j < j1; ++j) {
      for (int64_t k = k0; k < c; ++k) {
        float u, v;
        term(j, k, u, v);
        out_u[k] += u;
        out_v[k] += v;
      }
    }
  }
}

template <typename F>
L2BN_INLINE void channel_block_sums_f(
    int64_t c, int64_t m, Streams<float> streams, const F& term, double* out_u,
    double* out_v) {
  for (int64_t k = 0; k < c; ++k) {
    out_u[k] = 0;
    out_v[k] = 0;
  }
  add_channel_block_sums_f(c, m, streams, term, out_u, out_v);
}

// Channel-last moments: per sample, the channel sums of its M positions, then each row's
// moments (s1 and s2 are scratch of C values each, s2 followed by C more doubles). Float input is summed in float lanes
// around a shift, the sample's first position (shifted_row_moment); double in double.
template <typename T>
L2BN_INLINE int64_t moments_cl(
    const T* x, int64_t c, int64_t m, int64_t n0, int64_t n1, double* mean, double* second,
    double* var, uint8_t* flags, double* s1, double* s2) {
  const double inv_m = 1.0 / static_cast<double>(m);
  int64_t ill = 0;
  for (int64_t n = n0; n < n1; ++n) {
    const T* sample = x + n * c * m;
    if constexpr (std::is_same_v<T, float>) {
      // The shift: the mean of the first kShiftValues positions (in float), close to the
      // row's mean unless these few positions are unusual.
      float* shift = reinterpret_cast<float*>(s2 + c);
      const int64_t q = std::min(kShiftValues, m);
      for (int64_t k = 0; k < c; ++k) {
        shift[k] = 0;
      }
      for (int64_t j = 0; j < q; ++j) {
#pragma omp simd
        for (int64_t k = 0; k < c; ++k) {
          shift[k] += sample[j * c + k];
        }
      }
      const float inv_q = 1.0f / static_cast<float>(q);
#pragma omp simd
      for (int64_t k = 0; k < c; ++k) {
        // An infinite shift (an inf among these positions) would make x - shift NaN;
        // zero keeps the row's sums infinite, as its second moment is (eq. 3's inf).
        const float s = shift[k] * inv_q;
        shift[k] = std::isfinite(s) ? s : 0.0f;
      }
      channel_block_sums_f(
          c, m, Streams<float>{sample, nullptr},
          [sample, c, shift](int64_t j, int64_t k, auto& u, auto& v) {
            using V = std::decay_t<decltype(u)>;
            u = load<V>(sample + j * c + k) - load<V>(shift + k);
            v = u * u;
          },
          s1, s2);
      // The rows of a sample are consecutive: their moments vectorize (a fixed cost of
      // every row, which dominates small maps such as 4x4).
      const int64_t r0 = n * c;
#pragma omp simd reduction(+ : ill)
      for (int64_t k = 0; k < c; ++k) {
        ill += shifted_row_moment(s1[k], s2[k], shift[k], inv_m, r0 + k, mean, second, var,
                                  flags);
      }
    } else {
      channel_block_sums(
          c, m, Streams<T>{sample, nullptr},
          [sample, c](int64_t j, int64_t k, double& u, double& v) {
            u = sample[j * c + k];
            v = u * u;
          },
          s1, s2);
      const int64_t r0 = n * c;
#pragma omp simd reduction(+ : ill)
      for (int64_t k = 0; k < c; ++k) {
        ill += row_moment(s1[k], s2[k], inv_m, r0 + k, mean, second, var, flags);
      }
    }
  }
  return ill;
}

// Backward sums of rows [r0, r1) (row-wise) or samples [r0, r1) (channel-last). With
// `fast` (float input, every channel's mean within a few standard deviations, so that
// x - h does not cancel) the terms are summed in float lanes folded into double every
// kFold steps; otherwise in double. h_t is h rounded to T.
template <typename T>
L2BN_INLINE void grad_sums_rows(
    const T* dy, const T* x, const double* h, const T* h_t, bool fast, int64_t m, int64_t r0,
    int64_t r1, double* t1, double* t2) {
  for (int64_t r = r0; r < r1; ++r) {
    const T* g = dy + r * m;
    const T* row = x + r * m;
    if constexpr (std::is_same_v<T, float>) {
      if (fast) {
        constexpr int kN = static_cast<int>(32 / kVF);
        const float hf = h_t[r];
        vf a[kN], b[kN];
#pragma GCC unroll 8
        for (int q = 0; q < kN; ++q) {
          a[q] = vf{};
          b[q] = vf{};
        }
        FoldedLanes sa, sb;
        int64_t i = 0;
        int steps = 0;
        for (; i + 32 <= m; i += 32) {
#pragma GCC unroll 8
          for (int q = 0; q < kN; ++q) {
            const vf gq = load<vf>(g + i + q * kVF);
            a[q] += gq;
            b[q] += gq * (load<vf>(row + i + q * kVF) - hf);
          }
          if (++steps == kFold || i + 64 > m) {
#pragma GCC unroll 8
            for (int q = 0; q < kN; ++q) {
              sa.fold(a[q]);
              sb.fold(b[q]);
              a[q] = vf{};
              b[q] = vf{};
            }
            steps = 0;
          }
        }
        // Whole vectors left (rows of fewer than 32 values, or the end of a row): one
        // vector each, folded once (in float, as the steps above: at most 32 / kVF - 1
        // products a lane, within kFold).
        if (i + kVF <= m) {
          for (; i + kVF <= m; i += kVF) {
            const vf gq = load<vf>(g + i);
            a[0] += gq;
            b[0] += gq * (load<vf>(row + i) - hf);
          }
          sa.fold(a[0]);
          sb.fold(b[0]);
        }
        double u = 0, v = 0;
        for (; i < m; ++i) {
          u += g[i];
          v += static_cast<double>(g[i]) * (row[i] - hf);
        }
        u += sa.sum();  // 0 where nothing was folded (m < kVF)
        v += sb.sum();
        t1[r] = u;
        t2[r] = v;
        continue;
      }
    }
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
    const T* dy, const T* x, const double* h, const T* h_t, bool fast, int64_t c, int64_t m,
    int64_t n0, int64_t n1, double* t1, double* t2) {
  for (int64_t n = n0; n < n1; ++n) {
    const T* g = dy + n * c * m;
    const T* sample = x + n * c * m;
    if constexpr (std::is_same_v<T, float>) {
      if (fast) {
        const float* shift = h_t + n * c;
        channel_block_sums_f(
            c, m, Streams<float>{g, sample},
            [g, sample, shift, c](int64_t j, int64_t k, auto& u, auto& v) {
              using V = std::decay_t<decltype(u)>;
              u = load<V>(g + j * c + k);
              v = u * (load<V>(sample + j * c + k) - load<V>(shift + k));
            },
            t1 + n * c, t2 + n * c);
        continue;
      }
    }
    const double* shift = h + n * c;
    channel_block_sums(
        c, m, Streams<T>{g, sample},
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
        c, m, Streams<T>{sample, nullptr},
        [sample, mu, c](int64_t j, int64_t k, double& u, double& v) {
          u = static_cast<double>(sample[j * c + k]) - mu[k];
          v = u * u;
        },
        d1 + n * c, d2 + n * c);
  }
}

// Sum of kVF double lanes by halving (adds into s).
L2BN_INLINE double lane_tree_sum(double* s) { return tree_sum<kVF>(s); }

// Sum of squares for a norm: kWidth values a step into as many lanes. In double for
// double input; for float input the squares go to float lanes, folded into double lanes
// every kFold steps (each float lane then holds at most kFold squares: relative error
// below 1e-6, against twice the arithmetic of double lanes). total() is called once (it
// adds the lanes into themselves).
template <typename T>
struct DoubleSquareSum {
  static constexpr int64_t kWidth = kLanes;
  double acc[kWidth] = {};
  double tail = 0;
  L2BN_INLINE void step(const T* p) {
#pragma omp simd
    for (int64_t l = 0; l < kWidth; ++l) {
      const double v = p[l];
      acc[l] += v * v;
    }
  }
  L2BN_INLINE void one(T v) { tail += static_cast<double>(v) * v; }
  // The n < kWidth values after the last whole step.
  L2BN_INLINE void rest(const T* x, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
      one(x[i]);
    }
  }
  L2BN_INLINE double total() {
    double out = tail;
    for (int64_t l = 0; l < kWidth; ++l) {
      out += acc[l];
    }
    return out;
  }
};

template <typename T>
struct SquareSum : DoubleSquareSum<T> {};

template <>
struct SquareSum<float> {
  static constexpr int64_t kWidth = 32;
  static constexpr int kFold = 8;
  static constexpr int kN = static_cast<int>(kWidth / kVF);
  vf p[kN];
  FoldedLanes acc;
  double tail = 0;
  int steps = 0;
  L2BN_INLINE SquareSum() {
#pragma GCC unroll 8
    for (int q = 0; q < kN; ++q) {
      p[q] = vf{};
    }
  }
  L2BN_INLINE void step(const float* x) {
#pragma GCC unroll 8
    for (int q = 0; q < kN; ++q) {
      const vf v = load<vf>(x + q * kVF);
      p[q] += v * v;
    }
    if (++steps == kFold) {
      fold();
    }
  }
  // The float lanes added into one vector, in the order of every fold.
  L2BN_INLINE vf lanes() const {
    vf s = p[0];
#pragma GCC unroll 8
    for (int q = 1; q < kN; ++q) {
      s += p[q];
    }
    return s;
  }
  L2BN_INLINE void fold() {
    acc.fold(lanes());
#pragma GCC unroll 8
    for (int q = 0; q < kN; ++q) {
      p[q] = vf{};
    }
    steps = 0;
  }
  L2BN_INLINE void one(float v) { tail += static_cast<double>(v) * v; }
  // The n < kWidth values after the last whole step: whole vectors into the float lanes
  // (one each, so that a lane holds at most kFold - 1 + 1 squares), the rest one by one
  // (in one dependent chain of double adds, they were most of a row of 16 values).
  L2BN_INLINE void rest(const float* x, int64_t n) {
    int q = 0;
    for (; n >= kVF; x += kVF, n -= kVF, ++q) {
      const vf v = load<vf>(x);
      p[q] += v * v;
    }
    for (int64_t i = 0; i < n; ++i) {
      one(x[i]);
    }
  }
  L2BN_INLINE double total() {
    fold();
    return tail + acc.sum();
  }
};

template <typename T, typename Acc>
L2BN_INLINE void add_squares(const T* x, int64_t len, Acc& acc) {
  constexpr int64_t w = Acc::kWidth;
  int64_t i = 0;
  for (; i + w <= len; i += w) {
    acc.step(x + i);
  }
  acc.rest(x + i, len - i);
}

// sum_squares with every square in double lanes, whatever T (exact squares of float
// input): for norms whose rounding would cancel later (vector.cpp).
template <typename T>
L2BN_INLINE double exact_sum_squares(const T* x, int64_t len) {
  DoubleSquareSum<T> acc;
  add_squares(x, len, acc);
  return acc.total();
}

// `sum`, the float-lane sum of the squares of the block x[0, len), or the block summed again
// with every square in double where it came out infinite (float lanes overflow where values
// pass about 1e19; infinite input stays infinite) or, for float input, too small to trust
// (kTinySquares). Every sum of a whole block's squares (sum_squares, the next sample's of
// sample_output_next, row_output_next's, rows_scales') returns through here.
template <typename T>
L2BN_INLINE double finite_squares(double sum, const T* x, int64_t len) {
  const bool tiny =
      std::is_same_v<T, float> && sum < kTinySquares * static_cast<double>(len);
  return (std::isinf(sum) || tiny) ? exact_sum_squares<T>(x, len) : sum;
}

template <typename T>
L2BN_INLINE double sum_squares(const T* x, int64_t len) {
  SquareSum<T> acc;
  add_squares(x, len, acc);
  return finite_squares(acc.total(), x, len);
}

// ---- elementwise outputs ------------------------------------------------------------------

// out = p[n, c] * u + r[n, c]: rows [r0, r1) of the row-wise layout (row r = n * C + c),
// or positions [r0, r1) of the channel-last layout (position j = n * M + s holds C values).
template <typename T>
L2BN_INLINE void affine(
    T* out, const T* u, Coef<T> p, Coef<T> r, int64_t c, int64_t m, bool cl, int64_t r0,
    int64_t r1) {
  if (cl) {
    int64_t n = r0 / m, s = r0 % m;  // stepped below: no division per position
    for (int64_t j = r0; j < r1; ++j) {
      const T* a = p.row(n);
      const T* b = r.row(n);
      const T* up = u + j * c;
      T* o = out + j * c;
#pragma omp simd
      for (int64_t k = 0; k < c; ++k) {
        o[k] = a[k] * up[k] + b[k];
      }
      if (++s == m) {
        s = 0;
        ++n;
      }
    }
    return;
  }
  int64_t n = r0 / c, k = r0 % c;
  for (int64_t row = r0; row < r1; ++row) {
    const T a = p.row(n)[k], b = r.row(n)[k];
    const T* ur = u + row * m;
    T* o = out + row * m;
#pragma omp simd
    for (int64_t i = 0; i < m; ++i) {
      o[i] = a * ur[i] + b;
    }
    if (++k == c) {
      k = 0;
      ++n;
    }
  }
}

// Training forward output, y = x * a[n, c] + shift[c] with a = gain[c] * inv[n] (rounded
// once, from double): rows [r0, r1) of the row-wise layout, or positions [r0, r1) of the
// channel-last layout (scratch: C values, the coefficient row of the current sample).
template <typename T>
L2BN_INLINE void scale_shift(
    T* out, const T* x, const double* gain, const double* inv, const T* shift, int64_t c,
    int64_t m, bool cl, int64_t r0, int64_t r1, T* scratch) {
  if (cl) {
    T* a = scratch;
    int64_t n = r0 / m, s = r0 % m;  // stepped below: no division per position
    for (int64_t j = r0; j < r1; ++j) {
      if (j == r0 || s == 0) {
        const double in = inv[n];
#pragma omp simd
        for (int64_t k = 0; k < c; ++k) {
          a[k] = static_cast<T>(gain[k] * in);
        }
      }
      const T* xp = x + j * c;
      T* o = out + j * c;
#pragma omp simd
      for (int64_t k = 0; k < c; ++k) {
        o[k] = a[k] * xp[k] + shift[k];
      }
      if (++s == m) {
        s = 0;
        ++n;
      }
    }
    return;
  }
  int64_t n = r0 / c, k = r0 % c;
  for (int64_t row = r0; row < r1; ++row) {
    const T a = static_cast<T>(gain[k] * inv[n]), b = shift[k];
    const T* xr = x + row * m;
    T* o = out + row * m;
#pragma omp simd
    for (int64_t i = 0; i < m; ++i) {
      o[i] = a * xr[i] + b;
    }
    if (++k == c) {
      k = 0;
      ++n;
    }
  }
}

// Training backward output dx = p * dy + q * x + r with p = gain[c] * inv[n],
// q = -inv[n]^2 * (qc[c] + proj[n]), r = inv[n] * rc[c] (each rounded once, from double):
// rows [r0, r1) of the row-wise layout, or positions [r0, r1) of the channel-last layout
// (scratch: 3 * C values, the coefficient rows of the current sample). Samples of huge norm
// take q * x as (q / inv) * (x * inv) (square_factor).
template <typename T>
L2BN_INLINE void grad_output(
    T* out, const T* dy, const T* x, const double* gain, const double* inv, const double* qc,
    const double* proj, const double* rc, int64_t c, int64_t m, bool cl, int64_t r0,
    int64_t r1, T* scratch) {
  if (cl) {
    T* p = scratch;
    T* q = scratch + c;
    T* r = scratch + 2 * c;
    int64_t n = r0 / m, s = r0 % m;
    T xs = 1;
    for (int64_t j = r0; j < r1; ++j) {
      if (j == r0 || s == 0) {
        const double in = inv[n], e = proj[n];
        const SquareFactor<T> f(in);
        xs = f.x_scale;
#pragma omp simd
        for (int64_t k = 0; k < c; ++k) {
          p[k] = static_cast<T>(gain[k] * in);
          q[k] = static_cast<T>(-f.rest * (qc[k] + e));
          r[k] = static_cast<T>(in * rc[k]);
        }
      }
      const T* g = dy + j * c;
      const T* xp = x + j * c;
      T* o = out + j * c;
#pragma omp simd
      for (int64_t k = 0; k < c; ++k) {
        o[k] = p[k] * g[k] + q[k] * (xp[k] * xs) + r[k];
      }
      if (++s == m) {
        s = 0;
        ++n;
      }
    }
    return;
  }
  int64_t n = r0 / c, k = r0 % c;
  for (int64_t row = r0; row < r1; ++row) {
    const double in = inv[n];
    const SquareFactor<T> f(in);
    const T xs = f.x_scale;
    const T a = static_cast<T>(gain[k] * in);
    const T e = static_cast<T>(-f.rest * (qc[k] + proj[n]));
    const T b = static_cast<T>(in * rc[k]);
    const T* g = dy + row * m;
    const T* xr = x + row * m;
    T* o = out + row * m;
#pragma omp simd
    for (int64_t i = 0; i < m; ++i) {
      o[i] = a * g[i] + e * (xr[i] * xs) + b;
    }
    if (++k == c) {
      k = 0;
      ++n;
    }
  }
}

// ---- eval: output of one sample fused with the norm of the next -------------------------
//
// A sample is d contiguous values written in units of `len` values (the last unit may be
// shorter): row-wise, one unit per row (len = M, one a and b per unit); channel-last, a
// group of positions (len a multiple of C, a and b holding len values: C coefficients
// repeated, so that a unit is long enough to vectorize even when C is small). The squares
// of the next sample are summed over its d values in flat order, in the steps of
// sum_squares, whatever the units: one accumulator (float lanes for float input, folded
// into double every few steps), advanced in the loop that writes this sample, so that the
// loads of the next sample interleave with the stores of this one. A sample's norm is
// therefore the same bits whether it was summed ahead (here) or alone (sum_squares).

// out[i] = a[i * kStep] * u[i] + b[i * kStep] over one unit of len values; for each
// SquareSum step of output written, one step of next^2 at flat offset `done` (returned
// advanced).
template <typename T, int kStep, bool kNext>
L2BN_INLINE int64_t unit_output_next(T* out, const T* u, const T* a, const T* b,
                                     const T* next, int64_t len, int64_t done,
                                     SquareSum<T>& acc) {
  constexpr int64_t w = SquareSum<T>::kWidth;
  // With kStep 0, one coefficient pair for the unit, held in registers (read through a
  // and b in the loop, they would be loaded again after every store: out may alias them).
  const T a0 = a[0], b0 = b[0];
  auto coef = [](const T* p, T p0, int64_t l) {
    if constexpr (kStep == 0) {
      return p0;
    } else {
      return p[l];
    }
  };
  int64_t i = 0;
  for (; i + w <= len; i += w) {
#pragma omp simd
    for (int64_t l = 0; l < w; ++l) {
      out[i + l] = coef(a, a0, i + l) * u[i + l] + coef(b, b0, i + l);
    }
    if constexpr (kNext) {
      acc.step(next + done);
      done += w;
    }
  }
  if (i < len) {  // most units are whole steps: no vector prologue for an empty tail
#pragma omp simd
    for (int64_t l = i; l < len; ++l) {
      out[l] = coef(a, a0, l) * u[l] + coef(b, b0, l);
    }
  }
  return done;
}

// next^2 summed in whole steps from offset `done` up to `end` (returns the new offset), and
// the values left after the last whole step one by one (returns the sum of the sample):
// the order of sum_squares, whatever the loop that interleaves the steps with output.
template <typename T>
L2BN_INLINE int64_t square_steps_to(SquareSum<T>& acc, const T* next, int64_t done,
                                    int64_t end) {
  constexpr int64_t w = SquareSum<T>::kWidth;
  for (; done + w <= end; done += w) {
    acc.step(next + done);
  }
  return done;
}

template <typename T>
L2BN_INLINE double square_sum_rest(SquareSum<T>& acc, const T* next, int64_t done, int64_t d) {
  acc.rest(next + done, d - done);
  return acc.total();
}

// Row-wise units shorter than two steps and not a whole step (4x4, 2x2, 5x5 and 7x7 maps,
// short 1d inputs): each row in a plain loop, and the squares of next summed in its steps
// after every block of about 256 values of output (the same steps, in the same order, as
// sample_output's). Interleaving the steps within such short rows costs more bookkeeping
// than the rows' arithmetic (the eval operator against ATen's, `l2bn bench --ops`,
// 2026-11-30, 1 / 2 threads: 128x512x4x4 1.18 -> 0.66 / 1.25 -> 0.68, 128x128x4x4 0.97 ->
// 0.64 / 0.99 -> 0.72, 1d 256x64x3 0.74 -> 0.67 / 0.77 -> 0.58; rows of 196 values lost
// 5-10% in a side-by-side loop, so longer rows interleave as before).
template <typename T, bool kNext>
L2BN_INLINE double short_rows_output(T* out, const T* u, const T* a, const T* b,
                                     const T* next, int64_t d, int64_t len) {
  SquareSum<T> acc;
  const int64_t rows = d / len, per_block = std::max<int64_t>(1, 256 / len);
  int64_t done = 0;
  for (int64_t r0 = 0; r0 < rows; r0 += per_block) {
    const int64_t r1 = std::min(rows, r0 + per_block);
    for (int64_t r = r0; r < r1; ++r) {
      const T ar = a[r], br = b[r];
      const T* x = u + r * len;
      T* o = out + r * len;
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) {
        o[i] = ar * x[i] + br;
      }
    }
    if constexpr (kNext) {
      done = square_steps_to(acc, next, done, r1 * len);
    }
  }
  if constexpr (!kNext) {
    return 0.0;
  }
  return square_sum_rest(acc, next, done, d);
}

// Output of one sample of d values, out = a * u + b unit by unit (units of len values;
// `cl`: a and b hold len values, else one per unit), while summing next^2 (next ==
// nullptr: output only, returns 0).
template <typename T, bool kNext>
L2BN_INLINE double sample_output(T* out, const T* u, const T* a, const T* b, const T* next,
                                 int64_t d, int64_t len, bool cl) {
  constexpr int64_t w = SquareSum<T>::kWidth;
  if (!cl && len % w != 0 && len < 2 * w) {
    return short_rows_output<T, kNext>(out, u, a, b, next, d, len);
  }
  SquareSum<T> acc;
  if (len % w == 0 && d % len == 0) {
    // Units of whole steps (the common case: rows of 64, 256, 1024 values): the steps
    // of next^2 line up with the units, the same order without the bookkeeping below.
    for (int64_t j = 0, k = 0; j < d; j += len, ++k) {
      if (cl) {
        unit_output_next<T, 1, kNext>(out + j, u + j, a, b, next, len, j, acc);
      } else {
        unit_output_next<T, 0, kNext>(out + j, u + j, a + k, b + k, next, len, j, acc);
      }
    }
    return kNext ? acc.total() : 0.0;
  }
  int64_t done = 0;  // values of next summed so far (a multiple of w)
  for (int64_t j = 0, k = 0; j < d; j += len, ++k) {
    const int64_t n = std::min(len, d - j);
    if (cl) {
      done = unit_output_next<T, 1, kNext>(out + j, u + j, a, b, next, n, done, acc);
    } else {
      done = unit_output_next<T, 0, kNext>(out + j, u + j, a + k, b + k, next, n, done, acc);
    }
    if constexpr (kNext) {
      // Catch up with the output after a unit's tail (units shorter than a step included).
      done = square_steps_to(acc, next, done, j + n);
    }
  }
  if constexpr (!kNext) {
    return 0.0;
  }
  return square_sum_rest(acc, next, done, d);
}

template <typename T>
L2BN_INLINE double sample_output_next(T* out, const T* u, const T* a, const T* b,
                                      const T* next, int64_t d, int64_t len, bool cl) {
  if (next == nullptr) {
    return sample_output<T, false>(out, u, a, b, u, d, len, cl);
  }
  return finite_squares(sample_output<T, true>(out, u, a, b, next, d, len, cl), next, d);
}

}  // namespace
}  // namespace l2bn
