// The chunked edge contractions of pyg_se3/nn/kernel.py (_KernelContraction, _DepthwiseContraction), forward and
// backward, on the CPU.
//
// The Python versions loop over chunks of edges and let every operation split its chunk across threads. Here
// each thread takes its own contiguous range of edges and runs the same chunk loop on it, every operation
// single-threaded (ATen runs operations inline inside a parallel region, and MKL runs one thread there): a
// thin matmul such as the radial weights' [n, 32] x [32, C K] runs at ~85-90% of a dense matmul's rate on one
// thread, ~60% when two threads split it. Each thread reuses its chunk buffers (scratch memory kept across
// calls); parameter gradients are summed per thread, then across threads. Not differentiable: kernel.py calls
// these only where autograd records nothing.

#include "depthwise_paths.h"
#include "edge_blocks.h"
#include "stacked_features.h"

#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <vector>

namespace {

using Blocks = std::vector<at::Tensor>;
using OptionalTensor = c10::optional<at::Tensor>;

Blocks rows(const Blocks& blocks, int64_t start, int64_t n) {
  Blocks out;
  for (const auto& block : blocks) out.push_back(block.narrow(0, start, n));
  return out;
}

// rows start:start+n of full-size gradients (none where not needed)
std::vector<OptionalTensor> optional_rows(const std::vector<at::Tensor>& full, int64_t start, int64_t n) {
  std::vector<OptionalTensor> out;
  for (const auto& t : full) out.push_back(t.defined() ? OptionalTensor(t.narrow(0, start, n)) : c10::nullopt);
  return out;
}

// Scratch memory of the calling thread, slot by slot, kept across calls and grown on demand: a fresh multi-MiB
// buffer per call is mapped by the allocator and costs a page fault per 4 KiB on first touch (measured 3.5x the
// time of a [1820, 32] x [32, 288] matmul writing into one). kernel.py sizes chunks to ~2 MiB, so a thread keeps
// a few of those; larger buffers (an explicit large chunk) are allocated per call and not kept.
constexpr int64_t kKeptScratchBytes = int64_t(16) << 20;

at::Tensor scratch(size_t slot, at::IntArrayRef shape, const at::TensorOptions& options) {
  const int64_t numel = c10::multiply_integers(shape);
  if (numel * int64_t(options.dtype().itemsize()) > kKeptScratchBytes) return at::empty(shape, options);
  thread_local std::vector<at::Tensor> buffers;
  if (buffers.size() <= slot) buffers.resize(slot + 1);
  auto& buffer = buffers[slot];
  if (!buffer.defined() || buffer.numel() < numel || buffer.scalar_type() != options.dtype())
    buffer = at::empty({numel}, options);
  return buffer.narrow(0, 0, numel).view(shape);
}

// Runs body(start, n, buffers) over chunks of at most `chunk` edges; every thread runs its own range of edges and
// passes the same `Buffers` (made by make_buffers(rows), once per thread and call) to all its chunks.
template <typename MakeBuffers, typename Body>
void for_each_chunk(int64_t num_edges, int64_t chunk, const MakeBuffers& make_buffers, const Body& body) {
  TORCH_CHECK(chunk >= 1, "chunk: expected >= 1, got ", chunk);
  at::parallel_for(0, num_edges, pyg_se3::kGrainEdges, [&](int64_t begin, int64_t end) {
    // grad mode is thread-local and worker threads do not inherit the caller's: skip autograd explicitly
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto buffers = make_buffers(std::min(chunk, end - begin));
    for (int64_t start = begin; start < end; start += chunk) body(start, std::min(chunk, end - start), buffers);
  });
}

// One accumulator per thread (a parameter's gradient), made on first use, summed by total().
class PerThreadSum {
 public:
  explicit PerThreadSum(bool needed) : needed_(needed), parts_(needed ? at::get_num_threads() : 0) {}

  at::Tensor& part(const at::Tensor& like) {
    auto& slot = parts_[at::get_thread_num()];
    if (!slot.defined()) slot = at::zeros_like(like, at::MemoryFormat::Contiguous);
    return slot;
  }

  OptionalTensor total(const at::Tensor& like) const {
    if (!needed_) return c10::nullopt;
    at::Tensor sum = at::zeros_like(like, at::MemoryFormat::Contiguous);
    for (const auto& part : parts_)
      if (part.defined()) sum.add_(part);
    return sum;
  }

 private:
  bool needed_;
  std::vector<at::Tensor> parts_;
};

std::vector<at::Tensor> full_size_grads(const Blocks& blocks, const std::vector<bool>& needed) {
  TORCH_CHECK(needed.size() == blocks.size(), "need flags: expected one per block, got ", needed.size(), " for ",
              blocks.size());
  std::vector<at::Tensor> grads;
  for (size_t k = 0; k < blocks.size(); ++k)
    grads.push_back(needed[k] ? at::empty(blocks[k].sizes(), blocks[k].options()) : at::Tensor());
  return grads;
}

bool any(const std::vector<bool>& flags) { return std::any_of(flags.begin(), flags.end(), [](bool f) { return f; }); }

void check_dense(const at::Tensor& t, const char* name, const at::Tensor& like, int64_t dim) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == like.scalar_type(), name,
              ": expected a CPU tensor of dtype ", like.scalar_type(), ", got ", t.scalar_type(), " on ", t.device());
  TORCH_CHECK(t.dim() == dim, name, ": expected ", dim, " dimensions, got ", t.sizes());
}

// K: the stacked features' width, after checking the feature and basis blocks
int64_t stacked_width(const Blocks& xs, const Blocks& bs, int64_t m) {
  pyg_se3::check_operands(xs, bs, m);
  return pyg_se3::stacked_size(xs, bs, m);
}

// [..., d_xs..., d_bs...]: the blocks' gradients appended to `result`, none where not needed
std::vector<OptionalTensor> with_block_grads(std::vector<OptionalTensor> result, const std::vector<at::Tensor>& d_xs,
                                             const std::vector<at::Tensor>& d_bs) {
  for (const auto& d : d_xs) result.push_back(d.defined() ? OptionalTensor(d) : c10::nullopt);
  for (const auto& d : d_bs) result.push_back(d.defined() ? OptionalTensor(d) : c10::nullopt);
  return result;
}

// The radial weights hidden weight^T + bias of a chunk as one matmul: the bias is one more column of the weight,
// multiplied by a column of ones beside the hidden rows. addmm would first broadcast the bias into the whole
// [n, C K] output, one more pass over the largest tensor of the chunk: on one thread it took 1.2-1.5x the time of
// this matmul for the chunks of the N-body model and of NVIDIA's configuration.
class RadialWeights {
 public:
  RadialWeights(const at::Tensor& weight, const at::Tensor& bias) : weight_(at::cat({weight, bias.unsqueeze(1)}, 1)) {}

  // The same weights with their rows reordered from (c, k) to (k, c) (fan_in: K): the product then writes each
  // edge's weights as a row-major [K, C] matrix, which the forward's [m, K] x [K, C] reads fastest (the backward's
  // [m, C] x [C, K] reads the [C, K] order fastest, and keeps it)
  RadialWeights(const at::Tensor& weight, const at::Tensor& bias, int64_t fan_in)
      : RadialWeights(weight, bias) {
    const int64_t channels = weight_.size(0) / fan_in;
    weight_ = weight_.view({channels, fan_in, -1}).transpose(0, 1).reshape({channels * fan_in, -1});
  }

  // the calling thread's [n, H + 1] buffer of hidden rows, its last column ones
  at::Tensor buffer(size_t slot, int64_t n) const {
    auto rows = scratch(slot, {n, weight_.size(1)}, weight_.options());
    rows.select(1, weight_.size(1) - 1).fill_(1);
    return rows;
  }

  // out = hidden[start:start + n] weight^T + bias, through `buffer` (made by buffer() for at least n rows)
  at::Tensor& operator()(at::Tensor& out, const at::Tensor& buffer, const at::Tensor& hidden, int64_t start,
                         int64_t n) const {
    auto rows = buffer.narrow(0, 0, n);
    rows.narrow(1, 0, hidden.size(1)).copy_(hidden.narrow(0, start, n));
    return at::mm_out(out, rows, weight_.t());
  }

 private:
  at::Tensor weight_;  // [C K, H + 1]: weight, then bias
};

// ---- the full kernel: out[e] = (hidden[e] weight^T + bias).view(C, K) @ stacked[e] ---------------------------
// (with groups > 1: xs and bs hold `groups` runs of E edges, and edge g E + e takes the weights of hidden row e, an
// edge and its reverse sharing their weights; hidden has E rows, or one per edge, groups E, whose runs hold equal
// values: the weights come from the first run, and each edge's row gets its own gradient)

struct KernelShapes {
  int64_t edges, channels, fan_in;
  bool hidden_per_edge;
};

KernelShapes kernel_shapes(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& bias,
                           const Blocks& xs, const Blocks& bs, int64_t m, int64_t groups) {
  check_dense(hidden, "hidden", hidden, 2);
  check_dense(weight, "weight", hidden, 2);
  check_dense(bias, "bias", hidden, 1);
  TORCH_CHECK(groups >= 1, "groups: expected >= 1, got ", groups);
  const int64_t fan_in = stacked_width(xs, bs, m);
  TORCH_CHECK(weight.size(1) == hidden.size(1) && weight.size(0) % fan_in == 0 && bias.size(0) == weight.size(0),
              "weight, bias: expected [C K, ", hidden.size(1), "] and [C K] with K=", fan_in, ", got ", weight.sizes(),
              " and ", bias.sizes());
  const int64_t edges = xs[0].size(0) / groups;
  TORCH_CHECK(xs[0].size(0) == groups * edges && (hidden.size(0) == edges || hidden.size(0) == xs[0].size(0)),
              "hidden, xs: expected groups x E edges and E or groups x E rows of hidden, got ", xs[0].size(0),
              " edges and ", hidden.size(0), " rows for groups=", groups);
  for (const auto& x : xs)
    TORCH_CHECK(x.size(0) == xs[0].size(0), "xs: expected ", xs[0].size(0), " edges in every block, got ", x.size(0));
  return {edges, weight.size(0) / fan_in, fan_in, groups > 1 && hidden.size(0) == xs[0].size(0)};
}

at::Tensor kernel_contraction(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& bias,
                              const Blocks& xs, const Blocks& bs, int64_t m, int64_t chunk, int64_t groups) {
  const auto s = kernel_shapes(hidden, weight, bias, xs, bs, m, groups);
  at::Tensor out = at::empty({groups * s.edges, s.channels, m}, hidden.options());
  const RadialWeights radial(weight, bias, s.fan_in);  // [K, C] per edge
  struct Buffers {
    at::Tensor weights, stacked, product, hidden;
  };
  auto make = [&](int64_t n) {
    return Buffers{scratch(0, {n, s.channels * s.fan_in}, hidden.options()),
                   scratch(1, {n, m, s.fan_in}, hidden.options()), scratch(2, {n, m, s.channels}, hidden.options()),
                   radial.buffer(3, n)};
  };
  for_each_chunk(s.edges, chunk, make, [&](int64_t start, int64_t n, Buffers& buf) {
    auto weights = buf.weights.narrow(0, 0, n);
    radial(weights, buf.hidden, hidden, start, n);
    for (int64_t group = 0; group < groups; ++group) {
      const int64_t first = group * s.edges + start;
      auto stacked = stacked_features(rows(xs, first, n), rows(bs, first, n), m, buf.stacked.narrow(0, 0, n));
      // [m, K] x [K, C] per edge, both row-major: the fast layout of MKL's batched matmul for m <= 5 (2.6x faster
      // than the transposed view of [C, K] weights for the N-body model's [3, 64] x [64, 17] on one thread)
      auto product = buf.product.narrow(0, 0, n);
      at::bmm_out(product, stacked, weights.view({n, s.fan_in, s.channels}));
      out.narrow(0, first, n).copy_(product.transpose(1, 2));
    }
  });
  return out;
}

// [d_hidden, d_weight, d_bias, d_xs..., d_bs...], none where not needed
std::vector<OptionalTensor> kernel_contraction_backward(const at::Tensor& grad, const at::Tensor& hidden,
                                                        const at::Tensor& weight, const at::Tensor& bias,
                                                        const Blocks& xs, const Blocks& bs, int64_t m, int64_t chunk,
                                                        int64_t groups, bool need_hidden, bool need_weight,
                                                        bool need_bias, const std::vector<bool>& need_x,
                                                        const std::vector<bool>& need_b) {
  const auto s = kernel_shapes(hidden, weight, bias, xs, bs, m, groups);
  check_dense(grad, "grad", hidden, 3);
  TORCH_CHECK(grad.size(0) == groups * s.edges && grad.size(1) == s.channels && grad.size(2) == m,
              "grad: expected [", groups * s.edges, ", ", s.channels, ", ", m, "], got ", grad.sizes());
  const bool need_features = any(need_x) || any(need_b);
  at::Tensor d_hidden = need_hidden ? at::empty(hidden.sizes(), hidden.options()) : at::Tensor();
  const auto d_xs = full_size_grads(xs, need_x), d_bs = full_size_grads(bs, need_b);
  PerThreadSum d_weight(need_weight), d_bias(need_bias);
  const RadialWeights radial(weight, bias);
  struct Buffers {
    at::Tensor weights, stacked, grad, ones, own, hidden;
  };
  // per group of edges its stacked features and output gradient, kept through the chunk
  auto make = [&](int64_t n) {
    return Buffers{scratch(0, {n, s.channels * s.fan_in}, hidden.options()),
                   scratch(1, {groups, n, m, s.fan_in}, hidden.options()),
                   scratch(2, {groups, n, m, s.channels}, hidden.options()), at::ones({n}, hidden.options()),
                   s.hidden_per_edge ? scratch(3, {n, s.channels * s.fan_in}, hidden.options()) : at::Tensor(),
                   need_features ? radial.buffer(4, n) : at::Tensor()};
  };
  for_each_chunk(s.edges, chunk, make, [&](int64_t start, int64_t n, Buffers& buf) {
    const auto hidden_rows = hidden.narrow(0, start, n);
    // the weights' buffer holds their gradient (summed over the groups), then the recomputed weights
    auto d_weights = buf.weights.narrow(0, 0, n);
    auto d_weights_3d = d_weights.view({n, s.channels, s.fan_in});
    for (int64_t group = 0; group < groups; ++group) {
      const int64_t first = group * s.edges + start;
      auto g = buf.grad.select(0, group).narrow(0, 0, n);  // [n, m, C]
      g.copy_(grad.narrow(0, first, n).transpose(1, 2));
      auto stacked = stacked_features(rows(xs, first, n), rows(bs, first, n), m,
                                      buf.stacked.select(0, group).narrow(0, 0, n));
      // with a hidden row per edge, each group's weight gradient makes its own rows' gradient, then joins the sum
      const bool own = s.hidden_per_edge && group > 0;
      if (group == 0)
        at::bmm_out(d_weights_3d, g.transpose(1, 2), stacked);
      else if (own) {
        auto own_3d = buf.own.narrow(0, 0, n).view({n, s.channels, s.fan_in});
        at::bmm_out(own_3d, g.transpose(1, 2), stacked);
      }
      else
        d_weights_3d.baddbmm_(g.transpose(1, 2), stacked);
      if (need_hidden && s.hidden_per_edge) {
        auto d_hidden_rows = d_hidden.narrow(0, first, n);
        at::mm_out(d_hidden_rows, own ? buf.own.narrow(0, 0, n) : d_weights, weight);
      }
      if (own) d_weights.add_(buf.own.narrow(0, 0, n));
    }
    if (need_hidden && !s.hidden_per_edge) {
      auto d_hidden_rows = d_hidden.narrow(0, start, n);
      at::mm_out(d_hidden_rows, d_weights, weight);
    }
    if (need_weight) d_weight.part(weight).addmm_(d_weights.t(), hidden_rows);
    if (need_bias) d_bias.part(bias).addmv_(d_weights.t(), buf.ones.narrow(0, 0, n));
    if (!need_features) return;
    auto& weights = radial(d_weights, buf.hidden, hidden, start, n);
    for (int64_t group = 0; group < groups; ++group) {
      const int64_t first = group * s.edges + start;
      // the stacked features' buffer holds their gradient
      auto d_stacked = buf.stacked.select(0, group).narrow(0, 0, n);
      at::bmm_out(d_stacked, buf.grad.select(0, group).narrow(0, 0, n), weights.view({n, s.channels, s.fan_in}));
      stacked_feature_grads(rows(xs, first, n), rows(bs, first, n), d_stacked, optional_rows(d_xs, first, n),
                            optional_rows(d_bs, first, n));
    }
  });
  return with_block_grads(
      {need_hidden ? OptionalTensor(d_hidden) : c10::nullopt, d_weight.total(weight), d_bias.total(bias)}, d_xs, d_bs);
}

// ---- the depthwise kernel: out[e] = path_sums(stacked[e] * weights[e]) @ mix^T ------------------------------

struct DepthwiseShapes {
  int64_t edges, fan_in, channels_in, channels_out;
};

DepthwiseShapes depthwise_shapes(const at::Tensor& weights, const at::Tensor& mix, const Blocks& xs,
                                 const Blocks& bs, int64_t m) {
  check_dense(weights, "weights", weights, 2);
  check_dense(mix, "mix", weights, 2);
  const int64_t fan_in = stacked_width(xs, bs, m);
  const int64_t channels_in = pyg_se3::total_channels(xs);
  TORCH_CHECK(weights.size(1) == fan_in && mix.size(1) == channels_in, "weights, mix: expected [E, ", fan_in,
              "] and [C, ", channels_in, "], got ", weights.sizes(), " and ", mix.sizes());
  for (const auto& x : xs)
    TORCH_CHECK(x.size(0) == weights.size(0), "xs: expected ", weights.size(0), " edges (those of weights), got ",
                x.size(0));
  return {weights.size(0), fan_in, channels_in, mix.size(0)};
}

at::Tensor depthwise_contraction(const at::Tensor& weights_in, const at::Tensor& mix, const Blocks& xs,
                                 const Blocks& bs, int64_t m, int64_t chunk) {
  const auto s = depthwise_shapes(weights_in, mix, xs, bs, m);
  const auto weights = weights_in.contiguous();
  at::Tensor out = at::empty({s.edges, m, s.channels_out}, weights.options());
  auto make = [&](int64_t n) { return scratch(0, {n, m, s.channels_in}, weights.options()); };
  for_each_chunk(s.edges, chunk, make, [&](int64_t start, int64_t n, at::Tensor& buffer) {
    auto sums = depthwise_path_sums(rows(xs, start, n), rows(bs, start, n), weights.narrow(0, start, n), m,
                                    buffer.narrow(0, 0, n));
    auto out_rows = out.narrow(0, start, n).view({n * m, s.channels_out});
    at::mm_out(out_rows, sums.view({n * m, s.channels_in}), mix.t());
  });
  return out;
}

// [d_weights, d_mix, d_xs..., d_bs...], none where not needed
std::vector<OptionalTensor> depthwise_contraction_backward(const at::Tensor& grad, const at::Tensor& weights_in,
                                                           const at::Tensor& mix, const Blocks& xs, const Blocks& bs,
                                                           int64_t m, int64_t chunk, bool need_weights, bool need_mix,
                                                           const std::vector<bool>& need_x,
                                                           const std::vector<bool>& need_b) {
  const auto s = depthwise_shapes(weights_in, mix, xs, bs, m);
  const auto weights = weights_in.contiguous();
  check_dense(grad, "grad", weights, 3);
  TORCH_CHECK(grad.size(0) == s.edges && grad.size(1) == m && grad.size(2) == s.channels_out, "grad: expected [",
              s.edges, ", ", m, ", ", s.channels_out, "], got ", grad.sizes());
  const auto g_all = grad.contiguous();
  at::Tensor d_weights = need_weights ? at::empty(weights.sizes(), weights.options()) : at::Tensor();
  const auto d_xs = full_size_grads(xs, need_x), d_bs = full_size_grads(bs, need_b);
  PerThreadSum d_mix(need_mix);
  struct Buffers {
    at::Tensor sums, d_sums;
  };
  auto make = [&](int64_t n) {
    return Buffers{scratch(0, {n, m, s.channels_in}, weights.options()),
                   scratch(1, {n, m, s.channels_in}, weights.options())};
  };
  for_each_chunk(s.edges, chunk, make, [&](int64_t start, int64_t n, Buffers& buf) {
    const auto g = g_all.narrow(0, start, n).view({n * m, s.channels_out});
    auto d_sums = buf.d_sums.narrow(0, 0, n);
    auto d_sums_2d = d_sums.view({n * m, s.channels_in});
    at::mm_out(d_sums_2d, g, mix);
    auto sums = buf.sums.narrow(0, 0, n);  // rebuilt for the mixing matrix's gradient only
    depthwise_path_sum_grads(rows(xs, start, n), rows(bs, start, n), weights.narrow(0, start, n), d_sums,
                             need_mix ? OptionalTensor(sums) : c10::nullopt,
                             need_weights ? OptionalTensor(d_weights.narrow(0, start, n)) : c10::nullopt,
                             optional_rows(d_xs, start, n), optional_rows(d_bs, start, n));
    if (need_mix) d_mix.part(mix).addmm_(g.t(), sums.view({n * m, s.channels_in}));
  });
  return with_block_grads({need_weights ? OptionalTensor(d_weights) : c10::nullopt, d_mix.total(mix)}, d_xs, d_bs);
}

}  // namespace

void bind_contractions(pybind11::module& module) {
  using pybind11::arg;
  module.def("kernel_contraction", &kernel_contraction,
             "[groups E, C, m] messages of the full kernel, chunk by chunk (kernel.py's _KernelContraction.forward)",
             arg("hidden"), arg("weight"), arg("bias"), arg("xs"), arg("bs"), arg("m"), arg("chunk"),
             arg("groups") = 1);
  module.def("kernel_contraction_backward", &kernel_contraction_backward,
             "[d_hidden, d_weight, d_bias, *d_xs, *d_bs] of kernel_contraction (None where not needed)", arg("grad"),
             arg("hidden"), arg("weight"), arg("bias"), arg("xs"), arg("bs"), arg("m"), arg("chunk"), arg("groups"),
             arg("need_hidden"), arg("need_weight"), arg("need_bias"), arg("need_x"), arg("need_b"));
  module.def("depthwise_contraction", &depthwise_contraction,
             "[E, m, C] messages of the depthwise kernel, chunk by chunk (kernel.py's _DepthwiseContraction.forward)",
             arg("weights"), arg("mix"), arg("xs"), arg("bs"), arg("m"), arg("chunk"));
  module.def("depthwise_contraction_backward", &depthwise_contraction_backward,
             "[d_weights, d_mix, *d_xs, *d_bs] of depthwise_contraction (None where not needed)", arg("grad"),
             arg("weights"), arg("mix"), arg("xs"), arg("bs"), arg("m"), arg("chunk"), arg("need_weights"),
             arg("need_mix"), arg("need_x"), arg("need_b"));
}
