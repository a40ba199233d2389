// Device helpers shared by the SIMT (kernels/cuda/simt) and tensor-core (kernels/cuda/mma) kernels
// of sagan::self_attn: the accumulate type of each storage type, conversions between them, warp
// reductions and the exponential of the softmax. Small and generic on purpose; free of torch headers.
//
// Softmax base: float kernels (float32, and float16/bfloat16 which compute in float32) work in base 2:
// scores are multiplied by scale * log2(e) and exponentiated with exp2f (one MUFU.EX2 and no range
// reduction); float64 kernels work in base e with exp. ExpBase<Acc> holds the conversions, so the saved
// log-sum-exp is always in natural units (what the CPU kernels and the reference store).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace sagan::kernels::cuda {

__host__ __device__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Accumulate (compute) type of a storage type: float64 computes in float64, everything else in float32.
template <typename T>
struct AccumulateType {
  using type = float;
};
template <>
struct AccumulateType<double> {
  using type = double;
};
template <typename T>
using acc_t = typename AccumulateType<T>::type;

// convert<To>(v): float16/bfloat16 <-> float32 (round to nearest even), float32 <-> float64.
template <typename To>
struct Convert;
template <>
struct Convert<float> {
  __device__ __forceinline__ static float from(float v) { return v; }
  __device__ __forceinline__ static float from(double v) { return static_cast<float>(v); }
  __device__ __forceinline__ static float from(__half v) { return __half2float(v); }
  __device__ __forceinline__ static float from(__nv_bfloat16 v) { return __bfloat162float(v); }
};
template <>
struct Convert<double> {
  __device__ __forceinline__ static double from(double v) { return v; }
  __device__ __forceinline__ static double from(float v) { return static_cast<double>(v); }
};
template <>
struct Convert<__half> {
  __device__ __forceinline__ static __half from(float v) { return __float2half_rn(v); }
};
template <>
struct Convert<__nv_bfloat16> {
  __device__ __forceinline__ static __nv_bfloat16 from(float v) { return __float2bfloat16_rn(v); }
};
template <typename To, typename From>
__device__ __forceinline__ To convert(From v) {
  return Convert<To>::from(v);
}

__device__ __forceinline__ float fma_acc(float a, float b, float c) { return fmaf(a, b, c); }
__device__ __forceinline__ double fma_acc(double a, double b, double c) { return fma(a, b, c); }

// Maximum that ignores NaN (fmax): a NaN score still makes its row NaN through exp(NaN) in the sum.
__device__ __forceinline__ float max_acc(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double max_acc(double a, double b) { return fmax(a, b); }

template <typename Acc>
__device__ __forceinline__ Acc neg_inf();
template <>
__device__ __forceinline__ float neg_inf<float>() { return __int_as_float(0xff800000u); }
template <>
__device__ __forceinline__ double neg_inf<double>() {
  return __longlong_as_double(static_cast<long long>(0xfff0000000000000ull));
}

// Butterfly reductions over groups of Width consecutive lanes (Width a power of two <= 32); every lane
// of the warp must call them, and every lane of a group receives the group's result.
template <int Width, typename V>
__device__ __forceinline__ V warp_allreduce_max(V v) {
  static_assert(Width >= 1 && Width <= 32 && (Width & (Width - 1)) == 0, "Width: power of two <= 32");
#pragma unroll
  for (int m = Width / 2; m >= 1; m /= 2) v = max_acc(v, __shfl_xor_sync(0xffffffffu, v, m));
  return v;
}
template <int Width, typename V>
__device__ __forceinline__ V warp_allreduce_sum(V v) {
  static_assert(Width >= 1 && Width <= 32 && (Width & (Width - 1)) == 0, "Width: power of two <= 32");
#pragma unroll
  for (int m = Width / 2; m >= 1; m /= 2) v += __shfl_xor_sync(0xffffffffu, v, m);
  return v;
}

// The softmax exponential and its base (see the top of this file). For scores s in natural units:
//   p = ExpBase<Acc>::exp(s * kFromNatural - shift),  lse = (shift + ExpBase<Acc>::log(l)) * kToNatural.
template <typename Acc>
struct ExpBase;
template <>
struct ExpBase<float> {
  static constexpr double kFromNatural = 1.4426950408889634074;  // log2(e)
  static constexpr double kToNatural = 0.69314718055994530942;   // ln(2)
  __device__ __forceinline__ static float exp(float x) { return exp2f(x); }
  __device__ __forceinline__ static double log(double x) { return ::log2(x); }
};
template <>
struct ExpBase<double> {
  static constexpr double kFromNatural = 1.0;
  static constexpr double kToNatural = 1.0;
  __device__ __forceinline__ static double exp(double x) { return ::exp(x); }
  __device__ __forceinline__ static double log(double x) { return ::log(x); }
};

// The saved float64 log-sum-exp (natural units) in the kernel's base, split into hi + lo of the
// accumulate type: p = exp((s - hi) - lo) then loses nothing to the rounding of a large lse
// (ulp(2e3) in float32 is 1.2e-4; hi + lo carries ~48 bits). For float64, lo == 0.
template <typename Acc>
__device__ __forceinline__ void split_lse(double lse, Acc& hi, Acc& lo) {
  const double v = lse * ExpBase<Acc>::kFromNatural;
  hi = static_cast<Acc>(v);
  lo = static_cast<Acc>(v - static_cast<double>(hi));
}

}  // namespace sagan::kernels::cuda
