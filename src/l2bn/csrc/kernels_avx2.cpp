// The passes compiled for AVX2 (x86-64-v3: AVX2, FMA, BMI1/2).
// Built by GCC on x86-64 only; elsewhere avx2_kernels() returns nullptr.
#include "kernels.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)

#pragma GCC push_options
#define L2BN_VECTOR_BYTES 32
#pragma GCC target("arch=x86-64-v3")
#include "kernel_table.h"
#pragma GCC pop_options

namespace l2bn {
const KernelSet* avx2_kernels() {
  static const KernelSet table{"avx2", L2BN_KERNEL_TABLE(float), L2BN_KERNEL_TABLE(double),
                                     L2BN_STATISTICS_TABLE};
  return &table;
}
}  // namespace l2bn

#else

namespace l2bn {
const KernelSet* avx2_kernels() { return nullptr; }
}  // namespace l2bn

#endif
