// Fused CPU kernels of sagan::self_attn. Included once per instruction set by
// kernels/cpu/instantiations/self_attn_cpu_<isa>.cpp, inside namespace sagan::kernels::cpu::<isa>.
//
// Forward, for batch b and query i (never more than a kBlockQ x kBlockK tile of scores at a time):
//   s_ij = scale * sum_c f[c,i] g[c,j]              online softmax over key tiles (FlashAttention):
//   m_i = max_j s_ij,  l_i = sum_j exp(s_ij - m_i)
//   o[:,i] = (1 / l_i) sum_j exp(s_ij - m_i) h[:,j],  lse_i = m_i + log l_i,  y = gamma o + x
// (all of it in base 2, on scores t = s log2(e): see qk_scale)
// Backward, recomputing p_ij = exp(s_ij - lse_i) from the saved log-sum-exp (kept in float64 and
// subtracted as float hi + lo, so p is as exact as the forward's for any size of logits):
//   D_i = sum_c dy[c,i] o[c,i],  dgamma = sum_i D_i
//   dh[:,j] = gamma sum_i dy[:,i] p_ij,  dp_ij = sum_c dy[c,i] h[c,j],  ds_ij = p_ij (dp_ij - D_i)
//   df[:,i] = gamma scale sum_j ds_ij g[:,j],  dg[:,j] = gamma scale sum_i ds_ij f[:,i]
// Work is split over (batch, group of query tiles) forward and (batch, key group) backward; every item owns
// its outputs, so no atomics and no dependence on the thread count.
//
// The includer must have included <algorithm> <cmath> <cstdint> <cstring> <limits> <memory> <vector> and
// kernels/cpu/self_attn_cpu_isa.h, and opened the enclosing namespace; no include guard, by design.

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// One vector register of SAGAN_CPU_VEC_BYTES (GCC/Clang vector extension); the micro-kernel's
// register block is CpuRegisterBlock's kMR x kNV registers. Scalars broadcast in arithmetic with it.
// The load/store types carry alignment 1 and may_alias, so any float/double pointer may be read.
constexpr int kVecBytes = SAGAN_CPU_VEC_BYTES;
template <typename T>
struct VecOf;
template <>
struct VecOf<float> {
  typedef float type __attribute__((vector_size(kVecBytes)));
  typedef float unaligned __attribute__((vector_size(kVecBytes), aligned(1), may_alias));
  typedef uint32_t bits __attribute__((vector_size(kVecBytes)));
};
template <>
struct VecOf<double> {
  typedef double type __attribute__((vector_size(kVecBytes)));
  typedef double unaligned __attribute__((vector_size(kVecBytes), aligned(1), may_alias));
};
template <typename T>
constexpr int kLanes = static_cast<int>(kVecBytes / sizeof(T));
static_assert(CpuTileTraits<float>::kBlockQ % kLanes<float> == 0 &&
                  CpuTileTraits<float>::kBlockK % kLanes<float> == 0 &&
                  CpuTileTraits<float>::kBackwardBlockK % kLanes<float> == 0 &&
                  CpuTileTraits<double>::kBackwardBlockK % kLanes<double> == 0 &&
                  CpuTileTraits<double>::kBlockQ % kLanes<double> == 0 &&
                  CpuTileTraits<double>::kBlockK % kLanes<double> == 0,
              "tiles must hold whole registers");

template <typename T>
inline typename VecOf<T>::type load_vec(const T* p) {
  return *reinterpret_cast<const typename VecOf<T>::unaligned*>(p);
}

template <typename T>
inline void store_vec(T* p, typename VecOf<T>::type v) {
  *reinterpret_cast<typename VecOf<T>::unaligned*>(p) = v;
}

// One element of a storage type, read as its compute type, and one written from it (see
// BFloat16Storage in self_attn_cpu_traits.h). bfloat16: widened exactly; rounded to nearest, ties to
// even, and a NaN of any payload written as the quiet NaN 0x7FC0 (c10::BFloat16's conversion).
inline float load_elem(const float* p) { return *p; }
inline double load_elem(const double* p) { return *p; }
inline float load_elem(const BFloat16Storage* p) {
  const uint32_t bits = static_cast<uint32_t>(p->bits) << 16;
  float v;
  std::memcpy(&v, &bits, sizeof(v));
  return v;
}
inline void store_elem(float* p, float v) { *p = v; }
inline void store_elem(double* p, double v) { *p = v; }
inline void store_elem(BFloat16Storage* p, float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  p->bits = v != v ? static_cast<uint16_t>(0x7FC0) : static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

// 2^x for x <= 0 (what the kernels need: scores, in base-2 units, minus their running maximum),
// vectorised by hand: x = n + r with n = x rounded to the nearest integer and r = x - n in
// [-1/2, 1/2] (exact), then 2^r by a degree-6 polynomial, then times 2^n.
// The polynomial 1 + r (c1 + r (c2 + ... + c6 r)) is this project's own minimax fit of 2^r on
// [-1/2, 1/2] for relative error, scripts/fit_exp2.py: 3.0e-9 with its coefficients as rounded to
// float, and 2^0 = 1 exactly.
// Where the build has AVX-512, r is one vreduceps and 2^n one vscalefps (9 vector operations in all):
// -inf gives r = 0, n = -inf and 2^-inf = 0; results below 2^-126 are kept as subnormals. Elsewhere
// x is clamped to -127, adding 1.5 2^23 rounds it to n, and n is added into the exponent field of
// 2^r's bits (12 operations): 0 at x <= -127, below 2^-126 between -127 and -126. NaN propagates
// either way.
// Accuracy against float64 exp2 over every float in [-126, 0], measured exhaustively: within 0.80 ulp
// where the build fuses multiply-adds, 1.08 where it does not (the x86-64 baseline);
// tests/cpp/test_cpu_exp.cpp holds each build to its bound. (The natural-base exp it replaced, with a
// Cody-Waite reduction, took 13 operations with AVX-512 and was within 1.19 and 1.48 ulp.)
template <typename V, typename S>
inline V exp2_poly(V r) {
  V p = V{} + S(1.53264715e-4f);
  p = p * r + S(1.33908063e-3f);
  p = p * r + S(9.61850584e-3f);
  p = p * r + S(5.55035993e-2f);
  p = p * r + S(2.40226477e-1f);
  p = p * r + S(6.93147182e-1f);
  return p * r + S(1.0f);
}

// lo > x ? lo : x lane by lane, for floats (x where x is NaN): one maxps. GCC compiles the comparison
// itself to a compare and a blend where lo is a constant, hence the intrinsics on x86.
template <typename V, typename S>
inline V max_keep_nan(V lo, V x) {
#if SAGAN_CPU_HAS_AVX2_BUILD && SAGAN_CPU_VEC_BYTES >= 32
  if constexpr (sizeof(V) == 32 && sizeof(S) == 4) return _mm256_max_ps(lo, x);
#endif
#if SAGAN_CPU_HAS_AVX2_BUILD
  if constexpr (sizeof(V) == 16 && sizeof(S) == 4) return _mm_max_ps(lo, x);
#endif
  return lo > x ? lo : x;
}

template <typename V, typename U, typename S>
inline V exp2_nonpositive_lanes(V x) {
#if SAGAN_CPU_VEC_BYTES == 64
  constexpr bool kAvx512 = sizeof(V) == 64 && sizeof(S) == 4;
#else
  constexpr bool kAvx512 = false;
#endif
  if constexpr (kAvx512) {
#if SAGAN_CPU_VEC_BYTES == 64
    const V r = _mm512_reduce_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const V p = exp2_poly<V, S>(r);
    // The masked form with every lane set: the plain one passes GCC 12 an undefined source it warns of.
    return _mm512_mask_scalef_ps(p, static_cast<__mmask16>(0xFFFF), p, x - r);
#endif
  } else {
    // x is clamped to [-127, 0] first (max_keep_nan: a NaN x stays NaN). Adding 1.5 2^23 then rounds
    // it to the nearest integer n and leaves n in the low bits of t; t's bits shifted up by 23 are n's
    // in the exponent field (those of 1.5 2^23, bit 22 and up, are shifted out), and adding them to
    // the bits of p = 2^r in [2^-1/2, 2^1/2] makes p 2^n, exact wherever that is a normal float: the
    // same results as multiplying by 2^n, without building 2^n, and without a compare and a blend for
    // the range (measured on AMD Zen 3: 20% faster than that form). At x <= -127 (and -inf) r = 0,
    // p = 1 exactly and the sum is 0; only x in (-127, -126) gives a result of the wrong value, below
    // 2^-126 (a subnormal or 0). Unsigned bits: that sum wraps.
    const V xc = max_keep_nan<V, S>(V{} + S(-127.0f), x);
    const V t = xc + S(12582912.0f);
    const V p = exp2_poly<V, S>(xc - (t - S(12582912.0f)));
    U tu, pu;
    std::memcpy(&tu, &t, sizeof(tu));
    std::memcpy(&pu, &p, sizeof(pu));
    const U e_bits = pu + (tu << 23);
    V e;
    std::memcpy(&e, &e_bits, sizeof(e));
    return e;
  }
}

inline float exp2_nonpositive(float x) { return exp2_nonpositive_lanes<float, uint32_t, float>(x); }
inline double exp2_nonpositive(double x) { return std::exp2(x); }

// v[j] = 2^((v[j] - shift_hi) - shift_lo) for j < n. The shift comes in two parts so that a
// float64 log-sum-exp (hi = its rounding to T, lo = the rest) subtracts at full precision.
inline void exp2_row(float* v, int64_t n, float shift_hi, float shift_lo) {
  using Vec = VecOf<float>::type;
  constexpr int W = kLanes<float>;
  int64_t j = 0;
  for (; j + W <= n; j += W)
    store_vec(v + j, exp2_nonpositive_lanes<Vec, VecOf<float>::bits, float>(
                         (load_vec(v + j) - shift_hi) - shift_lo));
  for (; j < n; ++j) v[j] = exp2_nonpositive((v[j] - shift_hi) - shift_lo);
}

inline void exp2_row(double* v, int64_t n, double shift_hi, double shift_lo) {
  for (int64_t j = 0; j < n; ++j) v[j] = std::exp2((v[j] - shift_hi) - shift_lo);
}

// 2^x of every lane of a register holding values <= 0 (or NaN): the polynomial in float, std::exp2
// lane by lane in float64.
inline VecOf<float>::type exp2_vec(VecOf<float>::type x) {
  return exp2_nonpositive_lanes<VecOf<float>::type, VecOf<float>::bits, float>(x);
}
inline VecOf<double>::type exp2_vec(VecOf<double>::type x) {
  for (int w = 0; w < kLanes<double>; ++w) x[w] = std::exp2(x[w]);
  return x;
}

// The kernels take every softmax in base 2: the scores they normalise are t_ij = sum_c f'[c,i] g[c,j]
// = s_ij log2(e), with f' = f rounded to T after a multiply by qk_scale = scale log2(e) (rounded to T
// once, here), and exp(s - m) = 2^(t - m log2(e)). The multiply by log2(e) then costs nothing per
// score, and the exp is the 9-operation 2^x above. Forward, backward and double backward all form f'
// this way (copy_tile_scaled), so that each recomputes exactly the scores the forward normalised;
// the log-sum-exp they save and read stays in natural log units, in float64 (lse = lse2 ln 2).
constexpr double kLog2e = 1.4426950408889634074;
constexpr double kLn2 = 0.69314718055994530942;
template <typename T>
inline T qk_scale(double scale) {
  return static_cast<T>(scale * kLog2e);
}

// v[j] *= scale for j < n, each product rounded to T.
template <typename T>
inline void scale_row(T* v, int64_t n, T scale) {
  for (int64_t j = 0; j < n; ++j) v[j] *= scale;
}

// Loops over a register block, unrolled whole: GCC then keeps the accumulator array in registers (left
// rolled, it kept a copy on the stack: 72 extra loads and stores per 6 x 4 block).
#if defined(__clang__)
#define SAGAN_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define SAGAN_UNROLL _Pragma("GCC unroll 16")
#else
#define SAGAN_UNROLL
#endif

// The forward's phases, for a profiler: bench/cpu_phases.cpp defines SAGAN_CPU_PHASE(phase) before it
// includes an instantiation file, and the forward calls it where each phase of a (query tile, key tile)
// step ends (kStart: where the step begins). Elsewhere it is nothing.
enum class ForwardPhase { kStart, kScores, kMax, kExp, kValues };
#ifndef SAGAN_CPU_PHASE
#define SAGAN_CPU_PHASE(phase) ((void)0)
#endif

// A hint to bring the cache line at p into L1 (a no-op where the compiler has no such builtin).
#if defined(__GNUC__) || defined(__clang__)
#define SAGAN_PREFETCH(p) __builtin_prefetch((p), 0, 3)
#else
#define SAGAN_PREFETCH(p) ((void)(p))
#endif

// What the micro-kernel does with each finished register of the product: the store into C, and
// whatever is fused into it. Called with the register's first element's row and column in the whole
// product (m, n), the register, and its place in C.
struct StoreC {  // C = AB
  template <typename V, typename T>
  void operator()(int64_t, int64_t, V acc, T* c) const { store_vec(c, acc); }
};
struct AddToC {  // C += AB
  template <typename V, typename T>
  void operator()(int64_t, int64_t, V acc, T* c) const { store_vec(c, load_vec(c) + acc); }
};
template <typename T>
struct RescaleAndAddToC {  // C = C diag(scale) + AB: the forward's online-softmax rescale, folded in
  const T* scale;
  template <typename V>
  void operator()(int64_t, int64_t n, V acc, T* c) const { store_vec(c, load_vec(c) * load_vec(scale + n) + acc); }
};

// sum_k A[m * a_ms + k * a_ks] * B[k * ldb + n] for an MR x NV-register block, each register of it
// handed to epi (at row m0 + m, column n0 + v L of the whole product, C + m ldc + v L).
// A is read one scalar at a time (any strides) and broadcast; B rows are contiguous. With AG = 2, A's
// elements are pairs of adjacent scalars, each pair broadcast to every pair of lanes (the backward's
// dg^T over query pairs, below): k counts pairs and a_ks is in scalars. A full-height block one register wide (the backward's dg^T at
// Cqk <= 16 floats) would wait on the FMA latency: it keeps two banks of accumulators, even and odd k,
// summed at the end. No other block does: the backward's dp^T must sum over the channels in the order
// row_dot_dy_o sums D, so that a one-hot softmax row (one finite key) gets ds = p (dp - D) = 0 exactly.
// A's element at a: the scalar itself for AG = 1 (broadcast by the arithmetic; Vec{} + *a would cost a
// scalar add, as 0 + -0 is not -0), or a register of the pair repeated for AG = 2.
template <typename T, int AG>
inline auto broadcast_group(const T* a) {
  using Vec = typename VecOf<T>::type;
  if constexpr (AG == 1) {
    return *a;
  } else {
    static_assert(AG == 2 && sizeof(T) == 4, "pairs of floats only");
    typedef uint64_t Pairs __attribute__((vector_size(kVecBytes)));
    uint64_t pair;
    std::memcpy(&pair, a, sizeof(pair));
    const Pairs splat = Pairs{} + pair;
    Vec v;
    std::memcpy(&v, &splat, sizeof(v));
    return v;
  }
}

template <typename T, int MR, int NV, int AG, typename Epi>
inline void micro_kernel(int64_t K, const T* A, int64_t a_ms, int64_t a_ks, const T* B, int64_t ldb,
                         T* C, int64_t ldc, int64_t m0, int64_t n0, const Epi& epi) {
  using Vec = typename VecOf<T>::type;
  constexpr int L = kLanes<T>;
  constexpr int KS = (MR == 6 && NV == 1) ? 2 : 1;
  Vec acc[KS][MR][NV];
  SAGAN_UNROLL
  for (int s = 0; s < KS; ++s)
    SAGAN_UNROLL
    for (int m = 0; m < MR; ++m)
      SAGAN_UNROLL
      for (int v = 0; v < NV; ++v) acc[s][m][v] = Vec{};
  int64_t k = 0;
  for (; k + KS <= K; k += KS) {
    SAGAN_UNROLL
    for (int s = 0; s < KS; ++s) {
      Vec b[NV];
      SAGAN_UNROLL
      for (int v = 0; v < NV; ++v) b[v] = load_vec(B + (k + s) * ldb + v * L);
      SAGAN_UNROLL
      for (int m = 0; m < MR; ++m) {
        const auto a = broadcast_group<T, AG>(A + m * a_ms + (k + s) * a_ks);
        SAGAN_UNROLL
        for (int v = 0; v < NV; ++v) acc[s][m][v] += a * b[v];
      }
    }
  }
  if constexpr (KS == 2) {
    if (k < K) {  // K odd: the last k goes to the first bank
      Vec b[NV];
      SAGAN_UNROLL
      for (int v = 0; v < NV; ++v) b[v] = load_vec(B + k * ldb + v * L);
      SAGAN_UNROLL
      for (int m = 0; m < MR; ++m) {
        const auto a = broadcast_group<T, AG>(A + m * a_ms + k * a_ks);
        SAGAN_UNROLL
        for (int v = 0; v < NV; ++v) acc[0][m][v] += a * b[v];
      }
    }
    SAGAN_UNROLL
    for (int m = 0; m < MR; ++m)
      SAGAN_UNROLL
      for (int v = 0; v < NV; ++v) acc[0][m][v] += acc[1][m][v];
  }
  SAGAN_UNROLL
  for (int m = 0; m < MR; ++m) {
    T* c = C + m * ldc;
    SAGAN_UNROLL
    for (int v = 0; v < NV; ++v) epi(m0 + m, n0 + v * L, acc[0][m][v], c + v * L);
  }
}

// One panel of NV registers' width, at column n0 of the product: the B panel stays in L1 while the
// M blocks stream past it.
template <typename T, int NV, int AG, typename Epi>
inline void gemm_panel(int64_t M, int64_t K, const T* A, int64_t a_ms, int64_t a_ks, const T* B,
                       int64_t ldb, T* C, int64_t ldc, int64_t n0, const Epi& epi) {
  constexpr int MR = CpuRegisterBlock<T, kVecBytes>::kMR;
  static_assert(MR == 6, "the remainder switch covers MR - 1 rows");
  int64_t m0 = 0;
  for (; m0 + MR <= M; m0 += MR)
    micro_kernel<T, MR, NV, AG>(K, A + m0 * a_ms, a_ms, a_ks, B, ldb, C + m0 * ldc, ldc, m0, n0, epi);
  const T* a = A + m0 * a_ms;
  T* c = C + m0 * ldc;
  switch (M - m0) {
    case 0: break;
    case 1: micro_kernel<T, 1, NV, AG>(K, a, a_ms, a_ks, B, ldb, c, ldc, m0, n0, epi); break;
    case 2: micro_kernel<T, 2, NV, AG>(K, a, a_ms, a_ks, B, ldb, c, ldc, m0, n0, epi); break;
    case 3: micro_kernel<T, 3, NV, AG>(K, a, a_ms, a_ks, B, ldb, c, ldc, m0, n0, epi); break;
    case 4: micro_kernel<T, 4, NV, AG>(K, a, a_ms, a_ks, B, ldb, c, ldc, m0, n0, epi); break;
    default: micro_kernel<T, 5, NV, AG>(K, a, a_ms, a_ks, B, ldb, c, ldc, m0, n0, epi); break;
  }
}

// The product A (M x K) B (K x N), N a multiple of the register width, any M and K, register by
// register through epi (StoreC, AddToC, ...): panels of kNV registers, then one narrower panel for the
// rest. AG: see micro_kernel.
template <typename T, int AG = 1, typename Epi>
void gemm_tile(int64_t M, int64_t N, int64_t K, const T* A, int64_t a_ms, int64_t a_ks, const T* B,
               int64_t ldb, T* C, int64_t ldc, const Epi& epi) {
  constexpr int L = kLanes<T>;
  constexpr int NV = CpuRegisterBlock<T, kVecBytes>::kNV;
  static_assert(NV >= 1 && NV <= 4, "the remainder switch covers up to 3 registers");
  int64_t n0 = 0;
  for (; n0 + NV * L <= N; n0 += NV * L)
    gemm_panel<T, NV, AG>(M, K, A, a_ms, a_ks, B + n0, ldb, C + n0, ldc, n0, epi);
  switch ((N - n0) / L) {
    case 0: break;
    case 1: gemm_panel<T, 1, AG>(M, K, A, a_ms, a_ks, B + n0, ldb, C + n0, ldc, n0, epi); break;
    case 2: gemm_panel<T, (NV > 2 ? 2 : 1), AG>(M, K, A, a_ms, a_ks, B + n0, ldb, C + n0, ldc, n0, epi); break;
    default: gemm_panel<T, (NV > 3 ? 3 : 1), AG>(M, K, A, a_ms, a_ks, B + n0, ldb, C + n0, ldc, n0, epi); break;
  }
}

// C (M x N) = A B, or += with accumulate.
template <typename T, int AG = 1>
void gemm_tile(int64_t M, int64_t N, int64_t K, const T* A, int64_t a_ms, int64_t a_ks, const T* B,
               int64_t ldb, T* C, int64_t ldc, bool accumulate) {
  if (accumulate)
    gemm_tile<T, AG>(M, N, K, A, a_ms, a_ks, B, ldb, C, ldc, AddToC{});
  else
    gemm_tile<T, AG>(M, N, K, A, a_ms, a_ks, B, ldb, C, ldc, StoreC{});
}

// dst (rows x padded, contiguous) = the rows x width block at src (leading dimension ld), the
// columns past width zeroed. The kernels' operands are copied this way into small contiguous
// tiles: rows of a (C, N) tensor lie N elements apart, and a few dozen such rows at a power-of-two
// stride share one set of the L1 cache and evict each other. src may be of a storage type S (bfloat16),
// widened to the compute type T of dst in the copy.
template <typename S, typename T>
void copy_tile(const S* src, int64_t rows, int64_t ld, int64_t width, int64_t padded, T* dst) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < width; ++j) dst[r * padded + j] = load_elem(src + r * ld + j);
    std::fill(dst + r * padded + width, dst + (r + 1) * padded, T(0));
  }
}

// The same, each element times scale (rounded to T), in the same pass: how every kernel builds the
// query tiles f' of the base-2 scores (see qk_scale).
template <typename S, typename T>
void copy_tile_scaled(const S* src, int64_t rows, int64_t ld, int64_t width, int64_t padded, T scale, T* dst) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < width; ++j) dst[r * padded + j] = load_elem(src + r * ld + j) * scale;
    std::fill(dst + r * padded + width, dst + (r + 1) * padded, T(0));
  }
}

// The cache lines of a rows x width block of S at src (leading dimension ld), row by row, handed out a
// few at a time so that a loop can prefetch them: the forward spreads the next h tile's lines over the
// current tile's exp passes where it widens h (bfloat16). Its widening copy then finds them in L1
// instead of stalling on each line in turn (measured, AVX-512, one thread, B = 4, N = 4096, Cv = 256,
// groups of 4: bfloat16 over float32 forward time 1.03-1.04 without, 1.00-1.03 with).
template <typename S>
struct TileLines {
  static constexpr int64_t kLineBytes = 64;
  const char* row;
  int64_t ld_bytes, row_bytes, per_row, count, col = 0;
  TileLines(const S* src, int64_t rows, int64_t ld, int64_t width)
      : row(reinterpret_cast<const char*>(src)),
        ld_bytes(ld * static_cast<int64_t>(sizeof(S))),
        row_bytes(width * static_cast<int64_t>(sizeof(S))),
        per_row(ceil_div(row_bytes, kLineBytes)),
        count(rows * per_row) {}
  // An address in the next line (the row's last byte for its last line, whatever the alignment of
  // src). The caller prefetches it: GCC deems a function that only prefetches free of effects and
  // drops its calls.
  const char* next() {
    const char* line = row + std::min(col * kLineBytes, row_bytes - 1);
    if (++col == per_row) {
      col = 0;
      row += ld_bytes;
    }
    return line;
  }
};

// A rows x padded tile starting at src (row-major, leading dimension ld) whose first `width` columns
// are real: src itself when the tile is whole (width == padded), else a copy in pad with the
// missing columns zeroed. *ld_out receives the returned tile's leading dimension.
template <typename T>
const T* padded_tile(const T* src, int64_t rows, int64_t ld, int64_t width, int64_t padded, T* pad,
                     int64_t* ld_out) {
  if (width == padded) {
    *ld_out = ld;
    return src;
  }
  copy_tile(src, rows, ld, width, padded, pad);
  *ld_out = padded;
  return pad;
}

// dst (B, n_tiles, C, BQ) = the (B, C, N) tensor src, times scale, cut into query tiles of BQ columns,
// each contiguous and the last zero-padded: built once per backward call, read once per key tile.
template <typename S, typename T>
void query_tiles(int64_t B, int64_t C, int64_t N, const S* src, int64_t sb, int64_t sc, int64_t BQ, T scale,
                 T* dst, const ParallelFor& parallel_for) {
  const int64_t n_tiles = ceil_div(N, BQ);
  parallel_for(B * n_tiles, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / n_tiles, q0 = (item % n_tiles) * BQ;
      copy_tile_scaled(src + b * sb + q0, C, sc, std::min(BQ, N - q0), BQ, scale, dst + item * C * BQ);
    }
  });
}

// D[b, i] = sum_c dy[b,c,i] o[b,c,i] (the softmax backward's row term, before gamma), summed over c
// in order; the backward and the double backward both start from it.
template <typename S, typename T>
void row_dot_dy_o(int64_t B, int64_t Cv, int64_t Nq, const S* dy, int64_t dy_sb, int64_t dy_sc,
                  const S* o, int64_t o_sb, int64_t o_sc, T* D, const ParallelFor& parallel_for) {
  parallel_for(B, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      T* Db = D + b * Nq;
      std::fill(Db, Db + Nq, T(0));
      for (int64_t c = 0; c < Cv; ++c) {
        const S* dyc = dy + b * dy_sb + c * dy_sc;
        const S* oc = o + b * o_sb + c * o_sc;
        for (int64_t i = 0; i < Nq; ++i) Db[i] += load_elem(dyc + i) * load_elem(oc + i);
      }
    }
  });
}

// dst (B, nq_pad / G, c_pad) = the (B, C, N) tensor src transposed, G consecutive queries to a row:
// element (c, i) at row i / G, column c G + i % G, everything else zero. G = 1: channels contiguous,
// the right-hand operand of dh^T; G = 2: query pairs, that of dg^T (see the backward). Built once per
// call. nq_pad is a multiple of G. (G a template parameter: i / G and i % G per element would be
// integer divisions.)
template <int G, typename S, typename T>
void transpose_padded(int64_t B, int64_t C, int64_t N, const S* src, int64_t sb, int64_t sc, int64_t nq_pad,
                      int64_t c_pad, T* dst, const ParallelFor& parallel_for) {
  constexpr int64_t kRows = 64;  // queries per work item, a multiple of G
  const int64_t n_blocks = ceil_div(N, kRows);
  parallel_for(B * n_blocks, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / n_blocks, i0 = (item % n_blocks) * kRows;
      const int64_t in = std::min(kRows, N - i0);
      const int64_t rows = ceil_div(in, G);
      T* d = dst + (b * nq_pad + i0) / G * c_pad;
      for (int64_t r = 0; r < rows; ++r) std::fill(d + r * c_pad + (in % G != 0 && r == rows - 1 ? 0 : C * G), d + (r + 1) * c_pad, T(0));
      for (int64_t c = 0; c < C; ++c) {
        const S* s = src + b * sb + c * sc + i0;
        for (int64_t i = 0; i < in; ++i) d[(i / G) * c_pad + c * G + i % G] = load_elem(s + i);
      }
    }
    // The padded rows past N (whole rows of zeros) belong to the last block of each batch.
    for (int64_t item = begin; item < end; ++item) {
      if (item % n_blocks != n_blocks - 1) continue;
      const int64_t b = item / n_blocks;
      std::fill(dst + (b * nq_pad / G + ceil_div(N, G)) * c_pad, dst + (b + 1) * nq_pad / G * c_pad, T(0));
    }
  });
}

// The forward's score tile (kBlockK keys x kBlockQ queries, key-major) in panels: kCount panels of
// kWidth queries, the width of gemm_tile's register block (kRegisters registers), each panel's rows
// contiguous and the panels kStride elements apart. Every pass walks it a panel at a time, and the value
// product reads each panel as its B operand once per block of 6 of the Cv rows. Held as plain rows of
// kBlockQ, a panel narrower than the tile (AVX2: 16 floats of 64) was one cache line per key row, 256
// bytes apart: 128 lines crowded into a quarter of the L1 sets, where the rows of h compete for the same
// ways. The stride is padded by one row so that panels do not lie a multiple of 4 KiB apart (128 rows of
// 16 floats would be 8 KiB). Bitwise the same results: only where the scores lie changes.
// Measured on Zen 4 with bench/cpu_ab.py (one thread, interleaved with the plain rows, median of the
// per-round ratios of the forward's time; bench/results/cpu-ab-20261203-151717.md, 20 rounds): AVX2
// 0.96 at (B, Cqk, Cv, N) = (4, 8, 64, 4096), 0.94 at (4, 16, 128, 4096), 0.93 at (4, 32, 256, 4096),
// the scores, the exps and the value product each faster; in four other runs 0.91-1.04 at (4, 8, 64) on
// this drifting VM. Panels 8 KiB apart (no pad) measured 0.99 in development. AVX-512, whose one
// panel is the plain layout: 0.99 and 1.00 (cpu-ab-20261203-151851.md).
template <typename T>
struct ScorePanels {
  static constexpr int kRegisters = CpuRegisterBlock<T, kVecBytes>::kNV;
  static constexpr int64_t kWidth = kRegisters * kLanes<T>;
  static constexpr int kCount = static_cast<int>(CpuTileTraits<T>::kBlockQ / kWidth);
  static constexpr int64_t kStride = (CpuTileTraits<T>::kBlockK + 1) * kWidth;
  static_assert(CpuTileTraits<T>::kBlockQ % kWidth == 0, "a query tile holds whole panels");
};

// S: the storage type of every tensor the kernel reads and writes but lse (float64); T: the compute type.
template <typename S>
void self_attn_fwd_impl(const SelfAttnFwdParams& p, const ParallelFor& parallel_for) {
  using T = typename CpuCompute<S>::type;
  using Vec = typename VecOf<T>::type;
  constexpr int L = kLanes<T>;
  constexpr int64_t BQ = CpuTileTraits<T>::kBlockQ;
  constexpr int64_t BK = CpuTileTraits<T>::kBlockK;
  const int64_t Cqk = p.Cqk, Cv = p.Cv, Nq = p.Nq, Nk = p.Nk;
  const T qk = qk_scale<T>(p.scale);
  const T gamma = load_elem(static_cast<const S*>(p.gamma));
  const int64_t n_qtiles = ceil_div(Nq, BQ);
  const S* f = static_cast<const S*>(p.f);
  const S* g = static_cast<const S*>(p.g);
  const S* h = static_cast<const S*>(p.h);
  const S* x = static_cast<const S*>(p.x);
  S* y = static_cast<S*>(p.y);
  S* o = static_cast<S*>(p.o);
  double* lse = p.lse;
  constexpr T kNegInf = -std::numeric_limits<T>::infinity();
  // The score tile's panels (see ScorePanels): kPanels of PNV registers, PW queries wide, PS apart.
  constexpr int PNV = ScorePanels<T>::kRegisters;
  constexpr int64_t PW = ScorePanels<T>::kWidth;
  constexpr int kPanels = ScorePanels<T>::kCount;
  constexpr int64_t PS = ScorePanels<T>::kStride;

  // Work items are (batch, group of consecutive query tiles): each key tile of g and h serves every
  // query tile of the group while it is in the inner caches, so h streams from the outer caches a
  // group's worth of times less often (see forward_query_group).
  const int64_t group = forward_query_group(p.B, n_qtiles, forward_max_query_group(CpuCompute<S>::kConverts, Cv));
  const int64_t n_items = ceil_div(n_qtiles, group);
  parallel_for(p.B * n_items, [&](int64_t begin, int64_t end) {
    // Workspace of one thread: O(tile sizes x (Cqk + Cv) x group), independent of Nq and Nk.
    std::vector<T> st(kPanels * PS), gk(Cqk * BK), acc(group * Cv * BQ), fq(group * Cqk * BQ);
    // The h tile widened to T, where S is not T (bfloat16): once per key tile, for the whole group.
    std::vector<T> hk(CpuCompute<S>::kConverts ? Cv * BK : 0);
    std::vector<T> row_max(group * BQ), row_sum(group * BQ), alpha(BQ);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / n_items;
      const int64_t t0 = (item % n_items) * group;
      const int64_t tn = std::min(group, n_qtiles - t0);
      for (int64_t qt = 0; qt < tn; ++qt) {
        const int64_t q0 = (t0 + qt) * BQ;
        copy_tile_scaled(f + b * p.f_sb + q0, Cqk, p.f_sc, std::min(BQ, Nq - q0), BQ, qk,
                         fq.data() + qt * Cqk * BQ);
      }
      std::fill(acc.begin(), acc.end(), T(0));
      std::fill(row_max.begin(), row_max.end(), kNegInf);
      std::fill(row_sum.begin(), row_sum.end(), T(0));

      for (int64_t k0 = 0; k0 < Nk; k0 += BK) {
        const int64_t kn = std::min(BK, Nk - k0);
        copy_tile(g + b * p.g_sb + k0, Cqk, p.g_sc, kn, BK, gk.data());
        const T* ht;  // the h tile (Cv x kn) with its leading dimension
        int64_t h_ld;
        if constexpr (CpuCompute<S>::kConverts) {
          copy_tile(h + b * p.h_sb + k0, Cv, p.h_sc, kn, BK, hk.data());
          ht = hk.data();
          h_ld = BK;
        } else {
          ht = h + b * p.h_sb + k0;
          h_ld = p.h_sc;
        }
        // The next h tile's lines, where it will be widened: a share of them prefetched during each
        // query tile's exp pass (see TileLines).
        const int64_t next_k0 = std::min(k0 + BK, Nk);
        TileLines<S> next_h(h + b * p.h_sb + next_k0, CpuCompute<S>::kConverts ? Cv : 0, p.h_sc,
                            std::min(BK, Nk - next_k0));
        for (int64_t qt = 0; qt < tn; ++qt) {
          SAGAN_CPU_PHASE(ForwardPhase::kStart);
          // st = g_tile^T f'_tile (kn x BQ), the scores in base 2 (see qk_scale): one row per key,
          // queries along the lanes, panel by panel (see ScorePanels).
          for (int pn = 0; pn < kPanels; ++pn)
            gemm_panel<T, PNV, 1>(kn, Cqk, gk.data(), 1, BK, fq.data() + qt * Cqk * BQ + pn * PW, BQ,
                                  st.data() + pn * PS, PW, pn * PW, StoreC{});
          SAGAN_CPU_PHASE(ForwardPhase::kScores);
          // Online softmax, lane by lane down the key rows: new running maximum, the rescale factor of
          // the old sums, the tile's exps and their sum. The maximum need not keep a NaN score (one
          // instruction, vmaxps, not three): that score's exp is NaN whatever the shift, and the row sum,
          // o and lse with it. Each pass walks a panel at a time, row by row with all of the panel's
          // registers of a row at once (and, for the maxima, KC chains of rows: 8 registers in all), so
          // that independent chains keep the vector units busy rather than wait on one register's latency.
          constexpr int NQ = static_cast<int>(BQ / L);
          constexpr int KC = PNV >= 8 ? 1 : 8 / PNV;
          Vec mx[NQ];
          SAGAN_UNROLL
          for (int pn = 0; pn < kPanels; ++pn) {
            const T* sp = st.data() + pn * PS;
            Vec m[KC][PNV];
            SAGAN_UNROLL
            for (int t = 0; t < KC; ++t)
              SAGAN_UNROLL
              for (int u = 0; u < PNV; ++u) m[t][u] = load_vec(&row_max[qt * BQ + pn * PW + u * L]);
            int64_t j = 0;
            for (; j + KC <= kn; j += KC)
              SAGAN_UNROLL
              for (int t = 0; t < KC; ++t)
                SAGAN_UNROLL
                for (int u = 0; u < PNV; ++u) {
                  const Vec s = load_vec(sp + (j + t) * PW + u * L);
                  m[t][u] = m[t][u] > s ? m[t][u] : s;
                }
            for (; j < kn; ++j)
              SAGAN_UNROLL
              for (int u = 0; u < PNV; ++u) {
                const Vec s = load_vec(sp + j * PW + u * L);
                m[0][u] = m[0][u] > s ? m[0][u] : s;
              }
            SAGAN_UNROLL
            for (int u = 0; u < PNV; ++u) {
              SAGAN_UNROLL
              for (int t = 1; t < KC; ++t) m[0][u] = m[0][u] > m[t][u] ? m[0][u] : m[t][u];
              mx[pn * PNV + u] = m[0][u];
            }
          }
          Vec sh[NQ], sum[NQ];
          SAGAN_UNROLL
          for (int v = 0; v < NQ; ++v) {
            // While every score of a query so far is -inf, shift by 0 instead of the maximum: the
            // tile's exps and the rescale factor are then 2^-inf = 0, never 2^(-inf - -inf) = NaN,
            // so keys masked with -inf (or overflowing to it) in leading tiles get weight 0, as in the
            // reference. A query whose scores are -inf everywhere ends with row_sum = 0 and
            // o = 0 / 0 = NaN, and a NaN or +inf score gives NaN: both as the reference softmax has them.
            sh[v] = mx[v] == kNegInf ? Vec{} : mx[v];
            store_vec(&alpha[v * L], exp2_vec(load_vec(&row_max[qt * BQ + v * L]) - sh[v]));
            store_vec(&row_max[qt * BQ + v * L], mx[v]);
            sum[v] = Vec{};
          }
          SAGAN_CPU_PHASE(ForwardPhase::kMax);
          // This query tile's share of the lines, spread evenly over the kPanels kn rows its exp pass
          // walks: after r rows, r lines / (kPanels kn) of them are prefetched (due counts lines x rows
          // done, minus kPanels kn per line).
          const int64_t lines = (qt + 1) * next_h.count / tn - qt * next_h.count / tn;
          const int64_t rows = kPanels * kn;
          int64_t due = 0;
          SAGAN_UNROLL
          for (int pn = 0; pn < kPanels; ++pn) {
            T* sp = st.data() + pn * PS;
            for (int64_t j = 0; j < kn; ++j) {
              if constexpr (CpuCompute<S>::kConverts)
                for (due += lines; due >= rows; due -= rows) SAGAN_PREFETCH(next_h.next());
              SAGAN_UNROLL
              for (int u = 0; u < PNV; ++u) {
                const Vec e = exp2_vec(load_vec(sp + j * PW + u * L) - sh[pn * PNV + u]);
                store_vec(sp + j * PW + u * L, e);
                sum[pn * PNV + u] += e;
              }
            }
          }
          SAGAN_UNROLL
          for (int v = 0; v < NQ; ++v)
            store_vec(&row_sum[qt * BQ + v * L],
                      load_vec(&row_sum[qt * BQ + v * L]) * load_vec(&alpha[v * L]) + sum[v]);
          SAGAN_CPU_PHASE(ForwardPhase::kExp);
          // acc (Cv x BQ) = acc alpha (each query's rescale) + h_tile (Cv x kn) st (kn x BQ), panel by
          // panel: each panel of st, contiguous, is the B panel of gemm_tile's own loop.
          for (int pn = 0; pn < kPanels; ++pn)
            gemm_panel<T, PNV, 1>(Cv, kn, ht, h_ld, 1, st.data() + pn * PS, PW,
                                  acc.data() + qt * Cv * BQ + pn * PW, BQ, pn * PW, RescaleAndAddToC<T>{alpha.data()});
          SAGAN_CPU_PHASE(ForwardPhase::kValues);
        }
      }

      for (int64_t qt = 0; qt < tn; ++qt) {
        const int64_t q0 = (t0 + qt) * BQ;
        const int64_t qn = std::min(BQ, Nq - q0);
        for (int64_t i = 0; i < qn; ++i) {
          // float64: in float32, lse ~ 2e3 (large SAGAN logits) would carry an error of ulp ~ 1e-4
          // into every recomputed probability of the backward.
          lse[b * Nq + q0 + i] =
              (static_cast<double>(row_max[qt * BQ + i]) + std::log2(static_cast<double>(row_sum[qt * BQ + i]))) * kLn2;
          alpha[i] = T(1) / row_sum[qt * BQ + i];
        }
        for (int64_t c = 0; c < Cv; ++c) {
          const T* a = acc.data() + (qt * Cv + c) * BQ;
          S* oc = o + (b * Cv + c) * Nq + q0;
          S* yc = y + (b * Cv + c) * Nq + q0;
          // y from o in T, before o is rounded to S.
          if (x != nullptr) {
            const S* xc = x + b * p.x_sb + c * p.x_sc + q0;
            for (int64_t i = 0; i < qn; ++i) {
              const T oi = a[i] * alpha[i];
              store_elem(oc + i, oi);
              store_elem(yc + i, gamma * oi + load_elem(xc + i));
            }
          } else {
            for (int64_t i = 0; i < qn; ++i) {
              const T oi = a[i] * alpha[i];
              store_elem(oc + i, oi);
              store_elem(yc + i, gamma * oi);
            }
          }
        }
      }
    }
  });
}

// dg^T (kn x c_pad) += ds^T (kn x qn, leading dimension ld) f^T, over single queries (group 1) or
// query pairs (group 2, floats only; see the backward).
template <typename T>
void dg_product(int64_t kn, int64_t qn, int64_t group, const T* dsT, int64_t ld, const T* fT, int64_t c_pad, T* dgT) {
  if constexpr (sizeof(T) == sizeof(float)) {
    if (group == 2) {
      gemm_tile<T, 2>(kn, c_pad, ceil_div(qn, 2), dsT, ld, 2, fT, c_pad, dgT, c_pad, true);
      return;
    }
  }
  gemm_tile<T>(kn, c_pad, qn, dsT, ld, 1, fT, c_pad, dgT, c_pad, true);
}

// S and T as in the forward.
template <typename S>
void self_attn_backward_impl(const SelfAttnBackwardParams& p, const ParallelFor& parallel_for) {
  using T = typename CpuCompute<S>::type;
  using Vec = typename VecOf<T>::type;
  constexpr int L = kLanes<T>;
  constexpr int64_t BQ = CpuTileTraits<T>::kBlockQ;
  constexpr int64_t BK = CpuTileTraits<T>::kBackwardBlockK;
  const int64_t B = p.B, Cqk = p.Cqk, Cv = p.Cv, Nq = p.Nq, Nk = p.Nk;
  const T scale = static_cast<T>(p.scale);
  const T qk = qk_scale<T>(p.scale);
  const T gamma = load_elem(static_cast<const S*>(p.gamma));
  const bool want_df = p.want_df, want_dg = p.want_dg, want_dh = p.want_dh;
  const bool want_ds = want_df || want_dg;  // the logits' gradient, and with it dp = h^T dy
  const S* dy = static_cast<const S*>(p.dy);
  const S* f = static_cast<const S*>(p.f);
  const S* g = static_cast<const S*>(p.g);
  const S* h = static_cast<const S*>(p.h);
  const S* o = static_cast<const S*>(p.o);
  const double* lse = p.lse;
  S* df = static_cast<S*>(p.df);
  S* dg = static_cast<S*>(p.dg);
  S* dh = static_cast<S*>(p.dh);

  // D_i = sum_c dy[c,i] o[c,i]: p.delta.
  T* D = static_cast<T*>(p.delta);
  row_dot_dy_o(B, Cv, Nq, dy, p.dy_sb, p.dy_sc, o, p.o_sb, p.o_sc, D, parallel_for);
  double dgamma = 0.0;
  for (int64_t i = 0; i < B * Nq; ++i) dgamma += static_cast<double>(D[i]);
  *p.dgamma = dgamma;
  if (!want_ds && !want_dh) return;

  const int64_t n_ktiles = ceil_div(Nk, BK);
  const int64_t n_groups = std::max<int64_t>(1, std::min(ceil_div(kBackwardTargetItems, B), n_ktiles));
  // Group g holds key tiles [g n_ktiles / n_groups, (g + 1) n_ktiles / n_groups): sizes differ by at
  // most one, and none is empty (ceil(n_ktiles / n_groups) tiles each left up to a group's worth idle:
  // B = 1, N = 16384 gave 29 busy groups of 32, 48 tiles on one thread of two and 38 on the other).
  const int64_t nq_pad = ceil_div(Nq, BQ) * BQ;
  const int64_t cv_pad = ceil_div(Cv, L) * L;
  // dg^T (kn x Cqk) = ds^T (kn x Nq) f^T (Nq x Cqk). Where a register holds two rows of Cqk floats
  // (2 Cqk <= L: Cqk <= 8 with AVX-512), the product runs over query pairs instead, with lane 2c + t
  // summing the queries of parity t: A = ds^T's adjacent pairs (ds[j, 2i'], ds[j, 2i' + 1]), each
  // broadcast to every lane pair; B = f^T in query pairs, row i' = (f[0, 2i'], f[0, 2i' + 1], f[1, 2i'],
  // ...). Half the FMAs of padding Cqk to a whole register, whose upper lanes would multiply zeros;
  // dg[c, j] = lane 2c + lane 2c + 1 at the end.
  const int64_t dg_group = (sizeof(T) == sizeof(float) && 2 * Cqk <= L) ? 2 : 1;
  const int64_t cqk_pad = ceil_div(Cqk * dg_group, L) * L;
  // dy and f transposed (queries x channels, zero-padded): the right-hand operands of dh and dg.
  // O(B C N), like the inputs.
  // Buffers the parallel passes write in full (padding included) are not zeroed first: their first
  // touch, and the page faults of that, are spread over the threads.
  const std::unique_ptr<T[]> dyT(want_dh ? new T[B * nq_pad * cv_pad] : nullptr),
      fT(want_dg ? new T[B * nq_pad / dg_group * cqk_pad] : nullptr);
  if (want_dh) transpose_padded<1>(B, Cv, Nq, dy, p.dy_sb, p.dy_sc, nq_pad, cv_pad, dyT.get(), parallel_for);
  if (want_dg)
    (dg_group == 2 ? transpose_padded<2, S, T> : transpose_padded<1, S, T>)(B, Cqk, Nq, f, p.f_sb, p.f_sc, nq_pad, cqk_pad,
                                                                      fT.get(), parallel_for);
  // f and dy cut into contiguous query tiles: the right-hand operands of s^T and dp^T.
  const int64_t n_qtiles = nq_pad / BQ;
  const std::unique_ptr<T[]> f_tiles(new T[B * n_qtiles * Cqk * BQ]),
      dy_tiles(want_ds ? new T[B * n_qtiles * Cv * BQ] : nullptr);
  query_tiles(B, Cqk, Nq, f, p.f_sb, p.f_sc, BQ, qk, f_tiles.get(), parallel_for);  // f' (see qk_scale)
  if (want_ds) query_tiles(B, Cv, Nq, dy, p.dy_sb, p.dy_sc, BQ, T(1), dy_tiles.get(), parallel_for);
  // The saved log-sum-exp of each query in base 2 (lse2 = lse log2(e), in float64), split into T hi + lo so
  // that p is as exact as the forward's, and
  // D, both padded to nq_pad: the padded queries get lse = +inf, hence p = 0 and ds = 0. Once per call
  // (every key tile reads them).
  const std::unique_ptr<T[]> q_stats(new T[3 * B * nq_pad]);
  T* lse_hi = q_stats.get();
  T* lse_lo = lse_hi + B * nq_pad;
  T* D_pad = lse_lo + B * nq_pad;
  parallel_for(B, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin * nq_pad; i < end * nq_pad; ++i) {
      const int64_t b = i / nq_pad, q = i % nq_pad;
      if (q < Nq) {
        const double l = lse[b * Nq + q] * kLog2e;
        lse_hi[i] = static_cast<T>(l);
        lse_lo[i] = static_cast<T>(l - static_cast<double>(lse_hi[i]));
        D_pad[i] = D[b * Nq + q];
      } else {
        lse_hi[i] = std::numeric_limits<T>::infinity();
        lse_lo[i] = D_pad[i] = T(0);
      }
    }
  });
  // Partial df of each (batch, key group), as Cqk x nq_pad: O(groups x Cqk x Nq), never O(Nq x Nk).
  // Each work item zeroes its own slice.
  const std::unique_ptr<T[]> df_part(want_df ? new T[B * n_groups * Cqk * nq_pad] : nullptr);

  parallel_for(B * n_groups, [&](int64_t begin, int64_t end) {
    // Key-major tiles (one row per key, queries along the lanes): p^T, and dp^T turned into ds^T.
    std::vector<T> pt(BK * BQ), dst(BK * BQ), gk(Cqk * BK), hk(want_ds ? Cv * BK : 0);
    std::vector<T> dvT(BK * cv_pad), dgT(BK * cqk_pad);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / n_groups;
      const int64_t group = item % n_groups;
      T* dfp = want_df ? df_part.get() + item * Cqk * nq_pad : nullptr;
      if (want_df) std::fill(dfp, dfp + Cqk * nq_pad, T(0));
      const S* gb = g + b * p.g_sb;
      const int64_t kt_end = (group + 1) * n_ktiles / n_groups;
      for (int64_t kt = group * n_ktiles / n_groups; kt < kt_end; ++kt) {
        const int64_t k0 = kt * BK;
        const int64_t kn = std::min(BK, Nk - k0);
        copy_tile(gb + k0, Cqk, p.g_sc, kn, BK, gk.data());
        if (want_ds) copy_tile(h + b * p.h_sb + k0, Cv, p.h_sc, kn, BK, hk.data());
        std::fill(dvT.begin(), dvT.end(), T(0));
        std::fill(dgT.begin(), dgT.end(), T(0));
        for (int64_t q0 = 0; q0 < Nq; q0 += BQ) {
          const int64_t qn = std::min(BQ, Nq - q0);
          const int64_t qt = b * n_qtiles + q0 / BQ;
          // p^T (kn x BQ) = 2^(g_tile^T f'_tile - lse2), the base-2 scores exactly as the forward formed
          // them; the 2^x taken in the product's epilogue, while each register of scores is in hand.
          const T* lhi = lse_hi + b * nq_pad + q0;
          const T* llo = lse_lo + b * nq_pad + q0;
          const T* dq = D_pad + b * nq_pad + q0;
          const T* pq = pt.data();
          auto store_p = [lhi, llo](int64_t, int64_t n, Vec s, T* c) {
            store_vec(c, exp2_vec((s - load_vec(lhi + n)) - load_vec(llo + n)));
          };
          gemm_tile<T>(kn, BQ, Cqk, gk.data(), 1, BK, f_tiles.get() + qt * Cqk * BQ, BQ, pt.data(), BQ, store_p);
          // ds^T / gamma (kn x BQ) = p^T (dp^T - D), dp^T = h_tile^T dy_tile contracted over the Cv value
          // channels, in the product's epilogue.
          auto store_ds = [pq, dq](int64_t m, int64_t n, Vec dp, T* c) {
            store_vec(c, load_vec(pq + m * CpuTileTraits<T>::kBlockQ + n) * (dp - load_vec(dq + n)));
          };
          if (want_ds)
            gemm_tile<T>(kn, BQ, Cv, hk.data(), 1, BK, dy_tiles.get() + qt * Cv * BQ, BQ, dst.data(), BQ, store_ds);
          // df_part (Cqk x BQ at q0) += g_tile (Cqk x kn) ds^T (kn x BQ)
          if (want_df)
            gemm_tile<T>(Cqk, BQ, kn, gk.data(), BK, 1, dst.data(), BQ, dfp + q0, nq_pad, true);
          // dh^T (kn x Cv) += p^T (kn x qn) dy^T (qn x Cv)
          if (want_dh)
            gemm_tile<T>(kn, cv_pad, qn, pt.data(), BQ, 1, dyT.get() + (b * nq_pad + q0) * cv_pad, cv_pad,
                         dvT.data(), cv_pad, true);
          // dg^T (kn x Cqk) += ds^T (kn x qn) f^T (qn x Cqk)
          // (ds^T is 0 at the padded queries, so the last pair of an odd qn is whole.)
          if (want_dg)
            dg_product(kn, qn, dg_group, dst.data(), BQ, fT.get() + (b * nq_pad + q0) / dg_group * cqk_pad, cqk_pad,
                       dgT.data());
        }
        for (int64_t c = 0; want_dh && c < Cv; ++c) {
          S* dhc = dh + (b * Cv + c) * Nk + k0;
          for (int64_t j = 0; j < kn; ++j) store_elem(dhc + j, gamma * dvT[j * cv_pad + c]);
        }
        for (int64_t c = 0; want_dg && c < Cqk; ++c) {
          S* dgc = dg + (b * Cqk + c) * Nk + k0;
          if (dg_group == 2)
            for (int64_t j = 0; j < kn; ++j)
              store_elem(dgc + j, gamma * scale * (dgT[j * cqk_pad + 2 * c] + dgT[j * cqk_pad + 2 * c + 1]));
          else
            for (int64_t j = 0; j < kn; ++j) store_elem(dgc + j, gamma * scale * dgT[j * cqk_pad + c]);
        }
      }
    }
  });

  // df = gamma scale sum over key groups, in group order.
  if (!want_df) return;
  parallel_for(B * Cqk, [&](int64_t begin, int64_t end) {
    std::vector<T> sum(Nq);
    for (int64_t bc = begin; bc < end; ++bc) {
      const int64_t b = bc / Cqk, c = bc % Cqk;
      std::fill(sum.begin(), sum.end(), T(0));
      for (int64_t group = 0; group < n_groups; ++group) {
        const T* part = df_part.get() + ((b * n_groups + group) * Cqk + c) * nq_pad;
        for (int64_t i = 0; i < Nq; ++i) sum[i] += part[i];
      }
      S* dfc = df + bc * Nq;
      for (int64_t i = 0; i < Nq; ++i) store_elem(dfc + i, sum[i] * (gamma * scale));
    }
  });
}
