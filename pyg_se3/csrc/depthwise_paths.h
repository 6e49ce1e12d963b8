// The depthwise kernel's path sums and their gradients (depthwise_paths.cpp); contraction.cpp calls them once per
// chunk of edges.
#pragma once

#include <torch/extension.h>

#include <vector>

// [n, m, sum_k C_k]: y[e, i, coff_k + c] = sum_J weights[e, off_k + J C_k + c] stacked[e, i, off_k + J C_k + c],
// written into out (a contiguous buffer of that shape) when given.
at::Tensor depthwise_path_sums(const std::vector<at::Tensor>& xs, const std::vector<at::Tensor>& bases,
                               const at::Tensor& weights, int64_t m, const c10::optional<at::Tensor>& out);

// From d_sums, the gradient of depthwise_path_sums: the gradients of the weights and of each feature and basis
// block, and the sums themselves, written into the given tensors (none where not needed).
void depthwise_path_sum_grads(const std::vector<at::Tensor>& xs, const std::vector<at::Tensor>& bases,
                              const at::Tensor& weights, const at::Tensor& d_sums,
                              const c10::optional<at::Tensor>& sums_out,
                              const c10::optional<at::Tensor>& d_weights_out,
                              const std::vector<c10::optional<at::Tensor>>& d_xs_out,
                              const std::vector<c10::optional<at::Tensor>>& d_bs_out);
