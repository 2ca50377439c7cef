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

// Four partial sums, so that consecutive additions do not wait for each other.
struct Sum4 {
  double s[4] = {0, 0, 0, 0};
  double total() const { return (s[0] + s[1]) + (s[2] + s[3]); }
};

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
  std::vector<double> u(static_cast<size_t>(n * c)), v(need_sums ? n * c : 0), rho(n);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "l2bn_eval_backward", [&] {
    using T = scalar_t;
    const T* xp = x.const_data_ptr<T>();
    const T* gp = dy.const_data_ptr<T>();
    T* out = need_dx ? dx.data_ptr<T>() : nullptr;
    at::parallel_for(0, n, 1, [&](int64_t i0, int64_t i1) {
      std::vector<double> coef(c);
      for (int64_t i = i0; i < i1; ++i) {
        const T* xs = xp + i * d;
        const T* gs = gp + i * d;
        double* ui = u.data() + i * c;
        double* vi = need_sums ? v.data() + i * c : nullptr;
        Sum4 sq;
        if (!l.channels_last) {  // c rows of m positions
          for (int64_t k = 0; k < c; ++k) {
            Sum4 su, sv;
            const T* xr = xs + k * m;
            const T* gr = gs + k * m;
            for (int64_t s = 0; s < m; ++s) {
              const double xv = xr[s], gv = gr[s];
              sq.s[s & 3] += xv * xv;
              su.s[s & 3] += gv * xv;
              sv.s[s & 3] += gv;
            }
            ui[k] = su.total();
            if (vi != nullptr) {
              vi[k] = sv.total();
            }
          }
        } else {  // m positions of c channels
          std::fill(ui, ui + c, 0.0);
          if (vi != nullptr) {
            std::fill(vi, vi + c, 0.0);
          }
          for (int64_t s = 0; s < m; ++s) {
            const T* xr = xs + s * c;
            const T* gr = gs + s * c;
            for (int64_t k = 0; k < c; ++k) {
              const double xv = xr[k], gv = gr[k];
              sq.s[k & 3] += xv * xv;
              ui[k] += gv * xv;
              if (vi != nullptr) {
                vi[k] += gv;
              }
            }
          }
        }
        const double norm_sq = sq.total();
        bool active = false;
        rho[i] = sample_scale(norm_sq, l2_eps, sqrt_d, scale, &active);
        if (out == nullptr) {
          continue;
        }
        double t = 0;
        for (int64_t k = 0; k < c; ++k) {
          t += gain[k] * ui[k];
        }
        const double r = rho[i];
        const double through_norm = active ? t / (r * r * k_div * std::sqrt(norm_sq)) : 0.0;
        for (int64_t k = 0; k < c; ++k) {
          coef[k] = gain[k] / r;
        }
        T* os = out + i * d;
        if (!l.channels_last) {
          for (int64_t k = 0; k < c; ++k) {
            const double a = coef[k];
            for (int64_t s = k * m; s < (k + 1) * m; ++s) {
              os[s] = static_cast<T>(a * static_cast<double>(gs[s]) -
                                     static_cast<double>(xs[s]) * through_norm);
            }
          }
        } else {
          for (int64_t s = 0; s < m; ++s) {
            for (int64_t k = 0; k < c; ++k) {
              const int64_t j = s * c + k;
              os[j] = static_cast<T>(coef[k] * static_cast<double>(gs[j]) -
                                     static_cast<double>(xs[j]) * through_norm);
            }
          }
        }
      }
    });
  });
  Tensor dweight = at::empty({need_dweight ? c : 0}, x.options().dtype(at::kDouble));
  Tensor dbias = at::empty({need_dbias ? c : 0}, x.options().dtype(at::kDouble));
  if (need_sums) {
    std::vector<double> xh_dy(c, 0.0), dy_sum(c, 0.0);
    for (int64_t i = 0; i < n; ++i) {
      const double inv = 1.0 / rho[i];
      for (int64_t k = 0; k < c; ++k) {
        xh_dy[k] += u[i * c + k] * inv;
        dy_sum[k] += v[i * c + k];
      }
    }
    if (need_dweight) {
      double* p = dweight.data_ptr<double>();
      for (int64_t k = 0; k < c; ++k) {
        p[k] = invstd[k] * (xh_dy[k] - rm[k] * dy_sum[k]);
      }
    }
    if (need_dbias) {
      std::copy(dy_sum.begin(), dy_sum.end(), dbias.data_ptr<double>());
    }
  }
  return {dx, dweight, dbias};
}

}  // namespace l2bn
