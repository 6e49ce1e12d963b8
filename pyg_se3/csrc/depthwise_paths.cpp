// The depthwise kernel's path sums (pyg_se3/nn/kernel.py, DepthwiseEdgeKernel), and their gradients, on the CPU.
//
// Every input channel c of degree k reaches output degree l through nJ_k paths, each scaled by its own radial
// weight; the kernel sums them per channel before the channel mixing:
//
//     y[e, i, coff_k + c] = sum_J w[e, off_k + J C_k + c] sum_a x_k[e, c, a] b_k[e, a, J m + i]
//
// (coff_k = sum of C_k' over k' < k; off_k as in stacked_features.cpp). Each path row is built in a small buffer
// and used at once, so the [n, m, K] path features are never written out: y has sum_k C_k columns instead of
// K = sum_k nJ_k C_k. The backward pass rebuilds the rows, and from d_y gives the gradients of the weights, the
// features and the basis in the same pass (and y again, for the mixing matrix's gradient). Not differentiable:
// kernel.py calls these only where autograd records nothing.

#include "depthwise_paths.h"

#include "edge_blocks.h"

#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <vector>

namespace {

using namespace pyg_se3;

int64_t largest_channels(const std::vector<at::Tensor>& xs) {
  int64_t largest = 1;
  for (const auto& x : xs) largest = std::max(largest, x.size(1));
  return largest;
}

void check_weights(const at::Tensor& weights, const std::vector<at::Tensor>& xs, const std::vector<at::Tensor>& bs,
                   int64_t m) {
  const int64_t fan_in = stacked_size(xs, bs, m);
  TORCH_CHECK(weights.device().is_cpu() && weights.scalar_type() == xs[0].scalar_type() && weights.dim() == 2 &&
                  weights.size(0) == xs[0].size(0) && weights.size(1) == fan_in && weights.stride(1) == 1,
              "weights: expected a CPU tensor [", xs[0].size(0), ", ", fan_in,
              "] of the dtype of xs with contiguous rows, got ", weights.sizes(), " ", weights.scalar_type());
}

void check_sums(const at::Tensor& t, const char* name, const std::vector<at::Tensor>& xs, int64_t m) {
  const std::vector<int64_t> shape{xs[0].size(0), m, total_channels(xs)};
  TORCH_CHECK(t.sizes() == at::IntArrayRef(shape) && t.is_contiguous() && t.scalar_type() == xs[0].scalar_type() &&
                  t.device().is_cpu(),
              name, ": expected a contiguous CPU tensor of shape ", at::IntArrayRef(shape),
              " and the dtype of xs, got ", t.sizes());
}

template <typename scalar_t>
void sums_impl(const std::vector<Block<scalar_t>>& blocks, const at::Tensor& weights, int64_t m, int64_t buffer_size,
               int64_t row_size, at::Tensor& y) {
  const int64_t channels = y.size(2);
  const scalar_t* w_data = weights.data_ptr<scalar_t>();
  scalar_t* y_data = y.data_ptr<scalar_t>();
  at::parallel_for(0, y.size(0), kGrainEdges, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> x_t(buffer_size), row(row_size);
    for (int64_t e = begin; e < end; ++e) {
      const scalar_t* w_e = w_data + e * weights.stride(0);
      scalar_t* y_e = y_data + e * m * channels;
      int64_t channel_offset = 0;
      for (const auto& blk : blocks) {
        const int64_t C = blk.channels;
        load_transposed(blk, e, x_t.data());
        const scalar_t* b = blk.b + e * blk.b_edge;
        for (int64_t i = 0; i < m; ++i) {
          scalar_t* __restrict__ y_row = y_e + i * channels + channel_offset;
          std::fill(y_row, y_row + C, scalar_t(0));
          for (int64_t j = 0; j < blk.num_j; ++j) {
            combine(x_t.data(), b + j * m + i, blk.b_component, blk.components, C, row.data());
            const scalar_t* __restrict__ w_j = w_e + blk.offset + j * C;
            for (int64_t c = 0; c < C; ++c) y_row[c] += w_j[c] * row[c];
          }
        }
        channel_offset += C;
      }
    }
  });
}

// The gradients' raw pointers (nullptr where not needed).
template <typename scalar_t>
struct GradPointers {
  scalar_t* y;
  scalar_t* d_weights;
  std::vector<scalar_t*> d_xs, d_bs;
};

template <typename scalar_t>
void grads_impl(const std::vector<Block<scalar_t>>& blocks, const at::Tensor& weights, const at::Tensor& d_y,
                int64_t m, int64_t buffer_size, int64_t row_size, const GradPointers<scalar_t>& out) {
  const int64_t fan_in = weights.size(1), channels = d_y.size(2);
  const scalar_t* w_data = weights.data_ptr<scalar_t>();
  const scalar_t* dy_data = d_y.data_ptr<scalar_t>();
  at::parallel_for(0, d_y.size(0), kGrainEdges, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> x_t(buffer_size), d_x_t(buffer_size), row(row_size), d_row(row_size);
    for (int64_t e = begin; e < end; ++e) {
      const scalar_t* w_e = w_data + e * weights.stride(0);
      const scalar_t* dy_e = dy_data + e * m * channels;
      scalar_t* y_e = out.y == nullptr ? nullptr : out.y + e * m * channels;
      scalar_t* dw_e = out.d_weights == nullptr ? nullptr : out.d_weights + e * fan_in;
      if (dw_e != nullptr) std::fill(dw_e, dw_e + fan_in, scalar_t(0));
      int64_t channel_offset = 0;
      for (size_t k = 0; k < blocks.size(); ++k) {
        const auto& blk = blocks[k];
        const int64_t C = blk.channels, A = blk.components, P = blk.num_j * m;
        const bool need_row = y_e != nullptr || dw_e != nullptr;
        scalar_t* d_x = out.d_xs[k] == nullptr ? nullptr : out.d_xs[k] + e * C * A;
        scalar_t* d_b = out.d_bs[k] == nullptr ? nullptr : out.d_bs[k] + e * A * P;
        const scalar_t* b = blk.b + e * blk.b_edge;
        load_transposed(blk, e, x_t.data());
        if (d_x != nullptr) std::fill(d_x_t.begin(), d_x_t.begin() + A * C, scalar_t(0));
        for (int64_t i = 0; i < m; ++i) {
          const scalar_t* __restrict__ dy_row = dy_e + i * channels + channel_offset;
          scalar_t* __restrict__ y_row = y_e == nullptr ? nullptr : y_e + i * channels + channel_offset;
          if (y_row != nullptr) std::fill(y_row, y_row + C, scalar_t(0));
          for (int64_t j = 0; j < blk.num_j; ++j) {
            const scalar_t* __restrict__ w_j = w_e + blk.offset + j * C;
            if (need_row) combine(x_t.data(), b + j * m + i, blk.b_component, A, C, row.data());
            if (y_row != nullptr)
              for (int64_t c = 0; c < C; ++c) y_row[c] += w_j[c] * row[c];
            if (dw_e != nullptr) {
              scalar_t* __restrict__ dw_j = dw_e + blk.offset + j * C;
              for (int64_t c = 0; c < C; ++c) dw_j[c] += dy_row[c] * row[c];
            }
            if (d_x == nullptr && d_b == nullptr) continue;
            // the gradient of this path row: d_y scaled by the path's weights
            for (int64_t c = 0; c < C; ++c) d_row[c] = dy_row[c] * w_j[c];
            if (d_x != nullptr) accumulate_row(d_row.data(), b + j * m + i, blk.b_component, A, C, d_x_t.data());
            if (d_b != nullptr) row_dots(x_t.data(), d_row.data(), A, C, d_b + j * m + i, P);
          }
        }
        if (d_x != nullptr) store_transposed(d_x_t.data(), A, C, d_x);
        channel_offset += C;
      }
    }
  });
}

}  // namespace

at::Tensor depthwise_path_sums(const std::vector<at::Tensor>& xs, const std::vector<at::Tensor>& bases,
                               const at::Tensor& weights, int64_t m, const c10::optional<at::Tensor>& out) {
  check_operands(xs, bases, m);
  const auto bs = contiguous_bases(bases);
  check_weights(weights, xs, bs, m);
  at::Tensor y = out.has_value() ? *out : at::empty({xs[0].size(0), m, total_channels(xs)}, xs[0].options());
  check_sums(y, "out", xs, m);
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "depthwise_path_sums", [&] {
    const auto blocks = make_blocks<scalar_t>(xs, bs, m);
    sums_impl<scalar_t>(blocks, weights, m, largest_block(xs), largest_channels(xs), y);
  });
  return y;
}

void depthwise_path_sum_grads(const std::vector<at::Tensor>& xs, const std::vector<at::Tensor>& bases,
                              const at::Tensor& weights, const at::Tensor& d_sums,
                              const c10::optional<at::Tensor>& sums_out,
                              const c10::optional<at::Tensor>& d_weights_out,
                              const std::vector<c10::optional<at::Tensor>>& d_xs_out,
                              const std::vector<c10::optional<at::Tensor>>& d_bs_out) {
  TORCH_CHECK(d_sums.dim() == 3, "d_sums: expected [n, m, C], got ", d_sums.sizes());
  const int64_t m = d_sums.size(1);
  check_operands(xs, bases, m);
  const auto bs = contiguous_bases(bases);
  check_weights(weights, xs, bs, m);
  check_sums(d_sums, "d_sums", xs, m);
  TORCH_CHECK(d_xs_out.size() == xs.size() && d_bs_out.size() == xs.size(),
              "d_xs, d_bs: expected one entry (a tensor, or None where not needed) per block");
  if (sums_out.has_value()) check_sums(*sums_out, "sums", xs, m);
  if (d_weights_out.has_value()) checked_output(d_weights_out, weights, "d_weights", 0);
  AT_DISPATCH_FLOATING_TYPES(d_sums.scalar_type(), "depthwise_path_sum_grads", [&] {
    GradPointers<scalar_t> out{sums_out.has_value() ? sums_out->data_ptr<scalar_t>() : nullptr,
                               d_weights_out.has_value() ? d_weights_out->data_ptr<scalar_t>() : nullptr,
                               {},
                               {}};
    for (size_t k = 0; k < xs.size(); ++k) {
      const auto d_x = checked_output(d_xs_out[k], xs[k], "d_xs", k);
      const auto d_b = checked_output(d_bs_out[k], bs[k], "d_bs", k);
      out.d_xs.push_back(d_x.defined() ? d_x.data_ptr<scalar_t>() : nullptr);
      out.d_bs.push_back(d_b.defined() ? d_b.data_ptr<scalar_t>() : nullptr);
    }
    const auto blocks = make_blocks<scalar_t>(xs, bs, m);
    grads_impl<scalar_t>(blocks, weights, d_sums, m, largest_block(xs), largest_channels(xs), out);
  });
}
