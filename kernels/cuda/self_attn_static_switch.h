// Runtime values -> template constants, in one place (as flash-attention's static_switch.h does), for
// the CUDA dispatch (self_attn_cuda_dispatch.cu) and the host emulation tests alike. The callbacks are
// generic lambdas: they get a std::integral_constant or a type tag and instantiate what they call.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "kernels/cuda/self_attn_cuda.h"

namespace sagan::kernels::cuda {

template <int... Cs>
struct IntList {};

template <typename T>
struct TypeTag {
  using type = T;
};

// f(std::integral_constant<int, C>{}) for the smallest C of the list with v <= C, else too_large().
template <typename F, typename G, int C, int... Rest>
auto with_smallest_at_least(IntList<C, Rest...>, int64_t v, F&& f, G&& too_large) {
  if (v <= C) return f(std::integral_constant<int, C>{});
  if constexpr (sizeof...(Rest) > 0) {
    return with_smallest_at_least(IntList<Rest...>{}, v, f, too_large);
  } else {
    return too_large();
  }
}

// f(TypeTag<T>{}) for the storage type T of dtype.
template <typename F>
auto with_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat16: return f(TypeTag<__half>{});
    case DType::kBFloat16: return f(TypeTag<__nv_bfloat16>{});
    case DType::kFloat32: return f(TypeTag<float>{});
    case DType::kFloat64: break;
  }
  return f(TypeTag<double>{});
}

}  // namespace sagan::kernels::cuda
