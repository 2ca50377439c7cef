// The Python functions of l2bn._C (entry_points.cpp), for module.cpp's method table.
#pragma once

#include <Python.h>

namespace l2bn {

// NULL-terminated.
PyMethodDef* python_methods();

}  // namespace l2bn
