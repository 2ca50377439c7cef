// Helpers shared by the L2BN operators: argument checks, threading, per-channel values,
// eq. (3)'s rho, and BatchNorm's running-statistics update.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "kernels.h"
#include "layout.h"

namespace l2bn {

using at::Tensor;

// Elements per parallel task, as ATen's own grain size.
constexpr int64_t kGrain = 32768;

inline int64_t grain(int64_t per_unit) {
  return std::max<int64_t>(1, kGrain / std::max<int64_t>(per_unit, 1));
}

// A buffer of n values left uninitialized, for the O(N * C) arrays a pass writes in full
// before any read (std::vector would zero them first: at 2x2 maps a memset of as many bytes
// as the input).
template <typename T>
std::unique_ptr<T[]> uninitialized(int64_t n) {
  return std::unique_ptr<T[]>(new T[static_cast<size_t>(n)]);
}

inline void check_input(const Tensor& x, const char* op) {
  TORCH_CHECK(x.device().is_cpu(), "l2bn.", op, ": expected a CPU tensor");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, "l2bn.", op,
              ": expected float32 or float64 input, got ", x.scalar_type());
  TORCH_CHECK(x.dim() >= 2, "l2bn.", op, ": expected input of shape (N, C, *)");
  TORCH_CHECK(x.numel() > 0, "l2bn.", op, ": expected a non-empty input");
}

// A per-channel tensor as doubles (`fill` when absent).
inline std::vector<double> channel_values(const std::optional<Tensor>& t, int64_t c,
                                          double fill) {
  std::vector<double> out(c, fill);
  if (!t.has_value() || !t->defined()) {
    return out;
  }
  TORCH_CHECK(t->dim() == 1 && t->numel() == c, "l2bn: expected ", c,
              " per-channel values, got shape ", t->sizes());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t->scalar_type(), "l2bn", [&] {
    const auto* p = t->const_data_ptr<scalar_t>();
    const int64_t stride = t->stride(0);
    for (int64_t k = 0; k < c; ++k) {
      out[k] = static_cast<double>(p[k * stride]);
    }
  });
  return out;
}

// t <- lerp(t, values, momentum) over its c values, as BatchNorm's running statistics, in
// torch.lerp's two forms: t + m * (v - t) for m < 0.5, v - (v - t) * (1 - m) from 0.5 on, so
// that m = 1 gives v exactly (t + (v - t) loses v's digits where v << t).
inline void update_running(const std::optional<Tensor>& t, const double* values, int64_t c,
                           double momentum) {
  if (!t.has_value() || !t->defined()) {
    return;
  }
  TORCH_CHECK(t->dim() == 1 && t->numel() == c, "l2bn: expected ", c,
              " running statistics, got shape ", t->sizes());
  Tensor buffer = *t;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, buffer.scalar_type(), "l2bn", [&] {
    auto* p = buffer.data_ptr<scalar_t>();
    const int64_t stride = buffer.stride(0);
    for (int64_t k = 0; k < c; ++k) {
      const double old = static_cast<double>(p[k * stride]);
      const double v = values[k];
      const double next = std::abs(momentum) < 0.5 ? old + momentum * (v - old)
                                                   : v - (v - old) * (1.0 - momentum);
      p[k * stride] = static_cast<scalar_t>(next);
    }
  });
}

// BatchNorm's update of both running statistics from the batch mean and the biased
// variance of `count` values per channel (the variance enters unbiased).
inline void update_running_stats(const std::optional<Tensor>& running_mean,
                                 const std::optional<Tensor>& running_var, const Tensor& mean,
                                 std::vector<double> var, double count, double momentum) {
  const int64_t c = static_cast<int64_t>(var.size());
  const double unbias = count / std::max(count - 1.0, 1.0);
  for (double& v : var) {
    v *= unbias;
  }
  update_running(running_mean, mean.const_data_ptr<double>(), c, momentum);
  update_running(running_var, var.data(), c, momentum);
}

inline Tensor doubles(at::IntArrayRef shape) {
  return at::empty(shape, at::TensorOptions(at::kDouble));
}

// A channel's mean is at most a few standard deviations (E[v^2] <= kCondLimitFast * var):
// float input may then take float lanes where differences of nearly equal values occur.
constexpr double kCondLimitFast = 16;

inline bool ill_conditioned(double var, double second) {
  return second > 0 && var * kCondLimit <= second;
}

// Per-thread partial sums of `width` doubles, zeroed; summed by `total`. Each thread's
// partials start on a 64-byte line of their own, so that no line is written by two threads
// (unaligned, the last line of one thread's partials was the first of the next one's).
class Partials {
 public:
  explicit Partials(int64_t width)
      : width_(width),
        stride_((width + kLine - 1) / kLine * kLine),
        threads_(at::get_num_threads()),
        data_(static_cast<size_t>(threads_ * stride_ + kLine), 0.0) {
    const auto address = reinterpret_cast<uintptr_t>(data_.data());
    base_ = data_.data() + (kLine - (address / sizeof(double)) % kLine) % kLine;
  }
  double* mine() { return base_ + at::get_thread_num() * stride_; }
  // The threads' partials added in thread order (no division an element: at C = 4096 the
  // modulo measured a tenth of the (N, C) forward).
  std::vector<double> total() const {
    std::vector<double> out(base_, base_ + width_);
    for (int64_t t = 1; t < threads_; ++t) {
      const double* part = base_ + t * stride_;
      for (int64_t k = 0; k < width_; ++k) {
        out[k] += part[k];
      }
    }
    return out;
  }

 private:
  static constexpr int64_t kLine = 64 / sizeof(double);  // doubles a cache line
  int64_t width_, stride_, threads_;
  std::vector<double> data_;
  double* base_;
};

// dweight in the weight's dtype (the input's without a weight); dbias (at_least_float) in
// that dtype or float32, whichever is wider: the bias may be wider than the weight (a
// float32 bias beside a float16 weight, whose sum of dy would overflow float16 past 65504),
// and the autograd kernels cast it to the bias's own dtype.
inline Tensor parameter_grad(const std::vector<double>& values, const Tensor& x,
                             const std::optional<Tensor>& weight, bool at_least_float = false) {
  auto dtype = weight.has_value() && weight->defined() ? weight->scalar_type()
                                                        : x.scalar_type();
  if (at_least_float && (dtype == at::kHalf || dtype == at::kBFloat16)) {
    dtype = at::kFloat;
  }
  const int64_t c = static_cast<int64_t>(values.size());
  Tensor out = at::empty({c}, at::TensorOptions(dtype));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "l2bn", [&] {
    auto* p = out.data_ptr<scalar_t>();
    for (int64_t k = 0; k < c; ++k) {
      p[k] = static_cast<scalar_t>(values[k]);
    }
  });
  return out;
}

}  // namespace l2bn
