// The passes compiled for the build's baseline (on x86-64: SSE2), for every processor.
#include "kernels.h"

#include "kernel_table.h"

namespace l2bn {
const KernelSet* default_kernels() {
  static const KernelSet table{"default", L2BN_KERNEL_TABLE(float), L2BN_KERNEL_TABLE(double),
                                     L2BN_STATISTICS_TABLE};
  return &table;
}
}  // namespace l2bn
