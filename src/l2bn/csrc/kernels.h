// The full-size passes of passes.h for float and double, each compiled for several CPU
// levels. Free of torch headers, so that kernels.cpp compiles quickly. Index ranges
// [i0, i1) are rows (n * C + c) in the row-wise layout and samples in the channel-last
// layout, except for `affine`, whose channel-last range is positions (n * M + s). The
// (N, C) kernels of vector_passes.h take one sample row each.
#pragma once

#include <cstdint>

namespace l2bn {

template <typename T>
struct Coef;

#define L2BN_DECLARE_KERNELS(T)                                                              \
  void sums(const T* x, int64_t c, int64_t m, bool cl, int64_t i0, int64_t i1, double* s1,  \
            double* s2);                                                                    \
  void grad_sums(const T* dy, const T* x, const double* h, int64_t c, int64_t m, bool cl,   \
                 int64_t i0, int64_t i1, double* t1, double* t2);                           \
  void centred_sums(const T* x, const double* mean, int64_t c, int64_t m, bool cl,          \
                    int64_t i0, int64_t i1, double* d1, double* d2);                        \
  double block_sum_squares(const T* x, int64_t len);                                        \
  void affine(T* out, const T* u, const T* v, const Coef<T>& p, const Coef<T>& q,           \
              const Coef<T>& r, int64_t c, int64_t m, bool cl, int64_t i0, int64_t i1);    \
  double sample_output_next(T* out, const T* u, const T* a, const T* b, const T* next,       \
                            int64_t c, int64_t m, bool cl);                                 \
  double sample_sum_squares(const T* x, int64_t c, int64_t m, bool cl);                     \
  void tile_sums(const T* x, int64_t rows, int64_t c, const double* inv, double* s1,        \
                 double* s2);                                                               \
  void tile_dev(const T* x, int64_t rows, int64_t c, const double* inv, const double* mu,    \
                double* d1, double* d2);                                                    \
  void row_output(T* out, const T* x, int64_t c, T inv, const T* gain, const T* shift);      \
  double row_output_next(T* out, const T* x, int64_t c, T inv, const T* gain,               \
                         const T* shift, const T* next);                                    \
  void tile_grad(const T* dy, const T* x, int64_t rows, int64_t c, const double* inv,        \
                 const double* mu, double* t1, double* t2);                                 \
  double projection(const T* dy, const T* x, int64_t c, double inv, const double* gain,      \
                    const double* c1, const double* alpha, const double* mu);               \
  void grad_row(T* out, const T* dy, const T* x, int64_t c, T inv, T inv2, T proj,           \
                const T* gain, const T* beta, const T* alpha);

L2BN_DECLARE_KERNELS(float)
L2BN_DECLARE_KERNELS(double)

#undef L2BN_DECLARE_KERNELS

}  // namespace l2bn
