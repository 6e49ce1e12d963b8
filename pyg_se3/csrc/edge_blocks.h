// Per-edge building blocks of the C++ edge kernels (stacked_features.cpp, depthwise_paths.cpp): one input
// degree's operands as raw pointers, and the channel loops that every kernel is made of.
#pragma once

#include <torch/extension.h>

#include <algorithm>
#include <vector>

namespace pyg_se3 {

// edges per task of at::parallel_for: a thread's range is never split below this
constexpr int64_t kGrainEdges = 16;

// One input degree's operands as raw pointers and strides (the basis' last dimension is contiguous).
template <typename scalar_t>
struct Block {
  const scalar_t* x;
  int64_t x_edge, x_channel, x_component;
  const scalar_t* b;
  int64_t b_edge, b_component;
  int64_t channels, components, num_j, offset;
};

template <typename scalar_t>
inline std::vector<Block<scalar_t>> make_blocks(const std::vector<at::Tensor>& xs,
                                                const std::vector<at::Tensor>& bs, int64_t m) {
  std::vector<Block<scalar_t>> blocks;
  int64_t offset = 0;
  for (size_t k = 0; k < xs.size(); ++k) {
    const auto& x = xs[k];
    const auto& b = bs[k];
    Block<scalar_t> block{x.data_ptr<scalar_t>(), x.stride(0), x.stride(1), x.stride(2), b.data_ptr<scalar_t>(),
                          b.stride(0), b.stride(1), x.size(1), x.size(2), b.size(2) / m, offset};
    offset += block.channels * block.num_j;
    blocks.push_back(block);
  }
  return blocks;
}

inline int64_t largest_block(const std::vector<at::Tensor>& xs) {
  int64_t largest = 1;
  for (const auto& x : xs) largest = std::max(largest, x.size(1) * x.size(2));
  return largest;
}

// x_t[a, c] = x[e, c, a]: one edge's features, components-major, so that channel loops are contiguous
template <typename scalar_t>
inline void load_transposed(const Block<scalar_t>& blk, int64_t e, scalar_t* __restrict__ x_t) {
  const scalar_t* x = blk.x + e * blk.x_edge;
  for (int64_t a = 0; a < blk.components; ++a)
    for (int64_t c = 0; c < blk.channels; ++c) x_t[a * blk.channels + c] = x[c * blk.x_channel + a * blk.x_component];
}

// dst[c] = sum_a x_t[a, c] coef[a * coef_stride]
template <typename scalar_t>
inline void combine(const scalar_t* __restrict__ x_t, const scalar_t* __restrict__ coef, int64_t coef_stride,
                    int64_t components, int64_t channels, scalar_t* __restrict__ dst) {
  const scalar_t c0 = coef[0];
  for (int64_t c = 0; c < channels; ++c) dst[c] = x_t[c] * c0;
  for (int64_t a = 1; a < components; ++a) {
    const scalar_t ca = coef[a * coef_stride];
    const scalar_t* __restrict__ row = x_t + a * channels;
    for (int64_t c = 0; c < channels; ++c) dst[c] += row[c] * ca;
  }
}

// acc_t[a, c] += row[c] coef[a * coef_stride]: the transpose of combine, for the features' gradient
template <typename scalar_t>
inline void accumulate_row(const scalar_t* __restrict__ row, const scalar_t* __restrict__ coef, int64_t coef_stride,
                           int64_t components, int64_t channels, scalar_t* __restrict__ acc_t) {
  for (int64_t a = 0; a < components; ++a) {
    const scalar_t ca = coef[a * coef_stride];
    scalar_t* __restrict__ acc = acc_t + a * channels;
    for (int64_t c = 0; c < channels; ++c) acc[c] += row[c] * ca;
  }
}

// x[e, c, a] = x_t[a, c] for a contiguous [C, A] destination: the inverse of load_transposed
template <typename scalar_t>
inline void store_transposed(const scalar_t* __restrict__ x_t, int64_t components, int64_t channels,
                             scalar_t* __restrict__ x) {
  for (int64_t c = 0; c < channels; ++c)
    for (int64_t a = 0; a < components; ++a) x[c * components + a] = x_t[a * channels + c];
}

// sum_c u[c] v[c], in kLanes independent partial sums: a single running sum would keep the compiler from
// vectorising the loop (floating-point addition is not associative)
constexpr int64_t kLanes = 16;

template <typename scalar_t>
inline scalar_t dot(const scalar_t* __restrict__ u, const scalar_t* __restrict__ v, int64_t size) {
  scalar_t partial[kLanes] = {};
  int64_t c = 0;
  for (; c + kLanes <= size; c += kLanes)
    for (int64_t lane = 0; lane < kLanes; ++lane) partial[lane] += u[c + lane] * v[c + lane];
  scalar_t sum = 0;
  for (; c < size; ++c) sum += u[c] * v[c];
  for (int64_t lane = 0; lane < kLanes; ++lane) sum += partial[lane];
  return sum;
}


inline void check_operands(const std::vector<at::Tensor>& xs, const std::vector<at::Tensor>& bs, int64_t m) {
  TORCH_CHECK(!xs.empty() && xs.size() == bs.size(), "xs, bs: expected equally many (at least one) blocks, got ",
              xs.size(), " and ", bs.size());
  TORCH_CHECK(m >= 1, "m: expected >= 1, got ", m);
  for (size_t k = 0; k < xs.size(); ++k) {
    const auto &x = xs[k], &b = bs[k];
    TORCH_CHECK(x.device().is_cpu() && b.device().is_cpu(), "xs, bs: expected CPU tensors");
    TORCH_CHECK(x.dim() == 3 && b.dim() == 3, "xs[", k, "], bs[", k, "]: expected 3-d tensors");
    TORCH_CHECK(x.scalar_type() == xs[0].scalar_type() && b.scalar_type() == xs[0].scalar_type(),
                "xs, bs: expected one dtype");
    TORCH_CHECK(x.size(0) == xs[0].size(0) && b.size(0) == xs[0].size(0), "xs, bs: expected one number of edges");
    TORCH_CHECK(b.size(1) == x.size(2), "bs[", k, "]: expected ", x.size(2), " rows, got ", b.size(1));
    TORCH_CHECK(b.size(2) % m == 0, "bs[", k, "]: expected a multiple of m=", m, " columns, got ", b.size(2));
  }
}

// dst[a * dst_stride] = sum_c x_t[a, c] row[c]: the basis' gradient from one path row's gradient
template <typename scalar_t>
inline void row_dots(const scalar_t* __restrict__ x_t, const scalar_t* __restrict__ row, int64_t components,
                     int64_t channels, scalar_t* __restrict__ dst, int64_t dst_stride) {
  for (int64_t a = 0; a < components; ++a) dst[a * dst_stride] = dot(x_t + a * channels, row, channels);
}

inline int64_t total_channels(const std::vector<at::Tensor>& xs) {
  int64_t channels = 0;
  for (const auto& x : xs) channels += x.size(1);
  return channels;
}

inline std::vector<at::Tensor> contiguous_bases(const std::vector<at::Tensor>& bs) {
  std::vector<at::Tensor> out;
  for (const auto& b : bs) out.push_back(b.stride(2) == 1 ? b : b.contiguous());
  return out;
}

// An output the caller passes (rows of a full-size gradient, written in place), or an undefined tensor for none.
inline at::Tensor checked_output(const c10::optional<at::Tensor>& out, const at::Tensor& like, const char* name,
                                 size_t k) {
  if (!out.has_value()) return at::Tensor();
  TORCH_CHECK(out->sizes() == like.sizes() && out->is_contiguous() && out->scalar_type() == like.scalar_type() &&
                  out->device().is_cpu(),
              name, "[", k, "]: expected a contiguous CPU tensor of shape ", like.sizes(), " and the dtype of xs");
  return *out;
}

inline int64_t stacked_size(const std::vector<at::Tensor>& xs, const std::vector<at::Tensor>& bs, int64_t m) {
  int64_t fan_in = 0;
  for (size_t k = 0; k < xs.size(); ++k) fan_in += xs[k].size(1) * (bs[k].size(2) / m);
  return fan_in;
}

}  // namespace pyg_se3
