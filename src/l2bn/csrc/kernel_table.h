// Included once by each kernels_<isa>.cpp, after its target pragma: the passes of passes.h,
// statistics.h, vector_passes.h and eval_grad_passes.h as plain functions with internal linkage (each
// translation unit owns its copy, compiled for its instruction set), and
// L2BN_KERNEL_TABLE(T) and L2BN_STATISTICS_TABLE, the tables of their addresses. Taking an
// address runs no code, so the tables may be built outside the pragma.
#pragma once

#include "eval_grad_passes.h"
#include "kernels.h"
#include "passes.h"
#include "statistics.h"
#include "vector_passes.h"

namespace l2bn {
namespace {

template <typename T>
int64_t k_moments(const T* x, int64_t c, int64_t m, bool cl, int64_t i0, int64_t i1,
                  double* mean, double* second, double* var, uint8_t* flags, double* scratch) {
  if (cl) {
    // scratch: 3 * C doubles, s1, s2 and room for the float shift after them.
    return moments_cl<T>(x, c, m, i0, i1, mean, second, var, flags, scratch, scratch + c);
  }
  return moments_rows<T>(x, m, i0, i1, mean, second, var, flags);
}

template <typename T>
void k_grad_sums(const T* dy, const T* x, const double* h, const T* h_t, bool fast, int64_t c,
                 int64_t m, bool cl, int64_t i0, int64_t i1, double* t1, double* t2) {
  if (cl) {
    grad_sums_cl<T>(dy, x, h, h_t, fast, c, m, i0, i1, t1, t2);
  } else {
    grad_sums_rows<T>(dy, x, h, h_t, fast, m, i0, i1, t1, t2);
  }
}

template <typename T>
void k_centred_sums(const T* x, const double* mean, int64_t c, int64_t m, bool cl, int64_t i0,
                    int64_t i1, double* d1, double* d2) {
  if (cl) {
    centred_cl<T>(x, mean, c, m, i0, i1, d1, d2);
  } else {
    centred_rows<T>(x, mean, m, i0, i1, d1, d2);
  }
}

template <typename T>
double k_block_sum_squares(const T* x, int64_t len) {
  return sum_squares<T>(x, len);
}

template <typename T>
double k_exact_sum_squares(const T* x, int64_t len) {
  return exact_sum_squares<T>(x, len);
}

template <typename T>
void k_affine(T* out, const T* u, const Coef<T>& p, const Coef<T>& r, int64_t c, int64_t m,
              bool cl, int64_t i0, int64_t i1) {
  affine<T>(out, u, p, r, c, m, cl, i0, i1);
}

template <typename T>
void k_scale_shift(T* out, const T* x, const double* gain, const double* inv, const T* shift,
                   int64_t c, int64_t m, bool cl, int64_t i0, int64_t i1, T* scratch) {
  scale_shift<T>(out, x, gain, inv, shift, c, m, cl, i0, i1, scratch);
}

template <typename T>
void k_grad_output(T* out, const T* dy, const T* x, const double* gain, const double* inv,
                   const double* qc, const double* proj, const double* rc, int64_t c, int64_t m,
                   bool cl, int64_t i0, int64_t i1, T* scratch) {
  grad_output<T>(out, dy, x, gain, inv, qc, proj, rc, c, m, cl, i0, i1, scratch);
}

template <typename T>
double k_sample_output_next(T* out, const T* u, const T* a, const T* b, const T* next,
                            int64_t d, int64_t len, bool cl) {
  return sample_output_next<T>(out, u, a, b, next, d, len, cl);
}

template <typename T>
void k_tile_sums(const T* x, int64_t rows, int64_t c, const double* inv, const T* shift,
                 double* s1, double* s2) {
  tile_sums<T>(x, rows, c, inv, shift, s1, s2);
}

template <typename T>
void k_tile_dev(const T* x, int64_t rows, int64_t c, const double* inv, const double* mu,
                double* d1, double* d2) {
  tile_dev<T>(x, rows, c, inv, mu, d1, d2);
}

template <typename T>
void k_row_output(T* out, const T* x, int64_t c, T inv, const T* gain, const T* shift) {
  row_output<T>(out, x, c, inv, gain, shift);
}

template <typename T>
void k_rows_output(T* out, const T* x, int64_t c, int64_t i0, int64_t i1, const double* inv,
                   const T* gain, const T* shift) {
  rows_output<T>(out, x, c, i0, i1, inv, gain, shift);
}

template <typename T>
void k_rows_scales(const T* x, int64_t rows, int64_t c, double l2_eps, double divisor,
                   double* rho, bool* active, double* inv) {
  rows_scales<T>(x, rows, c, l2_eps, divisor, rho, active, inv);
}

template <typename T>
double k_row_output_next(T* out, const T* x, int64_t c, T inv, const T* gain, const T* shift,
                         const T* next) {
  return row_output_next<T>(out, x, c, inv, gain, shift, next);
}

template <typename T>
void k_tile_grad(const T* dy, const T* x, int64_t rows, int64_t c, const double* inv,
                 const double* mu, const T* mu_t, bool fast, double* t1, double* t2) {
  tile_grad<T>(dy, x, rows, c, inv, mu, mu_t, fast, t1, t2);
}

template <typename T>
void k_grad_rows(T* out, const T* dy, const T* x, int64_t c, int64_t i0, int64_t i1,
                 const RowGradCoefs<T>& k) {
  grad_rows<T>(out, dy, x, c, i0, i1, k);
}

template <typename T>
void k_eval_grads(T* out, const T* dy, const T* x, const EvalGradCoefs& k, int64_t i0,
                  int64_t i1, double* xh_dy, double* dy_sum, double* scratch) {
  eval_grads<T>(out, dy, x, k, i0, i1, xh_dy, dy_sum, scratch);
}

}  // namespace
}  // namespace l2bn

#define L2BN_KERNEL_TABLE(T)                                                              \
  ::l2bn::Kernels<T> {                                                                   \
    &k_moments<T>, &k_grad_sums<T>, &k_centred_sums<T>, &k_block_sum_squares<T>,         \
        &k_exact_sum_squares<T>,                                                         \
        &k_affine<T>, &k_scale_shift<T>, &k_grad_output<T>, &k_sample_output_next<T>,    \
        &k_tile_sums<T>, &k_tile_dev<T>, &k_row_output<T>,     \
        &k_row_output_next<T>, &k_rows_output<T>, &k_rows_scales<T>, &k_tile_grad<T>, \
        &k_grad_rows<T>, &k_eval_grads<T>                                                \
  }

#define L2BN_STATISTICS_TABLE \
  ::l2bn::StatisticsKernels { &channel_moments, &channel_grad_sums, &projections }
