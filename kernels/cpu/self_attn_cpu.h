// CPU kernels of sagan::self_attn: forward and backward entry points, dispatched at run time to the
// best instruction set this CPU has (AVX-512 or AVX2+FMA builds on x86-64 where the CPU supports them).
#pragma once

#include "kernels/self_attn_params.h"

namespace sagan::kernels::cpu {

// T is the compute type: float (also for bfloat16/float16 inputs, which the glue converts) or double.
template <typename T>
void self_attn_fwd(const SelfAttnFwdParams& params, const ParallelFor& parallel_for);

template <typename T>
void self_attn_backward(const SelfAttnBackwardParams& params, const ParallelFor& parallel_for);

// The backward's VJP (double backward), for gradient penalties (see
// self_attn_cpu_double_backward_kernel.h).
template <typename T>
void self_attn_double_backward(const SelfAttnDoubleBackwardParams& params, const ParallelFor& parallel_for);

// The instruction set the dispatcher picked on this machine ("avx512", "avx2" or "default").
const char* isa_name();

// Whether this CPU runs the build of the named instruction set ("default", "avx2" or "avx512"), by the
// dispatcher's own feature test; false for a name this build does not have. For tests that run every
// build.
bool isa_supported(const char* name);

}  // namespace sagan::kernels::cpu
