// Host emulation of the few CUDA device facilities that the SIMT block bodies use (__syncthreads,
// __shfl_xor_sync, atomicAdd, bit casts), so that the kernels' block logic runs on a CPU without a GPU.
// warp_collective is the generic warp-synchronous exchange on which the tensor-core emulation
// (tests/emulation/mma) builds ldmatrix and mma.sync.
// One block runs at a time as one OS thread per CUDA thread under a cooperative scheduler: exactly one
// thread runs at any moment, and at every blocking point (barrier, warp shuffle) the next thread is
// drawn at random from the runnable ones. A missing barrier then shows up as wrong or
// schedule-dependent results; a barrier not reached by every thread aborts with "DEADLOCK". Shared
// memory starts as NaN bytes, so a read of an element never written poisons the result.
// Test-only: compiled by g++ (C++20), never by nvcc, never part of the library.
#pragma once
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <cmath>
#include <cstring>
#include <condition_variable>
#include <memory>
#include <semaphore>
#include <mutex>
#include <random>
#include <thread>
#include <vector>
#include <functional>
#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <array>
#include <cstdint>

namespace emu {
// One lane's part of a warp-collective operation: its operands (tag says which operation), and the
// result that the operation leaves for it.
struct WarpSlot {
  int tag = 0;
  uint32_t in[12] = {};
  const void* ptr = nullptr;
  uint32_t out[4] = {};
};
inline constexpr int kTagShfl = 1;
// Exactly one thread runs at a time (the token holder); at each blocking point it updates the
// state, draws the next runnable thread at random and hands it the token via its semaphore.
// Policies: kUniform draws among all runnable threads (warps then advance at similar rates);
// kWarpPriority draws among the runnable threads of the first warp in a random priority order of the
// warps, redrawn at every barrier, so that one warp runs ahead to the next barrier before the others
// start: the widest skew between warps, which a missing barrier cannot survive.
enum class Policy { kUniform, kWarpPriority };
struct Block {
  Policy policy = Policy::kUniform;
  std::vector<int> warp_prio;  // kWarpPriority: priority rank of each warp (0 runs first)
  int n;
  std::vector<std::unique_ptr<std::binary_semaphore>> sem;
  std::vector<int> state;  // 0 runnable, 1 at barrier, 2 at shuffle, 3 done
  int bar_count = 0;
  std::vector<int> warp_count;
  std::vector<std::vector<double>> buf;  // [warp*2 + parity][lane]
  std::vector<std::array<WarpSlot, 32>> slots;  // [warp*2 + parity][lane]: tags of every warp operation
  std::vector<int> round;                // per thread shuffle round
  std::mt19937 rng;
  std::vector<int> runnable;
  void hand_off() {
    runnable.clear();
    for (int i = 0; i < n; ++i) if (state[i] == 0) runnable.push_back(i);
    if (runnable.empty()) {
      for (int i = 0; i < n; ++i)
        if (state[i] != 3) { fprintf(stderr, "DEADLOCK (divergent barrier or shuffle)\n"); std::abort(); }
      return;
    }
    if (policy == Policy::kWarpPriority) {
      int best = n;
      for (int i : runnable) best = std::min(best, warp_prio[i / 32]);
      std::erase_if(runnable, [&](int i) { return warp_prio[i / 32] != best; });
    }
    sem[runnable[rng() % runnable.size()]]->release();
  }
  void block_and_wait(int tid) { hand_off(); sem[tid]->acquire(); }
};
inline thread_local Block* t_blk = nullptr;
inline thread_local int t_tid = 0;
inline std::mutex g_atomic_mu;
// Fault injection, for tests of the emulator itself: when >= 0, every thread skips its
// g_skip_barrier-th call of __syncthreads (counted from 0 in each block), as if it were missing.
inline int g_skip_barrier = -1;
inline thread_local int t_barrier_calls = 0;

// Aborts unless the 32 lanes of a warp arrived at the same kind of warp operation (shuffle, ldmatrix,
// mma: .sync .aligned instructions must be executed by every lane alike).
inline void check_warp_tags(const std::array<WarpSlot, 32>& s) {
  for (int i = 1; i < 32; ++i)
    if (s[i].tag != s[0].tag) {
      fprintf(stderr, "DIVERGENT warp operation (lane 0 tag %d, lane %d tag %d)\n", s[0].tag, i, s[i].tag);
      std::abort();
    }
}
}  // namespace emu

inline void __syncthreads() {
  if (emu::g_skip_barrier >= 0 && emu::t_barrier_calls++ == emu::g_skip_barrier) return;
  emu::Block& B = *emu::t_blk;
  B.state[emu::t_tid] = 1;
  if (++B.bar_count == B.n) {
    B.bar_count = 0;
    if (B.policy == emu::Policy::kWarpPriority) std::shuffle(B.warp_prio.begin(), B.warp_prio.end(), B.rng);
    for (int i = 0; i < B.n; ++i) if (B.state[i] == 1) B.state[i] = 0;
  }
  B.block_and_wait(emu::t_tid);
}

template <typename V>
inline V __shfl_xor_sync(unsigned, V v, int m, int = 32) {
  emu::Block& B = *emu::t_blk;
  const int tid = emu::t_tid, w = tid / 32, lane = tid % 32;
  const int par = B.round[tid] & 1;
  B.buf[w * 2 + par][lane] = static_cast<double>(v);
  B.slots[w * 2 + par][lane].tag = emu::kTagShfl;
  B.state[tid] = 2;
  if (++B.warp_count[w] == 32) {
    B.warp_count[w] = 0;
    emu::check_warp_tags(B.slots[w * 2 + par]);
    for (int i = w * 32; i < w * 32 + 32; ++i) B.state[i] = 0;
  }
  B.block_and_wait(tid);
  B.round[tid]++;
  return static_cast<V>(B.buf[w * 2 + par][lane ^ m]);
}

inline float __int_as_float(unsigned v) { float f; std::memcpy(&f, &v, 4); return f; }
inline double __longlong_as_double(long long v) { double d; std::memcpy(&d, &v, 8); return d; }
inline float atomicAdd(float* p, float v) { std::lock_guard<std::mutex> g(emu::g_atomic_mu); float o = *p; *p = o + v; return o; }
inline double atomicAdd(double* p, double v) { std::lock_guard<std::mutex> g(emu::g_atomic_mu); double o = *p; *p = o + v; return o; }

namespace emu {
// A warp-collective instruction (ldmatrix, mma.sync): every lane deposits its operands in its slot and
// waits; the last lane to arrive executes the instruction once for the whole warp (exec reads the 32
// slots' operands and writes their results), as the hardware does; each lane then resumes with its
// own slot, which stays valid until the warp's next-but-one warp operation (double buffering by round
// parity, as for the shuffles, with which the rounds are shared).
template <typename Exec>
inline WarpSlot warp_collective(int tag, const WarpSlot& mine, Exec&& exec) {
  Block& B = *t_blk;
  const int tid = t_tid, w = tid / 32, lane = tid % 32;
  const int par = B.round[tid] & 1;
  std::array<WarpSlot, 32>& s = B.slots[w * 2 + par];
  s[lane] = mine;
  s[lane].tag = tag;
  B.state[tid] = 2;
  if (++B.warp_count[w] == 32) {
    B.warp_count[w] = 0;
    check_warp_tags(s);
    exec(s);
    for (int i = w * 32; i < w * 32 + 32; ++i) B.state[i] = 0;
  }
  B.block_and_wait(tid);
  B.round[tid]++;
  return s[lane];
}

// Runs body(tid) for one block of n threads under the scheduler.
inline void run_block(int n, unsigned seed, size_t smem_bytes, const std::function<void(int, void*)>& body,
                      Policy policy = Policy::kUniform) {
  Block B;
  B.n = n;
  B.policy = policy;
  for (int w = 0; w < (n + 31) / 32; ++w) B.warp_prio.push_back(w);
  for (int i = 0; i < n; ++i) B.sem.emplace_back(new std::binary_semaphore(0));
  B.state.assign(n, 0);
  B.warp_count.assign((n + 31) / 32, 0);
  B.buf.assign((n + 31) / 32 * 2, std::vector<double>(32, 0.0));
  B.slots.assign((n + 31) / 32 * 2, std::array<WarpSlot, 32>{});
  B.round.assign(n, 0);
  B.rng.seed(seed);
  if (policy == Policy::kWarpPriority) std::shuffle(B.warp_prio.begin(), B.warp_prio.end(), B.rng);
  // Poison shared memory: NaN bytes, so reads of never-written elements show up.
  std::vector<unsigned char> smem(smem_bytes + 64, 0xFF);
  void* base = smem.data();
  std::vector<std::thread> th;
  th.reserve(n);
  for (int t = 0; t < n; ++t) {
    th.emplace_back([&, t] {
      t_blk = &B;
      t_tid = t;
      B.sem[t]->acquire();
      body(t, base);
      B.state[t] = 3;
      B.hand_off();
    });
  }
  B.hand_off();
  for (auto& x : th) x.join();
}
}  // namespace emu
