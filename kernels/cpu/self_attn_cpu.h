// CPU kernels of sagan::self_attn: forward and backward entry points, dispatched at run time to the
// best instruction set this CPU has (AVX-512 or AVX2+FMA builds on x86-64 where the CPU supports them).
#pragma once

#include "kernels/cpu/self_attn_cpu_traits.h"
#include "kernels/self_attn_params.h"

namespace sagan::kernels::cpu {

// T is the storage type of the tensors the kernels read and write (lse aside, float64): float, double,
// or BFloat16Storage (self_attn_cpu_traits.h), computed in float. float16 inputs are converted to float
// by the glue.
template <typename T>
void self_attn_fwd(const SelfAttnFwdParams& params, const ParallelFor& parallel_for);

template <typename T>
void self_attn_backward(const SelfAttnBackwardParams& params, const ParallelFor& parallel_for);

// The backward's VJP (double backward), for gradient penalties (see
// self_attn_cpu_double_backward_kernel.h): T float or double, bfloat16 converted by the glue.
template <typename T>
void self_attn_double_backward(const SelfAttnDoubleBackwardParams& params, const ParallelFor& parallel_for);

// The instruction set the dispatcher picked on this machine ("avx512", "avx2" or "default").
const char* isa_name();

// Whether this CPU runs the build of the named instruction set ("default", "avx2" or "avx512"), by the
// dispatcher's own feature test; false for a name this build does not have. For tests that run every
// build.
bool isa_supported(const char* name);

}  // namespace sagan::kernels::cpu
