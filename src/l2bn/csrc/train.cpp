// Training-mode L2BN (paper eqs. 2-3) on (N, C, *S) input: the forward of one reduction
// pass over x, O(N * C) statistics and one output pass; the backward (derived in
// l2bn/_impl/pytorch.py, input_grad), one
// reduction pass over dy and x, O(N * C) coefficients and one output pass
// (dx = p * dy + q * x + r). Mirrors l2bn/_impl/pytorch.py and moments.py (the pure-PyTorch
// path, the fallback the tests compare against). (N, C) input and channel-last small maps
// go to vector.cpp (keeps_row_moments, layout.h).
#include <ATen/ops/empty_like.h>

#include <atomic>
#include <utility>

#include "common.h"
#include "kernels.h"
#include "lanes.h"
#include "ops.h"

namespace l2bn {
namespace {

// Rows (row-wise) or samples (channel-last): the units of the reduction kernels.
template <typename F>
void over_reduction_units(const Layout& l, const F& f) {
  if (l.channels_last) {
    at::parallel_for(0, l.n, grain(l.c * l.m), f);
  } else {
    at::parallel_for(0, l.n * l.c, grain(l.m), f);
  }
}

// Rows (row-wise) or positions (channel-last): the units of the output kernel.
template <typename F>
void over_output_units(const Layout& l, const F& f) {
  if (l.channels_last) {
    at::parallel_for(0, l.n * l.m, grain(l.c), f);
  } else {
    at::parallel_for(0, l.n * l.c, grain(l.m), f);
  }
}

// Rows whose one-pass variance may have cancelled (the moments kernel counted them) get
// their variance from a centred pass; channel-last rows are strided, so whole samples
// that hold such a row are read again. Rare: a mean far larger than the spread.
template <typename T>
void recentre_ill_rows(const T* x, const Layout& l, const uint8_t* flags, double* mean,
                       double* second, double* var) {
  const int64_t rows = l.n * l.c;
  const double inv_m = 1.0 / static_cast<double>(l.m);
  std::vector<int64_t> ill, units;
  for (int64_t r = 0; r < rows; ++r) {
    if (flags[r]) {
      ill.push_back(r);
      const int64_t unit = l.channels_last ? r / l.c : r;
      if (units.empty() || units.back() != unit) {
        units.push_back(unit);
      }
    }
  }
  std::vector<double> d1(rows), d2(rows);
  const int64_t per_unit = l.channels_last ? l.c * l.m : l.m;
  at::parallel_for(0, static_cast<int64_t>(units.size()), grain(per_unit),
                   [&](int64_t a, int64_t b) {
                     for (int64_t i = a; i < b; ++i) {
                       kernels<T>().centred_sums(x, mean, l.c, l.m, l.channels_last, units[i],
                                                 units[i] + 1, d1.data(), d2.data());
                     }
                   });
  for (const int64_t r : ill) {
    const double shift = d1[r] * inv_m;
    var[r] = std::max(d2[r] * inv_m - shift * shift, 0.0);
    mean[r] += shift;
    second[r] = var[r] + mean[r] * mean[r];
  }
}

struct Statistics {
  Tensor rho, active, mean, invstd;
  std::vector<double> var;  // biased, per channel
};

// rho[n] (eq. 3) and the channel statistics of xh = x / rho (eq. 2): the mean of the row
// means, and within-row plus between-row variance (free of cancellation). second: each
// row's mean square.
Statistics channel_statistics(const Layout& l, const double* second, const Tensor& x_mean,
                              const Tensor& x_var, double eps, double l2_eps, bool scale) {
  const int64_t n = l.n, c = l.c;
  Statistics s{doubles({n}), at::empty({n}, at::TensorOptions(at::kBool)), doubles({c}),
               doubles({c}), std::vector<double>(c, 0.0)};
  double* rho = s.rho.data_ptr<double>();
  bool* active = s.active.data_ptr<bool>();
  const double* xm = x_mean.const_data_ptr<double>();
  const double* xv = x_var.const_data_ptr<double>();
  const double sqrt_d = std::sqrt(static_cast<double>(c * l.m));
  std::vector<double> inv(n);
  for (int64_t i = 0; i < n; ++i) {
    const double norm_sq = lane_sum(second + i * c, c);
    rho[i] = sample_scale(norm_sq * static_cast<double>(l.m), l2_eps, sqrt_d, scale, &active[i]);
    inv[i] = 1.0 / rho[i];
  }
  statistics_kernels().channel_moments(xm, xv, inv.data(), n, c, s.mean.data_ptr<double>(),
                                       s.var.data());
  double* invstd = s.invstd.data_ptr<double>();
  for (int64_t k = 0; k < c; ++k) {
    invstd[k] = 1.0 / std::sqrt(s.var[k] + eps);
  }
  return s;
}

}  // namespace

namespace {

// train_forward's outputs and the biased batch variance of each channel, with the running
// statistics left alone (train_forward and train_stats apply or return the variance).
struct BatchForward {
  ForwardResult out;
  std::vector<double> var;  // biased, per channel
};

BatchForward batch_forward(const Tensor& input, const std::optional<Tensor>& weight,
                           const std::optional<Tensor>& bias, double eps, double l2_eps,
                           bool scale, const char* op) {
  check_input(input, op);
  const Tensor x = supported_layout(input);
  const Layout l = layout_of(x);
  const int64_t n = l.n, c = l.c;
  const std::vector<double> w = channel_values(weight, c, 1.0);
  const std::vector<double> b = channel_values(bias, c, 0.0);

  if (!keeps_row_moments(l)) {
    VectorForward f = vector_forward(x, l, w, b, eps, l2_eps, scale);
    // Empty row moments (a defined tensor, so that every output has a fake implementation
    // of fixed rank).
    return {{f.y, f.rho, f.active, doubles({0}), doubles({0}), f.mean, f.invstd},
            std::move(f.var)};
  }

  // Two parallel passes: the moments of every (n, c) row (one read of x), then the output
  // (one read, one write); between them O(N * C) statistics.
  Tensor x_mean = doubles({n, c}), x_var = doubles({n, c});
  // Written in full by the moments pass.
  const auto second = uninitialized<double>(n * c);
  const auto flags = uninitialized<uint8_t>(n * c);
  Tensor y = at::empty_like(x);
  Statistics stats;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "l2bn_train_forward", [&] {
    using T = scalar_t;
    const Kernels<T>& kern = kernels<T>();
    const T* xp = x.const_data_ptr<T>();
    double* xm = x_mean.data_ptr<double>();
    double* xv = x_var.data_ptr<double>();
    std::atomic<int64_t> ill{0};
    over_reduction_units(l, [&](int64_t i0, int64_t i1) {
      std::vector<double> scratch(l.channels_last ? 3 * c : 0);
      ill += kern.moments(xp, c, l.m, l.channels_last, i0, i1, xm, second.get(), xv,
                          flags.get(), scratch.data());
    });
    if (ill.load() > 0) {
      recentre_ill_rows(xp, l, flags.get(), xm, second.get(), xv);
    }
    stats = channel_statistics(l, second.get(), x_mean, x_var, eps, l2_eps, scale);

    // y = x * gain[c] / rho[n] + shift[c] (eqs. 2-3).
    const double* mu = stats.mean.const_data_ptr<double>();
    const double* invstd = stats.invstd.const_data_ptr<double>();
    const double* rho = stats.rho.const_data_ptr<double>();
    std::vector<double> gain(c), inv(n);
    std::vector<T> shift(c);
    for (int64_t k = 0; k < c; ++k) {
      gain[k] = w[k] * invstd[k];
      shift[k] = static_cast<T>(b[k] - mu[k] * gain[k]);
    }
    for (int64_t i = 0; i < n; ++i) {
      inv[i] = 1.0 / rho[i];
    }
    T* yp = y.data_ptr<T>();
    over_output_units(l, [&](int64_t i0, int64_t i1) {
      std::vector<T> scratch(l.channels_last ? c : 0);
      kern.scale_shift(yp, xp, gain.data(), inv.data(), shift.data(), c, l.m, l.channels_last,
                       i0, i1, scratch.data());
    });
  });
  return {{y, stats.rho, stats.active, x_mean, x_var, stats.mean, stats.invstd},
          std::move(stats.var)};
}

}  // namespace

ForwardResult train_forward(const Tensor& x, const std::optional<Tensor>& weight,
                            const std::optional<Tensor>& bias,
                            const std::optional<Tensor>& running_mean,
                            const std::optional<Tensor>& running_var, double momentum,
                            double eps, double l2_eps, bool scale) {
  BatchForward f = batch_forward(x, weight, bias, eps, l2_eps, scale, "train_forward");
  const double count = static_cast<double>(x.numel() / x.size(1));
  update_running_stats(running_mean, running_var, std::get<5>(f.out), std::move(f.var), count,
                       momentum);
  return f.out;
}

StatsResult train_stats(const Tensor& x, const std::optional<Tensor>& weight,
                        const std::optional<Tensor>& bias, double eps, double l2_eps,
                        bool scale) {
  BatchForward f = batch_forward(x, weight, bias, eps, l2_eps, scale, "train_stats");
  Tensor var = doubles({static_cast<int64_t>(f.var.size())});
  std::copy(f.var.begin(), f.var.end(), var.data_ptr<double>());
  const auto& [y, rho, active, x_mean, x_var, mean, invstd] = f.out;
  return {y, rho, active, x_mean, x_var, mean, invstd, var};
}

std::tuple<Tensor, Tensor, Tensor> train_backward(
    const Tensor& dy_in, const Tensor& x_in, const std::optional<Tensor>& weight,
    const Tensor& rho, const Tensor& active, const std::optional<Tensor>& x_mean,
    const std::optional<Tensor>& x_var, const Tensor& mean, const Tensor& invstd, bool scale,
    bool input_grad) {
  check_input(x_in, "train_backward");
  TORCH_CHECK(dy_in.sizes() == x_in.sizes() && dy_in.scalar_type() == x_in.scalar_type(),
              "l2bn.train_backward: grad_output must match the input's shape and dtype");
  const Tensor x = supported_layout(x_in);
  const Tensor dy = like(dy_in, x);
  const Layout l = layout_of(x);
  const int64_t n = l.n, c = l.c;
  const std::vector<double> w = channel_values(weight, c, 1.0);
  std::vector<double> dgamma(c, 0.0), dbeta(c, 0.0);

  if (!keeps_row_moments(l)) {
    const auto empty = [](const std::optional<Tensor>& t) {
      return !t.has_value() || !t->defined() || t->numel() == 0;
    };
    TORCH_CHECK(empty(x_mean) && empty(x_var),
                "l2bn.train_backward: x_mean and x_var must be empty for this input "
                "(train_forward keeps no row moments of (N, C) input or of channel-last maps "
                "of at most ",
                kSmallMapPositions, " positions)");
    Tensor dx = vector_backward(dy, x, l, w, rho, active, mean, invstd, scale, input_grad,
                                &dgamma, &dbeta);
    return {dx, parameter_grad(dgamma, x, weight), parameter_grad(dbeta, x, weight, true)};
  }
  TORCH_CHECK(x_mean.has_value() && x_var.has_value() && x_mean->numel() == n * c &&
                  x_var->numel() == n * c,
              "l2bn.train_backward: x_mean and x_var of shape (N, C) (train_forward's) are "
              "required for this input");

  const double count = static_cast<double>(n * l.m);
  const double spatial = static_cast<double>(l.m);
  const double* rp = rho.const_data_ptr<double>();
  const bool* ap = active.const_data_ptr<bool>();
  const double* xm = x_mean->const_data_ptr<double>();
  const double* xv = x_var->const_data_ptr<double>();
  const double* mu = mean.const_data_ptr<double>();
  const double* is = invstd.const_data_ptr<double>();

  // Backward sums centred on the channel mean of xh (h = mu * rho per row; x - h): dgamma
  // needs no difference of rounded row means. All three are written in full by the
  // reduction pass, h by each task for its own rows.
  const auto h = uninitialized<double>(n * c);
  const auto t1 = uninitialized<double>(n * c);
  const auto t2 = uninitialized<double>(n * c);
  // Float lanes only while every channel's mean is within a few standard deviations
  // (var + eps >= 1 / invstd^2 stands in for var): then x - h cannot cancel.
  bool well_conditioned = true;
  for (int64_t k = 0; k < c; ++k) {
    well_conditioned = well_conditioned && mu[k] * mu[k] * is[k] * is[k] <= kCondLimitFast - 1;
  }
  // Without input_grad, dx is an empty tensor (defined: every output has a fake form).
  Tensor dx = at::empty({0}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "l2bn_train_backward", [&] {
    using T = scalar_t;
    const Kernels<T>& kern = kernels<T>();
    const T* xp = x.const_data_ptr<T>();
    const T* gp = dy.const_data_ptr<T>();
    const bool fast = std::is_same_v<T, float> && well_conditioned;
    const auto h_t = uninitialized<T>(fast ? n * c : 0);
    over_reduction_units(l, [&](int64_t i0, int64_t i1) {
      // This task's rows: those of samples [i0, i1) (channel-last) or rows [i0, i1).
      const int64_t row0 = l.channels_last ? i0 * c : i0;
      const int64_t row1 = l.channels_last ? i1 * c : i1;
      for (int64_t i = c > 0 ? row0 / c : 0; i * c < row1; ++i) {
        const int64_t k0 = std::max<int64_t>(row0 - i * c, 0);
        const int64_t k1 = std::min<int64_t>(row1 - i * c, c);
        for (int64_t k = k0; k < k1; ++k) {
          h[i * c + k] = mu[k] * rp[i];
        }
        if (fast) {
          for (int64_t k = k0; k < k1; ++k) {
            h_t[i * c + k] = static_cast<T>(h[i * c + k]);
          }
        }
      }
      kern.grad_sums(gp, xp, h.get(), h_t.get(), fast, c, l.m, l.channels_last, i0, i1,
                     t1.get(), t2.get());
    });
    // dbeta = sum dy, dgamma = sum dy * z (eq. 2).
    std::vector<double> inv_rho(n);
    for (int64_t i = 0; i < n; ++i) {
      inv_rho[i] = 1.0 / rp[i];
    }
    statistics_kernels().channel_grad_sums(t1.get(), t2.get(), inv_rho.data(), n, c,
                                           dbeta.data(), dgamma.data());
    for (int64_t k = 0; k < c; ++k) {
      dgamma[k] *= is[k];
    }
    if (!input_grad) {
      return;
    }
    // dx = p * dy + q * x + r (l2bn/_impl/pytorch.py, input_grad): e[n] = sum_c xh * dxh is the projection of the
    // l2 normalization, zero for samples whose norm was clamped.
    // Per-channel parts of p, q, r and of e (the 1 / count factors folded in).
    const double inv_count = 1.0 / count;
    std::vector<double> gain(c), e_beta(c), e_gamma(c), q_c(c), r_c(c);
    for (int64_t k = 0; k < c; ++k) {
      gain[k] = w[k] * is[k];
      e_beta[k] = dbeta[k] * spatial * inv_count;
      e_gamma[k] = dgamma[k] * is[k] * spatial * inv_count;
      q_c[k] = gain[k] * dgamma[k] * is[k] * inv_count;
      r_c[k] = gain[k] * (dgamma[k] * is[k] * mu[k] - dbeta[k]) * inv_count;
    }
    // proj[n] = e[n] / D for active samples (O(N * C), statistics.h); the output pass builds
    // p, q and r from per-channel and per-sample parts.
    const double inv_d = scale ? 1.0 / (static_cast<double>(c) * spatial) : 1.0;
    std::vector<double> proj(n);
    const ProjectionFactors factors{mu, gain.data(), e_beta.data(), e_gamma.data(), inv_d};
    statistics_kernels().projections(xm, xv, t1.get(), t2.get(), inv_rho.data(), ap, factors, n,
                                     c, proj.data());
    dx = at::empty_like(x);
    T* out = dx.data_ptr<T>();
    over_output_units(l, [&](int64_t i0, int64_t i1) {
      std::vector<T> scratch(l.channels_last ? 3 * c : 0);
      kern.grad_output(out, gp, xp, gain.data(), inv_rho.data(), q_c.data(), proj.data(),
                       r_c.data(), c, l.m, l.channels_last, i0, i1, scratch.data());
    });
  });
  return {dx, parameter_grad(dgamma, x, weight), parameter_grad(dbeta, x, weight, true)};
}

}  // namespace l2bn
