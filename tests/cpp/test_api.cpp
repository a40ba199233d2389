// GoogleTest of the C++ API beyond the kernels' numerics (test_self_attn.cpp): build_info, the
// gamma-as-a-number overload, the fused backward op as autograd uses it, autocast from C++, and
// concurrent calls from several std::threads.
#include <gtest/gtest.h>
#include <ATen/autocast_mode.h>
#include <torch/torch.h>

#include <string>
#include <thread>
#include <vector>

#include "csrc/sagan_attn.h"

namespace {

struct Inputs {
  torch::Tensor f, g, h, x, gamma;
};

Inputs make_inputs(int64_t B, int64_t Cqk, int64_t Cv, int64_t Nq, int64_t Nk, torch::ScalarType dtype,
                   uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  auto opts = torch::TensorOptions().dtype(dtype);
  auto rnd = [&](std::vector<int64_t> shape) { return at::randn(shape, gen, opts); };
  return {rnd({B, Cqk, Nq}), rnd({B, Cqk, Nk}), rnd({B, Cv, Nk}), rnd({B, Cv, Nq}), torch::full({1}, 0.6, opts)};
}

// y and the gradients of <y, grad_y> w.r.t. f, g, h, x, gamma through sagan::self_attn (autograd).
std::vector<torch::Tensor> forward_backward(const Inputs& in, const torch::Tensor& grad_y, double scale) {
  std::vector<torch::Tensor> leaves;
  for (const auto& t : {in.f, in.g, in.h, in.x, in.gamma}) leaves.push_back(t.detach().clone().requires_grad_(true));
  auto y = sagan::self_attn(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], scale);
  std::vector<torch::Tensor> out = {y.detach()};
  for (auto& gr : torch::autograd::grad({y}, leaves, {grad_y})) out.push_back(gr);
  return out;
}

TEST(Api, BuildInfoNamesVersionTorchAndIsa) {
  const std::string info = sagan::build_info();
  for (const char* key : {"version=", "torch=", "cuda=", "cuda_archs=", "cpu_isa="}) {
    EXPECT_NE(info.find(key), std::string::npos) << key << " missing from:\n" << info;
  }
}

TEST(Api, GammaAsNumberEqualsGammaTensor) {
  auto in = make_inputs(2, 4, 8, 70, 40, torch::kFloat, 1);
  auto want = sagan::self_attn(in.f, in.g, in.h, in.x, torch::full({}, 0.6), 0.9);
  EXPECT_TRUE(torch::equal(sagan::self_attn(in.f, in.g, in.h, in.x, 0.6, 0.9), want));
  // Gradients still reach the tensors; the number is a constant. float64 inputs: gamma in float64.
  auto f = in.f.to(torch::kDouble).requires_grad_(true);
  auto y = sagan::self_attn(f, in.g.to(torch::kDouble), in.h.to(torch::kDouble), std::nullopt, 0.6);
  EXPECT_EQ(y.scalar_type(), torch::kDouble);
  y.sum().backward();
  ASSERT_TRUE(f.grad().defined());
  EXPECT_GT(f.grad().abs().max().item<double>(), 0.0);
}

// In inference mode the Autograd key is skipped: the op's composite kernel (self_attn_fwd's y) runs.
TEST(Api, InferenceModeGivesTheSameResult) {
  auto in = make_inputs(2, 4, 8, 70, 40, torch::kFloat, 4);
  auto want = sagan::self_attn(in.f, in.g, in.h, in.x, in.gamma, 0.9);
  c10::InferenceMode guard;
  auto y = sagan::self_attn(in.f, in.g, in.h, in.x, in.gamma, 0.9);
  EXPECT_TRUE(y.is_inference());
  EXPECT_TRUE(torch::equal(y, want));
}

// Autograd's backward (no create_graph) is the fused kernel on self_attn_fwd's o and lse: bitwise.
TEST(Api, FusedBackwardOpIsWhatAutogradRuns) {
  auto in = make_inputs(2, 5, 12, 97, 130, torch::kFloat, 2);
  auto grad_y = torch::randn({2, 12, 97});
  auto ad = forward_backward(in, grad_y, 0.7);
  auto [y, o, lse] = sagan::self_attn_fwd(in.f, in.g, in.h, in.x, in.gamma, 0.7);
  auto [gf, gg, gh, ggamma] = sagan::self_attn_backward(grad_y, in.f, in.g, in.h, o, lse, in.gamma, 0.7);
  EXPECT_EQ(lse.scalar_type(), torch::kDouble);
  EXPECT_TRUE(torch::equal(y, ad[0]));
  EXPECT_TRUE(torch::equal(gf, ad[1]));
  EXPECT_TRUE(torch::equal(gg, ad[2]));
  EXPECT_TRUE(torch::equal(gh, ad[3]));
  EXPECT_TRUE(torch::equal(grad_y, ad[4]));
  EXPECT_TRUE(torch::equal(ggamma, ad[5]));
}

// Autocast switched on from C++ (what torch.autocast does): the op runs in bf16 on cast inputs and
// float32 leaves get float32 gradients.
TEST(Api, CpuAutocastRunsInAutocastDtype) {
  auto in = make_inputs(2, 4, 16, 70, 130, torch::kFloat, 3);
  auto f = in.f.clone().requires_grad_(true);
  torch::Tensor y, o;
  {
    const bool was_enabled = at::autocast::is_autocast_enabled(at::kCPU);
    const auto was_dtype = at::autocast::get_autocast_dtype(at::kCPU);
    at::autocast::set_autocast_enabled(at::kCPU, true);
    at::autocast::set_autocast_dtype(at::kCPU, at::kBFloat16);
    y = sagan::self_attn(f, in.g, in.h, in.x, in.gamma, 1.0);
    o = std::get<1>(sagan::self_attn_fwd(in.f, in.g, in.h, in.x, in.gamma, 1.0));
    at::autocast::set_autocast_enabled(at::kCPU, was_enabled);
    at::autocast::set_autocast_dtype(at::kCPU, was_dtype);
    at::autocast::clear_cache();
  }
  const auto bf = [](const torch::Tensor& t) { return t.to(torch::kBFloat16); };
  auto want = sagan::self_attn(bf(in.f), bf(in.g), bf(in.h), bf(in.x), bf(in.gamma), 1.0);
  EXPECT_EQ(y.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(o.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(torch::equal(y, want));
  y.to(torch::kFloat).sum().backward();
  ASSERT_TRUE(f.grad().defined());
  EXPECT_EQ(f.grad().scalar_type(), torch::kFloat);
  // Outside autocast, mixed dtypes are an error naming the argument.
  try {
    sagan::self_attn(in.f, bf(in.g), in.h, in.x, in.gamma, 1.0);
    ADD_FAILURE() << "mixed dtypes outside autocast: no error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("g must have dtype Float like f, got BFloat16"), std::string::npos)
        << e.what_without_backtrace();
  }
}

// Several std::threads, each with its own inputs, forward and backward at once: the results of the
// same calls made one after another, bitwise (no shared mutable state, deterministic kernels).
TEST(Api, ConcurrentCallsFromThreadsMatchSerial) {
  const int kThreads = 4;
  std::vector<Inputs> inputs;
  std::vector<torch::Tensor> grads_y;
  std::vector<std::vector<torch::Tensor>> serial, concurrent(kThreads);
  const torch::ScalarType dtypes[] = {torch::kFloat, torch::kDouble, torch::kBFloat16, torch::kFloat};
  for (int k = 0; k < kThreads; ++k) {
    inputs.push_back(make_inputs(2, 4 + k, 16, 150 + 7 * k, 260 - 5 * k, dtypes[k], 10 + k));
    grads_y.push_back(torch::randn({2, 16, 150 + 7 * k}).to(dtypes[k]));
    serial.push_back(forward_backward(inputs[k], grads_y[k], 0.8));
  }
  std::vector<std::thread> threads;
  for (int k = 0; k < kThreads; ++k) {
    threads.emplace_back([&, k] {
      for (int rep = 0; rep < 3; ++rep) concurrent[k] = forward_backward(inputs[k], grads_y[k], 0.8);
    });
  }
  for (auto& t : threads) t.join();
  for (int k = 0; k < kThreads; ++k) {
    ASSERT_EQ(concurrent[k].size(), serial[k].size());
    for (size_t i = 0; i < serial[k].size(); ++i) {
      EXPECT_TRUE(torch::equal(concurrent[k][i], serial[k][i])) << "thread " << k << ", result " << i;
    }
  }
}

}  // namespace
