// Fused triplet kernels for DimeNet++-style interactions (CPU, OpenMP through ATen's
// parallel_for). Built by `python -m tensorframe.ops.native build` (the README's setup runs
// it); tensorframe/ops/triplet_kernels.py holds the autograd wrappers and the pure-PyTorch
// fallback with the same contract.
//
// Notation: T triplets k -> j -> i; S edges; kj[t], ji[t] index edges (0 <= . < S or num_out);
// L angular orders; F features.
//   angular   (T, L)     angular part of the triplet basis (envelope included)
//   projected (S, L, F)  the radial part of the basis on each edge, already multiplied by the
//                        layer's weight: projected[s, l, f] = sum_n radial[s, l, n] W[l, n, f]
//   filter[t, f]       = sum_l angular[t, l] projected[kj[t], l, f]
//
// Ops (namespace tensorframe):
//   gather_mul_scatter(x, kj, weight, ji, num_out)            -> out[ji[t]] += x[kj[t]] * weight[t]
//   filtered_aggregate(x, angular, projected, kj, ji, num_out) -> out[ji[t]] += x[kj[t]] * filter[t]
// and their backward ops. No (T, F) tensor is made by filtered_aggregate, forward or backward;
// gather_mul_scatter makes none in its forward pass. (A filter that is needed as a (T, F)
// tensor anyway is faster as a dense basis times W through BLAS: gathering L x F values of
// `projected` per triplet moves more memory than the L x N basis row.)
//
// Sums into rows shared by several triplets (out[ji], grad_x[kj], grad_projected[kj]) run
// serially with one thread and with atomic adds with several, so results with one thread are
// deterministic; with several, the order of additions (and so the last bits) may vary.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <initializer_list>
#include <tuple>
#include <vector>

namespace {

constexpr int64_t kGrain = 512;  // triplets per parallel chunk

// Kernels: templates on raw pointers, outside the dispatch macros (a #pragma may not sit
// inside a macro argument). `atomic`: several threads may add to the same row.

// Per-chunk loops are compiled for AVX2+FMA and for the baseline, and the CPU picks one when
// the library loads (GCC function multiversioning); the helpers are inlined into each clone.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define TF_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define TF_CLONES
#endif
#define TF_INLINE __attribute__((always_inline)) inline

template <typename scalar_t>
TF_INLINE void add_row(scalar_t* __restrict__ target, const scalar_t* __restrict__ a, const scalar_t* __restrict__ b,
                       int64_t F, bool atomic) {
  // target[f] += a[f] * b[f]
  if (atomic) {
    for (int64_t f = 0; f < F; ++f) {
      const scalar_t value = a[f] * b[f];
#pragma omp atomic
      target[f] += value;
    }
  } else {
#pragma omp simd
    for (int64_t f = 0; f < F; ++f) target[f] += a[f] * b[f];
  }
}

template <typename scalar_t>
TF_INLINE void add_scaled_row(scalar_t* __restrict__ target, scalar_t scale, const scalar_t* __restrict__ a, int64_t F,
                              bool atomic) {
  // target[f] += scale * a[f]
  if (atomic) {
    for (int64_t f = 0; f < F; ++f) {
      const scalar_t value = scale * a[f];
#pragma omp atomic
      target[f] += value;
    }
  } else {
#pragma omp simd
    for (int64_t f = 0; f < F; ++f) target[f] += scale * a[f];
  }
}

template <typename scalar_t>
TF_INLINE void filter_row(scalar_t* __restrict__ filter, const scalar_t* __restrict__ angular_t,
                          const scalar_t* __restrict__ projected_k, int64_t L, int64_t F) {
  // filter[f] = sum_l angular_t[l] projected_k[l, f]
  const scalar_t w0 = angular_t[0];
#pragma omp simd
  for (int64_t f = 0; f < F; ++f) filter[f] = w0 * projected_k[f];
  for (int64_t l = 1; l < L; ++l) {
    const scalar_t w = angular_t[l];
    const scalar_t* __restrict__ row = projected_k + l * F;
#pragma omp simd
    for (int64_t f = 0; f < F; ++f) filter[f] += w * row[f];
  }
}

template <typename scalar_t>
TF_INLINE scalar_t dot_row(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b, int64_t F) {
  scalar_t total = 0;
#pragma omp simd reduction(+ : total)
  for (int64_t f = 0; f < F; ++f) total += a[f] * b[f];
  return total;
}

template <typename Body>
void run_triplets(int64_t T, bool parallel, const Body& body) {
  if (parallel) {
    at::parallel_for(0, T, kGrain, body);
  } else {
    body(0, T);
  }
}

template <typename scalar_t>
TF_CLONES void gather_mul_scatter_rows(int64_t begin, int64_t end, const scalar_t* x, const int64_t* k,
                                       const scalar_t* w, const int64_t* j, scalar_t* out, int64_t F, bool atomic) {
  for (int64_t t = begin; t < end; ++t) add_row(out + j[t] * F, x + k[t] * F, w + t * F, F, atomic);
}

template <typename scalar_t>
TF_CLONES void gather_mul_scatter_backward_rows(int64_t begin, int64_t end, const scalar_t* g, const scalar_t* x,
                                                const int64_t* k, const scalar_t* w, const int64_t* j,
                                                scalar_t* grad_x, scalar_t* grad_w, int64_t F, bool atomic) {
  for (int64_t t = begin; t < end; ++t) {
    const scalar_t* __restrict__ gt = g + j[t] * F;
    const scalar_t* __restrict__ xt = x + k[t] * F;
    scalar_t* __restrict__ gwt = grad_w + t * F;
#pragma omp simd
    for (int64_t f = 0; f < F; ++f) gwt[f] = gt[f] * xt[f];
    add_row(grad_x + k[t] * F, gt, w + t * F, F, atomic);
  }
}

template <typename scalar_t>
TF_CLONES void filtered_aggregate_rows(int64_t begin, int64_t end, const scalar_t* x, const scalar_t* a,
                                       const scalar_t* p, const int64_t* k, const int64_t* j, scalar_t* out,
                                       scalar_t* filter, int64_t L, int64_t F, bool atomic) {
  for (int64_t t = begin; t < end; ++t) {
    filter_row(filter, a + t * L, p + k[t] * L * F, L, F);
    add_row(out + j[t] * F, x + k[t] * F, filter, F, atomic);
  }
}

template <typename scalar_t>
TF_CLONES void filtered_aggregate_backward_rows(int64_t begin, int64_t end, const scalar_t* g, const scalar_t* x,
                                                const scalar_t* a, const scalar_t* p, const int64_t* k,
                                                const int64_t* j, scalar_t* grad_x, scalar_t* grad_a,
                                                scalar_t* grad_p, scalar_t* filter, scalar_t* upstream, int64_t L,
                                                int64_t F, bool atomic) {
  for (int64_t t = begin; t < end; ++t) {
    const scalar_t* __restrict__ gt = g + j[t] * F;
    const scalar_t* __restrict__ xt = x + k[t] * F;
    const scalar_t* pt = p + k[t] * L * F;
    filter_row(filter, a + t * L, pt, L, F);
    scalar_t* __restrict__ up = upstream;
#pragma omp simd
    for (int64_t f = 0; f < F; ++f) up[f] = gt[f] * xt[f];
    for (int64_t l = 0; l < L; ++l) {
      grad_a[t * L + l] = dot_row(up, pt + l * F, F);
      add_scaled_row(grad_p + (k[t] * L + l) * F, a[t * L + l], up, F, atomic);
    }
    add_row(grad_x + k[t] * F, gt, filter, F, atomic);
  }
}

template <typename scalar_t>
void gather_mul_scatter_kernel(const scalar_t* x, const int64_t* k, const scalar_t* w, const int64_t* j,
                               scalar_t* out, int64_t T, int64_t F, bool atomic) {
  run_triplets(T, atomic,
               [&](int64_t begin, int64_t end) { gather_mul_scatter_rows(begin, end, x, k, w, j, out, F, atomic); });
}

template <typename scalar_t>
void gather_mul_scatter_backward_kernel(const scalar_t* g, const scalar_t* x, const int64_t* k, const scalar_t* w,
                                        const int64_t* j, scalar_t* grad_x, scalar_t* grad_w, int64_t T, int64_t F,
                                        bool atomic) {
  run_triplets(T, atomic, [&](int64_t begin, int64_t end) {
    gather_mul_scatter_backward_rows(begin, end, g, x, k, w, j, grad_x, grad_w, F, atomic);
  });
}

template <typename scalar_t>
void filtered_aggregate_kernel(const scalar_t* x, const scalar_t* a, const scalar_t* p, const int64_t* k,
                               const int64_t* j, scalar_t* out, int64_t T, int64_t L, int64_t F, bool atomic) {
  run_triplets(T, atomic, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> filter(F);
    filtered_aggregate_rows(begin, end, x, a, p, k, j, out, filter.data(), L, F, atomic);
  });
}

template <typename scalar_t>
void filtered_aggregate_backward_kernel(const scalar_t* g, const scalar_t* x, const scalar_t* a, const scalar_t* p,
                                        const int64_t* k, const int64_t* j, scalar_t* grad_x, scalar_t* grad_a,
                                        scalar_t* grad_p, int64_t T, int64_t L, int64_t F, bool atomic) {
  run_triplets(T, atomic, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> filter(F), upstream(F);
    filtered_aggregate_backward_rows(begin, end, g, x, a, p, k, j, grad_x, grad_a, grad_p, filter.data(),
                                     upstream.data(), L, F, atomic);
  });
}

void check_index(const at::Tensor& index, int64_t bound, const char* name) {
  // Out-of-range indices would read or write outside the tensors: refuse them (one pass).
  if (index.numel() == 0) return;
  auto contiguous = index.contiguous();
  const int64_t* v = contiguous.data_ptr<int64_t>();
  int64_t low = v[0], high = v[0];
  for (int64_t i = 1; i < contiguous.numel(); ++i) {
    low = v[i] < low ? v[i] : low;
    high = v[i] > high ? v[i] : high;
  }
  TORCH_CHECK(low >= 0 && high < bound, name, " holds indices in [", low, ", ", high, "], outside [0, ", bound, ")");
}

void check_cpu(std::initializer_list<at::Tensor> tensors) {
  for (const auto& tensor : tensors) {
    TORCH_CHECK(tensor.device().is_cpu(), "tensorframe native triplet kernels run on the CPU");
  }
}

void check_basis(const at::Tensor& angular, const at::Tensor& projected, const at::Tensor& kj) {
  TORCH_CHECK(angular.dim() == 2, "angular must be (T, L), got ", angular.sizes());
  TORCH_CHECK(projected.dim() == 3, "projected must be (S, L, F), got ", projected.sizes());
  TORCH_CHECK(angular.size(1) == projected.size(1), "angular and projected disagree on L: ", angular.size(1), " vs ",
              projected.size(1));
  TORCH_CHECK(kj.dim() == 1 && kj.size(0) == angular.size(0), "kj must be (T,) with T = ", angular.size(0));
  TORCH_CHECK(kj.scalar_type() == at::kLong, "kj must be int64");
  TORCH_CHECK(angular.scalar_type() == projected.scalar_type(), "angular and projected must share a dtype");
  check_cpu({angular, projected, kj});
  check_index(kj, projected.size(0), "kj");
}

void check_aggregate(const at::Tensor& x, const at::Tensor& ji, int64_t T, int64_t num_out) {
  TORCH_CHECK(x.dim() == 2, "x must be (S, F), got ", x.sizes());
  TORCH_CHECK(ji.dim() == 1 && ji.size(0) == T, "ji must be (T,) with T = ", T);
  TORCH_CHECK(ji.scalar_type() == at::kLong, "ji must be int64");
  TORCH_CHECK(num_out >= 0, "num_out must be >= 0");
  check_cpu({x, ji});
  check_index(ji, num_out, "ji");
}

bool use_atomics() { return at::get_num_threads() > 1; }

at::Tensor gather_mul_scatter(const at::Tensor& x_in, const at::Tensor& kj_in, const at::Tensor& weight_in,
                              const at::Tensor& ji_in, int64_t num_out) {
  TORCH_CHECK(weight_in.dim() == 2 && x_in.dim() == 2 && weight_in.size(1) == x_in.size(1),
              "weight must be (T, F) with F = x's");
  TORCH_CHECK(kj_in.dim() == 1 && kj_in.size(0) == weight_in.size(0) && kj_in.scalar_type() == at::kLong,
              "kj must be int64 (T,)");
  TORCH_CHECK(x_in.scalar_type() == weight_in.scalar_type(), "x and weight must share a dtype");
  check_aggregate(x_in, ji_in, weight_in.size(0), num_out);
  check_cpu({weight_in, kj_in});
  check_index(kj_in, x_in.size(0), "kj");
  auto x = x_in.contiguous();
  auto weight = weight_in.contiguous();
  auto kj = kj_in.contiguous();
  auto ji = ji_in.contiguous();
  const int64_t T = weight.size(0), F = x.size(1);
  auto out = at::zeros({num_out, F}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gather_mul_scatter", [&] {
    gather_mul_scatter_kernel<scalar_t>(x.data_ptr<scalar_t>(), kj.data_ptr<int64_t>(), weight.data_ptr<scalar_t>(),
                                        ji.data_ptr<int64_t>(), out.data_ptr<scalar_t>(), T, F, use_atomics());
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> gather_mul_scatter_backward(const at::Tensor& grad_in, const at::Tensor& x_in,
                                                               const at::Tensor& kj_in, const at::Tensor& weight_in,
                                                               const at::Tensor& ji_in) {
  auto grad = grad_in.contiguous();
  auto x = x_in.contiguous();
  auto weight = weight_in.contiguous();
  auto kj = kj_in.contiguous();
  auto ji = ji_in.contiguous();
  const int64_t T = weight.size(0), F = x.size(1);
  TORCH_CHECK(grad.dim() == 2 && grad.size(1) == F, "grad must be (num_out, F)");
  auto grad_x = at::zeros_like(x);
  auto grad_weight = at::empty_like(weight);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gather_mul_scatter_backward", [&] {
    gather_mul_scatter_backward_kernel<scalar_t>(grad.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                                                 kj.data_ptr<int64_t>(), weight.data_ptr<scalar_t>(),
                                                 ji.data_ptr<int64_t>(), grad_x.data_ptr<scalar_t>(),
                                                 grad_weight.data_ptr<scalar_t>(), T, F, use_atomics());
  });
  return {grad_x, grad_weight};
}

struct AggregateInputs {
  // The inputs of filtered_aggregate (and its backward), contiguous, and their sizes.
  at::Tensor x, angular, projected, kj, ji;
  int64_t T, L, F;
  AggregateInputs(const at::Tensor& x_in, const at::Tensor& angular_in, const at::Tensor& projected_in,
                  const at::Tensor& kj_in, const at::Tensor& ji_in)
      : x(x_in.contiguous()), angular(angular_in.contiguous()), projected(projected_in.contiguous()),
        kj(kj_in.contiguous()), ji(ji_in.contiguous()), T(angular.size(0)), L(angular.size(1)),
        F(projected.size(2)) {}
};

at::Tensor filtered_aggregate(const at::Tensor& x_in, const at::Tensor& angular_in, const at::Tensor& projected_in,
                              const at::Tensor& kj_in, const at::Tensor& ji_in, int64_t num_out) {
  check_basis(angular_in, projected_in, kj_in);
  check_aggregate(x_in, ji_in, angular_in.size(0), num_out);
  TORCH_CHECK(x_in.size(0) == projected_in.size(0) && x_in.size(1) == projected_in.size(2),
              "x must be (S, F) with S, F those of projected (S, L, F)");
  TORCH_CHECK(x_in.scalar_type() == projected_in.scalar_type(), "x and projected must share a dtype");
  const AggregateInputs in(x_in, angular_in, projected_in, kj_in, ji_in);
  auto out = at::zeros({num_out, in.F}, in.x.options());
  AT_DISPATCH_FLOATING_TYPES(in.x.scalar_type(), "filtered_aggregate", [&] {
    filtered_aggregate_kernel<scalar_t>(in.x.data_ptr<scalar_t>(), in.angular.data_ptr<scalar_t>(),
                                        in.projected.data_ptr<scalar_t>(), in.kj.data_ptr<int64_t>(),
                                        in.ji.data_ptr<int64_t>(), out.data_ptr<scalar_t>(), in.T, in.L, in.F,
                                        use_atomics());
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> filtered_aggregate_backward(
    const at::Tensor& grad_in, const at::Tensor& x_in, const at::Tensor& angular_in, const at::Tensor& projected_in,
    const at::Tensor& kj_in, const at::Tensor& ji_in) {
  auto grad = grad_in.contiguous();
  const AggregateInputs in(x_in, angular_in, projected_in, kj_in, ji_in);
  TORCH_CHECK(grad.dim() == 2 && grad.size(1) == in.F, "grad must be (num_out, F)");
  auto grad_x = at::zeros_like(in.x);
  auto grad_angular = at::empty_like(in.angular);
  auto grad_projected = at::zeros_like(in.projected);
  AT_DISPATCH_FLOATING_TYPES(in.x.scalar_type(), "filtered_aggregate_backward", [&] {
    filtered_aggregate_backward_kernel<scalar_t>(
        grad.data_ptr<scalar_t>(), in.x.data_ptr<scalar_t>(), in.angular.data_ptr<scalar_t>(),
        in.projected.data_ptr<scalar_t>(), in.kj.data_ptr<int64_t>(), in.ji.data_ptr<int64_t>(),
        grad_x.data_ptr<scalar_t>(), grad_angular.data_ptr<scalar_t>(), grad_projected.data_ptr<scalar_t>(), in.T,
        in.L, in.F, use_atomics());
  });
  return {grad_x, grad_angular, grad_projected};
}

}  // namespace

TORCH_LIBRARY(tensorframe, m) {
  m.def("gather_mul_scatter(Tensor x, Tensor kj, Tensor weight, Tensor ji, int num_out) -> Tensor");
  m.def("gather_mul_scatter_backward(Tensor grad, Tensor x, Tensor kj, Tensor weight, Tensor ji) -> (Tensor, Tensor)");
  m.def("filtered_aggregate(Tensor x, Tensor angular, Tensor projected, Tensor kj, Tensor ji, int num_out) -> Tensor");
  m.def("filtered_aggregate_backward(Tensor grad, Tensor x, Tensor angular, Tensor projected, Tensor kj, Tensor ji)"
        " -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(tensorframe, CPU, m) {
  m.impl("gather_mul_scatter", &gather_mul_scatter);
  m.impl("gather_mul_scatter_backward", &gather_mul_scatter_backward);
  m.impl("filtered_aggregate", &filtered_aggregate);
  m.impl("filtered_aggregate_backward", &filtered_aggregate_backward);
}
