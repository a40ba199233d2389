// Host emulation of the few CUDA device facilities that the SIMT block bodies use (__syncthreads,
// __shfl_xor_sync, atomicAdd, bit casts), so that the kernels' block logic runs on a CPU without a GPU.
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

namespace emu {
// Exactly one thread runs at a time (the token holder); at each blocking point it updates the
// state, draws the next runnable thread at random and hands it the token via its semaphore.
struct Block {
  int n;
  std::vector<std::unique_ptr<std::binary_semaphore>> sem;
  std::vector<int> state;  // 0 runnable, 1 at barrier, 2 at shuffle, 3 done
  int bar_count = 0;
  std::vector<int> warp_count;
  std::vector<std::vector<double>> buf;  // [warp*2 + parity][lane]
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
    sem[runnable[rng() % runnable.size()]]->release();
  }
  void block_and_wait(int tid) { hand_off(); sem[tid]->acquire(); }
};
inline thread_local Block* t_blk = nullptr;
inline thread_local int t_tid = 0;
inline std::mutex g_atomic_mu;
}  // namespace emu

inline void __syncthreads() {
  emu::Block& B = *emu::t_blk;
  B.state[emu::t_tid] = 1;
  if (++B.bar_count == B.n) {
    B.bar_count = 0;
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
  B.state[tid] = 2;
  if (++B.warp_count[w] == 32) {
    B.warp_count[w] = 0;
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
// Runs body(tid) for one block of n threads under the scheduler.
inline void run_block(int n, unsigned seed, size_t smem_bytes, const std::function<void(int, void*)>& body) {
  Block B;
  B.n = n;
  for (int i = 0; i < n; ++i) B.sem.emplace_back(new std::binary_semaphore(0));
  B.state.assign(n, 0);
  B.warp_count.assign((n + 31) / 32, 0);
  B.buf.assign((n + 31) / 32 * 2, std::vector<double>(32, 0.0));
  B.round.assign(n, 0);
  B.rng.seed(seed);
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
