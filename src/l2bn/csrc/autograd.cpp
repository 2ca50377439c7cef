// torch.ops.l2bn.train and eval_forward: L2BN as one operator each with its autograd
// formula in C++, so that an eager step pays no Python autograd Function (its context
// object, the Python call of its backward and the garbage collections those objects
// cause). Training: the forward runs train_forward and saves x, the weight and the
// O(N * C) statistics; the backward runs train_backward. Eval (running statistics, as in
// fine-tuning with frozen norms): the forward runs eval_forward and saves x, the running
// statistics and the weight; the backward runs eval_backward. A backward run with grad
// mode on (create_graph=True), or given a batched gradient (torch.func, is_grads_batched),
// instead calls differentiable_train_grads / differentiable_eval_grads, whose Python
// kernels (l2bn/_impl/cpu.py) are torch operations, so that second derivatives are exact.
//
// Every operator is called through the dispatcher, so that dispatch modes and fake
// tensors see the forward and backward operators as they do from Python.
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

// The operator `name` with the C++ signature Signature, looked up in the dispatcher.
template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

const c10::TypedOperatorHandle<decltype(train_forward)>& train_forward_op() {
  static const auto op = find_op<decltype(train_forward)>("l2bn::train_forward");
  return op;
}

const c10::TypedOperatorHandle<decltype(train_backward)>& train_backward_op() {
  static const auto op = find_op<decltype(train_backward)>("l2bn::train_backward");
  return op;
}

using GradsSignature = std::tuple<Tensor, Tensor, Tensor>(
    const Tensor&, const Tensor&, const std::optional<Tensor>&, double, double, bool,
    std::array<bool, 3>);

// Its kernel is Python's (l2bn/_impl/cpu.py registers it when it loads l2bn._C).
const c10::TypedOperatorHandle<GradsSignature>& differentiable_grads_op() {
  static const auto op = find_op<GradsSignature>("l2bn::differentiable_train_grads");
  return op;
}

using EvalGradsSignature = std::tuple<Tensor, Tensor, Tensor>(
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, const std::optional<Tensor>&,
    double, double, bool, std::array<bool, 3>);

const c10::TypedOperatorHandle<decltype(eval_forward)>& eval_forward_op() {
  static const auto op = find_op<decltype(eval_forward)>("l2bn::eval_forward");
  return op;
}

const c10::TypedOperatorHandle<decltype(eval_backward)>& eval_backward_op() {
  static const auto op = find_op<decltype(eval_backward)>("l2bn::eval_backward");
  return op;
}

// Its kernel is Python's, as differentiable_train_grads'.
const c10::TypedOperatorHandle<EvalGradsSignature>& differentiable_eval_grads_op() {
  static const auto op = find_op<EvalGradsSignature>("l2bn::differentiable_eval_grads");
  return op;
}

bool defined(const std::optional<Tensor>& t) { return t.has_value() && t->defined(); }

// A gradient of torch.func or of is_grads_batched=True (vmap over the backward): the fused
// backward operators have no batching rule, the differentiable formulas do.
bool batched(const Tensor& t) {
  return t.key_set().has_any(c10::DispatchKeySet({c10::DispatchKey::FuncTorchBatched,
                                                  c10::DispatchKey::FuncTorchGradWrapper,
                                                  c10::DispatchKey::Batched}));
}

// The running statistics, passed to TrainFunction and EvalFunction as one non-tensor
// argument: they take no gradient, so they get no autograd edge and no input metadata.
struct Running {
  const std::optional<Tensor>& mean;
  const std::optional<Tensor>& var;
};

// What both backward formulas need besides the saved tensors, kept in saved_data: the
// scalars, which optional arguments were given (the autograd edges are those of the defined
// tensor arguments, in order: x, then the weight and the bias when given) and the bias's
// dtype.
struct Settings {
  bool scale, has_weight, has_bias;
  at::ScalarType bias_dtype;
  double eps, l2_eps;

  static void save(AutogradContext* ctx, const Tensor& x, const std::optional<Tensor>& weight,
                   const std::optional<Tensor>& bias, double eps, double l2_eps, bool scale) {
    ctx->saved_data["flags"] =
        (scale ? kScale : 0) | (defined(weight) ? kHasWeight : 0) | (defined(bias) ? kHasBias : 0);
    ctx->saved_data["bias_dtype"] =
        static_cast<int64_t>(defined(bias) ? bias->scalar_type() : x.scalar_type());
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["l2_eps"] = l2_eps;
  }

  static Settings load(AutogradContext* ctx) {
    const int64_t flags = ctx->saved_data["flags"].toInt();
    return {(flags & kScale) != 0,
            (flags & kHasWeight) != 0,
            (flags & kHasBias) != 0,
            static_cast<at::ScalarType>(ctx->saved_data["bias_dtype"].toInt()),
            ctx->saved_data["eps"].toDouble(),
            ctx->saved_data["l2_eps"].toDouble()};
  }

  // Which of (dx, dweight, dbias) this backward is asked for.
  std::array<bool, 3> needs(AutogradContext* ctx) const {
    return {ctx->needs_input_grad(0), has_weight && ctx->needs_input_grad(1),
            has_bias && ctx->needs_input_grad(has_weight ? 2 : 1)};
  }

  // One gradient per argument of forward (`arguments` of them): the asked-for ones, dweight
  // in the weight's dtype and dbias in the bias's; none for the running statistics and the
  // scalars.
  variable_list gradients(const std::array<bool, 3>& needs, const Tensor& dx,
                          const Tensor& dweight, const Tensor& dbias, const Tensor& weight,
                          size_t arguments) const {
    const auto in = [](const Tensor& t, at::ScalarType dtype) {
      return t.scalar_type() == dtype ? t : t.to(dtype);
    };
    variable_list out(arguments);
    if (needs[0]) {
      out[0] = dx;
    }
    if (needs[1]) {
      out[1] = in(dweight, weight.scalar_type());
    }
    if (needs[2]) {
      out[2] = in(dbias, bias_dtype);
    }
    return out;
  }

 private:
  enum Flag : int64_t { kScale = 1, kHasWeight = 2, kHasBias = 4 };
};

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
    Settings::save(ctx, x, weight, bias, eps, l2_eps, scale);
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const Tensor& x = saved[0];
    const Tensor& weight = saved[1];
    const Settings settings = Settings::load(ctx);
    const std::array<bool, 3> needs = settings.needs(ctx);
    const std::optional<Tensor> w =
        settings.has_weight ? std::optional<Tensor>(weight) : std::nullopt;
    const Tensor& dy = grads[0];

    Tensor dx, dweight, dbias;
    if (at::GradMode::is_enabled()) {
      // create_graph=True: the gradient must itself be differentiable.
      std::tie(dx, dweight, dbias) = differentiable_grads_op().call(
          dy, x, w, settings.eps, settings.l2_eps, settings.scale, needs);
    } else {
      at::AutoDispatchBelowADInplaceOrView below;
      std::tie(dx, dweight, dbias) =
          train_backward_op().call(dy, x, w, saved[2], saved[3], saved[4], saved[5], saved[6],
                                   saved[7], settings.scale, needs[0]);
    }
    return settings.gradients(needs, dx, dweight, dbias, weight, 8);
  }
};

// Eval-mode L2BN (running statistics): the edges are those of x, and of the weight and
// the bias when given; the running statistics are saved but take no gradient (cpu.py
// sends running statistics that require grad to the PyTorch backend).
class EvalFunction : public torch::autograd::Function<EvalFunction> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& x,
                        const std::optional<Tensor>& weight, const std::optional<Tensor>& bias,
                        const Running& running, double eps, double l2_eps, bool scale) {
    Tensor y = [&] {
      at::AutoDispatchBelowADInplaceOrView below;
      return eval_forward_op().call(x, *running.mean, *running.var, weight, bias, eps, l2_eps,
                                    scale);
    }();
    ctx->save_for_backward(
        {x, *running.mean, *running.var, defined(weight) ? *weight : Tensor()});
    Settings::save(ctx, x, weight, bias, eps, l2_eps, scale);
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &running_mean = saved[1], &running_var = saved[2];
    const Tensor& weight = saved[3];
    const Settings settings = Settings::load(ctx);
    const std::array<bool, 3> needs = settings.needs(ctx);
    if (!needs[0] && !needs[1] && !needs[2]) {
      return variable_list(7);
    }
    const std::optional<Tensor> w =
        settings.has_weight ? std::optional<Tensor>(weight) : std::nullopt;
    const Tensor& dy = grads[0];
    Tensor dx, dweight, dbias;
    if (at::GradMode::is_enabled() || batched(dy)) {
      std::tie(dx, dweight, dbias) = differentiable_eval_grads_op().call(
          dy, x, running_mean, running_var, w, settings.eps, settings.l2_eps, settings.scale,
          needs);
    } else {
      at::AutoDispatchBelowADInplaceOrView below;
      std::tie(dx, dweight, dbias) = eval_backward_op().call(
          dy, x, running_mean, running_var, w, settings.eps, settings.l2_eps, settings.scale,
          needs);
    }
    // dweight and dbias come in float64 (eval_backward) or the accumulation dtype.
    return settings.gradients(needs, dx, dweight, dbias, weight, 7);
  }
};

bool requires_grad(const std::optional<Tensor>& t) { return defined(t) && t->requires_grad(); }

// The Autograd kernel of l2bn::eval_forward, as train_autograd's.
Tensor eval_autograd(const Tensor& x, const Tensor& running_mean, const Tensor& running_var,
                     const std::optional<Tensor>& weight, const std::optional<Tensor>& bias,
                     double eps, double l2_eps, bool scale) {
  if (at::GradMode::is_enabled() &&
      (x.requires_grad() || requires_grad(weight) || requires_grad(bias))) {
    const std::optional<Tensor> mean(running_mean), var(running_var);
    return EvalFunction::apply(x, weight, bias, Running{mean, var}, eps, l2_eps, scale);
  }
  at::AutoDispatchBelowADInplaceOrView below;
  return eval_forward_op().call(x, running_mean, running_var, weight, bias, eps, l2_eps, scale);
}

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
  static const auto op = find_op<decltype(train_autograd)>("l2bn::train");
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
  m.impl("eval_forward", &l2bn::eval_autograd);
  m.impl("train_forward", torch::autograd::autogradNotImplementedFallback());
  m.impl("train_backward", torch::autograd::autogradNotImplementedFallback());
  m.impl("eval_backward", torch::autograd::autogradNotImplementedFallback());
}
