// The CPU's float32 multiply-add peak, measured: every thread runs independent chains of vector FMAs on
// registers alone (no memory traffic), as wide as the CPU's best instruction set (AVX-512, AVX2 + FMA,
// else SSE multiplies and adds) or the one asked for, for about half a second. The roofline
// bench/cpu_kernels.py sets the kernels' GFLOP/s against, beside torch.mm's, in the instruction set the
// kernels run (their AVX2 build's peak is not the AVX-512 one on every CPU). Built and run by
// bench/cpu_kernels.py:
//   c++ -O3 -pthread bench/fma_peak.cpp -o fma_peak && ./fma_peak <threads> [avx512|avx2|sse]
// prints "<GFLOP/s> <instruction set>"; exits with 2, saying why, for an instruction set the CPU lacks.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

namespace {

constexpr int kChains = 12;  // more independent chains than FMA latency x pipes on any current x86 core

template <int Bytes>
struct Vec;
template <>
struct Vec<16> { typedef float type __attribute__((vector_size(16))); };
template <>
struct Vec<32> { typedef float type __attribute__((vector_size(32))); };
template <>
struct Vec<64> { typedef float type __attribute__((vector_size(64))); };

// Returns a value that depends on every chain, so that the compiler keeps them all.
template <int Bytes>
__attribute__((always_inline)) inline float chains(long iters) {
  typedef typename Vec<Bytes>::type V;
  V acc[kChains];
  const V b = V{} + 0.999f, c = V{} + 0.001f;
  for (int i = 0; i < kChains; ++i) acc[i] = V{} + static_cast<float>(i);
  for (long it = 0; it < iters; ++it)
#pragma GCC unroll 12
    for (int i = 0; i < kChains; ++i) acc[i] = acc[i] * b + c;
  float s = 0.0f;
  for (int i = 0; i < kChains; ++i) s += acc[i][0];
  return s;
}

#if defined(__x86_64__)
__attribute__((target("avx512f"))) float chains_avx512(long iters) { return chains<64>(iters); }
__attribute__((target("avx2,fma"))) float chains_avx2(long iters) { return chains<32>(iters); }
#endif
float chains_base(long iters) { return chains<16>(iters); }

}  // namespace

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 1;
  const char* want = argc > 2 ? argv[2] : nullptr;  // null: the best the CPU has
  if (threads < 1 || (want != nullptr && std::strcmp(want, "avx512") != 0 && std::strcmp(want, "avx2") != 0 &&
                      std::strcmp(want, "sse") != 0)) {
    std::fprintf(stderr, "usage: fma_peak <threads >= 1> [avx512|avx2|sse]\n");
    return 2;
  }
  float (*fn)(long) = chains_base;
  const char* isa = "sse";
  int lanes = 4;
#if defined(__x86_64__)
  const bool has_avx512 = __builtin_cpu_supports("avx512f");
  const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (has_avx512 && (want == nullptr || std::strcmp(want, "avx512") == 0)) {
    fn = chains_avx512, isa = "avx512", lanes = 16;
  } else if (has_avx2 && (want == nullptr || std::strcmp(want, "avx2") == 0)) {
    fn = chains_avx2, isa = "avx2", lanes = 8;
  }
#endif
  if (want != nullptr && std::strcmp(want, isa) != 0) {
    std::fprintf(stderr, "fma_peak: this CPU has no %s\n", want);
    return 2;
  }
  const long iters = 2000000000L / lanes;  // 48 GFLOP a thread: about half a second with AVX-512 or AVX2
  fn(iters / 20);                             // wake the cores up
  std::vector<std::thread> pool;
  std::vector<float> sink(threads);
  const auto t0 = std::chrono::steady_clock::now();
  for (int t = 0; t < threads; ++t) pool.emplace_back([&, t] { sink[t] = fn(iters); });
  for (auto& th : pool) th.join();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double flops = 2.0 * threads * iters * kChains * lanes;
  std::printf("%.1f %s\n", flops / s / 1e9, isa);
  return sink[0] == 12345.0f ? 1 : 0;  // never: keeps the chains' results used
}
