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

// Each argument of one call, converted as torch.ops converts it; a wrong type raises
// TypeError naming the function and the argument.
class Arguments {
 public:
  template <size_t K>
  Arguments(const char* function, const char* const (&names)[K], PyObject* const* args,
            Py_ssize_t given)
      : function_(function), names_(names), args_(args) {
    TORCH_CHECK_TYPE(given == static_cast<Py_ssize_t>(K), "l2bn._C.", function, " takes ", K,
                     " arguments, got ", given);
  }

  const at::Tensor& tensor(Py_ssize_t i) const {
    TORCH_CHECK_TYPE(THPVariable_Check(args_[i]), "l2bn._C.", function_, ": ", names_[i],
                     " must be a Tensor, not ", Py_TYPE(args_[i])->tp_name);
    return THPVariable_Unpack(args_[i]);
  }

  std::optional<at::Tensor> optional_tensor(Py_ssize_t i) const {
    if (args_[i] == Py_None) {
      return std::nullopt;
    }
    return tensor(i);
  }

  // A Python float or int; else a one-element tensor, or anything with __float__ (numpy
  // scalars), as torch.ops takes them.
  double real(Py_ssize_t i) const {
    PyObject* obj = args_[i];
    if (PyFloat_CheckExact(obj)) {
      return PyFloat_AS_DOUBLE(obj);
    }
    if (THPVariable_Check(obj)) {
      const at::Tensor& t = THPVariable_Unpack(obj);
      TORCH_CHECK_TYPE(t.numel() == 1, "l2bn._C.", function_, ": ", names_[i],
                       " must be a float or a one-element tensor, got a tensor of shape ",
                       t.sizes());
      return t.item<double>();
    }
    TORCH_CHECK_TYPE(PyLong_Check(obj) || PyFloat_Check(obj) || PyNumber_Check(obj),
                     "l2bn._C.", function_, ": ", names_[i], " must be a float, not ",
                     Py_TYPE(obj)->tp_name);
    const double value = PyFloat_AsDouble(obj);
    if (value == -1.0 && PyErr_Occurred()) {
      throw python_error();
    }
    return value;
  }

  // True or False; else the object's truth value (ints, numpy booleans), as torch.ops.
  bool flag(Py_ssize_t i) const {
    PyObject* obj = args_[i];
    if (PyBool_Check(obj)) {
      return obj == Py_True;
    }
    const int truth = PyObject_IsTrue(obj);
    if (truth < 0) {
      throw python_error();
    }
    return truth != 0;
  }

 private:
  const char* function_;
  const char* const* names_;
  PyObject* const* args_;
};

constexpr const char* kTrainNames[] = {"x",        "weight", "bias",   "running_mean",
                                       "running_var", "momentum", "eps", "l2_eps",
                                       "scale"};
constexpr const char* kEvalNames[] = {"x",      "running_mean", "running_var", "weight",
                                      "bias",   "eps",          "l2_eps",      "scale"};

// train(x, weight, bias, running_mean, running_var, momentum, eps, l2_eps, scale) -> y
PyObject* train(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("l2bn::train", "")
                             .typed<decltype(l2bn::train)>();
  const Arguments a("train", kTrainNames, args, nargs);
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

// eval_forward(x, running_mean, running_var, weight, bias, eps, l2_eps, scale) -> y; its
// autograd kernel (autograd.cpp) records the backward when a gradient is wanted.
PyObject* eval_forward(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("l2bn::eval_forward", "")
                             .typed<decltype(l2bn::eval_forward)>();
  const Arguments a("eval_forward", kEvalNames, args, nargs);
  const at::Tensor& x = a.tensor(0);
  const at::Tensor& running_mean = a.tensor(1);
  const at::Tensor& running_var = a.tensor(2);
  const auto weight = a.optional_tensor(3), bias = a.optional_tensor(4);
  const double eps = a.real(5), l2_eps = a.real(6);
  const bool scale = a.flag(7);
  at::Tensor y;
  {
    pybind11::gil_scoped_release no_gil;
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
       "Tensor: l2bn::eval_forward through the dispatcher, without torch.ops."},
      {nullptr, nullptr, 0, nullptr}};
  return methods;
}

}  // namespace l2bn
