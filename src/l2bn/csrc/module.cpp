// The Python module l2bn._C: importing it loads this library, whose static initializers
// register the torch.ops.l2bn operators (register.cpp). Its Python functions are the entry
// points of eager calls (entry_points.cpp).
// Loading it chooses the instruction set of the kernels (kernels.cpp): a bad
// L2BN_CPU_ISA makes the import fail with RuntimeError, before any operator runs.
#include <Python.h>

#include <exception>

#include "entry_points.h"
#include "kernels.h"

extern "C" PyObject* PyInit__C(void) {
  try {
    l2bn::active_kernels();
  } catch (const std::exception& e) {
    PyErr_Format(PyExc_RuntimeError, "l2bn._C: %s", e.what());
    return nullptr;
  }
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1,
                                l2bn::python_methods()};
  return PyModule_Create(&module);
}
