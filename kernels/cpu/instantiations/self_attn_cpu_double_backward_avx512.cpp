// The CPU double-backward kernels built for AVX-512 (F, VL, BW, DQ) + FMA (x86-64), chosen at run time where the CPU has them.
// Standard headers come first so that only this project's code is compiled for the wider target.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

#include "kernels/cpu/self_attn_cpu_isa.h"

#if SAGAN_CPU_HAS_AVX512_BUILD
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")
#endif

namespace sagan::kernels::cpu::isa_avx512 {
#define SAGAN_CPU_VEC_BYTES SAGAN_CPU_VEC_BYTES_AVX512
#include "kernels/cpu/self_attn_cpu_kernel.h"
#include "kernels/cpu/self_attn_cpu_double_backward_kernel.h"
SAGAN_INSTANTIATE_CPU_DOUBLE_BACKWARD_KERNELS()
#undef SAGAN_CPU_VEC_BYTES
}  // namespace sagan::kernels::cpu::isa_avx512

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif  // SAGAN_CPU_HAS_AVX512_BUILD
