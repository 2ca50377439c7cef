// The full-size passes of L2BN (passes.h, vector_passes.h) and the O(N * C) statistics
// between them (statistics.h) as tables of function pointers, one table per instruction
// set: each kernels_<isa>.cpp compiles the same passes for AVX-512 (x86-64-v4), AVX2
// (x86-64-v3) or baseline x86-64. One table is chosen on first use (kernels.cpp): the best
// the processor runs, or the one L2BN_CPU_ISA names.
//
// Index ranges [i0, i1) are rows (n * C + c) in the row-wise layout and samples in the
// channel-last layout, except for `affine`, whose channel-last range is positions
// (n * M + s). The (N, C) kernels of vector_passes.h take one sample row (or a tile of rows).
//
// Free of torch headers (kernels.cpp and module.cpp include it). The standard headers the
// passes use are included here, so that no instruction-set translation unit compiles them
// under its target pragma.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace l2bn {

// A channel's one-pass variance E[v^2] - E[v]^2 (in double) is trusted while
// E[v^2] <= kCondLimit * var; other rows or channels are recomputed by a centred pass.
constexpr double kCondLimit = 1e4;

// rho[n] of eq. (3) from ||x[n]||^2; NaN propagates as in torch.clamp.
inline double sample_scale(double norm_sq, double l2_eps, double sqrt_d, bool scale,
                           bool* active) {
  const double norm = std::sqrt(norm_sq);
  *active = norm > l2_eps;
  const double rho = std::isnan(norm) ? norm : std::max(norm, l2_eps);
  return scale ? rho / sqrt_d : rho;
}

// What the eval-mode backward of whole samples (eval_backward.cpp, eval_grad_passes.h)
// needs besides dy and x: the layout (c channels of m positions, channel-last or not), the
// per-channel gain = gamma * invstd, and eq. 3's l2_eps, sqrt(D) and scale.
struct EvalGradCoefs {
  int64_t c, m;
  bool channels_last;
  const double* gain;
  double l2_eps, sqrt_d;
  bool scale;
};

// A per-(n, c) coefficient: value(n, c) = ptr[n * n_stride + c]; n_stride 0 broadcasts a
// per-channel vector over samples.
template <typename T>
struct Coef {
  const T* ptr;
  int64_t n_stride;
  inline const T* row(int64_t n) const { return ptr + n * n_stride; }
};

// What the backward output of rows of C values (vector.cpp) needs besides dy and x: m,
// the rows of a sample (1 for (N, C) input, M for channel-last small maps); per sample
// rho[n] and active[n]; per channel gain, c1, alpha, mu in double and gain, alpha, beta,
// beta2 rounded to T; `fast`: float lanes allowed; `scale`: the projection is divided by
// D = C * m.
template <typename T>
struct RowGradCoefs {
  int64_t m;
  const double* rho;
  const bool* active;
  const double* gain;
  const double* c1;
  const double* alpha;
  const double* mu;
  const T* gain_t;
  const T* alpha_t;
  const T* beta_t;
  const T* beta2_t;
  bool fast;
  bool scale;
};


// Rows per tile of the training backward's channel reduction on (N, C) input (tile_grad,
// vector.cpp). Float input sums each tile's rows in float partials that are folded into
// double once per tile, so a partial holds at most this many terms: its rounding error is
// at most 16 * 2^-24 (about 1e-6) of the sum of the magnitudes it adds, 30x below what
// BatchNorm's float accumulation over every row of a thread allows at 1024 rows. Tiles of 8
// rows spent about a quarter of the reduction in the folds (1024x512: reduction operator
// 1.27-1.44x ATen's -> 1.08-1.15x, 2 threads, benchmarks/bench_cold_backward.py).
constexpr int64_t kGradTileRows = 16;
template <typename T>
struct Kernels {
  // Returns how many rows' one-pass variance may have cancelled; scratch: 3 * C doubles.
  // flags[r] = 1 where that row's variance needs a centred pass.
  int64_t (*moments)(const T* x, int64_t c, int64_t m, bool cl, int64_t i0, int64_t i1,
                     double* mean, double* second, double* var, uint8_t* flags,
                     double* scratch);
  // fast: float lanes allowed (float input, well-conditioned channels); h_t = h in T.
  void (*grad_sums)(const T* dy, const T* x, const double* h, const T* h_t, bool fast,
                    int64_t c, int64_t m, bool cl, int64_t i0, int64_t i1, double* t1,
                    double* t2);
  void (*centred_sums)(const T* x, const double* mean, int64_t c, int64_t m, bool cl,
                       int64_t i0, int64_t i1, double* d1, double* d2);
  double (*block_sum_squares)(const T* x, int64_t len);
  // The same sum with every square in double lanes (exact squares of float input): for
  // norms whose rounding would cancel later (vector.cpp, channels far from zero).
  double (*exact_sum_squares)(const T* x, int64_t len);
  void (*affine)(T* out, const T* u, const Coef<T>& p, const Coef<T>& r, int64_t c, int64_t m,
                 bool cl, int64_t i0, int64_t i1);
  // scratch: C values.
  void (*scale_shift)(T* out, const T* x, const double* gain, const double* inv,
                      const T* shift, int64_t c, int64_t m, bool cl, int64_t i0, int64_t i1,
                      T* scratch);
  // scratch: 3 * C values.
  void (*grad_output)(T* out, const T* dy, const T* x, const double* gain, const double* inv,
                      const double* qc, const double* proj, const double* rc, int64_t c,
                      int64_t m, bool cl, int64_t i0, int64_t i1, T* scratch);
  // One sample of d values in units of len (passes.h, eval); returns ||next||^2 in the
  // order of block_sum_squares (0 when next is nullptr).
  double (*sample_output_next)(T* out, const T* u, const T* a, const T* b, const T* next,
                               int64_t d, int64_t len, bool cl);
  // The tile kernels add to their outputs.
  void (*tile_sums)(const T* x, int64_t rows, int64_t c, const double* inv, const T* shift,
                    double* s1, double* s2);
  void (*tile_dev)(const T* x, int64_t rows, int64_t c, const double* inv, const double* mu,
                   double* d1, double* d2);
  void (*row_output)(T* out, const T* x, int64_t c, T inv, const T* gain, const T* shift);
  double (*row_output_next)(T* out, const T* x, int64_t c, T inv, const T* gain,
                            const T* shift, const T* next);
  // row_output of rows [i0, i1) with inv[i] (1 / rho of the row).
  void (*rows_output)(T* out, const T* x, int64_t c, int64_t i0, int64_t i1, const double* inv,
                      const T* gain, const T* shift);
  // inv = 1 / rho and (each optional) rho and active of the rows [0, rows) of a tile, one
  // sample each (eq. 3; divisor: sqrt(D) or 1); the norms as block_sum_squares sums them.
  void (*rows_scales)(const T* x, int64_t rows, int64_t c, double l2_eps, double divisor,
                      double* rho, bool* active, double* inv);
  // rows: at most kGradTileRows (above).
  void (*tile_grad)(const T* dy, const T* x, int64_t rows, int64_t c, const double* inv,
                    const double* mu, const T* mu_t, bool fast, double* t1, double* t2);
  // dx of samples [i0, i1), k.m rows of C values each (vector_passes.h, grad_rows).
  void (*grad_rows)(T* out, const T* dy, const T* x, int64_t c, int64_t i0, int64_t i1,
                    const RowGradCoefs<T>& k);
  // Eval-mode gradients of samples [i0, i1) (eval_grad_passes.h): dx into out (unless
  // nullptr); sum_n u / rho and sum_n v added to xh_dy and dy_sum (unless nullptr).
  // scratch: 3 * C doubles.
  void (*eval_grads)(T* out, const T* dy, const T* x, const EvalGradCoefs& k, int64_t i0,
                     int64_t i1, double* xh_dy, double* dy_sum, double* scratch);
};

// The per-channel factors of the backward's projections (train.cpp): mu (channel mean of
// xh), gain = weight * invstd, e_beta and e_gamma (the 1 / count factors folded in), and
// inv_d (1 / D with the sqrt(D) scale, else 1).
struct ProjectionFactors {
  const double* mu;
  const double* gain;
  const double* e_beta;
  const double* e_gamma;
  double inv_d;
};

// The O(N * C) statistics between the training passes (statistics.h), in double.
struct StatisticsKernels {
  void (*channel_moments)(const double* xm, const double* xv, const double* inv, int64_t n,
                          int64_t c, double* mean, double* var);
  void (*channel_grad_sums)(const double* t1, const double* t2, const double* inv, int64_t n,
                            int64_t c, double* dbeta, double* dgamma);
  void (*projections)(const double* xm, const double* xv, const double* t1, const double* t2,
                      const double* inv, const bool* active, const ProjectionFactors& f,
                      int64_t n, int64_t c, double* proj);
};

// All passes compiled for one instruction set.
struct KernelSet {
  const char* isa;  // "avx512", "avx2" or "default"
  Kernels<float> f32;
  Kernels<double> f64;
  StatisticsKernels statistics;
};

// The table of each instruction set (kernels_<isa>.cpp); nullptr where this build has none
// (non-x86 or non-GCC builds have the baseline only).
const KernelSet* avx512_kernels();
const KernelSet* avx2_kernels();
const KernelSet* default_kernels();

// The active table, chosen on first call (kernels.cpp). Throws std::runtime_error when
// L2BN_CPU_ISA names an unknown instruction set or one this processor (or build) lacks.
const KernelSet& active_kernels();

// Instruction sets this processor runs and this build has, best first.
std::vector<std::string> supported_isas();

template <typename T>
const Kernels<T>& kernels();

inline const StatisticsKernels& statistics_kernels() {
  return active_kernels().statistics;
}

template <>
inline const Kernels<float>& kernels<float>() {
  return active_kernels().f32;
}

template <>
inline const Kernels<double>& kernels<double>() {
  return active_kernels().f64;
}

}  // namespace l2bn
