// Which table of passes runs (kernels.h): the best instruction set that both this build
// and this processor have, unless the environment variable L2BN_CPU_ISA (read once, on
// first use; l2bn._C uses it when Python loads the module) names one:
//
//   L2BN_CPU_ISA=avx512 | avx2 | default   (unset, empty or "auto": the best available)
//
// An unknown name, or an instruction set the processor or the build lacks, is an error
// (std::runtime_error, raised as RuntimeError when l2bn._C is imported), never a fallback:
// a forced instruction set exists so that tests and benchmarks can rely on it.
#include <cctype>
#include <cstdlib>
#include <iterator>
#include <stdexcept>

#include "kernels.h"

namespace l2bn {
namespace {

// Whether the processor (and the OS, which must save the wider registers) runs the
// instruction set; libgcc's cpu model checks both.
bool processor_has(const std::string& isa) {
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
  __builtin_cpu_init();
  if (isa == "avx512") {
    return __builtin_cpu_supports("x86-64-v4");
  }
  if (isa == "avx2") {
    return __builtin_cpu_supports("x86-64-v3");
  }
#endif
  return isa == "default";
}

const KernelSet* compiled(const std::string& isa) {
  if (isa == "avx512") {
    return avx512_kernels();
  }
  if (isa == "avx2") {
    return avx2_kernels();
  }
  if (isa == "default") {
    return default_kernels();
  }
  return nullptr;
}

const std::string kIsas[] = {"avx512", "avx2", "default"};

std::string joined(const std::vector<std::string>& names) {
  std::string out;
  for (const std::string& name : names) {
    out += (out.empty() ? "" : ", ") + name;
  }
  return out;
}

const KernelSet* choose() {
  const char* env = std::getenv("L2BN_CPU_ISA");
  std::string wanted = env == nullptr ? "" : env;
  for (char& ch : wanted) {
    ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  }
  const std::vector<std::string> usable = supported_isas();
  if (wanted.empty() || wanted == "auto") {
    return compiled(usable.front());
  }
  if (std::find(std::begin(kIsas), std::end(kIsas), wanted) == std::end(kIsas)) {
    throw std::runtime_error("L2BN_CPU_ISA='" + std::string(env) +
                             "' is not an instruction set of the l2bn kernels; valid values: "
                             "auto, avx512, avx2, default");
  }
  for (const std::string& isa : usable) {
    if (isa == wanted) {
      return compiled(isa);
    }
  }
  const char* why = compiled(wanted) == nullptr ? "this build of l2bn._C has no kernels for it"
                                                 : "this processor does not support it";
  throw std::runtime_error("L2BN_CPU_ISA=" + wanted + ": " + why +
                           "; instruction sets available here: " + joined(usable) +
                           " (unset L2BN_CPU_ISA to use the best)");
}

}  // namespace

std::vector<std::string> supported_isas() {
  std::vector<std::string> out;
  for (const std::string& isa : kIsas) {
    if (compiled(isa) != nullptr && processor_has(isa)) {
      out.emplace_back(isa);
    }
  }
  return out;
}

const KernelSet& active_kernels() {
  // A throw leaves the static uninitialized: every later call reports the same error.
  static const KernelSet* const table = choose();
  return *table;
}

}  // namespace l2bn
