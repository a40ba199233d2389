// The instruction sets the CPU kernels are built for, and the one list of what each build holds.
#pragma once

#include "kernels/cpu/self_attn_cpu_traits.h"
#include "kernels/self_attn_params.h"

// AVX2 + FMA and AVX-512 builds exist on x86-64 with GCC or Clang; elsewhere only the default build.
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define SAGAN_CPU_HAS_AVX2_BUILD 1
#define SAGAN_CPU_HAS_AVX512_BUILD 1
// The intrinsics self_attn_cpu_kernel.h uses (maxps in every build's 2^x, vscalefps with AVX-512), here,
// before the instantiation files switch the target: each function is compiled for its own.
#include <immintrin.h>
#else
#define SAGAN_CPU_HAS_AVX2_BUILD 0
#define SAGAN_CPU_HAS_AVX512_BUILD 0
#endif

// Register width of each build, in bytes: the includer of self_attn_cpu_kernel.h defines
// SAGAN_CPU_VEC_BYTES to one of these.
#define SAGAN_CPU_VEC_BYTES_DEFAULT 16
#define SAGAN_CPU_VEC_BYTES_AVX2 32
#define SAGAN_CPU_VEC_BYTES_AVX512 64

// Inside namespace sagan::kernels::cpu::<isa>, after the kernel templates.
#define SAGAN_INSTANTIATE_CPU_KERNELS()                                                        \
  template void self_attn_fwd_impl<float>(const SelfAttnFwdParams&, const ParallelFor&);   \
  template void self_attn_fwd_impl<double>(const SelfAttnFwdParams&, const ParallelFor&);  \
  template void self_attn_backward_impl<float>(const SelfAttnBackwardParams&, const ParallelFor&);   \
  template void self_attn_backward_impl<double>(const SelfAttnBackwardParams&, const ParallelFor&);   \
  template void self_attn_fwd_impl<BFloat16Storage>(const SelfAttnFwdParams&, const ParallelFor&);   \
  template void self_attn_backward_impl<BFloat16Storage>(const SelfAttnBackwardParams&, const ParallelFor&); \
  void exp2_nonpositive_for_tests(const float* x, float* y, int64_t n) { /* exp2_row with no shift */     \
    std::copy(x, x + n, y);                                                                         \
    exp2_row(y, n, 0.0f, 0.0f);                                                                     \
  }

// The same, for self_attn_cpu_double_backward_kernel.h (its own instantiation files, built in parallel).
#define SAGAN_INSTANTIATE_CPU_DOUBLE_BACKWARD_KERNELS()                                             \
  template void self_attn_double_backward_impl<float>(const SelfAttnDoubleBackwardParams&, const ParallelFor&); \
  template void self_attn_double_backward_impl<double>(const SelfAttnDoubleBackwardParams&, const ParallelFor&);

namespace sagan::kernels::cpu {
#define SAGAN_DECLARE_CPU_KERNELS(isa)                                          \
  namespace isa {                                                               \
  template <typename T>                                                         \
  void self_attn_fwd_impl(const SelfAttnFwdParams&, const ParallelFor&);        \
  template <typename T>                                                         \
  void self_attn_backward_impl(const SelfAttnBackwardParams&, const ParallelFor&);        \
  template <typename T>                                                         \
  void self_attn_double_backward_impl(const SelfAttnDoubleBackwardParams&, const ParallelFor&); \
  /* The kernels' 2^x on n floats (kernels/cpu/self_attn_cpu_kernel.h), for tests/cpp/test_cpu_exp.cpp. */ \
  void exp2_nonpositive_for_tests(const float* x, float* y, int64_t n);         \
  }
SAGAN_DECLARE_CPU_KERNELS(isa_default)
#if SAGAN_CPU_HAS_AVX2_BUILD
SAGAN_DECLARE_CPU_KERNELS(isa_avx2)
#endif
#if SAGAN_CPU_HAS_AVX512_BUILD
SAGAN_DECLARE_CPU_KERNELS(isa_avx512)
#endif
#undef SAGAN_DECLARE_CPU_KERNELS
}  // namespace sagan::kernels::cpu
