// Data-movement floors for eval-mode normalization of an (N, C, H, W) contiguous float32
// tensor, used by bench_eval_floor.py. Each loop does the least arithmetic its data flow
// allows, so its time is the time of the bytes it moves:
//   stream:    y = a[c] * x + b[c]; each value read once and written once (BatchNorm eval).
//   two_pass:  per sample, sum x^2 (read 1), then y = a[c] * r * x + b[c] (read 2, write):
//              what eval-mode L2BN must do, since every output of a sample depends on the
//              whole sample's norm.
//   pipelined: the same reads, with sample n's output written in the loop that sums
//              sample n + 1 (the schedule of l2bn's kernel).
// Samples are spread over threads as l2bn's eval kernel spreads them.
#include <torch/extension.h>

#include <cmath>

namespace {

void write_sample(const float* x, float* y, const float* a, const float* b, int64_t c,
                  int64_t m, float r) {
  for (int64_t k = 0; k < c; ++k) {
    const float ak = a[k] * r, bk = b[k];
    const float* u = x + k * m;
    float* o = y + k * m;
#pragma omp simd
    for (int64_t i = 0; i < m; ++i) {
      o[i] = ak * u[i] + bk;
    }
  }
}

float sum_squares(const float* x, int64_t len) {
  float lanes[16] = {};
  int64_t i = 0;
  for (; i + 16 <= len; i += 16) {
#pragma omp simd
    for (int l = 0; l < 16; ++l) {
      lanes[l] += x[i + l] * x[i + l];
    }
  }
  float s = 0;
  for (; i < len; ++i) s += x[i] * x[i];
  for (float v : lanes) s += v;
  return s;
}

// y of one sample while summing next^2; returns the sum.
float write_sample_next(const float* x, float* y, const float* a, const float* b, int64_t c,
                        int64_t m, float r, const float* next) {
  float lanes[16] = {};
  for (int64_t k = 0; k < c; ++k) {
    const float ak = a[k] * r, bk = b[k];
    const float *u = x + k * m, *v = next + k * m;
    float* o = y + k * m;
    for (int64_t i = 0; i + 16 <= m; i += 16) {
#pragma omp simd
      for (int l = 0; l < 16; ++l) {
        o[i + l] = ak * u[i + l] + bk;
        lanes[l] += v[i + l] * v[i + l];
      }
    }
  }
  float s = 0;
  for (float v : lanes) s += v;
  return s;
}

torch::Tensor run(const torch::Tensor& x, const torch::Tensor& a, const torch::Tensor& b,
                  int schedule) {
  TORCH_CHECK(x.dim() == 4 && x.is_contiguous() && x.scalar_type() == torch::kFloat32,
              "eval_floor: contiguous float32 (N, C, H, W) input");
  TORCH_CHECK(x.size(2) * x.size(3) % 16 == 0, "eval_floor: H * W must be a multiple of 16");
  const int64_t n = x.size(0), c = x.size(1), m = x.size(2) * x.size(3), d = c * m;
  auto y = torch::empty_like(x);
  const float *xp = x.data_ptr<float>(), *ap = a.data_ptr<float>(), *bp = b.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, n, 1, [&](int64_t i0, int64_t i1) {
    if (schedule == 0) {
      for (int64_t i = i0; i < i1; ++i) write_sample(xp + i * d, yp + i * d, ap, bp, c, m, 1.f);
    } else if (schedule == 1) {
      for (int64_t i = i0; i < i1; ++i) {
        const float r = 1.f / std::sqrt(sum_squares(xp + i * d, d) + 1.f);
        write_sample(xp + i * d, yp + i * d, ap, bp, c, m, r);
      }
    } else {
      float s = sum_squares(xp + i0 * d, d);
      for (int64_t i = i0; i < i1; ++i) {
        const float r = 1.f / std::sqrt(s + 1.f);
        if (i + 1 < i1) {
          s = write_sample_next(xp + i * d, yp + i * d, ap, bp, c, m, r, xp + (i + 1) * d);
        } else {
          write_sample(xp + i * d, yp + i * d, ap, bp, c, m, r);
        }
      }
    }
  });
  return y;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("stream", [](const torch::Tensor& x, const torch::Tensor& a,
                          const torch::Tensor& b) { return run(x, a, b, 0); });
  module.def("two_pass", [](const torch::Tensor& x, const torch::Tensor& a,
                            const torch::Tensor& b) { return run(x, a, b, 1); });
  module.def("pipelined", [](const torch::Tensor& x, const torch::Tensor& a,
                             const torch::Tensor& b) { return run(x, a, b, 2); });
}
