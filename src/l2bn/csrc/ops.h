// The L2BN operators (registered in register.cpp as torch.ops.l2bn.*).
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <optional>
#include <tuple>

#include "layout.h"

namespace l2bn {

using at::Tensor;

// (y, rho, active, x_mean, x_var, mean, invstd); x_mean and x_var are the [N, C] row
// moments of x where keeps_row_moments (layout.h) says so, else empty. Updates the
// running statistics in place when given.
using ForwardResult = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

ForwardResult train_forward(const Tensor& x, const std::optional<Tensor>& weight,
                            const std::optional<Tensor>& bias,
                            const std::optional<Tensor>& running_mean,
                            const std::optional<Tensor>& running_var, double momentum,
                            double eps, double l2_eps, bool scale);

// train_forward without running statistics, with the biased batch variance of each channel
// (C,) in float64 as an eighth output: torch.ops.l2bn.train_stats, a functional operator that
// carries an autograd formula (l2bn/_impl/cpu.py), which exported training programs record;
// the caller updates the running statistics from its mean and variance.
using StatsResult =
    std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
StatsResult train_stats(const Tensor& x, const std::optional<Tensor>& weight,
                        const std::optional<Tensor>& bias, double eps, double l2_eps,
                        bool scale);

// (dx, dweight, dbias); dx is empty unless input_grad. dweight in the weight's dtype (the
// input's without one), dbias in that dtype or float32, whichever is wider.
std::tuple<Tensor, Tensor, Tensor> train_backward(
    const Tensor& dy, const Tensor& x, const std::optional<Tensor>& weight, const Tensor& rho,
    const Tensor& active, const std::optional<Tensor>& x_mean,
    const std::optional<Tensor>& x_var, const Tensor& mean, const Tensor& invstd, bool scale,
    bool input_grad);

// The output of train_forward alone: the CPU kernel of l2bn::train, whose autograd
// kernel (autograd.cpp) saves the statistics for train_backward.
Tensor train(const Tensor& x, const std::optional<Tensor>& weight,
             const std::optional<Tensor>& bias, const std::optional<Tensor>& running_mean,
             const std::optional<Tensor>& running_var, double momentum, double eps,
             double l2_eps, bool scale);

Tensor eval_forward(const Tensor& x, const Tensor& running_mean, const Tensor& running_var,
                    const std::optional<Tensor>& weight, const std::optional<Tensor>& bias,
                    double eps, double l2_eps, bool scale);

// (dx, dweight, dbias) of eval_forward (eval_backward.cpp): dweight and dbias in float64;
// each is empty (shape (0,)) unless asked for in output_mask.
std::tuple<Tensor, Tensor, Tensor> eval_backward(
    const Tensor& grad_output, const Tensor& input, const Tensor& running_mean,
    const Tensor& running_var, const std::optional<Tensor>& weight, double eps, double l2_eps,
    bool scale, std::array<bool, 3> output_mask);

// train_forward / train_backward on rows of C values (vector.cpp): (N, C) input and
// channel-last small maps (l: N samples of M rows); running statistics and parameter
// gradients are handled by the callers.
struct VectorForward {
  Tensor y, rho, active, mean, invstd;
  std::vector<double> var;  // biased, per channel
};
VectorForward vector_forward(const Tensor& x, const Layout& l, const std::vector<double>& weight,
                             const std::vector<double>& bias, double eps, double l2_eps,
                             bool scale);
Tensor vector_backward(const Tensor& dy, const Tensor& x, const Layout& l,
                       const std::vector<double>& weight,
                       const Tensor& rho, const Tensor& active, const Tensor& mean,
                       const Tensor& invstd, bool scale, bool input_grad,
                       std::vector<double>* dgamma, std::vector<double>* dbeta);

}  // namespace l2bn
