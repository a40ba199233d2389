// Picks the instruction-set build of the CPU kernels once, from what this CPU supports.
#include "kernels/cpu/self_attn_cpu.h"

#include <cstdlib>
#include <cstring>

#include "kernels/cpu/self_attn_cpu_isa.h"

namespace sagan::kernels::cpu {
namespace {

enum class Isa { kDefault, kAvx2, kAvx512 };

Isa supported() {
#if SAGAN_CPU_HAS_AVX512_BUILD
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return Isa::kAvx512;
#endif
#if SAGAN_CPU_HAS_AVX2_BUILD
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
#endif
  return Isa::kDefault;
}

// The best build this CPU runs. SAGAN_ATTN_CPU_ISA=default or avx2 caps it (the tests run every build
// the machine has this way); a cap above what the CPU has changes nothing.
Isa picked() {
  static const Isa isa = [] {
    const Isa best = supported();
    const char* force = std::getenv("SAGAN_ATTN_CPU_ISA");
    if (force != nullptr && std::strcmp(force, "default") == 0) return Isa::kDefault;
    if (force != nullptr && std::strcmp(force, "avx2") == 0 && best == Isa::kAvx512) return Isa::kAvx2;
    return best;
  }();
  return isa;
}

}  // namespace

bool isa_supported(const char* name) {
  const Isa best = supported();  // each build needs every feature of the ones below it
  if (std::strcmp(name, "default") == 0) return true;
  if (std::strcmp(name, "avx2") == 0) return best == Isa::kAvx2 || best == Isa::kAvx512;
  if (std::strcmp(name, "avx512") == 0) return best == Isa::kAvx512;
  return false;
}

const char* isa_name() {
  switch (picked()) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "default";
  }
}

// Calls isa::fn<T>(args...) for the picked build.
#if SAGAN_CPU_HAS_AVX512_BUILD
#define SAGAN_CPU_CALL_AVX512(fn) \
  if (picked() == Isa::kAvx512) return isa_avx512::fn<T>(params, parallel_for);
#else
#define SAGAN_CPU_CALL_AVX512(fn)
#endif
#if SAGAN_CPU_HAS_AVX2_BUILD
#define SAGAN_CPU_CALL_AVX2(fn) \
  if (picked() == Isa::kAvx2) return isa_avx2::fn<T>(params, parallel_for);
#else
#define SAGAN_CPU_CALL_AVX2(fn)
#endif
#define SAGAN_CPU_DISPATCH(fn) \
  SAGAN_CPU_CALL_AVX512(fn) SAGAN_CPU_CALL_AVX2(fn) return isa_default::fn<T>(params, parallel_for);

template <typename T>
void self_attn_fwd(const SelfAttnFwdParams& params, const ParallelFor& parallel_for) {
  SAGAN_CPU_DISPATCH(self_attn_fwd_impl)
}

template <typename T>
void self_attn_backward(const SelfAttnBackwardParams& params, const ParallelFor& parallel_for) {
  SAGAN_CPU_DISPATCH(self_attn_backward_impl)
}

template <typename T>
void self_attn_double_backward(const SelfAttnDoubleBackwardParams& params, const ParallelFor& parallel_for) {
  SAGAN_CPU_DISPATCH(self_attn_double_backward_impl)
}

template void self_attn_fwd<float>(const SelfAttnFwdParams&, const ParallelFor&);
template void self_attn_fwd<double>(const SelfAttnFwdParams&, const ParallelFor&);
template void self_attn_backward<float>(const SelfAttnBackwardParams&, const ParallelFor&);
template void self_attn_backward<double>(const SelfAttnBackwardParams&, const ParallelFor&);
template void self_attn_fwd<BFloat16Storage>(const SelfAttnFwdParams&, const ParallelFor&);
template void self_attn_backward<BFloat16Storage>(const SelfAttnBackwardParams&, const ParallelFor&);
template void self_attn_double_backward<float>(const SelfAttnDoubleBackwardParams&, const ParallelFor&);
template void self_attn_double_backward<double>(const SelfAttnDoubleBackwardParams&, const ParallelFor&);

}  // namespace sagan::kernels::cpu
