// Registers the operators of ops.h as torch.ops.l2bn.* with a CPU implementation; other
// devices take the pure-PyTorch path in Python (l2bn/_fused.py decides).
#include <torch/library.h>

#include "ops.h"

TORCH_LIBRARY(l2bn, m) {
  m.def(
      "train_forward(Tensor x, Tensor? weight, Tensor? bias, Tensor(a!)? running_mean, "
      "Tensor(b!)? running_var, float momentum, float eps, float l2_eps, bool scale) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "train_backward(Tensor dy, Tensor x, Tensor? weight, Tensor rho, Tensor active, "
      "Tensor? x_mean, Tensor? x_var, Tensor mean, Tensor invstd, bool scale, "
      "bool input_grad) -> (Tensor, Tensor, Tensor)");
  m.def(
      "eval_forward(Tensor x, Tensor running_mean, Tensor running_var, Tensor? weight, "
      "Tensor? bias, float eps, float l2_eps, bool scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(l2bn, CPU, m) {
  m.impl("train_forward", &l2bn::train_forward);
  m.impl("train_backward", &l2bn::train_backward);
  m.impl("eval_forward", &l2bn::eval_forward);
}
