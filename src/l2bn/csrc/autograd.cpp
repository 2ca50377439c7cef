// torch.ops.l2bn.train: training-mode L2BN as one operator with its autograd formula in
// C++, so that an eager training step pays no Python autograd Function (its context
// object, the Python call of its backward and the garbage collections those objects
// cause). The forward runs train_forward and saves x, the weight and the O(N * C)
// statistics; the backward runs train_backward. A backward run with grad mode on
// (create_graph=True) instead calls differentiable_train_grads, whose Python kernel
// (l2bn/_impl/cpu.py) differentiates the composite, so that second derivatives are exact.
//
// Both operators are called through the dispatcher, so that dispatch modes and fake
// tensors see train_forward and train_backward as they do from Python.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <array>

#include "ops.h"

namespace l2bn {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

const c10::TypedOperatorHandle<decltype(train_forward)>& train_forward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("l2bn::train_forward", "")
                             .typed<decltype(train_forward)>();
  return op;
}

const c10::TypedOperatorHandle<decltype(train_backward)>& train_backward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("l2bn::train_backward", "")
                             .typed<decltype(train_backward)>();
  return op;
}

using GradsSignature = std::tuple<Tensor, Tensor, Tensor>(
    const Tensor&, const Tensor&, const std::optional<Tensor>&, double, double, bool,
    std::array<bool, 3>);

// Its kernel is Python's (l2bn/_impl/cpu.py registers it when it loads l2bn._C).
const c10::TypedOperatorHandle<GradsSignature>& differentiable_grads_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("l2bn::differentiable_train_grads", "")
                             .typed<GradsSignature>();
  return op;
}

bool defined(const std::optional<Tensor>& t) { return t.has_value() && t->defined(); }

// The running statistics, passed to TrainFunction as one non-tensor argument: they take
// no gradient, so they get no autograd edge and no input metadata.
struct Running {
  const std::optional<Tensor>& mean;
  const std::optional<Tensor>& var;
};

// What backward needs besides the saved tensors, packed in one saved_data entry.
enum Flag : int64_t { kScale = 1, kHasWeight = 2, kHasBias = 4 };

class TrainFunction : public torch::autograd::Function<TrainFunction> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& x,
                        const std::optional<Tensor>& weight, const std::optional<Tensor>& bias,
                        const Running& running, double momentum, double eps, double l2_eps,
                        bool scale) {
    auto [y, rho, active, x_mean, x_var, mean, invstd] = [&] {
      at::AutoDispatchBelowADInplaceOrView below;
      return train_forward_op().call(x, weight, bias, running.mean, running.var, momentum, eps,
                                     l2_eps, scale);
    }();
    ctx->save_for_backward(
        {x, defined(weight) ? *weight : Tensor(), rho, active, x_mean, x_var, mean, invstd});
    // The autograd edges are those of the defined tensor arguments, in order: x, then the
    // weight and the bias when given.
    const int64_t flags =
        (scale ? kScale : 0) | (defined(weight) ? kHasWeight : 0) | (defined(bias) ? kHasBias : 0);
    ctx->saved_data["flags"] = flags;
    ctx->saved_data["bias_dtype"] =
        static_cast<int64_t>(defined(bias) ? bias->scalar_type() : x.scalar_type());
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["l2_eps"] = l2_eps;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const Tensor& x = saved[0];
    const Tensor& weight = saved[1];
    const int64_t flags = ctx->saved_data["flags"].toInt();
    const bool has_weight = flags & kHasWeight, has_bias = flags & kHasBias;
    const bool scale = flags & kScale;
    const auto bias_dtype = static_cast<at::ScalarType>(ctx->saved_data["bias_dtype"].toInt());
    const bool need_dx = ctx->needs_input_grad(0);
    const bool need_dw = has_weight && ctx->needs_input_grad(1);
    const bool need_db = has_bias && ctx->needs_input_grad(has_weight ? 2 : 1);
    const std::optional<Tensor> w = has_weight ? std::optional<Tensor>(weight) : std::nullopt;
    const Tensor& dy = grads[0];

    Tensor dx, dweight, dbias;
    if (at::GradMode::is_enabled()) {
      // create_graph=True: the gradient must itself be differentiable.
      std::tie(dx, dweight, dbias) = differentiable_grads_op().call(
          dy, x, w, ctx->saved_data["eps"].toDouble(), ctx->saved_data["l2_eps"].toDouble(),
          scale, {need_dx, need_dw, need_db});
    } else {
      at::AutoDispatchBelowADInplaceOrView below;
      std::tie(dx, dweight, dbias) =
          train_backward_op().call(dy, x, w, saved[2], saved[3], saved[4], saved[5], saved[6],
                                   saved[7], scale, need_dx);
    }
    if (!need_dx) {
      dx = Tensor();
    }
    if (!need_dw) {
      dweight = Tensor();
    }
    if (!need_db) {
      dbias = Tensor();
    } else if (dbias.scalar_type() != bias_dtype) {
      dbias = dbias.to(bias_dtype);
    }
    // One gradient per argument of forward: none for the running statistics and scalars.
    return {dx, dweight, dbias, Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

bool requires_grad(const std::optional<Tensor>& t) { return defined(t) && t->requires_grad(); }

// The Autograd kernel of l2bn::train: record the function when a gradient is wanted, else
// run the kernel below autograd.
Tensor train_autograd(const Tensor& x, const std::optional<Tensor>& weight,
                      const std::optional<Tensor>& bias,
                      const std::optional<Tensor>& running_mean,
                      const std::optional<Tensor>& running_var, double momentum, double eps,
                      double l2_eps, bool scale) {
  if (at::GradMode::is_enabled() &&
      (x.requires_grad() || requires_grad(weight) || requires_grad(bias))) {
    return TrainFunction::apply(x, weight, bias, Running{running_mean, running_var}, momentum,
                                eps, l2_eps, scale);
  }
  at::AutoDispatchBelowADInplaceOrView below;
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("l2bn::train", "")
                             .typed<decltype(train_autograd)>();
  return op.call(x, weight, bias, running_mean, running_var, momentum, eps, l2_eps, scale);
}

}  // namespace

Tensor train(const Tensor& x, const std::optional<Tensor>& weight,
             const std::optional<Tensor>& bias, const std::optional<Tensor>& running_mean,
             const std::optional<Tensor>& running_var, double momentum, double eps,
             double l2_eps, bool scale) {
  return std::get<0>(
      train_forward(x, weight, bias, running_mean, running_var, momentum, eps, l2_eps, scale));
}

}  // namespace l2bn

// train_forward and train_backward have no derivative of their own (l2bn::train and the
// Python autograd function of torch.compile record them): a backward through a graph that
// holds them bare, such as a program exported by an older l2bn, raises instead of leaving
// the gradients of the input and parameters at None behind a warning.
TORCH_LIBRARY_IMPL(l2bn, Autograd, m) {
  m.impl("train", &l2bn::train_autograd);
  m.impl("train_forward", torch::autograd::autogradNotImplementedFallback());
  m.impl("train_backward", torch::autograd::autogradNotImplementedFallback());
  m.impl("eval_backward", torch::autograd::autogradNotImplementedFallback());
}
