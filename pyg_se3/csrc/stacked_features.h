// Stacked basis features of the edge kernels and their gradients (stacked_features.cpp); contraction.cpp calls
// them once per chunk of edges.
#pragma once

#include <torch/extension.h>

#include <vector>

// [n, m, K]: stacked[e, i, off_k + J C_k + c] = sum_a xs[k][e, c, a] bs[k][e, a, J m + i], written into out
// (a contiguous [n, m, K] buffer) when given.
at::Tensor stacked_features(const std::vector<at::Tensor>& xs, const std::vector<at::Tensor>& bases, int64_t m,
                            const c10::optional<at::Tensor>& out);

// The gradients of stacked_features with respect to each feature and basis block, written into d_xs_out and
// d_bs_out (contiguous tensors of the blocks' shapes; none where not needed).
void stacked_feature_grads(const std::vector<at::Tensor>& xs, const std::vector<at::Tensor>& bases,
                           const at::Tensor& d_stacked, const std::vector<c10::optional<at::Tensor>>& d_xs_out,
                           const std::vector<c10::optional<at::Tensor>>& d_bs_out);
