// How L2BN's fused CPU kernels see an (N, C, *S) tensor: N samples, C channels, M = prod(S)
// positions, stored either row-wise (NCHW: each (n, c) row of M values is contiguous) or
// channel-last (NHWC: the C values of each position are contiguous). Any other strides are
// copied into the row-wise layout first.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>

#include <cstdint>

namespace l2bn {

struct Layout {
  int64_t n;
  int64_t c;
  int64_t m;
  bool channels_last;

  int64_t numel() const { return n * c * m; }
};

// True when x of shape (N, C, *S) is stored as (N, *S, C) in row-major order. Dims of size
// one place no constraint on their stride, as in Tensor::is_contiguous.
inline bool is_channels_last_like(const at::Tensor& x) {
  int64_t expected = 1;
  auto check = [&](int64_t dim) {
    if (x.size(dim) != 1 && x.stride(dim) != expected) {
      return false;
    }
    expected *= x.size(dim);
    return true;
  };
  if (!check(1)) {
    return false;
  }
  for (int64_t dim = x.dim() - 1; dim >= 2; --dim) {
    if (!check(dim)) {
      return false;
    }
  }
  return check(0);
}

inline int64_t positions(const at::Tensor& x) {
  int64_t m = 1;
  for (int64_t dim = 2; dim < x.dim(); ++dim) {
    m *= x.size(dim);
  }
  return m;
}

// x itself when its layout is one of the two, else a row-wise copy.
inline at::Tensor supported_layout(const at::Tensor& x) {
  if (x.is_contiguous() || is_channels_last_like(x)) {
    return x;
  }
  return x.contiguous();
}

// The layout of x (already in a supported layout). Channel-last wins when both hold
// (M == 1, e.g. (N, C) input): its loops run along the C contiguous values.
inline Layout layout_of(const at::Tensor& x) {
  const int64_t m = positions(x);
  const bool channels_last = m == 1 || !x.is_contiguous();
  return Layout{x.size(0), x.size(1), m, channels_last};
}

// Channel-last maps of at most this many positions are small maps (2x2, 4x4): training
// takes them as N * M rows of C values, as (N, C) input (vector.cpp).
constexpr int64_t kSmallMapPositions = 16;

// Whether training keeps the [N, C] row moments of x (train.cpp, returned as x_mean and
// x_var for the backward): not for (N, C) input, nor for channel-last small maps, whose
// row moments would be a quarter (2x2) to an eighth (4x4, float32) of x each, moved through
// memory between the passes (measured: more than the passes over x themselves at 2x2).
// The one rule: both training operators follow it, and the fake implementation of
// train_forward (l2bn/_impl/cpu.py) asks for kSmallMapPositions.
inline bool keeps_row_moments(const Layout& l) {
  return !(l.channels_last && l.m <= kSmallMapPositions);
}

// dy in exactly x's strides (autograd may hand back another layout).
inline at::Tensor like(const at::Tensor& dy, const at::Tensor& x) {
  if (dy.strides() == x.strides()) {
    return dy;
  }
  at::Tensor out = at::empty_like(x);
  out.copy_(dy);
  return out;
}

}  // namespace l2bn
