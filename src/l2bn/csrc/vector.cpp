// Training-mode L2BN on rows of C contiguous values (paper eq. 1): (N, C) input, whose
// rows are its samples, and channel-last maps of at most kSmallMapPositions positions, N *
// M rows in samples of M (2x2, 4x4 maps; train.cpp, keeps_row_moments). Two passes each
// way, like BatchNorm, with no array the size of the input besides the output and no
// per-(n, c) array (see vector_passes.h).
//
// Forward: per tile of a few rows, the norms ||x[n]|| of the samples that start in it
// (each sample is contiguous) and then the tile's per-channel sums of xh (while the tile is
// in cache); one output pass. Backward: per-channel sums of dy and dy * (xh - mu); then per
// sample, the projection e[n] and its rows of dx.
#include <ATen/ops/empty_like.h>

#include "common.h"
#include "kernels.h"
#include "ops.h"

namespace l2bn {
namespace {

// Rows per tile of the forward's channel reductions (the backward's: kGradTileRows,
// kernels.h): a tile's float partials are folded into double once (at most kFold rows). The forward reads a tile twice, its norms and then its sums;
// at C > kGradSpan the sums go row by row in spans (span_sums), which read the rows
// contiguously, from L2 where the tile outgrows L1 (tiles of at most 4096 values instead,
// 2 rows at C = 2048, folded every other row: the forward operator 1.22x / 1.26x ATen's
// at 256x2048, 1 / 2 threads, against 0.91x / 1.05x in tiles of 8, 2026-11-30).
constexpr int64_t kRowTile = 8;

// For each tile of kRowTile rows [t, t + rows) of [i0, i1): prepare(t, rows, inv) fills
// inv, then sum_tile(t, rows, inv, acc, acc + c) adds the tile's per-channel pair of sums
// to acc.
template <int64_t kTile = kRowTile, typename Prepare, typename SumTile>
void over_tiles(int64_t i0, int64_t i1, int64_t c, double* acc, const Prepare& prepare,
                const SumTile& sum_tile) {
  double inv[kTile];
  for (int64_t t = i0; t < i1; t += kTile) {
    const int64_t rows = std::min(kTile, i1 - t);
    prepare(t, rows, inv);
    sum_tile(t, rows, inv, acc, acc + c);
  }
}

// The prepare step of over_tiles when the norms are known: inv[r] = 1 / rho of the sample
// of row t + r (samples of m rows; no integer division a row: at C = 32 it measured 10% of
// the backward).
struct InverseScales {
  const double* rho;
  int64_t m;
  void operator()(int64_t t, int64_t rows, double* inv) const {
    if (m == 1) {
      for (int64_t r = 0; r < rows; ++r) {
        inv[r] = 1.0 / rho[t + r];
      }
      return;
    }
    int64_t i = t / m, j = t - i * m;  // sample and row within it
    double v = 1.0 / rho[i];
    for (int64_t r = 0; r < rows; ++r) {
      inv[r] = v;
      if (++j == m && r + 1 < rows) {
        j = 0;
        v = 1.0 / rho[++i];
      }
    }
  }
};

}  // namespace

VectorForward vector_forward(const Tensor& x, const Layout& l, const std::vector<double>& w,
                             const std::vector<double>& b, double eps, double l2_eps,
                             bool scale) {
  // rows of C values, m a sample; d values a sample.
  const int64_t n = l.n, c = l.c, m = l.m, rows = n * m, d = c * m;
  const double sqrt_d = std::sqrt(static_cast<double>(d));
  VectorForward f{at::empty_like(x), doubles({n}), at::empty({n}, at::TensorOptions(at::kBool)),
                  doubles({c}), doubles({c}), std::vector<double>(c)};
  double* rho = f.rho.data_ptr<double>();
  bool* active = f.active.data_ptr<bool>();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "l2bn_vector_forward", [&] {
    using T = scalar_t;
    const Kernels<T>& kern = kernels<T>();
    const T* xp = x.const_data_ptr<T>();
    // Channel sums of d = xh - centre[c] (centre: the mean xh of the first 8 rows), so that
    // float lanes keep the variance's precision; channels whose mean is still far from the
    // shift (relative to their spread) are summed again, centred, in double. So are float
    // channels whose mean is far from zero: xh = x * inv is rounded in float before the
    // centre is taken off (eps * |mean| of error a value; at |mean| = 1700 standard
    // deviations, 1.7e-5 of dweight was measured), the bound of the backward's float
    // lanes.
    const int64_t q = std::min<int64_t>(rows, 8);
    std::vector<double> centre_d(c, 0.0);
    double inv = 0;
    for (int64_t r = 0; r < q; ++r) {
      if (r % m == 0) {
        const int64_t i = r / m;
        inv = 1.0 / sample_scale(kern.block_sum_squares(xp + i * d, d), l2_eps, sqrt_d, scale,
                                 &active[i]);
      }
      for (int64_t k = 0; k < c; ++k) {
        centre_d[k] += xp[r * c + k] * inv;
      }
    }
    std::vector<T> centre(c);
    const double per_row_q = 1.0 / static_cast<double>(q);
    for (int64_t k = 0; k < c; ++k) {
      centre[k] = static_cast<T>(centre_d[k] * per_row_q);
    }
    const double limit = std::is_same_v<T, float> ? kCondLimitFast : kCondLimit;
    Partials sums(2 * c);
    // Per tile: the norms (eq. 1) of the samples that start in it, then the tile's channel
    // sums of xh. A task holds whole samples, so a sample's later tiles find its norm.
    auto norms = [&](int64_t t, int64_t tile, double* inv_rows) {
      if (m == 1) {
        kern.rows_scales(xp + t * c, tile, c, l2_eps, scale ? sqrt_d : 1.0, rho + t,
                         active + t, inv_rows);
        return;
      }
      for (int64_t i = (t + m - 1) / m; i * m < t + tile; ++i) {  // samples starting here
        rho[i] = sample_scale(kern.block_sum_squares(xp + i * d, d), l2_eps, sqrt_d, scale,
                              &active[i]);
      }
      InverseScales{rho, m}(t, tile, inv_rows);
    };
    at::parallel_for(0, n, grain(d), [&](int64_t i0, int64_t i1) {
      over_tiles(i0 * m, i1 * m, c, sums.mine(), norms,
                 [&](int64_t t, int64_t tile, const double* inv_rows, double* s1, double* s2) {
                   kern.tile_sums(xp + t * c, tile, c, inv_rows, centre.data(), s1, s2);
                 });
    });
    const std::vector<double> total = sums.total();
    double* mu = f.mean.data_ptr<double>();
    std::vector<double>& var = f.var;
    bool any_ill = false;
    // Means as sums times 1 / rows: the O(C) steps are a fixed cost of the call, with no
    // division a channel where a multiplication does.
    const double per_row = 1.0 / static_cast<double>(rows);
    for (int64_t k = 0; k < c; ++k) {
      const double md = total[k] * per_row;
      const double second = total[c + k] * per_row;
      mu[k] = static_cast<double>(centre[k]) + md;
      var[k] = second - md * md;
      any_ill = any_ill || (second > 0 && var[k] * limit <= second);
      if constexpr (std::is_same_v<T, float>) {
        any_ill = any_ill || mu[k] * mu[k] > (kCondLimitFast - 1) * var[k];
      }
    }
    if (any_ill) {
      if constexpr (std::is_same_v<T, float>) {
        // The norms again, each square in double: a float-lane norm's rounding (about 1e-8
        // of rho) moves every xh of its sample by as much of the channel mean, which x -
        // mean then cancels (dweight 6e-5 off at means of 1e4 standard deviations).
        at::parallel_for(0, n, grain(d), [&](int64_t i0, int64_t i1) {
          for (int64_t i = i0; i < i1; ++i) {
            rho[i] = sample_scale(kern.exact_sum_squares(xp + i * d, d), l2_eps, sqrt_d, scale,
                                  &active[i]);
          }
        });
      }
      Partials dev(2 * c);
      at::parallel_for(0, n, grain(d), [&](int64_t i0, int64_t i1) {
        over_tiles(i0 * m, i1 * m, c, dev.mine(), InverseScales{rho, m},
                   [&](int64_t t, int64_t tile, const double* inv_rows, double* d1,
                       double* d2) {
                     kern.tile_dev(xp + t * c, tile, c, inv_rows, mu, d1, d2);
                   });
      });
      const std::vector<double> centred = dev.total();
      // Every channel, centred on the first estimate of its mean: the corrected two-pass
      // formulas, in double (the mean too: its float estimate is what cancelled; with the
      // norms above, d1 also carries the change of rho).
      for (int64_t k = 0; k < c; ++k) {
        const double d1 = centred[k] * per_row;
        var[k] = centred[c + k] * per_row - d1 * d1;
        mu[k] += d1;
      }
    }
    double* invstd = f.invstd.data_ptr<double>();
    std::vector<double> gain_d(c);
    std::vector<T> gain(c), shift(c);
    for (int64_t k = 0; k < c; ++k) {
      var[k] = std::max(var[k], 0.0);  // NaN stays NaN
      invstd[k] = 1.0 / std::sqrt(var[k] + eps);
      gain_d[k] = w[k] * invstd[k];
      gain[k] = static_cast<T>(gain_d[k]);
      shift[k] = static_cast<T>(b[k] - mu[k] * w[k] * invstd[k]);
    }
    T* yp = f.y.data_ptr<T>();
    // 1 / rho of samples [i0, i1), from their final rho (the exact norms above replace the
    // first ones).
    std::vector<double> inv_rho(n);
    const auto invert = [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        inv_rho[i] = 1.0 / rho[i];
      }
    };
    if (m == 1) {
      at::parallel_for(0, n, grain(c), [&](int64_t i0, int64_t i1) {
        invert(i0, i1);
        kern.rows_output(yp, xp, c, i0, i1, inv_rho.data(), gain.data(), shift.data());
      });
    } else {
      invert(0, n);
      // The channel-last output pass of train.cpp: positions, a coefficient row a sample.
      at::parallel_for(0, rows, grain(c), [&](int64_t j0, int64_t j1) {
        std::vector<T> scratch(c);
        kern.scale_shift(yp, xp, gain_d.data(), inv_rho.data(), shift.data(), c, m, true, j0,
                         j1, scratch.data());
      });
    }
  });
  return f;
}

Tensor vector_backward(const Tensor& dy, const Tensor& x, const Layout& l,
                       const std::vector<double>& w, const Tensor& rho_t, const Tensor& active_t,
                       const Tensor& mean, const Tensor& invstd, bool scale, bool input_grad,
                       std::vector<double>* dgamma, std::vector<double>* dbeta) {
  const int64_t n = l.n, c = l.c, m = l.m, d = c * m;
  const double count = static_cast<double>(n * m);
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
    at::parallel_for(0, n, grain(d), [&](int64_t i0, int64_t i1) {
      over_tiles<kGradTileRows>(
          i0 * m, i1 * m, c, sums.mine(), InverseScales{rho, m},
          [&](int64_t t, int64_t tile, const double* inv, double* t1, double* t2) {
            kern.tile_grad(gp + t * c, xp + t * c, tile, c, inv, mu, mu_t.data(), fast,
                                  t1, t2);
                 });
    });
    const std::vector<double> total = sums.total();
    std::vector<double> gain(c), c1(c), alpha(c);
    std::vector<T> gain_t(c), alpha_t(c), beta_t(c), beta2_t(c);
    const double per_count = 1.0 / count;
    for (int64_t k = 0; k < c; ++k) {
      (*dbeta)[k] = total[k];
      (*dgamma)[k] = is[k] * total[c + k];
      gain[k] = w[k] * is[k];
      c1[k] = gain[k] * (*dbeta)[k] * per_count;
      alpha[k] = gain[k] * (*dgamma)[k] * is[k] * per_count;
      gain_t[k] = static_cast<T>(gain[k]);
      alpha_t[k] = static_cast<T>(alpha[k]);
      beta_t[k] =
          static_cast<T>(gain[k] * ((*dgamma)[k] * is[k] * mu[k] - (*dbeta)[k]) * per_count);
      beta2_t[k] = static_cast<T>(alpha[k] * mu[k] - c1[k]);
    }
    if (!input_grad) {
      return;
    }
    dx = at::empty_like(x);
    T* out = dx.data_ptr<T>();
    const RowGradCoefs<T> coefs{m,           rho,           active,        gain.data(),
                                c1.data(),   alpha.data(),  mu,            gain_t.data(),
                                alpha_t.data(), beta_t.data(), beta2_t.data(), fast,
                                scale};
    at::parallel_for(0, n, grain(d), [&](int64_t i0, int64_t i1) {
      kern.grad_rows(out, gp, xp, c, i0, i1, coefs);
    });
  });
  return dx;
}

}  // namespace l2bn
