// Fused CPU kernels of sagan::self_attn. Included once per instruction set by
// kernels/cpu/instantiations/self_attn_cpu_<isa>.cpp, inside namespace sagan::kernels::cpu::<isa>.
//
// Forward, for batch b and query i (never more than a kBlockQ x kBlockK tile of scores at a time):
//   s_ij = scale * sum_c f[c,i] g[c,j]              online softmax over key tiles (FlashAttention):
//   m_i = max_j s_ij,  l_i = sum_j exp(s_ij - m_i)
//   o[:,i] = (1 / l_i) sum_j exp(s_ij - m_i) h[:,j],  lse_i = m_i + log l_i,  y = gamma o + x
// Backward, recomputing p_ij = exp(s_ij - lse_i) from the saved log-sum-exp (kept in float64 and
// subtracted as float hi + lo, so p is as exact as the forward's for any size of logits):
//   D_i = sum_c dy[c,i] o[c,i],  dgamma = sum_i D_i
//   dh[:,j] = gamma sum_i dy[:,i] p_ij,  dp_ij = sum_c dy[c,i] h[c,j],  ds_ij = p_ij (dp_ij - D_i)
//   df[:,i] = gamma scale sum_j ds_ij g[:,j],  dg[:,j] = gamma scale sum_i ds_ij f[:,i]
// Work is split over (batch, query tile) forward and (batch, key group) backward; every item owns
// its outputs, so no atomics and no dependence on the thread count.
//
// The includer must have included <algorithm> <cmath> <cstdint> <cstring> <limits> <vector> and
// kernels/cpu/self_attn_cpu_isa.h, and opened the enclosing namespace; no include guard, by design.

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// One vector register of SAGAN_CPU_VEC_BYTES (GCC/Clang vector extension); the micro-kernel's
// register block is kMR x kNR<T> = kMR x 2 registers. Scalars broadcast in arithmetic with it. The
// load/store types carry alignment 1 and may_alias, so any float/double pointer may be read.
constexpr int kVecBytes = SAGAN_CPU_VEC_BYTES;
template <typename T>
struct VecOf;
template <>
struct VecOf<float> {
  typedef float type __attribute__((vector_size(kVecBytes)));
  typedef float unaligned __attribute__((vector_size(kVecBytes), aligned(1), may_alias));
  typedef int32_t bits __attribute__((vector_size(kVecBytes)));
};
template <>
struct VecOf<double> {
  typedef double type __attribute__((vector_size(kVecBytes)));
  typedef double unaligned __attribute__((vector_size(kVecBytes), aligned(1), may_alias));
};
template <typename T>
constexpr int kLanes = static_cast<int>(kVecBytes / sizeof(T));
template <typename T>
constexpr int kNR = 2 * kLanes<T>;
static_assert(CpuTileTraits<float>::kBlockQ % kNR<float> == 0 &&
                  CpuTileTraits<float>::kBlockK % kNR<float> == 0 &&
                  CpuTileTraits<double>::kBlockQ % kNR<double> == 0 &&
                  CpuTileTraits<double>::kBlockK % kNR<double> == 0,
              "tiles must hold whole register blocks");

template <typename T>
inline typename VecOf<T>::type load_vec(const T* p) {
  return *reinterpret_cast<const typename VecOf<T>::unaligned*>(p);
}

template <typename T>
inline void store_vec(T* p, typename VecOf<T>::type v) {
  *reinterpret_cast<typename VecOf<T>::unaligned*>(p) = v;
}

// exp for x <= 0 (what the kernels need: scores minus their running maximum), vectorised by hand:
// Cody-Waite reduction to r in [-ln2/2, ln2/2], the Cephes expf polynomial (about 1 ulp), and 2^n
// built in the exponent bits. Below -87 the result flushes to 0 (exp(-87) ~ 1.6e-38); NaN propagates.
template <typename V, typename I, typename S>
inline V exp_nonpositive_lanes(V x) {
  const V lo = V{} + S(-87.0f);
  const V xc = x < lo ? lo : x;
  // Adding 1.5 * 2^23 rounds x * log2(e) to the nearest integer n and leaves n in the low bits.
  const V t = xc * S(1.44269504088896341f) + S(12582912.0f);
  const V n = t - S(12582912.0f);
  const V r = (xc - n * S(0.693359375f)) + n * S(2.12194440e-4f);
  V p = V{} + S(1.9875691500e-4f);
  p = p * r + S(1.3981999507e-3f);
  p = p * r + S(8.3334519073e-3f);
  p = p * r + S(4.1665795894e-2f);
  p = p * r + S(1.6666665459e-1f);
  p = p * r + S(5.0000001201e-1f);
  p = p * r * r + r + S(1.0f);
  I ti;
  std::memcpy(&ti, &t, sizeof(ti));
  const I pow2_bits = (ti - 0x4B400000 + 127) << 23;
  V pow2;
  std::memcpy(&pow2, &pow2_bits, sizeof(pow2));
  const V e = p * pow2;
  return x < lo ? V{} : e;
}

inline float exp_nonpositive(float x) { return exp_nonpositive_lanes<float, int32_t, float>(x); }
inline double exp_nonpositive(double x) { return std::exp(x); }

// v[j] = exp((v[j] - shift_hi) - shift_lo) for j < n. The shift comes in two parts so that a
// float64 log-sum-exp (hi = its float rounding, lo = the rest) subtracts at full precision.
inline void exp_row(float* v, int64_t n, float shift_hi, float shift_lo) {
  using Vec = VecOf<float>::type;
  constexpr int W = kLanes<float>;
  int64_t j = 0;
  for (; j + W <= n; j += W)
    store_vec(v + j, exp_nonpositive_lanes<Vec, VecOf<float>::bits, float>(
                         (load_vec(v + j) - shift_hi) - shift_lo));
  for (; j < n; ++j) v[j] = exp_nonpositive((v[j] - shift_hi) - shift_lo);
}

inline void exp_row(double* v, int64_t n, double shift_hi, double shift_lo) {
  for (int64_t j = 0; j < n; ++j) v[j] = std::exp((v[j] - shift_hi) - shift_lo);
}

// Scores are scaled in place, rounded to T, before anything else: the backward recomputes exactly
// the values the forward normalised.
template <typename T>
inline void scale_row(T* v, int64_t n, T scale) {
  for (int64_t j = 0; j < n; ++j) v[j] *= scale;
}

// C[m, n] (+)= sum_k A[m * a_ms + k * a_ks] * B[k * ldb + n] for an MR x kNR register block.
// A is read one scalar at a time (any strides) and broadcast; B rows are contiguous.
template <typename T, int MR>
inline void micro_kernel(int64_t K, const T* A, int64_t a_ms, int64_t a_ks, const T* B, int64_t ldb,
                         T* C, int64_t ldc, bool accumulate) {
  using Vec = typename VecOf<T>::type;
  constexpr int L = kLanes<T>;
  Vec acc0[MR], acc1[MR];
  for (int m = 0; m < MR; ++m) acc0[m] = acc1[m] = Vec{};
  for (int64_t k = 0; k < K; ++k) {
    const Vec b0 = load_vec(B + k * ldb);
    const Vec b1 = load_vec(B + k * ldb + L);
    for (int m = 0; m < MR; ++m) {
      const T a = A[m * a_ms + k * a_ks];
      acc0[m] += a * b0;
      acc1[m] += a * b1;
    }
  }
  for (int m = 0; m < MR; ++m) {
    T* c = C + m * ldc;
    if (accumulate) {
      acc0[m] += load_vec(c);
      acc1[m] += load_vec(c + L);
    }
    store_vec(c, acc0[m]);
    store_vec(c + L, acc1[m]);
  }
}

// Sum and maximum of v[0, n) with one register of partial results combined in a fixed order, so
// the loops vectorise without reassociation flags and results do not depend on the build.
template <typename T>
inline T sum_row(const T* v, int64_t n) {
  using Vec = typename VecOf<T>::type;
  constexpr int W = kLanes<T>;
  Vec acc = Vec{};
  int64_t j = 0;
  for (; j + W <= n; j += W) acc += load_vec(v + j);
  T s = T(0);
  for (int w = 0; w < W; ++w) s += acc[w];
  for (; j < n; ++j) s += v[j];
  return s;
}

// NaN-propagating maximum, as torch.max and the softmax reference treat NaN.
template <typename T>
inline T max_nan(T a, T b) { return (a > b || a != a) ? a : b; }

template <typename T>
inline T max_row(const T* v, int64_t n, T init) {
  using Vec = typename VecOf<T>::type;
  constexpr int W = kLanes<T>;
  T m = init;
  int64_t j = 0;
  if (n >= W) {
    Vec acc = load_vec(v);
    for (j = W; j + W <= n; j += W) {
      const Vec x = load_vec(v + j);
      acc = (acc > x || acc != acc) ? acc : x;
    }
    for (int w = 0; w < W; ++w) m = max_nan(m, acc[w]);
  }
  for (; j < n; ++j) m = max_nan(m, v[j]);
  return m;
}

// C (M x N) (+)= A (M x K) B (K x N), N a multiple of the register block width, any M and K.
// The B panel of one register block width stays in L1 while the M blocks stream past it.
template <typename T>
void gemm_tile(int64_t M, int64_t N, int64_t K, const T* A, int64_t a_ms, int64_t a_ks, const T* B,
               int64_t ldb, T* C, int64_t ldc, bool accumulate) {
  constexpr int MR = CpuTileTraits<T>::kMR;
  constexpr int NR = kNR<T>;
  for (int64_t n0 = 0; n0 < N; n0 += NR) {
    int64_t m0 = 0;
    for (; m0 + MR <= M; m0 += MR)
      micro_kernel<T, MR>(K, A + m0 * a_ms, a_ms, a_ks, B + n0, ldb, C + m0 * ldc + n0, ldc,
                          accumulate);
    const T* a = A + m0 * a_ms;
    T* c = C + m0 * ldc + n0;
    switch (M - m0) {
      case 0: break;
      case 1: micro_kernel<T, 1>(K, a, a_ms, a_ks, B + n0, ldb, c, ldc, accumulate); break;
      case 2: micro_kernel<T, 2>(K, a, a_ms, a_ks, B + n0, ldb, c, ldc, accumulate); break;
      case 3: micro_kernel<T, 3>(K, a, a_ms, a_ks, B + n0, ldb, c, ldc, accumulate); break;
      case 4: micro_kernel<T, 4>(K, a, a_ms, a_ks, B + n0, ldb, c, ldc, accumulate); break;
      default: micro_kernel<T, 5>(K, a, a_ms, a_ks, B + n0, ldb, c, ldc, accumulate); break;
    }
    static_assert(MR == 6, "the remainder switch covers MR - 1 rows");
  }
}

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
  for (int64_t r = 0; r < rows; ++r) {
    std::copy(src + r * ld, src + r * ld + width, pad + r * padded);
    std::fill(pad + r * padded + width, pad + (r + 1) * padded, T(0));
  }
  *ld_out = padded;
  return pad;
}

// D[b, i] = sum_c dy[b,c,i] o[b,c,i] (the softmax backward's row term, before gamma), summed over c
// in order; the backward and the double backward both start from it.
template <typename T>
void row_dot_dy_o(int64_t B, int64_t Cv, int64_t Nq, const T* dy, int64_t dy_sb, int64_t dy_sc,
                  const T* o, int64_t o_sb, int64_t o_sc, T* D, const ParallelFor& parallel_for) {
  parallel_for(B, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      T* Db = D + b * Nq;
      std::fill(Db, Db + Nq, T(0));
      for (int64_t c = 0; c < Cv; ++c) {
        const T* dyc = dy + b * dy_sb + c * dy_sc;
        const T* oc = o + b * o_sb + c * o_sc;
        for (int64_t i = 0; i < Nq; ++i) Db[i] += dyc[i] * oc[i];
      }
    }
  });
}

template <typename T>
void self_attn_fwd_impl(const SelfAttnFwdParams& p, const ParallelFor& parallel_for) {
  constexpr int64_t BQ = CpuTileTraits<T>::kBlockQ;
  constexpr int64_t BK = CpuTileTraits<T>::kBlockK;
  const int64_t Cqk = p.Cqk, Cv = p.Cv, Nq = p.Nq, Nk = p.Nk;
  const T scale = static_cast<T>(p.scale);
  const T gamma = *static_cast<const T*>(p.gamma);
  const int64_t n_qtiles = ceil_div(Nq, BQ);
  const T* f = static_cast<const T*>(p.f);
  const T* g = static_cast<const T*>(p.g);
  const T* h = static_cast<const T*>(p.h);
  const T* x = static_cast<const T*>(p.x);
  T* y = static_cast<T*>(p.y);
  T* o = static_cast<T*>(p.o);
  double* lse = p.lse;

  parallel_for(p.B * n_qtiles, [&](int64_t begin, int64_t end) {
    // Workspace of one thread: O(tile sizes x (Cqk + Cv)), independent of Nq and Nk.
    std::vector<T> s(BQ * BK), pt(BK * BQ), acc(Cv * BQ), gpad(Cqk * BK);
    std::vector<T> row_max(BQ), row_sum(BQ), alpha(BQ);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / n_qtiles;
      const int64_t q0 = (item % n_qtiles) * BQ;
      const int64_t qn = std::min(BQ, Nq - q0);
      const T* fb = f + b * p.f_sb + q0;  // query i, channel c at fb[i + c * f_sc]
      std::fill(acc.begin(), acc.end(), T(0));
      std::fill(pt.begin(), pt.end(), T(0));
      std::fill(row_max.begin(), row_max.end(), -std::numeric_limits<T>::infinity());
      std::fill(row_sum.begin(), row_sum.end(), T(0));

      for (int64_t k0 = 0; k0 < Nk; k0 += BK) {
        const int64_t kn = std::min(BK, Nk - k0);
        int64_t ldg = 0;
        const T* gt = padded_tile(g + b * p.g_sb + k0, Cqk, p.g_sc, kn, BK, gpad.data(), &ldg);
        // s (qn x BK) = f_tile^T g_tile, unscaled.
        gemm_tile<T>(qn, BK, Cqk, fb, 1, p.f_sc, gt, ldg, s.data(), BK, false);
        // Online softmax: new running maximum, rescale factor of the old sums, probabilities
        // written transposed (keys x queries) for the value product below.
        for (int64_t i = 0; i < qn; ++i) {
          T* srow = s.data() + i * BK;
          scale_row(srow, kn, scale);
          const T mx = max_row(srow, kn, row_max[i]);
          // While every score of the row so far is -inf, shift by 0 instead of the maximum: the
          // tile's exps and the rescale factor are then exp(-inf) = 0, never exp(-inf - -inf) = NaN,
          // so keys masked with -inf (or overflowing to it) in leading tiles get weight 0, as in the
          // reference. A row that is -inf everywhere ends with row_sum = 0 and o = 0 / 0 = NaN, and a
          // NaN or +inf score gives NaN: both as the reference softmax has them.
          const T shift = mx == -std::numeric_limits<T>::infinity() ? T(0) : mx;
          alpha[i] = exp_nonpositive(row_max[i] - shift);
          exp_row(srow, kn, shift, T(0));
          const T sum = sum_row(srow, kn);
          row_sum[i] = row_sum[i] * alpha[i] + sum;
          row_max[i] = mx;
          for (int64_t j = 0; j < kn; ++j) pt[j * BQ + i] = srow[j];
        }
        for (int64_t c = 0; c < Cv; ++c) {
          T* a = acc.data() + c * BQ;
          for (int64_t i = 0; i < qn; ++i) a[i] *= alpha[i];
        }
        // acc (Cv x BQ) += h_tile (Cv x kn) pt (kn x BQ)
        gemm_tile<T>(Cv, BQ, kn, h + b * p.h_sb + k0, p.h_sc, 1, pt.data(), BQ, acc.data(), BQ,
                     true);
      }

      for (int64_t i = 0; i < qn; ++i) {
        // float64: in float32, lse ~ 2e3 (large SAGAN logits) would carry an error of ulp ~ 1e-4
        // into every recomputed probability of the backward.
        lse[b * Nq + q0 + i] = static_cast<double>(row_max[i]) + std::log(static_cast<double>(row_sum[i]));
        alpha[i] = T(1) / row_sum[i];
      }
      for (int64_t c = 0; c < Cv; ++c) {
        const T* a = acc.data() + c * BQ;
        T* oc = o + (b * Cv + c) * Nq + q0;
        T* yc = y + (b * Cv + c) * Nq + q0;
        for (int64_t i = 0; i < qn; ++i) oc[i] = a[i] * alpha[i];
        if (x != nullptr) {
          const T* xc = x + b * p.x_sb + c * p.x_sc + q0;
          for (int64_t i = 0; i < qn; ++i) yc[i] = gamma * oc[i] + xc[i];
        } else {
          for (int64_t i = 0; i < qn; ++i) yc[i] = gamma * oc[i];
        }
      }
    }
  });
}

template <typename T>
void self_attn_bwd_impl(const SelfAttnBwdParams& p, const ParallelFor& parallel_for) {
  constexpr int64_t BQ = CpuTileTraits<T>::kBlockQ;
  constexpr int64_t BK = CpuTileTraits<T>::kBlockK;
  const int64_t B = p.B, Cqk = p.Cqk, Cv = p.Cv, Nq = p.Nq, Nk = p.Nk;
  const T scale = static_cast<T>(p.scale);
  const T gamma = *static_cast<const T*>(p.gamma);
  const bool want_df = p.want_df, want_dg = p.want_dg, want_dh = p.want_dh;
  const bool want_ds = want_df || want_dg;  // the logits' gradient, and with it dp = dy^T h
  const T* dy = static_cast<const T*>(p.dy);
  const T* f = static_cast<const T*>(p.f);
  const T* g = static_cast<const T*>(p.g);
  const T* h = static_cast<const T*>(p.h);
  const T* o = static_cast<const T*>(p.o);
  const double* lse = p.lse;
  T* df = static_cast<T*>(p.df);
  T* dg = static_cast<T*>(p.dg);
  T* dh = static_cast<T*>(p.dh);

  // D_i = sum_c dy[c,i] o[c,i]: p.delta.
  T* D = static_cast<T*>(p.delta);
  row_dot_dy_o(B, Cv, Nq, dy, p.dy_sb, p.dy_sc, o, p.o_sb, p.o_sc, D, parallel_for);
  double dgamma = 0.0;
  for (int64_t i = 0; i < B * Nq; ++i) dgamma += static_cast<double>(D[i]);
  *p.dgamma = dgamma;
  if (!want_ds && !want_dh) return;

  const int64_t n_ktiles = ceil_div(Nk, BK);
  const int64_t n_groups = std::max<int64_t>(1, std::min(ceil_div(kBwdTargetItems, B), n_ktiles));
  const int64_t tiles_per_group = ceil_div(n_ktiles, n_groups);
  const int64_t nq_pad = ceil_div(Nq, BQ) * BQ;
  // Partial df of each (batch, key group), as Cqk x nq_pad: O(groups x Cqk x Nq), never O(Nq x Nk).
  std::vector<T> df_part(want_df ? B * n_groups * Cqk * nq_pad : 0, T(0));

  parallel_for(B * n_groups, [&](int64_t begin, int64_t end) {
    std::vector<T> s(BQ * BK), dp(BQ * BK), dst(BK * BQ), gpad(Cqk * BK), hpad(Cv * BK);
    std::vector<T> dv(Cv * BK), dgacc(Cqk * BK);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / n_groups;
      const int64_t group = item % n_groups;
      T* dfp = want_df ? df_part.data() + item * Cqk * nq_pad : nullptr;
      const T* fb = f + b * p.f_sb;
      const T* dyb = dy + b * p.dy_sb;
      const double* lseb = lse + b * Nq;
      const T* Db = D + b * Nq;
      const int64_t kt_end = std::min(n_ktiles, (group + 1) * tiles_per_group);
      for (int64_t kt = group * tiles_per_group; kt < kt_end; ++kt) {
        const int64_t k0 = kt * BK;
        const int64_t kn = std::min(BK, Nk - k0);
        int64_t ldg = 0, ldh = 0;
        const T* gt = padded_tile(g + b * p.g_sb + k0, Cqk, p.g_sc, kn, BK, gpad.data(), &ldg);
        const T* ht = want_ds ? padded_tile(h + b * p.h_sb + k0, Cv, p.h_sc, kn, BK, hpad.data(), &ldh)
                              : nullptr;
        std::fill(dv.begin(), dv.end(), T(0));
        std::fill(dgacc.begin(), dgacc.end(), T(0));
        std::fill(dst.begin(), dst.end(), T(0));
        for (int64_t q0 = 0; q0 < Nq; q0 += BQ) {
          const int64_t qn = std::min(BQ, Nq - q0);
          // s = f^T g (qn x BK); p = exp(scale s - lse), zero in the padded key columns.
          gemm_tile<T>(qn, BK, Cqk, fb + q0, 1, p.f_sc, gt, ldg, s.data(), BK, false);
          // dp = dy_tile^T h_tile (qn x BK), contracted over the Cv value channels.
          if (want_ds) gemm_tile<T>(qn, BK, Cv, dyb + q0, 1, p.dy_sc, ht, ldh, dp.data(), BK, false);
          for (int64_t i = 0; i < qn; ++i) {
            T* srow = s.data() + i * BK;
            T* dprow = dp.data() + i * BK;
            const double l = lseb[q0 + i];
            const T l_hi = static_cast<T>(l);
            const T l_lo = static_cast<T>(l - static_cast<double>(l_hi));
            const T d = Db[q0 + i];
            scale_row(srow, kn, scale);
            exp_row(srow, kn, l_hi, l_lo);
            for (int64_t j = kn; j < BK; ++j) srow[j] = T(0);
            if (!want_ds) continue;
            for (int64_t j = 0; j < kn; ++j) dprow[j] = srow[j] * (dprow[j] - d);  // ds / gamma
            for (int64_t j = kn; j < BK; ++j) dprow[j] = T(0);
            if (want_df)
              for (int64_t j = 0; j < kn; ++j) dst[j * BQ + i] = dprow[j];
          }
          if (want_df && qn < BQ) {  // ragged last query tile: clear stale columns of earlier tiles
            for (int64_t j = 0; j < kn; ++j) std::fill(&dst[j * BQ + qn], &dst[(j + 1) * BQ], T(0));
          }
          // dv (Cv x BK) += dy_tile (Cv x qn) p (qn x BK)
          if (want_dh) gemm_tile<T>(Cv, BK, qn, dyb + q0, p.dy_sc, 1, s.data(), BK, dv.data(), BK, true);
          // dg (Cqk x BK) += f_tile (Cqk x qn) ds (qn x BK)
          if (want_dg)
            gemm_tile<T>(Cqk, BK, qn, fb + q0, p.f_sc, 1, dp.data(), BK, dgacc.data(), BK, true);
          // df_part (Cqk x BQ at q0) += g_tile (Cqk x kn) ds^T (kn x BQ)
          if (want_df)
            gemm_tile<T>(Cqk, BQ, kn, g + b * p.g_sb + k0, p.g_sc, 1, dst.data(), BQ, dfp + q0,
                         nq_pad, true);
        }
        for (int64_t c = 0; want_dh && c < Cv; ++c) {
          T* dhc = dh + (b * Cv + c) * Nk + k0;
          const T* dvc = dv.data() + c * BK;
          for (int64_t j = 0; j < kn; ++j) dhc[j] = gamma * dvc[j];
        }
        for (int64_t c = 0; want_dg && c < Cqk; ++c) {
          T* dgc = dg + (b * Cqk + c) * Nk + k0;
          const T* ac = dgacc.data() + c * BK;
          for (int64_t j = 0; j < kn; ++j) dgc[j] = gamma * scale * ac[j];
        }
      }
    }
  });

  // df = gamma scale sum over key groups, in group order.
  if (!want_df) return;
  parallel_for(B * Cqk, [&](int64_t begin, int64_t end) {
    for (int64_t bc = begin; bc < end; ++bc) {
      const int64_t b = bc / Cqk, c = bc % Cqk;
      T* dfc = df + bc * Nq;
      std::fill(dfc, dfc + Nq, T(0));
      for (int64_t group = 0; group < n_groups; ++group) {
        const T* part = df_part.data() + ((b * n_groups + group) * Cqk + c) * nq_pad;
        for (int64_t i = 0; i < Nq; ++i) dfc[i] += part[i];
      }
      for (int64_t i = 0; i < Nq; ++i) dfc[i] *= gamma * scale;
    }
  });
}
