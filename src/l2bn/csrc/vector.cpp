// Training-mode L2BN of (N, C) input (paper eq. 1): two passes each way, like BatchNorm,
// with no array the size of the input besides the output (see vector_passes.h).
//
// Forward: per tile of a few rows, each row's ||x[n]|| and then the tile's per-channel sums
// of xh (while the tile is in cache); one output pass. Backward: per-channel sums of dy and
// dy * (xh - mu); then per row, the projection e[n] and the row of dx.
#include <ATen/ops/empty_like.h>

#include "common.h"
#include "kernels.h"
#include "ops.h"

namespace l2bn {
namespace {

// Rows per tile of the channel reductions: a tile stays in L1 while its channels are summed,
// at most kRowTile rows of at most kTileValues values in all (16 kB of float32; at C = 2048
// a tile of 8 rows is 64 kB and was swept from L2: 256x2048 forward 1.1-1.3x BatchNorm's).
constexpr int64_t kRowTile = 8;
constexpr int64_t kTileValues = 4096;

int64_t tile_rows(int64_t c) { return std::clamp<int64_t>(kTileValues / c, 1, kRowTile); }

// For each tile of rows [t, t + rows) of [i0, i1): prepare(t, rows, inv) fills inv, then
// sum_tile(t, rows, inv, acc, acc + c) adds the tile's per-channel pair of sums to acc.
template <typename Prepare, typename SumTile>
void over_tiles(int64_t i0, int64_t i1, int64_t c, double* acc, const Prepare& prepare,
                const SumTile& sum_tile) {
  double inv[kRowTile];
  const int64_t tile = tile_rows(c);
  for (int64_t t = i0; t < i1; t += tile) {
    const int64_t rows = std::min(tile, i1 - t);
    prepare(t, rows, inv);
    sum_tile(t, rows, inv, acc, acc + c);
  }
}

// The prepare step of over_tiles when the norms are known: inv[r] = 1 / rho[t + r].
struct InverseScales {
  const double* rho;
  void operator()(int64_t t, int64_t rows, double* inv) const {
    for (int64_t r = 0; r < rows; ++r) {
      inv[r] = 1.0 / rho[t + r];
    }
  }
};

}  // namespace

VectorForward vector_forward(const Tensor& x, const std::vector<double>& w,
                             const std::vector<double>& b, double eps, double l2_eps,
                             bool scale) {
  const int64_t n = x.size(0), c = x.size(1);
  const double sqrt_d = std::sqrt(static_cast<double>(c));
  VectorForward f{at::empty_like(x), doubles({n}), at::empty({n}, at::TensorOptions(at::kBool)),
                  doubles({c}), doubles({c}), std::vector<double>(c)};
  double* rho = f.rho.data_ptr<double>();
  bool* active = f.active.data_ptr<bool>();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "l2bn_vector_forward", [&] {
    using T = scalar_t;
    const Kernels<T>& kern = kernels<T>();
    const T* xp = x.const_data_ptr<T>();
    // Channel sums of d = xh - centre[c] (centre: the mean xh of the first 8 rows), so that float lanes keep the
    // variance's precision; channels whose mean is still far from the shift (relative to
    // their spread) are summed again, centred, in double.
    const int64_t q = std::min<int64_t>(n, 8);
    std::vector<double> centre_d(c, 0.0);
    for (int64_t i = 0; i < q; ++i) {
      const double inv = 1.0 / sample_scale(kern.block_sum_squares(xp + i * c, c), l2_eps,
                                            sqrt_d, scale, &active[i]);
      for (int64_t k = 0; k < c; ++k) {
        centre_d[k] += xp[i * c + k] * inv;
      }
    }
    std::vector<T> centre(c);
    for (int64_t k = 0; k < c; ++k) {
      centre[k] = static_cast<T>(centre_d[k] / static_cast<double>(q));
    }
    const double limit = std::is_same_v<T, float> ? kCondLimitFast : kCondLimit;
    Partials sums(2 * c);
    // Per tile: each row's norm (eq. 1), then the tile's channel sums of xh.
    auto norms = [&](int64_t t, int64_t rows, double* inv) {
      double norm_sq[kRowTile];
      kern.rows_sum_squares(xp + t * c, rows, c, norm_sq);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t i = t + r;
        rho[i] = sample_scale(norm_sq[r], l2_eps, sqrt_d, scale, &active[i]);
        inv[r] = 1.0 / rho[i];
      }
    };
    at::parallel_for(0, n, grain(c), [&](int64_t i0, int64_t i1) {
      over_tiles(i0, i1, c, sums.mine(), norms,
                 [&](int64_t t, int64_t rows, const double* inv, double* s1, double* s2) {
                   kern.tile_sums(xp + t * c, rows, c, inv, centre.data(), s1, s2);
                 });
    });
    const std::vector<double> total = sums.total();
    double* mu = f.mean.data_ptr<double>();
    std::vector<double>& var = f.var;
    bool any_ill = false;
    for (int64_t k = 0; k < c; ++k) {
      const double md = total[k] / static_cast<double>(n);
      const double second = total[c + k] / static_cast<double>(n);
      mu[k] = static_cast<double>(centre[k]) + md;
      var[k] = second - md * md;
      any_ill = any_ill || (second > 0 && var[k] * limit <= second);
    }
    if (any_ill) {
      Partials dev(2 * c);
      at::parallel_for(0, n, grain(c), [&](int64_t i0, int64_t i1) {
        over_tiles(i0, i1, c, dev.mine(), InverseScales{rho},
                   [&](int64_t t, int64_t rows, const double* inv, double* d1, double* d2) {
                     kern.tile_dev(xp + t * c, rows, c, inv, mu, d1, d2);
                   });
      });
      const std::vector<double> centred = dev.total();
      for (int64_t k = 0; k < c; ++k) {
        const double d1 = centred[k] / static_cast<double>(n);
        var[k] = centred[c + k] / static_cast<double>(n) - d1 * d1;
      }
    }
    double* invstd = f.invstd.data_ptr<double>();
    std::vector<T> gain(c), shift(c);
    for (int64_t k = 0; k < c; ++k) {
      var[k] = std::max(var[k], 0.0);  // NaN stays NaN
      invstd[k] = 1.0 / std::sqrt(var[k] + eps);
      gain[k] = static_cast<T>(w[k] * invstd[k]);
      shift[k] = static_cast<T>(b[k] - mu[k] * w[k] * invstd[k]);
    }
    T* yp = f.y.data_ptr<T>();
    at::parallel_for(0, n, grain(c), [&](int64_t i0, int64_t i1) {
      kern.rows_output(yp, xp, c, i0, i1, rho, gain.data(), shift.data());
    });
  });
  return f;
}

Tensor vector_backward(const Tensor& dy, const Tensor& x, const std::vector<double>& w,
                       const Tensor& rho_t, const Tensor& active_t, const Tensor& mean,
                       const Tensor& invstd, bool scale, bool input_grad,
                       std::vector<double>* dgamma, std::vector<double>* dbeta) {
  const int64_t n = x.size(0), c = x.size(1);
  const double count = static_cast<double>(n);
  const double* rho = rho_t.const_data_ptr<double>();
  const bool* active = active_t.const_data_ptr<bool>();
  const double* mu = mean.const_data_ptr<double>();
  const double* is = invstd.const_data_ptr<double>();
  Tensor dx = at::empty({0}, x.options());  // empty without input_grad
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "l2bn_vector_backward", [&] {
    using T = scalar_t;
    const Kernels<T>& kern = kernels<T>();
    const T* xp = x.const_data_ptr<T>();
    const T* gp = dy.const_data_ptr<T>();
    // Float lanes only while every channel's mean is within a few standard deviations
    // (var + eps >= 1 / invstd^2 stands in for var).
    bool fast = std::is_same_v<T, float>;
    std::vector<T> mu_t(c);
    for (int64_t k = 0; k < c; ++k) {
      mu_t[k] = static_cast<T>(mu[k]);
      fast = fast && mu[k] * mu[k] * is[k] * is[k] <= kCondLimitFast - 1;
    }
    Partials sums(2 * c);
    at::parallel_for(0, n, grain(c), [&](int64_t i0, int64_t i1) {
      over_tiles(i0, i1, c, sums.mine(), InverseScales{rho},
                 [&](int64_t t, int64_t rows, const double* inv, double* t1, double* t2) {
                   kern.tile_grad(gp + t * c, xp + t * c, rows, c, inv, mu, mu_t.data(), fast,
                                  t1, t2);
                 });
    });
    const std::vector<double> total = sums.total();
    std::vector<double> gain(c), c1(c), alpha(c);
    std::vector<T> gain_t(c), alpha_t(c), beta_t(c), beta2_t(c);
    for (int64_t k = 0; k < c; ++k) {
      (*dbeta)[k] = total[k];
      (*dgamma)[k] = is[k] * total[c + k];
      gain[k] = w[k] * is[k];
      c1[k] = gain[k] * (*dbeta)[k] / count;
      alpha[k] = gain[k] * (*dgamma)[k] * is[k] / count;
      gain_t[k] = static_cast<T>(gain[k]);
      alpha_t[k] = static_cast<T>(alpha[k]);
      beta_t[k] = static_cast<T>(gain[k] * ((*dgamma)[k] * is[k] * mu[k] - (*dbeta)[k]) / count);
      beta2_t[k] = static_cast<T>(alpha[k] * mu[k] - c1[k]);
    }
    if (!input_grad) {
      return;
    }
    dx = at::empty_like(x);
    T* out = dx.data_ptr<T>();
    const RowGradCoefs<T> coefs{rho,           active,        gain.data(),   c1.data(),
                                alpha.data(),  mu,            gain_t.data(), alpha_t.data(),
                                beta_t.data(), beta2_t.data(), fast,         scale};
    at::parallel_for(0, n, grain(c), [&](int64_t i0, int64_t i1) {
      kern.grad_rows(out, gp, xp, c, i0, i1, coefs);
    });
  });
  return dx;
}

}  // namespace l2bn
