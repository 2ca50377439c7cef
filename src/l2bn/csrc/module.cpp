// The Python module l2bn._C: importing it loads this library, whose static initializers
// register the torch.ops.l2bn operators (ops.cpp). It defines no Python functions.
#include <Python.h>

extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
