// Stacked basis features of the edge kernels (pyg_se3/nn/kernel.py), and their gradients, on the CPU.
//
// For every edge e and input degree k, the features x_k[e] [C_k, A_k] (A_k = 2k+1) times the basis
// b_k[e] [A_k, nJ_k m] give C_k nJ_k path features of m = 2l+1 components each. They are stacked along
// K = sum_k nJ_k C_k, component-major and path-major, channels fastest:
//
//     stacked[e, i, off_k + J C_k + c] = sum_a x_k[e, c, a] b_k[e, a, J m + i]
//
// Every output row is then a sum of A_k channel vectors scaled by basis entries, so the loops run over the
// channels, contiguous in memory, and vectorise; each output is written once, in its final place. Edges are
// split across threads with at::parallel_for. These functions are not differentiable: kernel.py calls them
// only where autograd records nothing.

#include "stacked_features.h"

#include "edge_blocks.h"

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

namespace {

using namespace pyg_se3;

template <typename scalar_t>
void forward_impl(const std::vector<at::Tensor>& xs, const std::vector<at::Tensor>& bs, int64_t m, at::Tensor& out) {
  const auto blocks = make_blocks<scalar_t>(xs, bs, m);
  const int64_t fan_in = out.size(2), buffer_size = largest_block(xs);
  scalar_t* out_data = out.data_ptr<scalar_t>();
  at::parallel_for(0, out.size(0), kGrainEdges, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> x_t(buffer_size);
    for (int64_t e = begin; e < end; ++e) {
      scalar_t* out_edge = out_data + e * m * fan_in;
      for (const auto& blk : blocks) {
        load_transposed(blk, e, x_t.data());
        const scalar_t* b = blk.b + e * blk.b_edge;
        for (int64_t i = 0; i < m; ++i)
          for (int64_t j = 0; j < blk.num_j; ++j)
            combine(x_t.data(), b + j * m + i, blk.b_component, blk.components, blk.channels,
                    out_edge + i * fan_in + blk.offset + j * blk.channels);
      }
    }
  });
}

template <typename scalar_t>
void backward_impl(const std::vector<at::Tensor>& xs, const std::vector<at::Tensor>& bs, const at::Tensor& grad,
                   int64_t m, std::vector<at::Tensor>& d_xs, std::vector<at::Tensor>& d_bs) {
  const auto blocks = make_blocks<scalar_t>(xs, bs, m);
  const int64_t fan_in = grad.size(2), buffer_size = largest_block(xs);
  const scalar_t* grad_data = grad.data_ptr<scalar_t>();
  std::vector<scalar_t*> d_x_data, d_b_data;
  for (size_t k = 0; k < blocks.size(); ++k) {
    d_x_data.push_back(d_xs[k].defined() ? d_xs[k].data_ptr<scalar_t>() : nullptr);
    d_b_data.push_back(d_bs[k].defined() ? d_bs[k].data_ptr<scalar_t>() : nullptr);
  }
  at::parallel_for(0, grad.size(0), kGrainEdges, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> x_t(buffer_size), d_x_t(buffer_size);
    for (int64_t e = begin; e < end; ++e) {
      const scalar_t* grad_edge = grad_data + e * m * fan_in;
      for (size_t k = 0; k < blocks.size(); ++k) {
        const auto& blk = blocks[k];
        const int64_t C = blk.channels, A = blk.components, P = blk.num_j * m;
        const scalar_t* b = blk.b + e * blk.b_edge;
        if (d_x_data[k] != nullptr) {  // d_x[e, c, a] = sum_{i, J} grad[e, i, off + J C + c] b[e, a, J m + i]
          std::fill(d_x_t.begin(), d_x_t.begin() + A * C, scalar_t(0));
          for (int64_t i = 0; i < m; ++i)
            for (int64_t j = 0; j < blk.num_j; ++j)
              accumulate_row(grad_edge + i * fan_in + blk.offset + j * C, b + j * m + i, blk.b_component, A, C,
                             d_x_t.data());
          store_transposed(d_x_t.data(), A, C, d_x_data[k] + e * C * A);
        }
        if (d_b_data[k] != nullptr) {  // d_b[e, a, J m + i] = sum_c x[e, c, a] grad[e, i, off + J C + c]
          load_transposed(blk, e, x_t.data());
          scalar_t* d_b = d_b_data[k] + e * A * P;
          for (int64_t i = 0; i < m; ++i)
            for (int64_t j = 0; j < blk.num_j; ++j)
              row_dots(x_t.data(), grad_edge + i * fan_in + blk.offset + j * C, A, C, d_b + j * m + i, P);
        }
      }
    }
  });
}

}  // namespace

at::Tensor stacked_features(const std::vector<at::Tensor>& xs, const std::vector<at::Tensor>& bases, int64_t m,
                            const c10::optional<at::Tensor>& out) {
  check_operands(xs, bases, m);
  const auto bs = contiguous_bases(bases);
  const std::vector<int64_t> shape{xs[0].size(0), m, stacked_size(xs, bs, m)};
  at::Tensor result;
  if (out.has_value()) {  // callers reuse one buffer across chunks: fresh large allocations cost page faults
    result = *out;
    TORCH_CHECK(result.sizes() == at::IntArrayRef(shape), "out: expected shape ", at::IntArrayRef(shape), ", got ",
                result.sizes());
    TORCH_CHECK(result.is_contiguous() && result.scalar_type() == xs[0].scalar_type() && result.device().is_cpu(),
                "out: expected a contiguous CPU tensor of the dtype of xs");
  } else {
    result = at::empty(shape, xs[0].options());
  }
  AT_DISPATCH_FLOATING_TYPES(result.scalar_type(), "stacked_features",
                             [&] { forward_impl<scalar_t>(xs, bs, m, result); });
  return result;
}

void stacked_feature_grads(const std::vector<at::Tensor>& xs, const std::vector<at::Tensor>& bases,
                           const at::Tensor& d_stacked, const std::vector<c10::optional<at::Tensor>>& d_xs_out,
                           const std::vector<c10::optional<at::Tensor>>& d_bs_out) {
  TORCH_CHECK(d_stacked.dim() == 3, "d_stacked: expected [n, m, K], got ", d_stacked.sizes());
  const int64_t m = d_stacked.size(1);
  check_operands(xs, bases, m);
  const auto bs = contiguous_bases(bases);
  TORCH_CHECK(d_xs_out.size() == xs.size() && d_bs_out.size() == xs.size(),
              "d_xs, d_bs: expected one entry (a tensor, or None where not needed) per block");
  const int64_t fan_in = stacked_size(xs, bs, m);
  TORCH_CHECK(d_stacked.size(0) == xs[0].size(0) && d_stacked.size(2) == fan_in, "d_stacked: expected [",
              xs[0].size(0), ", ", m, ", ", fan_in, "], got ", d_stacked.sizes());
  TORCH_CHECK(d_stacked.scalar_type() == xs[0].scalar_type(), "d_stacked: expected the dtype of xs");
  const auto grad = d_stacked.contiguous();
  // the outputs are written in place (callers pass rows of full-size gradients, so nothing is concatenated)
  std::vector<at::Tensor> d_xs, d_bs;
  for (size_t k = 0; k < xs.size(); ++k) {
    d_xs.push_back(checked_output(d_xs_out[k], xs[k], "d_xs", k));
    d_bs.push_back(checked_output(d_bs_out[k], bs[k], "d_bs", k));
  }
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "stacked_feature_grads",
                             [&] { backward_impl<scalar_t>(xs, bs, grad, m, d_xs, d_bs); });
}
