// Eval-mode L2BN (paper eqs. 2-3 with running statistics): y = gain[c] / rho[n] * x +
// shift[c]. Each task takes whole samples: ||x[n]||, then the sample's output while it is
// still in cache, so the input is read from memory once, as BatchNorm's eval does.
#include <ATen/ops/empty_like.h>

#include <functional>

#include "common.h"
#include "kernels.h"
#include "ops.h"

namespace l2bn {
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
  auto inverse_scale = [&](double norm_sq) {
    bool active = false;
    return 1.0 / sample_scale(norm_sq, l2_eps, sqrt_d, scale, &active);
  };
  // Output units of one sample: its C rows, or its M channel-last positions.
  const int64_t units = l.channels_last ? l.m : c;
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
      // (N, C): rank-one coefficients (vector_passes.h); row i is written in the loop that
      // reads row i + 1 for its norm, summed in the lane order of block_sum_squares.
      std::vector<T> gain_t(gain.begin(), gain.end());
      at::parallel_for(0, n, grain(c), [&](int64_t i0, int64_t i1) {
        double norm_sq = kern.block_sum_squares(xp + i0 * c, c);
        for (int64_t i = i0; i < i1; ++i) {
          const T inv = static_cast<T>(inverse_scale(norm_sq));
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
      at::parallel_for(0, n, grain(per_sample), [&](int64_t i0, int64_t i1) {
        std::vector<T> a(c);
        double norm_sq = kern.sample_sum_squares(xp + i0 * per_sample, c, l.m, l.channels_last);
        for (int64_t i = i0; i < i1; ++i) {
          const double inv = inverse_scale(norm_sq);
          for (int64_t k = 0; k < c; ++k) {
            a[k] = static_cast<T>(gain[k] * inv);
          }
          const T* next = i + 1 < i1 ? xp + (i + 1) * per_sample : nullptr;
          norm_sq = kern.sample_output_next(yp + i * per_sample, xp + i * per_sample, a.data(),
                                       shift.data(), next, c, l.m, l.channels_last);
        }
      });
      return;
    }
    // Fewer samples than threads: each norm in parallel, then one parallel output pass.
    std::vector<T> a(n * c);
    for (int64_t i = 0; i < n; ++i) {
      const T* sample = xp + i * per_sample;
      const double norm_sq = at::parallel_reduce(
          0, per_sample, kGrain, 0.0,
          [&](int64_t j0, int64_t j1, double acc) {
            return acc + kern.block_sum_squares(sample + j0, j1 - j0);
          },
          std::plus<double>());
      const double inv = inverse_scale(norm_sq);
      for (int64_t k = 0; k < c; ++k) {
        a[i * c + k] = static_cast<T>(gain[k] * inv);
      }
    }
    const Coef<T> pa{a.data(), c}, rb{shift.data(), 0};
    const int64_t per_unit = l.channels_last ? c : l.m;
    at::parallel_for(0, n * units, grain(per_unit), [&](int64_t i0, int64_t i1) {
      kern.affine(yp, xp, pa, rb, c, l.m, l.channels_last, i0, i1);
    });
  });
  return y;
}

}  // namespace l2bn
