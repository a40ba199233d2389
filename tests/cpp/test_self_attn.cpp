// GoogleTest suite of the sagan ops through the C++ API (the dispatcher, as LibTorch programs call
// them): forward, backward and double backward against the ATen reference of csrc/reference, the
// meta kernels, and bad inputs.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>
#include <tuple>
#include <vector>

#include "csrc/reference/self_attn_reference.h"
#include "csrc/sagan_attn.h"

namespace {

struct Shape {
  int64_t B, Cqk, Cv, Nq, Nk;
};

std::string name_of(const Shape& s) {
  return "B" + std::to_string(s.B) + "_Cqk" + std::to_string(s.Cqk) + "_Cv" + std::to_string(s.Cv) +
         "_Nq" + std::to_string(s.Nq) + "_Nk" + std::to_string(s.Nk);
}

struct Inputs {
  torch::Tensor f, g, h, x, gamma;
};

Inputs make_inputs(const Shape& s, torch::ScalarType dtype, bool requires_grad) {
  auto opts = torch::TensorOptions().dtype(dtype).requires_grad(requires_grad);
  return {torch::randn({s.B, s.Cqk, s.Nq}, opts), torch::randn({s.B, s.Cqk, s.Nk}, opts),
          torch::randn({s.B, s.Cv, s.Nk}, opts), torch::randn({s.B, s.Cv, s.Nq}, opts),
          torch::full({1}, 0.75, opts)};
}

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>();
}

double max_abs(const torch::Tensor& a) { return a.to(torch::kDouble).abs().max().item<double>(); }

// N prime and not a multiple of the 64 x 128 tiles, Nk != Nq both ways, Cqk = 1 and odd Cv.
const std::vector<Shape> kShapes = {
    {1, 1, 1, 1, 1},     {2, 8, 64, 97, 97},   {1, 3, 5, 130, 257}, {2, 10, 33, 200, 50},
    {1, 12, 96, 64, 1025}, {3, 20, 130, 129, 128},
};

class SelfAttnShapes : public ::testing::TestWithParam<Shape> {};

// The fused forward in float64 against the ATen reference in float64: both are exact up to
// float64 rounding of sums of at most Nk * (Cqk + Cv) terms, so 1e-10 relative is ample.
TEST_P(SelfAttnShapes, ForwardMatchesReferenceFloat64) {
  torch::manual_seed(0);
  const Shape s = GetParam();
  auto in = make_inputs(s, torch::kDouble, false);
  for (bool with_x : {true, false}) {
    std::optional<torch::Tensor> x;
    if (with_x) x = in.x;
    auto [y, o, lse] = sagan::self_attn_fwd(in.f, in.g, in.h, x, in.gamma, 0.9);
    auto [y_ref, o_ref, lse_ref] = sagan::reference::self_attn_forward(in.f, in.g, in.h, x, in.gamma, 0.9);
    EXPECT_LE(max_abs_diff(y, y_ref), 1e-10 * (1 + max_abs(y_ref))) << name_of(s);
    EXPECT_LE(max_abs_diff(o, o_ref), 1e-10 * (1 + max_abs(o_ref))) << name_of(s);
    EXPECT_LE(max_abs_diff(lse, lse_ref), 1e-10 * (1 + max_abs(lse_ref))) << name_of(s);
    EXPECT_TRUE(torch::allclose(sagan::self_attn(in.f, in.g, in.h, x, in.gamma, 0.9), y, 0, 0));
  }
}

// float32 against the float64 reference: the kernel accumulates in float32 over Cqk (scores) and
// Nk (outputs) terms of unit-scale inputs; 1e-4 relative to the output scale leaves ~100 ulp of
// headroom over what 1000-term float32 sums produce, and fails on any indexing or masking error.
TEST_P(SelfAttnShapes, ForwardMatchesReferenceFloat32) {
  torch::manual_seed(1);
  const Shape s = GetParam();
  auto in = make_inputs(s, torch::kDouble, false);
  auto y_ref = std::get<0>(sagan::reference::self_attn_forward(in.f, in.g, in.h, in.x, in.gamma, 1.0));
  auto y = sagan::self_attn(in.f.to(torch::kFloat), in.g.to(torch::kFloat), in.h.to(torch::kFloat),
                            in.x.to(torch::kFloat), in.gamma.to(torch::kFloat), 1.0);
  EXPECT_EQ(y.scalar_type(), torch::kFloat);
  EXPECT_LE(max_abs_diff(y, y_ref), 1e-4 * (1 + max_abs(y_ref))) << name_of(s);
}

// Gradients through the C++ autograd (fused backward kernel) against the closed-form reference
// gradients, and those against autograd through the reference forward (validating the oracle).
TEST_P(SelfAttnShapes, BackwardMatchesReferenceFloat64) {
  torch::manual_seed(2);
  const Shape s = GetParam();
  auto in = make_inputs(s, torch::kDouble, true);
  std::vector<torch::Tensor> inputs = {in.f, in.g, in.h, in.x, in.gamma};
  auto y = sagan::self_attn(in.f, in.g, in.h, in.x, in.gamma, 1.1);
  auto dy = torch::randn_like(y);
  auto grads = torch::autograd::grad({y}, inputs, {dy});

  torch::NoGradGuard no_grad;
  auto [rf, rg, rh, rgamma] = sagan::reference::self_attn_backward(dy, in.f, in.g, in.h, in.gamma, 1.1);
  std::vector<torch::Tensor> ref = {rf, rg, rh, dy, rgamma};
  const char* names[] = {"f", "g", "h", "x", "gamma"};
  for (size_t i = 0; i < ref.size(); ++i) {
    EXPECT_EQ(grads[i].sizes(), inputs[i].sizes()) << names[i];
    EXPECT_LE(max_abs_diff(grads[i], ref[i]), 1e-10 * (1 + max_abs(ref[i])))
        << "grad " << names[i] << " " << name_of(s);
  }
}

INSTANTIATE_TEST_SUITE_P(Awkward, SelfAttnShapes, ::testing::ValuesIn(kShapes),
                         [](const auto& info) { return name_of(info.param); });

TEST(SelfAttnReference, ClosedFormGradientsMatchAutograd) {
  torch::manual_seed(3);
  auto in = make_inputs({2, 3, 7, 11, 13}, torch::kDouble, true);
  std::vector<torch::Tensor> inputs = {in.f, in.g, in.h, in.gamma};
  auto y = std::get<0>(sagan::reference::self_attn_forward(in.f, in.g, in.h, std::nullopt, in.gamma, 0.7));
  auto dy = torch::randn_like(y);
  auto auto_grads = torch::autograd::grad({y}, inputs, {dy});
  auto [rf, rg, rh, rgamma] = sagan::reference::self_attn_backward(dy, in.f, in.g, in.h, in.gamma, 0.7);
  std::vector<torch::Tensor> closed = {rf, rg, rh, rgamma};
  for (size_t i = 0; i < closed.size(); ++i)
    EXPECT_LE(max_abs_diff(auto_grads[i], closed[i]), 1e-12 * (1 + max_abs(closed[i]))) << i;
}

// SAGAN starts with gamma = 0: y = x, yet d gamma = sum dy * o must not vanish.
TEST(SelfAttn, GammaZeroStillHasGammaGradient) {
  torch::manual_seed(4);
  auto in = make_inputs({2, 4, 16, 33, 33}, torch::kDouble, true);
  auto gamma = torch::zeros({1}, torch::dtype(torch::kDouble).requires_grad(true));
  auto y = sagan::self_attn(in.f, in.g, in.h, in.x, gamma, 1.0);
  EXPECT_TRUE(torch::equal(y, in.x));
  auto dy = torch::randn_like(y);
  auto grads = torch::autograd::grad({y}, {gamma, in.f}, {dy});
  auto o = std::get<1>(sagan::reference::self_attn_forward(in.f, in.g, in.h, in.x, gamma, 1.0));
  const double expected = (dy * o).sum().item<double>();
  EXPECT_NEAR(grads[0].item<double>(), expected, 1e-10 * (1 + std::abs(expected)));
  EXPECT_NE(grads[0].item<double>(), 0.0);
  EXPECT_EQ(max_abs(grads[1]), 0.0);  // df = gamma * ... = 0
}

// create_graph=True takes the composite path; its second derivatives must equal those of the
// reference forward differentiated twice by autograd (a gradient penalty, as in WGAN-GP / R1).
TEST(SelfAttn, DoubleBackwardMatchesReference) {
  torch::manual_seed(5);
  auto in = make_inputs({2, 3, 6, 17, 9}, torch::kDouble, true);
  std::vector<torch::Tensor> inputs = {in.f, in.g, in.h, in.x, in.gamma};
  auto penalty = [&](bool fused) {
    torch::Tensor y = fused ? sagan::self_attn(in.f, in.g, in.h, in.x, in.gamma, 1.0)
                            : std::get<0>(sagan::reference::self_attn_forward(in.f, in.g, in.h, in.x, in.gamma, 1.0));
    auto grads = torch::autograd::grad({(y * y).sum()}, {in.f, in.g, in.h}, {}, true, true);
    auto p = grads[0].pow(2).sum() + grads[1].pow(2).sum() + grads[2].pow(2).sum();
    return torch::autograd::grad({p}, inputs);
  };
  auto fused = penalty(true);
  auto ref = penalty(false);
  for (size_t i = 0; i < ref.size(); ++i)
    EXPECT_LE(max_abs_diff(fused[i], ref[i]), 1e-9 * (1 + max_abs(ref[i]))) << i;
}

TEST(SelfAttn, MetaKernelsGiveShapesAndDtypes) {
  auto opts = torch::TensorOptions().device(torch::kMeta).dtype(torch::kBFloat16);
  auto f = torch::empty({2, 8, 100}, opts), g = torch::empty({2, 8, 25}, opts);
  auto h = torch::empty({2, 64, 25}, opts), gamma = torch::empty({}, opts);
  auto [y, o, lse] = sagan::self_attn_fwd(f, g, h, std::nullopt, gamma, 1.0);
  EXPECT_EQ(y.sizes(), torch::IntArrayRef({2, 64, 100}));
  EXPECT_EQ(o.sizes(), torch::IntArrayRef({2, 64, 100}));
  EXPECT_EQ(lse.sizes(), torch::IntArrayRef({2, 100}));
  EXPECT_EQ(lse.scalar_type(), torch::kDouble);
  EXPECT_EQ(y.device().type(), torch::kMeta);
  auto [df, dg, dh, dgamma] = sagan::self_attn_backward(y, f, g, h, o, lse, gamma, 1.0);
  EXPECT_EQ(df.sizes(), f.sizes());
  EXPECT_EQ(dg.sizes(), g.sizes());
  EXPECT_EQ(dh.sizes(), h.sizes());
  EXPECT_EQ(dgamma.sizes(), gamma.sizes());
}

// Non-contiguous inputs: channel slices of one tensor (as a fused f/g/h conv gives) and an x whose
// last dimension is strided; the kernels must read them in place and agree with contiguous copies.
TEST(SelfAttn, NonContiguousInputs) {
  torch::manual_seed(6);
  auto fgh = torch::randn({2, 4 + 4 + 24, 77}, torch::kFloat);
  auto f = fgh.narrow(1, 0, 4), g = fgh.narrow(1, 4, 4), h = fgh.narrow(1, 8, 24);
  auto x = torch::randn({2, 77, 24}, torch::kFloat).transpose(1, 2);
  auto gamma = torch::full({}, 0.3);
  auto y = sagan::self_attn(f, g, h, x, gamma, 1.0);
  auto y_contig = sagan::self_attn(f.contiguous(), g.contiguous(), h.contiguous(), x.contiguous(), gamma, 1.0);
  EXPECT_TRUE(torch::equal(y, y_contig));
}

struct BadCase {
  std::string name;
  std::function<void()> call;
  std::string message;
};

TEST(SelfAttn, BadInputsThrowNamingTheArgument) {
  auto f = torch::randn({2, 8, 10}), g = torch::randn({2, 8, 12}), h = torch::randn({2, 16, 12});
  auto x = torch::randn({2, 16, 10}), gamma = torch::zeros({1});
  const std::vector<BadCase> cases = {
      {"f rank", [&] { sagan::self_attn(f[0], g, h, x, gamma); }, "f must be 3-D"},
      {"g batch", [&] { sagan::self_attn(f, g.narrow(0, 0, 1), h, x, gamma); }, "g must have shape (B, Cqk, Nk) = (2, 8, *)"},
      {"g channels", [&] { sagan::self_attn(f, torch::randn({2, 4, 12}), h, x, gamma); }, "g must have shape"},
      {"h keys", [&] { sagan::self_attn(f, g, torch::randn({2, 16, 11}), x, gamma); }, "h must have shape (B, Cv, Nk) = (2, *, 12)"},
      {"x shape", [&] { sagan::self_attn(f, g, h, torch::randn({2, 15, 10}), gamma); }, "x must have shape (B, Cv, Nq) = (2, 16, 10)"},
      {"gamma numel", [&] { sagan::self_attn(f, g, h, x, torch::zeros({2})); }, "gamma must have exactly one element"},
      {"h dtype", [&] { sagan::self_attn(f, g, h.to(torch::kDouble), x, gamma); }, "h must have dtype Float"},
      {"int dtype", [&] { sagan::self_attn(f.to(torch::kLong), g.to(torch::kLong), h.to(torch::kLong), std::nullopt, gamma.to(torch::kLong)); }, "f must have a floating dtype"},
      {"empty", [&] { sagan::self_attn(torch::randn({2, 8, 0}), g, h, std::nullopt, gamma); }, "f is empty"},
      {"scale", [&] { sagan::self_attn(f, g, h, x, gamma, std::nan("")); }, "scale must be finite"},
      {"scale beyond float32", [&] { sagan::self_attn(f, g, h, x, gamma, 1e39); }, "scale must satisfy |scale| <= 2.3586"},
      {"sparse h", [&] { sagan::self_attn(f, g, h.to_sparse(), x, gamma); }, "h must be a dense (strided) tensor"},
      {"nested f", [&] {
         sagan::self_attn(at::_nested_tensor_from_tensor_list({torch::randn({8, 10}), torch::randn({8, 11})}), g, h, x, gamma);
       }, "f is a nested tensor"},
  };
  for (const auto& c : cases) {
    try {
      c.call();
      ADD_FAILURE() << c.name << ": no error";
    } catch (const c10::Error& e) {
      EXPECT_NE(std::string(e.what()).find(c.message), std::string::npos)
          << c.name << ": message was " << e.what_without_backtrace();
    }
  }
}

// Keys whose logits are -inf over the whole first CPU key tile (128 keys) get weight 0: the online
// softmax used to compute exp(-inf - -inf) = NaN there. Forward and backward against the reference.
TEST(SelfAttn, NegInfLogitsOverTheFirstKeyTile) {
  for (auto dtype : {torch::kFloat, torch::kDouble}) {
    auto opts = torch::TensorOptions().dtype(torch::kDouble);
    auto f = torch::randn({1, 2, 70}, opts), g = torch::randn({1, 2, 300}, opts);
    f.select(1, 0).fill_(1.0);
    g.select(1, 0).fill_(0.0);
    g.select(1, 0).narrow(1, 0, 128).fill_(-INFINITY);
    auto h = torch::randn({1, 5, 300}, opts), gamma = torch::full({1}, 0.5, opts);
    std::vector<torch::Tensor> in = {f, g, h, gamma};
    for (auto& t : in) t = t.to(dtype).requires_grad_(true);
    auto y = sagan::self_attn(in[0], in[1], in[2], std::nullopt, in[3]);
    auto dy = torch::randn_like(y);
    auto grads = torch::autograd::grad({y}, {in[2], in[3]}, {dy});
    auto y_ref = std::get<0>(sagan::reference::self_attn_forward(f, g, h, std::nullopt, gamma, 1.0));
    auto [rf, rg, rh, rgamma] =
        sagan::reference::self_attn_backward(dy.to(torch::kDouble), f, g, h, gamma, 1.0);
    std::vector<torch::Tensor> grads_ref = {rh, rgamma};
    const double tol = dtype == torch::kDouble ? 1e-10 : 2e-5;
    ASSERT_TRUE(torch::isfinite(y).all().item<bool>());
    EXPECT_LE(max_abs_diff(y, y_ref), tol * max_abs(y_ref));
    for (int k = 0; k < 2; ++k) {
      ASSERT_TRUE(torch::isfinite(grads[k]).all().item<bool>()) << "grad " << k;
      EXPECT_LE(max_abs_diff(grads[k], grads_ref[k]), tol * (1 + max_abs(grads_ref[k]))) << "grad " << k;
    }
  }
}

}  // namespace
