// Where the CPU forward's time goes: the library's own instantiation file of one instruction set, built
// here with SAGAN_CPU_PHASE defined (kernels/cpu/self_attn_cpu_kernel.h), so that every (query tile,
// key tile) step adds the time of its phases to one counter each: the scores (f'^T g), the running
// maximum, the exps with their sums, the value product (h p^T, with the rescale). What is left of the
// whole call is the rest: the tile copies and the final normalisation. One thread (the ParallelFor
// below runs the work items in turn), float32, steady_clock (a few tens of ns per call, 5 calls per step
// of some 13 us at (B, Cqk, Cv, N) = (4, 8, 64, 4096): about 1%). Built and run by bench/cpu_kernels.py:
//   c++ -std=c++20 -O3 -ffp-contract=fast -I. -DSAGAN_PHASES_ISA=<0 default, 2 avx2, 3 avx512>
//       bench/cpu_phases.cpp -o cpu_phases && ./cpu_phases <B> <Cqk> <Cv> <N> <calls>
// prints the fastest call's "<total ns> <scores ns> <max ns> <exp ns> <values ns>".
//
// Built with -DSAGAN_PHASES_COUNT=1 instead, it counts rather than times, under valgrind's callgrind
// (bench/cpu_instructions.py): `valgrind --tool=callgrind --instr-atstart=no --collect-atstart=no
// ./cpu_phases <B> <Cqk> <Cv> <N> <phase>` starts callgrind's instrumentation (and its simulated caches,
// cold) at the one call it makes, and collects events only within one phase, on entering it and off on
// leaving it at every step (phase 1-4: scores, max, exp, values), or over the whole call (phase 0).
// Instruction counts so taken are the same on any x86-64 CPU for the same binary. So are the simulated
// cache misses: the call runs on a stack frame at the same address modulo 4 KiB (the span of the
// simulated L1's sets) wherever the stack starts, which is below the program's path and environment.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <vector>

#ifndef SAGAN_PHASES_COUNT
#define SAGAN_PHASES_COUNT 0
#endif
#if SAGAN_PHASES_COUNT
#include <alloca.h>
#include <valgrind/callgrind.h>
#endif

namespace sagan_phases {
#if SAGAN_PHASES_COUNT
// The phase whose events callgrind collects (0: the whole call, toggled around it in main).
int counted = 0;
inline void mark(int phase) {
  if (counted > 0 && (phase == counted - 1 || phase == counted)) CALLGRIND_TOGGLE_COLLECT;
}
#else
// Nanoseconds per phase (indexed by ForwardPhase), and the end of the last one.
int64_t ns[5];
std::chrono::steady_clock::time_point last;
inline void mark(int phase) {
  const auto now = std::chrono::steady_clock::now();
  if (phase > 0) ns[phase] += std::chrono::duration_cast<std::chrono::nanoseconds>(now - last).count();
  last = now;
}
#endif
}  // namespace sagan_phases
#define SAGAN_CPU_PHASE(phase) ::sagan_phases::mark(static_cast<int>(phase))

#if SAGAN_PHASES_ISA == 3
#include "kernels/cpu/instantiations/self_attn_cpu_avx512.cpp"
namespace isa = sagan::kernels::cpu::isa_avx512;
#elif SAGAN_PHASES_ISA == 2
#include "kernels/cpu/instantiations/self_attn_cpu_avx2.cpp"
namespace isa = sagan::kernels::cpu::isa_avx2;
#else
#include "kernels/cpu/instantiations/self_attn_cpu_default.cpp"
namespace isa = sagan::kernels::cpu::isa_default;
#endif

static void run_one_thread(int64_t n, const std::function<void(int64_t, int64_t)>& body) { body(0, n); }

#if SAGAN_PHASES_COUNT
// The counted call, with its parameters and gamma copied into its own frame, which main places.
[[gnu::noinline]] static void counted_call(sagan::kernels::SelfAttnFwdParams p, float gamma, int phase) {
  p.gamma = &gamma;
  const sagan::kernels::ParallelFor one_thread = run_one_thread;
  sagan_phases::counted = phase;
  CALLGRIND_START_INSTRUMENTATION;
  if (phase == 0) CALLGRIND_TOGGLE_COLLECT;
  isa::self_attn_fwd_impl<float>(p, one_thread);
  if (phase == 0) CALLGRIND_TOGGLE_COLLECT;
}
#endif

int main(int argc, char** argv) {
#if SAGAN_PHASES_COUNT
  const char* last_arg = "phase";
#else
  const char* last_arg = "calls";
#endif
  if (argc != 6) {
    std::fprintf(stderr, "usage: cpu_phases <B> <Cqk> <Cv> <N> <%s>\n", last_arg);
    return 2;
  }
  const int64_t B = std::atoll(argv[1]), Cqk = std::atoll(argv[2]), Cv = std::atoll(argv[3]),
                N = std::atoll(argv[4]);
  const int last = std::atoi(argv[5]);
  if (B < 1 || Cqk < 1 || Cv < 1 || N < 1 || last < (SAGAN_PHASES_COUNT ? 0 : 1) ||
      last > (SAGAN_PHASES_COUNT ? 4 : 1 << 30)) {
    std::fprintf(stderr, "cpu_phases: every size must be >= 1, and %s\n",
                 SAGAN_PHASES_COUNT ? "the phase 0 (the whole call) to 4" : "the number of calls >= 1");
    return 2;
  }
  std::mt19937 rng(0);
  std::normal_distribution<float> normal;
  std::vector<float> f(B * Cqk * N), g(B * Cqk * N), h(B * Cv * N), x(B * Cv * N), y(B * Cv * N), o(B * Cv * N);
  for (auto* t : {&f, &g, &h, &x})
    for (float& v : *t) v = normal(rng);
  std::vector<double> lse(B * N);
  const float gamma = 0.5f;
  sagan::kernels::SelfAttnFwdParams p;
  p.B = B, p.Cqk = Cqk, p.Cv = Cv, p.Nq = N, p.Nk = N;
  p.f = f.data(), p.f_sb = Cqk * N, p.f_sc = N;
  p.g = g.data(), p.g_sb = Cqk * N, p.g_sc = N;
  p.h = h.data(), p.h_sb = Cv * N, p.h_sc = N;
  p.x = x.data(), p.x_sb = Cv * N, p.x_sc = N;
  p.gamma = &gamma, p.y = y.data(), p.o = o.data(), p.lse = lse.data(), p.scale = 1.0;
#if SAGAN_PHASES_COUNT
  // Moves the stack pointer down to the same address modulo 4 KiB, whatever main's frame's address is
  // (the frame address and the size asked for are multiples of 16, which alloca keeps).
  const auto frame = reinterpret_cast<uintptr_t>(__builtin_frame_address(0));
  volatile char* pad = static_cast<char*>(alloca(frame % 4096 + 64));
  pad[0] = 0;
  counted_call(p, gamma, last);
  std::printf("%g\n", static_cast<double>(o[0]));  // the output is used
#else
  const sagan::kernels::ParallelFor one_thread = run_one_thread;
  const int calls = last;
  int64_t best[5] = {0, 0, 0, 0, 0};
  for (int c = 0; c < calls; ++c) {
    for (int64_t& v : sagan_phases::ns) v = 0;
    const auto t0 = std::chrono::steady_clock::now();
    isa::self_attn_fwd_impl<float>(p, one_thread);
    const int64_t total =
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count();
    if (c == 0 || total < best[0]) {
      best[0] = total;
      for (int i = 1; i < 5; ++i) best[i] = sagan_phases::ns[i];
    }
  }
  std::printf("%lld %lld %lld %lld %lld\n", static_cast<long long>(best[0]), static_cast<long long>(best[1]),
              static_cast<long long>(best[2]), static_cast<long long>(best[3]), static_cast<long long>(best[4]));
#endif
  return 0;
}
