// The CPU double-backward kernels built for the baseline instruction set of the target (SSE2 on x86-64).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

#include "kernels/cpu/self_attn_cpu_isa.h"

namespace sagan::kernels::cpu::isa_default {
#define SAGAN_CPU_VEC_BYTES SAGAN_CPU_VEC_BYTES_DEFAULT
#include "kernels/cpu/self_attn_cpu_kernel.h"
#include "kernels/cpu/self_attn_cpu_double_backward_kernel.h"
SAGAN_INSTANTIATE_CPU_DOUBLE_BACKWARD_KERNELS()
#undef SAGAN_CPU_VEC_BYTES
}  // namespace sagan::kernels::cpu::isa_default
