// Data-movement floors for eval-mode normalization of an (N, C, H, W) float32 tensor,
// contiguous or channels_last, used by bench_eval_floor.py. Each loop does the least
// arithmetic its data flow allows, so its time is the time of the bytes it moves:
//   stream:    y = a[c] * x + b[c]; each value read once and written once (BatchNorm eval).
//   two_pass:  per sample, sum x^2 (read 1), then y = a[c] * r * x + b[c] (read 2, write):
//              what eval-mode L2BN must do, since every output of a sample depends on the
//              whole sample's norm.
//   pipelined: the same reads, with sample n's output written in the loop that sums
//              sample n + 1 (the schedule of l2bn's kernel).
// A sample is C * H * W contiguous values in either layout: C rows of H * W values (one
// coefficient a row), or H * W positions of C values (the C coefficients at every
// position; C a multiple of 16 here, so that a position is whole vectors). Samples are
// spread over threads as l2bn's eval kernel spreads them.
#include <torch/extension.h>

#include <cmath>
#include <vector>

namespace {

constexpr int64_t kW = 16;  // values a step

struct Sample {
  int64_t c, m;
  bool cl;
};

// y = a * r * x + b over one sample (ar: C values of scratch).
void write_sample(const float* x, float* y, const float* a, const float* b, const Sample& s,
                  float r, float* ar) {
  if (s.cl) {
    for (int64_t k = 0; k < s.c; ++k) {
      ar[k] = a[k] * r;
    }
    for (int64_t j = 0; j < s.m; ++j) {
      const float* u = x + j * s.c;
      float* o = y + j * s.c;
#pragma omp simd
      for (int64_t k = 0; k < s.c; ++k) {
        o[k] = ar[k] * u[k] + b[k];
      }
    }
    return;
  }
  for (int64_t k = 0; k < s.c; ++k) {
    const float ak = a[k] * r, bk = b[k];
    const float* u = x + k * s.m;
    float* o = y + k * s.m;
#pragma omp simd
    for (int64_t i = 0; i < s.m; ++i) {
      o[i] = ak * u[i] + bk;
    }
  }
}

float sum_squares(const float* x, int64_t len) {
  float lanes[kW] = {};
  int64_t i = 0;
  for (; i + kW <= len; i += kW) {
#pragma omp simd
    for (int l = 0; l < kW; ++l) {
      lanes[l] += x[i + l] * x[i + l];
    }
  }
  float s = 0;
  for (; i < len; ++i) s += x[i] * x[i];
  for (float v : lanes) s += v;
  return s;
}

// y of one sample while summing next^2 over the same offsets; returns the sum.
float write_sample_next(const float* x, float* y, const float* a, const float* b,
                        const Sample& s, float r, const float* next, float* ar) {
  float lanes[kW] = {};
  float tail = 0;
  if (s.cl) {
    for (int64_t k = 0; k < s.c; ++k) {
      ar[k] = a[k] * r;
    }
    for (int64_t j = 0; j < s.m; ++j) {
      const float *u = x + j * s.c, *v = next + j * s.c;
      float* o = y + j * s.c;
      for (int64_t k = 0; k < s.c; k += kW) {
#pragma omp simd
        for (int l = 0; l < kW; ++l) {
          o[k + l] = ar[k + l] * u[k + l] + b[k + l];
          lanes[l] += v[k + l] * v[k + l];
        }
      }
    }
  } else {
    for (int64_t k = 0; k < s.c; ++k) {
      const float ak = a[k] * r, bk = b[k];
      const float *u = x + k * s.m, *v = next + k * s.m;
      float* o = y + k * s.m;
      int64_t i = 0;
      for (; i + kW <= s.m; i += kW) {
#pragma omp simd
        for (int l = 0; l < kW; ++l) {
          o[i + l] = ak * u[i + l] + bk;
          lanes[l] += v[i + l] * v[i + l];
        }
      }
      for (; i < s.m; ++i) {
        o[i] = ak * u[i] + bk;
        tail += v[i] * v[i];
      }
    }
  }
  for (float v : lanes) tail += v;
  return tail;
}

torch::Tensor run(const torch::Tensor& x, const torch::Tensor& a, const torch::Tensor& b,
                  int schedule) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == torch::kFloat32,
              "eval_floor: float32 (N, C, H, W) input");
  const bool cl = !x.is_contiguous();
  TORCH_CHECK(!cl || x.is_contiguous(at::MemoryFormat::ChannelsLast),
              "eval_floor: contiguous or channels_last input");
  TORCH_CHECK(!cl || x.size(1) % kW == 0,
              "eval_floor: channels_last input needs C a multiple of 16");
  const Sample s{x.size(1), x.size(2) * x.size(3), cl};
  const int64_t n = x.size(0), d = s.c * s.m;
  auto y = torch::empty_like(x);
  const float *xp = x.data_ptr<float>(), *ap = a.data_ptr<float>(), *bp = b.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, n, 1, [&](int64_t i0, int64_t i1) {
    std::vector<float> ar(s.c);
    if (schedule == 0) {
      for (int64_t i = i0; i < i1; ++i) write_sample(xp + i * d, yp + i * d, ap, bp, s, 1.f, ar.data());
    } else if (schedule == 1) {
      for (int64_t i = i0; i < i1; ++i) {
        const float r = 1.f / std::sqrt(sum_squares(xp + i * d, d) + 1.f);
        write_sample(xp + i * d, yp + i * d, ap, bp, s, r, ar.data());
      }
    } else {
      float sum = sum_squares(xp + i0 * d, d);
      for (int64_t i = i0; i < i1; ++i) {
        const float r = 1.f / std::sqrt(sum + 1.f);
        if (i + 1 < i1) {
          sum = write_sample_next(xp + i * d, yp + i * d, ap, bp, s, r, xp + (i + 1) * d,
                                  ar.data());
        } else {
          write_sample(xp + i * d, yp + i * d, ap, bp, s, r, ar.data());
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
