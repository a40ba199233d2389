// The CPU kernels' 2^x (exp2_nonpositive in kernels/cpu/self_attn_cpu_kernel.h: a minimax polynomial
// and, with AVX-512, vreduceps and vscalefps) against float64 exp2, in every instruction-set build this
// CPU runs: its accuracy on x <= 0, and the values the online softmax relies on (2^0 = 1, 2^-inf = 0,
// NaN kept).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cpu/self_attn_cpu.h"
#include "kernels/cpu/self_attn_cpu_isa.h"

namespace {

namespace cpu = sagan::kernels::cpu;
using ExpFn = void (*)(const float*, float*, int64_t);

std::vector<std::pair<std::string, ExpFn>> builds() {
  std::vector<std::pair<std::string, ExpFn>> out = {{"default", cpu::isa_default::exp2_nonpositive_for_tests}};
#if SAGAN_CPU_HAS_AVX2_BUILD
  if (cpu::isa_supported("avx2")) out.emplace_back("avx2", cpu::isa_avx2::exp2_nonpositive_for_tests);
#endif
#if SAGAN_CPU_HAS_AVX512_BUILD
  if (cpu::isa_supported("avx512")) out.emplace_back("avx512", cpu::isa_avx512::exp2_nonpositive_for_tests);
#endif
  return out;
}

float from_bits(uint32_t b) {
  float x;
  std::memcpy(&x, &b, sizeof(x));
  return x;
}

// Error of y against 2^x in units of the last place of the float nearest 2^x (results >= 2^-126).
double ulps(float x, float y) {
  const double ref = std::exp2(static_cast<double>(x));
  return std::fabs(static_cast<double>(y) - ref) / std::ldexp(1.0, std::ilogb(ref) - 23);
}

// Every 61st float from -0 down to -126 (the normal results; 18 million values), an odd count per call
// so that every call also takes the lane-by-lane tail. The bounds are the worst cases over every float
// in [-126, 0], measured when the polynomial was fitted, rounded up to the next 0.05: 0.7996 ulp where
// the build fuses multiply-adds (AVX2, AVX-512), 1.0794 where it rounds each multiply and add (the
// x86-64 baseline). A wrong coefficient or reduction constant costs hundreds of ulp.
double bound_ulps(const std::string& build) { return build == "default" ? 1.1 : 0.85; }

TEST(CpuExp, WithinItsUlpBoundOnNormalResults) {
  const uint32_t lo_bits = 0x80000000u, hi_bits = 0xC2FC0000u;  // -0, -126
  constexpr int64_t kChunk = (1 << 16) + 3;
  std::vector<float> x(kChunk), y(kChunk);
  for (const auto& [name, fn] : builds()) {
    double worst = 0.0;
    float worst_x = 0.0f;
    int64_t count = 0;
    for (uint64_t b = lo_bits; b <= hi_bits;) {
      int64_t n = 0;
      for (; n < kChunk && b <= hi_bits; ++n, b += 61) x[n] = from_bits(static_cast<uint32_t>(b));
      fn(x.data(), y.data(), n);
      for (int64_t i = 0; i < n; ++i) {
        const double e = ulps(x[i], y[i]);
        if (!(e <= worst)) {  // a NaN error lands here too, and fails below
          worst = e;
          worst_x = x[i];
        }
      }
      count += n;
    }
    std::printf("[ %s ] %lld values in [-126, 0]: worst %.3f ulp at x = %.9g\n", name.c_str(),
                static_cast<long long>(count), worst, worst_x);
    EXPECT_LE(worst, bound_ulps(name)) << name << " at x = " << worst_x;
  }
}

TEST(CpuExp, EdgeValues) {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  // 22 values: one whole register and a tail in every build.
  const std::vector<float> x = {0.0f,     -0.0f,    -inf,     nan,     -151.0f, -200.0f,      -1e30f,
                                -126.01f, -126.5f,  -126.99f, -127.0f, -137.0f, -149.0f,      -1e-30f,
                                -1e-7f,   -0.5f,    -0.49999997f, -0.50000006f, -1.5f, -10.25f, -72.1f,
                                -125.9f};
  std::vector<float> y(x.size());
  for (const auto& [name, fn] : builds()) {
    fn(x.data(), y.data(), static_cast<int64_t>(x.size()));
    EXPECT_EQ(y[0], 1.0f) << name;
    EXPECT_EQ(y[1], 1.0f) << name;
    EXPECT_EQ(y[2], 0.0f) << name << ": 2^-inf must be 0, so that masked keys weigh nothing";
    EXPECT_TRUE(std::isnan(y[3])) << name;
    for (int i = 4; i <= 6; ++i) EXPECT_EQ(y[i], 0.0f) << name << " x = " << x[i];
    // Below -126 the exact result is subnormal. AVX-512 keeps it; the other builds give 0 from -127
    // down and, between -127 and -126, a value of the wrong size: never above the smallest normal float.
    for (int i = 7; i <= 12; ++i) {
      EXPECT_GE(y[i], 0.0f) << name << " x = " << x[i];
      EXPECT_LE(y[i], std::numeric_limits<float>::min()) << name << " x = " << x[i];
    }
    for (size_t i = 13; i < x.size(); ++i) EXPECT_LE(ulps(x[i], y[i]), bound_ulps(name)) << name << " x = " << x[i];
  }
}

// 2^-k is exact for every integer k in [0, 126] (r = 0, where the polynomial is exactly 1): a row's
// maximum score always gets weight exactly 1.
TEST(CpuExp, ExactAtIntegers) {
  std::vector<float> x(127), y(127);
  for (int k = 0; k <= 126; ++k) x[k] = static_cast<float>(-k);
  for (const auto& [name, fn] : builds()) {
    fn(x.data(), y.data(), static_cast<int64_t>(x.size()));
    for (int k = 0; k <= 126; ++k) EXPECT_EQ(y[k], std::ldexp(1.0f, -k)) << name << " k = " << k;
  }
}

}  // namespace
