// Fused CPU double backward of sagan::self_attn (the backward's VJP, for gradient penalties: R1,
// WGAN-GP). Included once per instruction set by
// kernels/cpu/instantiations/self_attn_cpu_double_backward_<isa>.cpp, after self_attn_cpu_kernel.h
// (whose tile helpers it uses), inside namespace sagan::kernels::cpu::<isa>.
//
// Notation of kernels/self_attn_params.h, per batch: s_ij = scale f_i . g_j, p_ij = exp(s_ij - lse_i)
// (x_i is column i of a (C, N) tensor). The backward computes
//   D_i = dy_i . o_i,   dp_ij = dy_i . h_j,   ds_ij = p_ij (dp_ij - D_i),
//   df_i = gamma scale sum_j ds_ij g_j,   dg_j = gamma scale sum_i ds_ij f_i,
//   dh_j = gamma sum_i p_ij dy_i,   dgamma = sum_i D_i.
// Derivation. With cotangents uf, ug, uh, ugamma of df, dg, dh, dgamma, the scalar to differentiate is
//   L = <uf, df> + <ug, dg> + <uh, dh> + ugamma dgamma
//     = gamma sum_ij ds_ij B_ij + gamma sum_ij p_ij E_ij + ugamma sum_i dy_i . o_i,
//   B_ij = scale (uf_i . g_j + f_i . ug_j),   E_ij = dy_i . uh_j.
// L depends on dy, f, g, h, gamma directly (B, E, dp, the ugamma term) and through D_i = dy_i . o_i,
// o_i = sum_j p_ij h_j and p = softmax(s); o and lse are the forward's, so every path through them is
// taken here and the op treats them as constants. Partial derivatives:
//   dL/d dp_ij = gamma p_ij B_ij,   dL/dD_i = -gamma R_i,   R_i = sum_j p_ij B_ij,
//   dL/do_i = (dL/dD_i + ugamma) dy_i = a_i dy_i,   a_i = ugamma - gamma R_i,
//   dL/dp_ij (direct + through o) = gamma (dp_ij - D_i) B_ij + gamma E_ij + a_i dp_ij =: Gp_ij,
//   dL/ds_ij (softmax) = p_ij (Gp_ij - c_i) =: Gs_ij,   c_i = sum_j p_ij Gp_ij
//     = gamma (P_i + Q_i - 2 D_i R_i) + ugamma D_i,   P_i = sum_j p_ij dp_ij B_ij,   Q_i = sum_j p_ij E_ij.
// Collecting the terms of each input:
//   d_f_i   = scale sum_j (gamma ds_ij ug_j + Gs_ij g_j)
//   d_g_j   = scale sum_i (gamma ds_ij uf_i + Gs_ij f_i)
//   d_h_j   = sum_i p_ij (gamma B_ij + a_i) dy_i
//   d_dy_i  = gamma sum_j p_ij (B_ij h_j + uh_j) + a_i o_i
//   d_gamma = sum_i (P_i - D_i R_i + Q_i)
// (tests/python/test_double_backward.py checks these against autograd's second derivative of the
// reference.) Four row statistics D, R, P, Q, O(B Nq), beside lse; no Nq x Nk buffer ever.
//
// Passes, each recomputing p from lse tile by tile as the backward does (base-2 scores from the
// forward's f', then 2^((score - lse2_hi) - lse2_lo), lse2 = lse log2(e)), so p is the forward's:
//   1. per (batch, query tile): D; over the key tiles R, P, Q; over the key tiles again d_f, d_dy.
//   2. per (batch, key tile), after 1: over the query tiles d_g, d_h.
// Every work item owns its outputs and sums in a fixed order: bitwise identical for any thread count.

// The per-row constants of the second-order terms: c_i (the softmax's row sum of Gp) and a_i.
template <typename T>
struct SecondOrderRow {
  T d, c, a;
  SecondOrderRow(T D, T R, T P, T Q, T gamma, T ugamma)
      : d(D), c(gamma * (P + Q - T(2) * D * R) + ugamma * D), a(ugamma - gamma * R) {}
  // gamma ds_ij and Gs_ij of one (i, j) from p, dp, B, E.
  void terms(T gamma, T p, T dp, T b, T e, T* gamma_ds, T* gs) const {
    const T ddp = dp - d;
    const T gp = gamma * ddp * b + gamma * e + a * dp;
    *gamma_ds = gamma * p * ddp;
    *gs = p * (gp - c);
  }
};

template <typename T>
void self_attn_double_backward_impl(const SelfAttnDoubleBackwardParams& p, const ParallelFor& parallel_for) {
  constexpr int64_t BQ = CpuTileTraits<T>::kBlockQ;
  constexpr int64_t BK = CpuTileTraits<T>::kBlockK;
  const int64_t B = p.B, Cqk = p.Cqk, Cv = p.Cv, Nq = p.Nq, Nk = p.Nk;
  const T scale = static_cast<T>(p.scale);
  const T qk = qk_scale<T>(p.scale);
  const T gamma = *static_cast<const T*>(p.gamma);
  const T ugamma = *static_cast<const T*>(p.ugamma);
  const T* dy = static_cast<const T*>(p.dy);
  const T* f = static_cast<const T*>(p.f);
  const T* g = static_cast<const T*>(p.g);
  const T* h = static_cast<const T*>(p.h);
  const T* o = static_cast<const T*>(p.o);
  const T* uf = static_cast<const T*>(p.uf);  // contiguous: channel stride Nq, batch Cqk Nq
  const T* ug = static_cast<const T*>(p.ug);  // channel stride Nk
  const T* uh = static_cast<const T*>(p.uh);  // channel stride Nk
  T* stats = static_cast<T*>(p.rowstats);
  T* const Ds = stats;
  T* const Rs = stats + B * Nq;
  T* const Ps = stats + 2 * B * Nq;
  T* const Qs = stats + 3 * B * Nq;
  T* d_dy = static_cast<T*>(p.d_dy);
  T* d_f = static_cast<T*>(p.d_f);
  T* d_g = static_cast<T*>(p.d_g);
  T* d_h = static_cast<T*>(p.d_h);

  // Per-thread tile state: p, dp, B (scaled) and E of a (query tile x key tile), BQ x BK row-major,
  // zero in the columns past the last key.
  struct Tiles {
    std::vector<T> s, dp, bm, e, fq, gpad, ugpad, hpad, uhpad;
    Tiles(int64_t Cqk, int64_t Cv)
        : s(BQ * BK), dp(BQ * BK), bm(BQ * BK), e(BQ * BK), fq(Cqk * BQ), gpad(Cqk * BK), ugpad(Cqk * BK),
          hpad(Cv * BK), uhpad(Cv * BK) {}
  };
  auto compute_tiles = [&](Tiles& t, int64_t b, int64_t q0, int64_t qn, int64_t k0, int64_t kn) {
    int64_t ldg = 0, ldug = 0, ldh = 0, lduh = 0;
    const T* gt = padded_tile(g + b * p.g_sb + k0, Cqk, p.g_sc, kn, BK, t.gpad.data(), &ldg);
    const T* ugt = padded_tile(ug + b * Cqk * Nk + k0, Cqk, Nk, kn, BK, t.ugpad.data(), &ldug);
    const T* ht = padded_tile(h + b * p.h_sb + k0, Cv, p.h_sc, kn, BK, t.hpad.data(), &ldh);
    const T* uht = padded_tile(uh + b * Cv * Nk + k0, Cv, Nk, kn, BK, t.uhpad.data(), &lduh);
    const T* fb = f + b * p.f_sb + q0;
    const T* ufb = uf + b * Cqk * Nq + q0;
    const T* dyb = dy + b * p.dy_sb + q0;
    copy_tile_scaled(fb, Cqk, p.f_sc, qn, BQ, qk, t.fq.data());  // f', as the forward forms it (see qk_scale)
    gemm_tile<T>(qn, BK, Cqk, t.fq.data(), 1, BQ, gt, ldg, t.s.data(), BK, false);   // f'^T g: base-2 scores
    gemm_tile<T>(qn, BK, Cv, dyb, 1, p.dy_sc, ht, ldh, t.dp.data(), BK, false);      // dy^T h
    gemm_tile<T>(qn, BK, Cqk, ufb, 1, Nq, gt, ldg, t.bm.data(), BK, false);          // uf^T g
    gemm_tile<T>(qn, BK, Cqk, fb, 1, p.f_sc, ugt, ldug, t.bm.data(), BK, true);      // + f^T ug
    gemm_tile<T>(qn, BK, Cv, dyb, 1, p.dy_sc, uht, lduh, t.e.data(), BK, false);     // dy^T uh
    const double* lseb = p.lse + b * Nq + q0;
    for (int64_t i = 0; i < qn; ++i) {
      T* srow = t.s.data() + i * BK;
      const double l = lseb[i] * kLog2e;
      const T l_hi = static_cast<T>(l);
      const T l_lo = static_cast<T>(l - static_cast<double>(l_hi));
      exp2_row(srow, kn, l_hi, l_lo);
      for (int64_t j = kn; j < BK; ++j) srow[j] = T(0);
      scale_row(t.bm.data() + i * BK, kn, scale);
    }
  };

  // D_i = sum_c dy[c,i] o[c,i], as the backward computes it.
  row_dot_dy_o(B, Cv, Nq, dy, p.dy_sb, p.dy_sc, o, p.o_sb, p.o_sc, Ds, parallel_for);

  // Pass 1: row statistics, then the query-side outputs d_f and d_dy.
  const int64_t n_qtiles = ceil_div(Nq, BQ);
  parallel_for(B * n_qtiles, [&](int64_t begin, int64_t end) {
    Tiles t(Cqk, Cv);
    // Transposed (key x query) operands of the output products: gamma ds, Gs, gamma p B, gamma p.
    std::vector<T> w_ds(BK * BQ, T(0)), w_gs(BK * BQ, T(0)), w_pb(BK * BQ, T(0)), w_p(BK * BQ, T(0));
    std::vector<T> acc_f(Cqk * BQ), acc_dy(Cv * BQ);
    std::vector<SecondOrderRow<T>> rows;
    rows.reserve(BQ);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / n_qtiles;
      const int64_t q0 = (item % n_qtiles) * BQ;
      const int64_t qn = std::min(BQ, Nq - q0);
      T* R = Rs + b * Nq + q0;
      T* P = Ps + b * Nq + q0;
      T* Q = Qs + b * Nq + q0;
      const T* D = Ds + b * Nq + q0;
      std::fill(R, R + qn, T(0));
      std::fill(P, P + qn, T(0));
      std::fill(Q, Q + qn, T(0));
      for (int64_t k0 = 0; k0 < Nk; k0 += BK) {
        const int64_t kn = std::min(BK, Nk - k0);
        compute_tiles(t, b, q0, qn, k0, kn);
        for (int64_t i = 0; i < qn; ++i) {
          const T* pr = t.s.data() + i * BK;
          const T* dpr = t.dp.data() + i * BK;
          const T* br = t.bm.data() + i * BK;
          const T* er = t.e.data() + i * BK;
          T r = T(0), pp = T(0), q = T(0);
          for (int64_t j = 0; j < kn; ++j) {
            const T pb = pr[j] * br[j];
            r += pb;
            pp += pb * dpr[j];
            q += pr[j] * er[j];
          }
          R[i] += r;
          P[i] += pp;
          Q[i] += q;
        }
      }
      rows.clear();
      for (int64_t i = 0; i < qn; ++i) rows.emplace_back(D[i], R[i], P[i], Q[i], gamma, ugamma);
      std::fill(acc_f.begin(), acc_f.end(), T(0));
      std::fill(acc_dy.begin(), acc_dy.end(), T(0));
      for (int64_t k0 = 0; k0 < Nk; k0 += BK) {
        const int64_t kn = std::min(BK, Nk - k0);
        compute_tiles(t, b, q0, qn, k0, kn);
        for (int64_t i = 0; i < qn; ++i) {
          const T* pr = t.s.data() + i * BK;
          const T* dpr = t.dp.data() + i * BK;
          const T* br = t.bm.data() + i * BK;
          const T* er = t.e.data() + i * BK;
          const SecondOrderRow<T>& row = rows[i];
          for (int64_t j = 0; j < kn; ++j) {
            row.terms(gamma, pr[j], dpr[j], br[j], er[j], &w_ds[j * BQ + i], &w_gs[j * BQ + i]);
            w_pb[j * BQ + i] = gamma * pr[j] * br[j];
            w_p[j * BQ + i] = gamma * pr[j];
          }
        }
        // acc_f (Cqk x BQ) += ug_tile (Cqk x kn) w_ds + g_tile (Cqk x kn) w_gs
        gemm_tile<T>(Cqk, BQ, kn, ug + b * Cqk * Nk + k0, Nk, 1, w_ds.data(), BQ, acc_f.data(), BQ, true);
        gemm_tile<T>(Cqk, BQ, kn, g + b * p.g_sb + k0, p.g_sc, 1, w_gs.data(), BQ, acc_f.data(), BQ, true);
        // acc_dy (Cv x BQ) += h_tile (Cv x kn) w_pb + uh_tile (Cv x kn) w_p
        gemm_tile<T>(Cv, BQ, kn, h + b * p.h_sb + k0, p.h_sc, 1, w_pb.data(), BQ, acc_dy.data(), BQ, true);
        gemm_tile<T>(Cv, BQ, kn, uh + b * Cv * Nk + k0, Nk, 1, w_p.data(), BQ, acc_dy.data(), BQ, true);
      }
      for (int64_t c = 0; c < Cqk; ++c) {
        T* out = d_f + (b * Cqk + c) * Nq + q0;
        const T* a = acc_f.data() + c * BQ;
        for (int64_t i = 0; i < qn; ++i) out[i] = scale * a[i];
      }
      for (int64_t c = 0; c < Cv; ++c) {
        T* out = d_dy + (b * Cv + c) * Nq + q0;
        const T* a = acc_dy.data() + c * BQ;
        const T* oc = o + b * p.o_sb + c * p.o_sc + q0;
        for (int64_t i = 0; i < qn; ++i) out[i] = a[i] + rows[i].a * oc[i];
      }
    }
  });

  // Pass 2: the key-side outputs d_g and d_h, with the row statistics of every query.
  const int64_t n_ktiles = ceil_div(Nk, BK);
  parallel_for(B * n_ktiles, [&](int64_t begin, int64_t end) {
    Tiles t(Cqk, Cv);
    std::vector<T> x_ds(BQ * BK), x_gs(BQ * BK), x_h(BQ * BK);  // query x key, like the tiles
    std::vector<T> acc_g(Cqk * BK), acc_h(Cv * BK);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / n_ktiles;
      const int64_t k0 = (item % n_ktiles) * BK;
      const int64_t kn = std::min(BK, Nk - k0);
      std::fill(acc_g.begin(), acc_g.end(), T(0));
      std::fill(acc_h.begin(), acc_h.end(), T(0));
      for (int64_t q0 = 0; q0 < Nq; q0 += BQ) {
        const int64_t qn = std::min(BQ, Nq - q0);
        compute_tiles(t, b, q0, qn, k0, kn);
        const T* D = Ds + b * Nq + q0;
        const T* R = Rs + b * Nq + q0;
        const T* P = Ps + b * Nq + q0;
        const T* Q = Qs + b * Nq + q0;
        for (int64_t i = 0; i < qn; ++i) {
          const T* pr = t.s.data() + i * BK;
          const T* dpr = t.dp.data() + i * BK;
          const T* br = t.bm.data() + i * BK;
          const T* er = t.e.data() + i * BK;
          const SecondOrderRow<T> row(D[i], R[i], P[i], Q[i], gamma, ugamma);
          T* xd = x_ds.data() + i * BK;
          T* xg = x_gs.data() + i * BK;
          T* xh = x_h.data() + i * BK;
          for (int64_t j = 0; j < kn; ++j) {
            row.terms(gamma, pr[j], dpr[j], br[j], er[j], &xd[j], &xg[j]);
            xh[j] = pr[j] * (gamma * br[j] + row.a);
          }
          for (int64_t j = kn; j < BK; ++j) xd[j] = xg[j] = xh[j] = T(0);
        }
        // acc_g (Cqk x BK) += uf_tile (Cqk x qn) x_ds + f_tile (Cqk x qn) x_gs
        gemm_tile<T>(Cqk, BK, qn, uf + b * Cqk * Nq + q0, Nq, 1, x_ds.data(), BK, acc_g.data(), BK, true);
        gemm_tile<T>(Cqk, BK, qn, f + b * p.f_sb + q0, p.f_sc, 1, x_gs.data(), BK, acc_g.data(), BK, true);
        // acc_h (Cv x BK) += dy_tile (Cv x qn) x_h
        gemm_tile<T>(Cv, BK, qn, dy + b * p.dy_sb + q0, p.dy_sc, 1, x_h.data(), BK, acc_h.data(), BK, true);
      }
      for (int64_t c = 0; c < Cqk; ++c) {
        T* out = d_g + (b * Cqk + c) * Nk + k0;
        const T* a = acc_g.data() + c * BK;
        for (int64_t j = 0; j < kn; ++j) out[j] = scale * a[j];
      }
      for (int64_t c = 0; c < Cv; ++c) {
        T* out = d_h + (b * Cv + c) * Nk + k0;
        const T* a = acc_h.data() + c * BK;
        for (int64_t j = 0; j < kn; ++j) out[j] = a[j];
      }
    }
  });

  double dgamma = 0.0;
  for (int64_t k = 0; k < B * Nq; ++k)
    dgamma += static_cast<double>(Ps[k]) - static_cast<double>(Ds[k]) * static_cast<double>(Rs[k]) +
              static_cast<double>(Qs[k]);
  *p.d_gamma = dgamma;
}
