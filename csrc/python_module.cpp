// The Python extension module fused_norm._C (built by setup.py only; LibTorch users link the
// library that CMakeLists.txt builds, which has no Python in it).
#include <Python.h>

// Importing fused_norm._C loads this library, which runs the registrations; the module itself
// holds nothing (the ops are reached through torch.ops.fused_norm).
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
