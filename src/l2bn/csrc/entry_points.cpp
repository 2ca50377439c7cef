// Python entry points of the eager CPU calls: l2bn._C.train and l2bn._C.eval_forward call
// the operators l2bn::train and l2bn::eval_forward through the dispatcher, as
// torch.ops.l2bn.train.default and eval_forward.default do, without torch.ops' boxed path
// (arguments parsed against the schema into a stack of IValues, the stack unpacked again,
// the output boxed and unboxed). That path is little work in a warm loop (about 1.5 us) but
// much code: a call that finds it out of the caches, as a layer's call does after the
// layers before it ran, spends 12-30 us more in it (README, "Performance").
//
// What the dispatcher does is unchanged: autograd (l2bn::train's C++ formula), dispatch
// modes, fake and functorch tensors, the profiler's record of the operator. What is not
// here is __torch_function__ (tensor subclasses that override it, TorchFunctionMode,
// torch.set_default_device): l2bn/_impl/cpu.py calls torch.ops for those, and under
// torch.compile and torch.export. The GIL is released around the call, as torch.ops and
// torch's own bindings do.
#include "entry_points.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/utils/pybind.h>

#include <optional>

#include "ops.h"

namespace l2bn {
namespace {

// Each argument of one call, converted; a wrong type raises TypeError naming the
// function and the argument's position.
class Arguments {
 public:
  Arguments(const char* name, PyObject* const* args, Py_ssize_t given, Py_ssize_t expected)
      : name_(name), args_(args) {
    TORCH_CHECK_TYPE(given == expected, "l2bn._C.", name, " takes ", expected,
                     " arguments, got ", given);
  }

  const at::Tensor& tensor(Py_ssize_t i) const {
    TORCH_CHECK_TYPE(THPVariable_Check(args_[i]), "l2bn._C.", name_, ": argument ", i,
                     " must be a Tensor, not ", Py_TYPE(args_[i])->tp_name);
    return THPVariable_Unpack(args_[i]);
  }

  std::optional<at::Tensor> optional_tensor(Py_ssize_t i) const {
    if (args_[i] == Py_None) {
      return std::nullopt;
    }
    return tensor(i);
  }

  double real(Py_ssize_t i) const {
    TORCH_CHECK_TYPE(PyFloat_Check(args_[i]) || PyLong_Check(args_[i]), "l2bn._C.", name_,
                     ": argument ", i, " must be a float, not ", Py_TYPE(args_[i])->tp_name);
    const double value = PyFloat_AsDouble(args_[i]);
    if (value == -1.0 && PyErr_Occurred()) {
      throw python_error();
    }
    return value;
  }

  bool flag(Py_ssize_t i) const {
    TORCH_CHECK_TYPE(PyBool_Check(args_[i]), "l2bn._C.", name_, ": argument ", i,
                     " must be a bool, not ", Py_TYPE(args_[i])->tp_name);
    return args_[i] == Py_True;
  }

 private:
  const char* name_;
  PyObject* const* args_;
};

// train(x, weight, bias, running_mean, running_var, momentum, eps, l2_eps, scale) -> y
PyObject* train(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("l2bn::train", "")
                             .typed<decltype(l2bn::train)>();
  const Arguments a("train", args, nargs, 9);
  const at::Tensor& x = a.tensor(0);
  const auto weight = a.optional_tensor(1), bias = a.optional_tensor(2);
  const auto running_mean = a.optional_tensor(3), running_var = a.optional_tensor(4);
  const double momentum = a.real(5), eps = a.real(6), l2_eps = a.real(7);
  const bool scale = a.flag(8);
  at::Tensor y;
  {
    pybind11::gil_scoped_release no_gil;
    y = op.call(x, weight, bias, running_mean, running_var, momentum, eps, l2_eps, scale);
  }
  return THPVariable_Wrap(std::move(y));
  END_HANDLE_TH_ERRORS
}

// eval_forward(x, running_mean, running_var, weight, bias, eps, l2_eps, scale) -> y, run
// below autograd: for calls that record no graph (no_grad, or no input requires grad).
PyObject* eval_forward(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("l2bn::eval_forward", "")
                             .typed<decltype(l2bn::eval_forward)>();
  const Arguments a("eval_forward", args, nargs, 8);
  const at::Tensor& x = a.tensor(0);
  const at::Tensor& running_mean = a.tensor(1);
  const at::Tensor& running_var = a.tensor(2);
  const auto weight = a.optional_tensor(3), bias = a.optional_tensor(4);
  const double eps = a.real(5), l2_eps = a.real(6);
  const bool scale = a.flag(7);
  at::Tensor y;
  {
    pybind11::gil_scoped_release no_gil;
    at::AutoDispatchBelowAutograd below;
    y = op.call(x, running_mean, running_var, weight, bias, eps, l2_eps, scale);
  }
  return THPVariable_Wrap(std::move(y));
  END_HANDLE_TH_ERRORS
}

template <PyObject* (*F)(PyObject*, PyObject* const*, Py_ssize_t)>
PyCFunction fastcall() {
  return reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(F));
}

}  // namespace

PyMethodDef* python_methods() {
  static PyMethodDef methods[] = {
      {"train", fastcall<train>(), METH_FASTCALL,
       "train(x, weight, bias, running_mean, running_var, momentum, eps, l2_eps, scale) -> "
       "Tensor: l2bn::train through the dispatcher (autograd included), without torch.ops."},
      {"eval_forward", fastcall<eval_forward>(), METH_FASTCALL,
       "eval_forward(x, running_mean, running_var, weight, bias, eps, l2_eps, scale) -> "
       "Tensor: l2bn::eval_forward below autograd, without torch.ops (no graph recorded)."},
      {nullptr, nullptr, 0, nullptr}};
  return methods;
}

}  // namespace l2bn
