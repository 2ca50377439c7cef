// Gradients of eval-mode L2BN, y = gain[c] * (x / rho[n] - mean[c]) + beta[c] with gain =
// gamma * invstd (paper eqs. 2-3 with running statistics), for calls whose backward needs
// no graph of its own (create_graph=False; l2bn/_impl/cpu.py keeps a differentiable
// formula for the others). The per-sample passes are eval_grad_passes.h's, compiled per
// instruction set; here the checks, the per-thread partial sums and
// dweight = invstd * sum_n (u / rho - mean * v) and dbias = sum_n v, in double.
#include <ATen/ops/empty_like.h>

#include <array>

#include "common.h"
#include "ops.h"

namespace l2bn {

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
  const EvalGradCoefs coefs{c, m, l.channels_last, gain.data(), l2_eps, sqrt_d, scale};
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
      std::vector<double> scratch(3 * c);
      double* xh_dy = need_sums ? sums.mine() : nullptr;
      kern.eval_grads(out, gp, xp, coefs, i0, i1, xh_dy, need_sums ? xh_dy + c : nullptr,
                      scratch.data());
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
