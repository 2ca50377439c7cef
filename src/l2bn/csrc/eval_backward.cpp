// Gradients of eval-mode L2BN, y = gain[c] * (x / rho[n] - mean[c]) + beta[c] with gain =
// gamma * invstd (paper eqs. 2-3 with running statistics), for calls whose backward needs
// no graph of its own (create_graph=False; l2bn/_impl/cpu.py keeps a differentiable
// formula for the others). Per sample, one pass for ||x[n]||^2 and the per-channel sums
// u = sum_s dy * x and v = sum_s dy, then one for
//   dx = gain * dy / rho - x * t / (rho^2 * k * ||x||),   t = sum_c gain * u
// (k = sqrt(D) under `scale`; no term through the norm where it was clamped by l2_eps).
// Every value is taken in double, so that where dy lies along x (a loss like ||y||^2 / 2)
// the difference of the two terms loses nothing before dx is rounded to the input's dtype.
// dweight = invstd * sum_n (u / rho - mean * v) and dbias = sum_n v, in double.
#include <ATen/ops/empty_like.h>

#include <array>

#include "common.h"
#include "ops.h"

namespace l2bn {
namespace {

// sum of g * x and of g over a row of `len` values, in double, in four accumulators each
// (registers: consecutive additions do not wait for each other).
template <typename T>
void row_sums(const T* x, const T* g, int64_t len, double* sum_gx, double* sum_g) {
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

}  // namespace

std::tuple<Tensor, Tensor, Tensor> eval_backward(
    const Tensor& grad_output, const Tensor& input, const Tensor& running_mean,
    const Tensor& running_var, const std::optional<Tensor>& weight, double eps, double l2_eps,
    bool scale, std::array<bool, 3> output_mask) {
  check_input(input, "eval_backward");
  TORCH_CHECK(grad_output.sizes() == input.sizes(), "l2bn.eval_backward: grad_output of shape ",
              grad_output.sizes(), " for input of shape ", input.sizes());
  TORCH_CHECK(grad_output.scalar_type() == input.scalar_type(),
              "l2bn.eval_backward: grad_output of dtype ", grad_output.scalar_type(),
              " for input of dtype ", input.scalar_type());
  const Tensor x = supported_layout(input);
  // dy in x's layout.
  const Tensor dy = grad_output.strides() == x.strides()
                        ? grad_output
                        : at::empty_like(x).copy_(grad_output);
  const Layout l = layout_of(x);
  const int64_t n = l.n, c = l.c, m = l.m, d = c * m;
  const auto [need_dx, need_dweight, need_dbias] = output_mask;
  const bool need_sums = need_dweight || need_dbias;
  const std::vector<double> w = channel_values(weight, c, 1.0);
  const std::vector<double> rm = channel_values(running_mean, c, 0.0);
  const std::vector<double> rv = channel_values(running_var, c, 1.0);
  std::vector<double> invstd(c), gain(c);
  for (int64_t k = 0; k < c; ++k) {
    invstd[k] = 1.0 / std::sqrt(rv[k] + eps);
    gain[k] = w[k] * invstd[k];
  }
  const double sqrt_d = std::sqrt(static_cast<double>(d));
  const double k_div = scale ? sqrt_d : 1.0;
  Tensor dx = need_dx ? at::empty_like(x) : at::empty({0}, x.options());
  // Per thread: sum_n u / rho and sum_n v of its samples (added in thread order after).
  Partials sums(need_sums ? 2 * c : 0);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "l2bn_eval_backward", [&] {
    using T = scalar_t;
    const T* xp = x.const_data_ptr<T>();
    const T* gp = dy.const_data_ptr<T>();
    T* out = need_dx ? dx.data_ptr<T>() : nullptr;
    const Kernels<T>& kern = kernels<T>();
    at::parallel_for(0, n, 1, [&](int64_t i0, int64_t i1) {
      std::vector<double> u(c), v(c), coef(c);  // the sample's sums, its dx coefficients
      double* xh_dy = need_sums ? sums.mine() : nullptr;
      double* dy_sum = need_sums ? xh_dy + c : nullptr;
      for (int64_t i = i0; i < i1; ++i) {
        const T* xs = xp + i * d;
        const T* gs = gp + i * d;
        if (!l.channels_last) {  // c rows of m positions
          for (int64_t k = 0; k < c; ++k) {
            row_sums(xs + k * m, gs + k * m, m, &u[k], &v[k]);
          }
        } else {  // m positions of c channels: each channel's sums in its own element
          std::fill(u.begin(), u.end(), 0.0);
          std::fill(v.begin(), v.end(), 0.0);
          for (int64_t s = 0; s < m; ++s) {
            const T* xr = xs + s * c;
            const T* gr = gs + s * c;
            for (int64_t k = 0; k < c; ++k) {
              u[k] += static_cast<double>(gr[k]) * static_cast<double>(xr[k]);
              v[k] += static_cast<double>(gr[k]);
            }
          }
        }
        // The sample's squared norm, each square in double: rho's rounding would reach
        // dweight, through sum_n u / rho - mean * v, where channel means are large.
        const double norm_sq = kern.exact_sum_squares(xs, d);
        bool active = false;
        const double r = sample_scale(norm_sq, l2_eps, sqrt_d, scale, &active);
        const double inv_r = 1.0 / r;  // one division a sample, not one a channel
        if (need_sums) {
          for (int64_t k = 0; k < c; ++k) {
            xh_dy[k] += u[k] * inv_r;
            dy_sum[k] += v[k];
          }
        }
        if (out == nullptr) {
          continue;
        }
        double t0 = 0, t1 = 0, t2 = 0, t3 = 0;  // t in four chains
        int64_t k = 0;
        for (; k + 4 <= c; k += 4) {
          t0 += gain[k] * u[k];
          t1 += gain[k + 1] * u[k + 1];
          t2 += gain[k + 2] * u[k + 2];
          t3 += gain[k + 3] * u[k + 3];
        }
        for (; k < c; ++k) {
          t0 += gain[k] * u[k];
        }
        const double t = (t0 + t1) + (t2 + t3);
        const double through_norm = active ? t / (r * r * k_div * std::sqrt(norm_sq)) : 0.0;
        for (int64_t j = 0; j < c; ++j) {
          coef[j] = gain[j] * inv_r;
        }
        T* os = out + i * d;
        if (!l.channels_last) {
          for (int64_t j = 0; j < c; ++j) {
            const double a = coef[j];
            for (int64_t s = j * m; s < (j + 1) * m; ++s) {
              os[s] = static_cast<T>(a * static_cast<double>(gs[s]) -
                                     static_cast<double>(xs[s]) * through_norm);
            }
          }
        } else {
          for (int64_t s = 0; s < m; ++s) {
            for (int64_t j = 0; j < c; ++j) {
              const int64_t e = s * c + j;
              os[e] = static_cast<T>(coef[j] * static_cast<double>(gs[e]) -
                                     static_cast<double>(xs[e]) * through_norm);
            }
          }
        }
      }
    });
  });
  Tensor dweight = at::empty({need_dweight ? c : 0}, x.options().dtype(at::kDouble));
  Tensor dbias = at::empty({need_dbias ? c : 0}, x.options().dtype(at::kDouble));
  if (need_sums) {
    const std::vector<double> total = sums.total();
    if (need_dweight) {
      double* p = dweight.data_ptr<double>();
      for (int64_t k = 0; k < c; ++k) {
        p[k] = invstd[k] * (total[k] - rm[k] * total[c + k]);
      }
    }
    if (need_dbias) {
      std::copy(total.begin() + c, total.end(), dbias.data_ptr<double>());
    }
  }
  return {dx, dweight, dbias};
}

}  // namespace l2bn
