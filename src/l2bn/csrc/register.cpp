// Registers the operators of ops.h as torch.ops.l2bn.* with a CPU implementation (the
// Autograd kernels of l2bn::train and eval_forward are in autograd.cpp); other
// devices take the pure-PyTorch path in Python (l2bn/_impl/dispatch.py decides). cpu_isa()
// and cpu_isas() report the kernels' instruction set (kernels.cpp) and those available.
#include <torch/library.h>

#include <string>
#include <vector>

#include "kernels.h"
#include "layout.h"
#include "ops.h"

namespace {

// The instruction set the kernels run (kernels.cpp: L2BN_CPU_ISA or the best available).
std::string cpu_isa() { return l2bn::active_kernels().isa; }

// Instruction sets this processor and build can run, best first.
std::vector<std::string> cpu_isas() { return l2bn::supported_isas(); }

// The most positions of a channel-last map for which train_forward returns empty row
// moments (layout.h, keeps_row_moments): for the operators' fake implementation
// (l2bn/_impl/cpu.py).
int64_t small_map_positions() { return l2bn::kSmallMapPositions; }

}  // namespace

TORCH_LIBRARY(l2bn, m) {
  m.def(
      "train_forward(Tensor x, Tensor? weight, Tensor? bias, Tensor(a!)? running_mean, "
      "Tensor(b!)? running_var, float momentum, float eps, float l2_eps, bool scale) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "train_backward(Tensor dy, Tensor x, Tensor? weight, Tensor rho, Tensor active, "
      "Tensor? x_mean, Tensor? x_var, Tensor mean, Tensor invstd, bool scale, "
      "bool input_grad) -> (Tensor, Tensor, Tensor)");
  // train_forward without running statistics, returning the batch variance too: functional,
  // so that an autograd formula can be registered for it (l2bn/_impl/cpu.py), which
  // exported training programs record.
  m.def(
      "train_stats(Tensor x, Tensor? weight, Tensor? bias, float eps, float l2_eps, "
      "bool scale) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // train_forward with its autograd formula in C++ (autograd.cpp): returns y only.
  m.def(
      "train(Tensor x, Tensor? weight, Tensor? bias, Tensor(a!)? running_mean, "
      "Tensor(b!)? running_var, float momentum, float eps, float l2_eps, bool scale) -> Tensor");
  // (dx, dweight, dbias) of training-mode L2BN as a differentiable graph, for a backward
  // of l2bn::train run with create_graph=True. Its kernel is Python's (l2bn/_impl/cpu.py);
  // a gradient not asked for in `needs` is an empty tensor.
  m.def(
      "differentiable_train_grads(Tensor dy, Tensor x, Tensor? weight, float eps, "
      "float l2_eps, bool scale, bool[3] needs) -> (Tensor, Tensor, Tensor)");
  m.def(
      "eval_forward(Tensor x, Tensor running_mean, Tensor running_var, Tensor? weight, "
      "Tensor? bias, float eps, float l2_eps, bool scale) -> Tensor");
  // Gradients of eval_forward for a backward that records no graph (eval_backward.cpp):
  // (dx, dweight, dbias), dweight and dbias in float64, empty unless asked for.
  m.def(
      "eval_backward(Tensor grad_output, Tensor x, Tensor running_mean, Tensor running_var, "
      "Tensor? weight, float eps, float l2_eps, bool scale, bool[3] output_mask) "
      "-> (Tensor, Tensor, Tensor)");
  // (dx, dweight, dbias) of eval_forward as a differentiable graph, for a backward run with
  // create_graph=True or a batched gradient (autograd.cpp). Its kernel is Python's; a
  // gradient not asked for in `needs` is an empty tensor.
  m.def(
      "differentiable_eval_grads(Tensor dy, Tensor x, Tensor running_mean, "
      "Tensor running_var, Tensor? weight, float eps, float l2_eps, bool scale, bool[3] needs) "
      "-> (Tensor, Tensor, Tensor)");
  m.def("cpu_isa() -> str", &cpu_isa);
  m.def("cpu_isas() -> str[]", &cpu_isas);
  m.def("small_map_positions() -> int", &small_map_positions);
}

TORCH_LIBRARY_IMPL(l2bn, CPU, m) {
  m.impl("train_forward", &l2bn::train_forward);
  m.impl("train_backward", &l2bn::train_backward);
  m.impl("train", &l2bn::train);
  m.impl("train_stats", &l2bn::train_stats);
  m.impl("eval_forward", &l2bn::eval_forward);
  m.impl("eval_backward", &l2bn::eval_backward);
}
