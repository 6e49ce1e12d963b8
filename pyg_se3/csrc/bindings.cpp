// The Python module pyg_se3._C: the CPU kernels of pyg_se3/nn/kernel.py.

#include "depthwise_paths.h"
#include "stacked_features.h"

#include <torch/extension.h>

void bind_contractions(pybind11::module& module);  // contraction.cpp

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  using pybind11::arg;
  module.doc() = "CPU kernels of pyg_se3's edge kernels (see pyg_se3/nn/kernel.py)";
  module.def("stacked_features", &stacked_features, "[n, m, K] stacked basis features of every input block",
             arg("xs"), arg("bs"), arg("m"), arg("out") = pybind11::none());
  module.def("stacked_feature_grads", &stacked_feature_grads,
             "write the gradients of the stacked features with respect to each feature and basis block into d_xs "
             "and d_bs (None: not needed)",
             arg("xs"), arg("bs"), arg("d_stacked"), arg("d_xs"), arg("d_bs"));
  module.def("depthwise_path_sums", &depthwise_path_sums,
             "[n, m, sum_k C_k] the depthwise kernel's weighted path features summed over each channel's paths",
             arg("xs"), arg("bs"), arg("weights"), arg("m"), arg("out") = pybind11::none());
  module.def("depthwise_path_sum_grads", &depthwise_path_sum_grads,
             "write the gradients of depthwise_path_sums (weights, feature and basis blocks) and the sums themselves "
             "into the given tensors (None: not needed)",
             arg("xs"), arg("bs"), arg("weights"), arg("d_sums"), arg("sums"), arg("d_weights"), arg("d_xs"),
             arg("d_bs"));
  bind_contractions(module);
}
