// Picks the instruction-set build of the CPU kernels once, from what this CPU supports.
#include "kernels/cpu/self_attn_cpu.h"

#include <cstdlib>
#include <cstring>

#include "kernels/cpu/self_attn_cpu_isa.h"

namespace sagan::kernels::cpu {
namespace {

// SAGAN_ATTN_CPU_ISA=default forces the baseline build (tests run both builds this way).
bool use_avx2() {
#if SAGAN_CPU_HAS_AVX2_BUILD
  static const bool ok = [] {
    const char* force = std::getenv("SAGAN_ATTN_CPU_ISA");
    if (force != nullptr && std::strcmp(force, "default") == 0) return false;
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return ok;
#else
  return false;
#endif
}

}  // namespace

const char* isa_name() { return use_avx2() ? "avx2" : "default"; }

template <typename T>
void self_attn_fwd(const SelfAttnFwdParams& params, const ParallelFor& parallel_for) {
#if SAGAN_CPU_HAS_AVX2_BUILD
  if (use_avx2()) return isa_avx2::self_attn_fwd_impl<T>(params, parallel_for);
#endif
  isa_default::self_attn_fwd_impl<T>(params, parallel_for);
}

template <typename T>
void self_attn_bwd(const SelfAttnBwdParams& params, const ParallelFor& parallel_for) {
#if SAGAN_CPU_HAS_AVX2_BUILD
  if (use_avx2()) return isa_avx2::self_attn_bwd_impl<T>(params, parallel_for);
#endif
  isa_default::self_attn_bwd_impl<T>(params, parallel_for);
}

template <typename T>
void self_attn_double_bwd(const SelfAttnDoubleBwdParams& params, const ParallelFor& parallel_for) {
#if SAGAN_CPU_HAS_AVX2_BUILD
  if (use_avx2()) return isa_avx2::self_attn_double_bwd_impl<T>(params, parallel_for);
#endif
  isa_default::self_attn_double_bwd_impl<T>(params, parallel_for);
}

template void self_attn_fwd<float>(const SelfAttnFwdParams&, const ParallelFor&);
template void self_attn_fwd<double>(const SelfAttnFwdParams&, const ParallelFor&);
template void self_attn_bwd<float>(const SelfAttnBwdParams&, const ParallelFor&);
template void self_attn_bwd<double>(const SelfAttnBwdParams&, const ParallelFor&);
template void self_attn_double_bwd<float>(const SelfAttnDoubleBwdParams&, const ParallelFor&);
template void self_attn_double_bwd<double>(const SelfAttnDoubleBwdParams&, const ParallelFor&);

}  // namespace sagan::kernels::cpu
