// Eval-mode L2BN (paper eqs. 2-3 with running statistics): y = gain[c] / rho[n] * x +
// shift[c]. Every output of a sample needs ||x[n]||, so each sample is read twice: for its
// norm, then for its output while it is still in cache (pipelined with the next sample's
// norm, or in two passes for small samples and large row-wise ones). With fewer samples
// than threads the norms are taken a sample per task and the output is spread over all
// threads.
#include <ATen/ops/empty_like.h>

#include <algorithm>

#include "common.h"
#include "kernels.h"
#include "ops.h"

namespace l2bn {
namespace {
// Channel-last output units hold at least this many values (whole positions; C or more
// when C is larger).
constexpr int64_t kMinUnit = 64;
// Row-wise samples of at least this many bytes take two passes each (norm, then output)
// instead of the pipelined loop (benchmarks/bench_eval_floor.py, 1 thread, 2026-11-30: at
// 256-800 kB samples in 32-64 MB tensors two passes ran 12-15% faster; at 64 kB samples in
// an 8 MB tensor, 20% slower; 256x14x14 maps, 196 kB, gain as well).
constexpr int64_t kTwoPassBytes = 128 * 1024;
// Samples of at most this many bytes, in either layout, also take two passes: the second
// read comes from L1 (half of a 32 kB L1), cheaper than a second stream in the pipelined
// loop (the eval operator against ATen's, `l2bn bench --ops`, 2026-11-30, 1 / 2 threads:
// 128x64x8x8 0.88 -> 0.68 / 0.85 -> 0.72, channels-last 0.62 -> 0.53 / 0.62 -> 0.60, 1d
// 256x64x3 0.96 -> 0.74 / 1.05 -> 0.77; at 32 kB, 128x32x16x16, the two schedules measured
// within the noise of each other, and the pipelined loop is kept).
constexpr int64_t kInCacheBytes = 16 * 1024;
// (N, C) rows of at most this many bytes are taken in tiles (below) instead of one row
// after the other: there the fixed cost of each row (its norm's square root and division)
// dominates (the eval operator against ATen's, `l2bn bench --ops`, 2026-11-30, 1 / 2
// threads: 16384x32 1.64 -> 1.18 / 1.84 -> 1.24, 4096x128 0.80 -> 0.66 / 0.85 -> 0.70;
// rows of 2 kB and more, 1024x512 and 256x2048, measured no gain).
constexpr int64_t kShortRowBytes = 1024;
}  // namespace

Tensor eval_forward(const Tensor& input, const Tensor& running_mean, const Tensor& running_var,
                    const std::optional<Tensor>& weight, const std::optional<Tensor>& bias,
                    double eps, double l2_eps, bool scale) {
  check_input(input, "eval_forward");
  const Tensor x = supported_layout(input);
  const Layout l = layout_of(x);
  const int64_t n = l.n, c = l.c, per_sample = c * l.m;
  const std::vector<double> w = channel_values(weight, c, 1.0);
  const std::vector<double> b = channel_values(bias, c, 0.0);
  const std::vector<double> rm = channel_values(running_mean, c, 0.0);
  const std::vector<double> rv = channel_values(running_var, c, 1.0);
  std::vector<double> gain(c);
  for (int64_t k = 0; k < c; ++k) {
    gain[k] = w[k] / std::sqrt(rv[k] + eps);
  }
  const double sqrt_d = std::sqrt(static_cast<double>(per_sample));
  // rho of eq. (3) from a sample's squared norm (whether it was clamped does not matter
  // here).
  auto scale_of = [&](double norm_sq) {
    bool active = false;
    return sample_scale(norm_sq, l2_eps, sqrt_d, scale, &active);
  };
  Tensor y = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "l2bn_eval_forward", [&] {
    using T = scalar_t;
    const Kernels<T>& kern = kernels<T>();
    const T* xp = x.const_data_ptr<T>();
    T* yp = y.data_ptr<T>();
    std::vector<T> shift(c);
    for (int64_t k = 0; k < c; ++k) {
      shift[k] = static_cast<T>(b[k] - rm[k] * gain[k]);
    }
    if (l.m == 1) {
      // (N, C): rank-one coefficients (vector_passes.h).
      std::vector<T> gain_t(gain.begin(), gain.end());
      if (c * static_cast<int64_t>(sizeof(T)) <= kShortRowBytes) {
        // Short rows: tiles of rows that stay in L1, each taken in two passes: the norms of
        // its rows (as block_sum_squares sums them), their scales (rows independent of each
        // other, so that the square roots and divisions overlap; in the loop below each
        // waits for the previous row), then the tile's output. The same bits as that loop.
        const int64_t tile = std::max<int64_t>(1, kInCacheBytes / (c * sizeof(T)));
        at::parallel_for(0, n, grain(c), [&](int64_t i0, int64_t i1) {
          std::vector<double> inv(tile);
          for (int64_t t0 = i0; t0 < i1; t0 += tile) {
            const int64_t rows = std::min(i1 - t0, tile);
            kern.rows_scales(xp + t0 * c, rows, c, l2_eps, scale ? sqrt_d : 1.0, nullptr,
                             nullptr, inv.data());
            kern.rows_output(yp + t0 * c, xp + t0 * c, c, 0, rows, inv.data(), gain_t.data(),
                             shift.data());
          }
        });
        return;
      }
      // Longer rows: row i is written in the loop that reads row i + 1 for its norm, summed
      // in the lane order of block_sum_squares.
      at::parallel_for(0, n, grain(c), [&](int64_t i0, int64_t i1) {
        double norm_sq = kern.block_sum_squares(xp + i0 * c, c);
        for (int64_t i = i0; i < i1; ++i) {
          const T inv = static_cast<T>(1.0 / scale_of(norm_sq));
          const T* row = xp + i * c;
          if (i + 1 < i1) {
            norm_sq = kern.row_output_next(yp + i * c, row, c, inv, gain_t.data(), shift.data(),
                                      row + c);
          } else {
            kern.row_output(yp + i * c, row, c, inv, gain_t.data(), shift.data());
          }
        }
      });
      return;
    }
    if (n >= at::get_num_threads()) {
      // Each task walks its samples: the output of sample i is written in the same loop
      // that reads sample i + 1 for its norm, so both memory streams are in flight.
      // Channel-last units group enough positions to fill vectors when C is small, with
      // the C coefficients repeated over the group.
      const int64_t group = l.channels_last ? (kMinUnit + c - 1) / c : 1;
      const int64_t len = l.channels_last ? group * c : l.m;
      // Small samples and large row-wise ones take two passes each: the norm of a sample,
      // then its output (a small sample is still in L1 for the second read; the pipelined
      // loop reads a large sample for its output two samples after its norm, beyond L2 at
      // this size; large channel-last samples measured no gain: 256x256x14x14 1.01-1.04x
      // -> 1.07x BatchNorm's eval).
      const int64_t bytes = per_sample * static_cast<int64_t>(sizeof(T));
      const bool two_pass = bytes <= kInCacheBytes || (!l.channels_last && bytes >= kTwoPassBytes);
      at::parallel_for(0, n, grain(per_sample), [&](int64_t i0, int64_t i1) {
        // Row-wise: a[k], b[k] per row; channel-last: C coefficients repeated `group` times.
        std::vector<T> a(group * c), b(group * c);
        for (int64_t j = 0; j < group * c; j += c) {
          std::copy(shift.begin(), shift.end(), b.begin() + j);
        }
        double norm_sq = kern.block_sum_squares(xp + i0 * per_sample, per_sample);
        for (int64_t i = i0; i < i1; ++i) {
          const T* sample = xp + i * per_sample;
          if (two_pass && i > i0) {
            norm_sq = kern.block_sum_squares(sample, per_sample);
          }
          const double inv = 1.0 / scale_of(norm_sq);
          for (int64_t k = 0; k < c; ++k) {
            a[k] = static_cast<T>(gain[k] * inv);
          }
          for (int64_t j = c; j < group * c; j += c) {
            std::copy(a.begin(), a.begin() + c, a.begin() + j);
          }
          const T* next = !two_pass && i + 1 < i1 ? sample + per_sample : nullptr;
          const double next_norm_sq = kern.sample_output_next(
              yp + i * per_sample, sample, a.data(), b.data(), next, per_sample, len,
              l.channels_last);
          if (next != nullptr) {
            norm_sq = next_norm_sq;
          }
        }
      });
      return;
    }
    // Fewer samples than threads: the norms one sample per task (each summed whole, in the
    // order of the loop above, so that a sample's output does not depend on the batch size
    // or the thread count), then one output pass spread over all threads.
    std::vector<T> a(n * c);
    at::parallel_for(0, n, 1, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const double inv = 1.0 / scale_of(kern.block_sum_squares(xp + i * per_sample, per_sample));
        for (int64_t k = 0; k < c; ++k) {
          a[i * c + k] = static_cast<T>(gain[k] * inv);
        }
      }
    });
    const Coef<T> pa{a.data(), c}, rb{shift.data(), 0};
    // Output units of one sample: its C rows, or its M channel-last positions.
    const int64_t units = l.channels_last ? l.m : c;
    const int64_t per_unit = l.channels_last ? c : l.m;
    at::parallel_for(0, n * units, grain(per_unit), [&](int64_t i0, int64_t i1) {
      kern.affine(yp, xp, pa, rb, c, l.m, l.channels_last, i0, i1);
    });
  });
  return y;
}

}  // namespace l2bn
