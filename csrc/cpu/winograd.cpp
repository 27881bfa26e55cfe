// Winograd F(4x4, 3x3) on AVX-512 (cpu/winograd.h): transforms, batched GEMMs, task loop.
//
// Tiles: output tile (th, tw) covers outputs [4th, 4th+4) x [4tw, 4tw+4) and reads the 6x6 input
// patch at (4th - ph, 4tw - pw). Tiles of all images are numbered g = n*T + th*TW + tw and split
// into blocks of nb; one task = one block (and, when there are too few blocks to busy every
// thread, one chunk of output channels). Per task, in per-thread scratch:
//   V[xi][C x nbp] as GEMM B panels: 32-tile panels of [C][32] (nbp = nb rounded up to 32),
//   M[xi][Kpad][nbp] row-major,
// with the 36 planes vs = C*nbp + 16 and ms = Kpad*nbp + 16 floats apart (not a multiple of 4 KiB:
// a transform touches all 36 planes at once, which would otherwise share one L1 set),
// and, shared by all tasks, U[xi][Kpad/8][C][8] as GEMM A panels (output channels past K zero),
// planes us = Kpad*C + 16 floats apart.
// Transforms run on runs of up to 16 consecutive tiles of one tile row, one tile per vector lane:
// a patch row of the run is 64 (+2) contiguous input floats, de-interleaved into lanes by two
// in-register transposes, and an output row is 4 vectors interleaved back into 64 contiguous
// floats; masked loads and stores handle padding and the image edges (no gathers or scatters).
// Each output is one tile's GEMM column summed over C in a fixed order, whatever the blocking or
// the thread count: deterministic.
#include "cpu/winograd.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>

#include "cpu/avx512.h"
#include "cpu/dispatch.h"
#include "cpu/gemm.h"

namespace fastconv {
namespace cpu {
namespace {

// U's size in floats for K output and C input channels.
int64_t u_size(int64_t K, int64_t C) { return 36 * (round_up(K, 16) * C + 16); }

#if defined(__x86_64__)  // the kernels; elsewhere current_isa() is never kAvx512, so none applies
constexpr int64_t kPanel = 32;  // GEMM B panel width: the AVX-512 micro-kernel's NR (8 x 32)

// One Winograd convolution: x (N, C, H, W) -> y (N, K, P, Q), padding ph, pw.
struct WinoShape {
  int64_t N, C, H, W, K, ph, pw;
  int64_t P() const { return H + 2 * ph - 2; }
  int64_t Q() const { return W + 2 * pw - 2; }
  int64_t TH() const { return ceil_div(P(), 4); }
  int64_t TW() const { return ceil_div(Q(), 4); }
  int64_t T() const { return TH() * TW(); }  // tiles per image
};

// The 3x3 filter of output channel o, input channel i: w[o*so + i*si + tap], tap = r*3 + s, or
// 8 - (r*3 + s) when flipped.
struct WeightView {
  const float* w;
  int64_t so, si;
  bool flip;
};

// ---- 1-D transforms on 16 lanes (x, out: arrays with element stride xs / os) ----

// out = B^T x (6 -> 6).
FC_TARGET_AVX512 inline void bt6(const __m512* x, int xs, __m512* out, int os) {
  const __m512 x0 = x[0], x1 = x[xs], x2 = x[2 * xs], x3 = x[3 * xs], x4 = x[4 * xs], x5 = x[5 * xs];
  const __m512 four = _mm512_set1_ps(4.f), five = _mm512_set1_ps(5.f), two = _mm512_set1_ps(2.f);
  out[0] = _mm512_fnmadd_ps(five, x2, _mm512_fmadd_ps(four, x0, x4));
  out[os] = _mm512_fnmadd_ps(four, _mm512_add_ps(x1, x2), _mm512_add_ps(x3, x4));
  out[2 * os] = _mm512_fmadd_ps(four, _mm512_sub_ps(x1, x2), _mm512_sub_ps(x4, x3));
  out[3 * os] = _mm512_fmadd_ps(two, _mm512_sub_ps(x3, x1), _mm512_sub_ps(x4, x2));
  out[4 * os] = _mm512_fmadd_ps(two, _mm512_sub_ps(x1, x3), _mm512_sub_ps(x4, x2));
  out[5 * os] = _mm512_fnmadd_ps(five, x3, _mm512_fmadd_ps(four, x1, x5));
}

// out = A^T x (6 -> 4).
FC_TARGET_AVX512 inline void at6(const __m512* x, int xs, __m512* out, int os) {
  const __m512 s12 = _mm512_add_ps(x[xs], x[2 * xs]), d12 = _mm512_sub_ps(x[xs], x[2 * xs]);
  const __m512 s34 = _mm512_add_ps(x[3 * xs], x[4 * xs]), d34 = _mm512_sub_ps(x[3 * xs], x[4 * xs]);
  out[0] = _mm512_add_ps(_mm512_add_ps(x[0], s12), s34);
  out[os] = _mm512_fmadd_ps(_mm512_set1_ps(2.f), d34, d12);
  out[2 * os] = _mm512_fmadd_ps(_mm512_set1_ps(4.f), s34, s12);
  out[3 * os] = _mm512_add_ps(_mm512_fmadd_ps(_mm512_set1_ps(8.f), d34, d12), x[5 * xs]);
}

// out = G x (3 -> 6).
FC_TARGET_AVX512 inline void g3(const __m512* x, int xs, __m512* out, int os) {
  const __m512 x0 = x[0], x1 = x[xs], x2 = x[2 * xs];
  const __m512 s02 = _mm512_add_ps(x0, x2);
  const __m512 e = _mm512_fmadd_ps(_mm512_set1_ps(1.f / 24), x0, _mm512_mul_ps(_mm512_set1_ps(1.f / 6), x2));
  const __m512 h1 = _mm512_mul_ps(_mm512_set1_ps(1.f / 12), x1);
  out[0] = _mm512_mul_ps(_mm512_set1_ps(0.25f), x0);
  out[os] = _mm512_mul_ps(_mm512_set1_ps(-1.f / 6), _mm512_add_ps(s02, x1));
  out[2 * os] = _mm512_mul_ps(_mm512_set1_ps(-1.f / 6), _mm512_sub_ps(s02, x1));
  out[3 * os] = _mm512_add_ps(e, h1);
  out[4 * os] = _mm512_sub_ps(e, h1);
  out[5 * os] = x2;
}

// U[xi][Kpad/8][C][8] (planes us = Kpad*C + 16 apart) = G g G^T for output channels o < Kpad
// (zero for o >= K), Kpad % 16 == 0. This does output channels [o0, o0 + 16) (two A panels), one
// per vector lane: first into ub[C][36][16] (sequential writes), then panel by panel into U, so
// that U is written in 72 sequential runs rather than 72 interleaved streams.
FC_TARGET_AVX512 void weight_transform16(const WeightView& wv, int64_t K, int64_t C, int64_t Kpad, int64_t o0,
                                         float* ub, float* U) {
  const int64_t on = std::min<int64_t>(16, K - o0);  // lanes with a real output channel
  for (int64_t c = 0; c < C; ++c) {
    alignas(64) float gl[9][16] = {};  // gl[tap][lane]
    for (int64_t l = 0; l < on; ++l)
      for (int rs = 0; rs < 9; ++rs) gl[rs][l] = wv.w[(o0 + l) * wv.so + c * wv.si + (wv.flip ? 8 - rs : rs)];
    __m512 g[9], t[18], u[36];
    for (int rs = 0; rs < 9; ++rs) g[rs] = _mm512_load_ps(gl[rs]);
    for (int s = 0; s < 3; ++s) g3(g + s, 3, t + s, 3);    // t (6x3) = G g
    for (int i = 0; i < 6; ++i) g3(t + 3 * i, 1, u + 6 * i, 1);  // u (6x6) = t G^T
    for (int xi = 0; xi < 36; ++xi) _mm512_store_ps(ub + (c * 36 + xi) * 16, u[xi]);
  }
  for (int xi = 0; xi < 36; ++xi) {
    float* lo = U + xi * (Kpad * C + 16) + o0 * C;  // panel o0/8; panel o0/8 + 1 is 8*C further
    for (int64_t c = 0; c < C; ++c) _mm256_storeu_ps(lo + c * 8, _mm256_load_ps(ub + (c * 36 + xi) * 16));
    for (int64_t c = 0; c < C; ++c) _mm256_storeu_ps(lo + 8 * C + c * 8, _mm256_load_ps(ub + (c * 36 + xi) * 16 + 8));
  }
}

void weight_transform(const WeightView& wv, int64_t K, int64_t C, int64_t Kpad, float* U) {
  // At least ~64K filter pairs per thread: small weights are transformed inline, sparing a barrier.
  const int64_t grain = ceil_div(int64_t(1) << 16, 16 * C);
  at::parallel_for(0, Kpad / 16, grain, [&](int64_t begin, int64_t end) {
    static thread_local Scratch<float> ub_scratch;
    float* ub = ub_scratch.get(C * 36 * 16);
    for (int64_t ob = begin; ob < end; ++ob) weight_transform16(wv, K, C, Kpad, ob * 16, ub, U);
  });
}

// Lanes l with lo <= l < hi.
inline __mmask16 lane_range(int64_t lo, int64_t hi) {
  lo = std::clamp<int64_t>(lo, 0, 16), hi = std::clamp<int64_t>(hi, 0, 16);
  return hi <= lo ? __mmask16(0) : __mmask16(((1u << hi) - 1) & ~((1u << lo) - 1));
}

// 4x4 transpose inside every 128-bit chunk: element t of chunk k of v[j] <-> element j of chunk k of v[t].
FC_TARGET_AVX512 inline void transpose_in_chunks(__m512* v) {
  const __m512 a = _mm512_unpacklo_ps(v[0], v[1]), b = _mm512_unpackhi_ps(v[0], v[1]);
  const __m512 c = _mm512_unpacklo_ps(v[2], v[3]), d = _mm512_unpackhi_ps(v[2], v[3]);
  const __m512d ad = _mm512_castps_pd(a), bd = _mm512_castps_pd(b);
  const __m512d cd = _mm512_castps_pd(c), dd = _mm512_castps_pd(d);
  v[0] = _mm512_castpd_ps(_mm512_unpacklo_pd(ad, cd));
  v[1] = _mm512_castpd_ps(_mm512_unpackhi_pd(ad, cd));
  v[2] = _mm512_castpd_ps(_mm512_unpacklo_pd(bd, dd));
  v[3] = _mm512_castpd_ps(_mm512_unpackhi_pd(bd, dd));
}

// 4x4 transpose of 128-bit chunks: chunk k of v[m] <-> chunk m of v[k].
FC_TARGET_AVX512 inline void transpose_chunks(__m512* v) {
  const __m512 t0 = _mm512_shuffle_f32x4(v[0], v[1], 0x44), t1 = _mm512_shuffle_f32x4(v[2], v[3], 0x44);
  const __m512 t2 = _mm512_shuffle_f32x4(v[0], v[1], 0xEE), t3 = _mm512_shuffle_f32x4(v[2], v[3], 0xEE);
  v[0] = _mm512_shuffle_f32x4(t0, t1, 0x88);
  v[1] = _mm512_shuffle_f32x4(t0, t1, 0xDD);
  v[2] = _mm512_shuffle_f32x4(t2, t3, 0x88);
  v[3] = _mm512_shuffle_f32x4(t2, t3, 0xDD);
}

// A run of n <= 16 consecutive tiles of one tile row: image img, tile row th, columns tw..tw+n-1.
// The tiles [g0, gend) of a block split into such runs, in order; run r starts at block column col.
struct Run {
  int64_t img, th, tw, n, col;
};
inline Run run_at(const WinoShape& s, int64_t g0, int64_t g, int64_t gend) {
  const int64_t T = s.T(), TW = s.TW(), t = g % T;
  return Run{g / T, t / TW, t % TW, std::min({int64_t(16), TW - t % TW, gend - g}), g - g0};
}

// d[6*i + j], lane l = element (i, j) of the 6x6 patch of tile run.tw + l, channel plane xc (H x W, zero
// outside): per patch row, 64 contiguous floats de-interleaved by two transposes, plus 2 for j = 4, 5.
// With a gate plane gc (same layout), elements whose gate is <= 0 read as 0 (relu_backward's rule).
FC_TARGET_AVX512 inline void load_patches(const float* xc, const float* gc, const WinoShape& s, const Run& r,
                                          __m512* d) {
  const int64_t c0 = 4 * r.tw - s.pw;  // input column of lane 0's patch column 0
  for (int i = 0; i < 6; ++i) {
    __m512* di = d + 6 * i;
    const int64_t h = 4 * r.th - s.ph + i;
    if (h < 0 || h >= s.H) {
      for (int j = 0; j < 6; ++j) di[j] = _mm512_setzero_ps();
      continue;
    }
    const float* row = xc + h * s.W;
    const float* grow = gc ? gc + h * s.W : nullptr;
    for (int m = 0; m < 4; ++m) {  // lanes outside [0, W) are not read (and may lie outside x)
      __mmask16 in = lane_range(-c0 - 16 * m, s.W - c0 - 16 * m);
      if (grow)
        in &= _mm512_cmp_ps_mask(_mm512_maskz_loadu_ps(in, grow + c0 + 16 * m), _mm512_setzero_ps(), _CMP_NLE_UQ);
      di[m] = _mm512_maskz_loadu_ps(in, row + c0 + 16 * m);
    }
    transpose_chunks(di);
    transpose_in_chunks(di);  // di[j] lane l = row[c0 + 4l + j], j < 4
    const int64_t c64 = c0 + 64, c65 = c0 + 65;
    auto at = [&](int64_t c) { return c >= 0 && c < s.W && !(grow && grow[c] <= 0.f) ? row[c] : 0.f; };
    const __m512 e4 = _mm512_set1_ps(at(c64)), e5 = _mm512_set1_ps(at(c65));
    di[4] = _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(e4), _mm512_castps_si512(di[0]), 1));
    di[5] = _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(e5), _mm512_castps_si512(di[1]), 1));
  }
}

// Prefetches rows [h0, h0 + rows) x columns [c0, c0 + 16*lines) of a plane (H x W, row stride W),
// clipped to the plane: the runs of one channel are short, so the hardware prefetcher misses them.
inline void prefetch_rows(const float* plane, int64_t H, int64_t W, int64_t h0, int rows, int64_t c0, int lines,
                          bool write) {
  const int64_t lo = std::max<int64_t>(0, c0), hi = std::min(W, c0 + 16 * lines);
  for (int64_t h = std::max<int64_t>(0, h0); h < std::min(H, h0 + rows); ++h)
    for (int64_t c = lo; c < hi; c += 16) {
      if (write)
        __builtin_prefetch(plane + h * W + c, 1);
      else
        __builtin_prefetch(plane + h * W + c, 0);
    }
}

// V (see top) for tiles [g0, gend) of x; columns [gend - g0, nbp) are zeroed.
FC_TARGET_AVX512 void input_transform(const float* x, const float* gate, const WinoShape& s, int64_t g0,
                                      int64_t gend, int64_t nbp, float* V, int64_t vs) {
  const int64_t HW = s.H * s.W, C = s.C;
  for (int64_t c = 0; c < C; ++c)  // channel outer: consecutive runs read consecutive row segments
    for (int64_t g = g0; g < gend;) {
      const Run r = run_at(s, g0, g, gend);
      g += r.n;
      // Lanes [0, a) go to column panel r.col / 32, lanes [a, n) to the next panel.
      const int64_t off = r.col % kPanel, a = std::min(r.n, kPanel - off);
      const __mmask16 first = lane_range(0, a), second = lane_range(a, r.n);
      float* Vr = V + r.col / kPanel * C * kPanel + off;  // + xi*vs + c*32
      __m512 d[36], t[36], out[36];
      const float* xc = x + (r.img * C + c) * HW;
      if (c + 1 < C) prefetch_rows(xc + HW, s.H, s.W, 4 * r.th - s.ph, 6, 4 * r.tw - s.pw, 5, false);
      load_patches(xc, gate ? gate + (xc - x) : nullptr, s, r, d);
      for (int j = 0; j < 6; ++j) bt6(d + j, 6, t + j, 6);        // t = B^T d (columns)
      for (int i = 0; i < 6; ++i) bt6(t + 6 * i, 1, out + 6 * i, 1);  // out = t B (rows)
      for (int xi = 0; xi < 36; ++xi) {
        float* p = Vr + xi * vs + c * kPanel;
        _mm512_mask_storeu_ps(p, first, out[xi]);
        if (second) _mm512_mask_storeu_ps(p + C * kPanel - kPanel, second, out[xi]);
      }
    }
  const int64_t nb = gend - g0;
  if (nb < nbp)
    for (int64_t xi = 0; xi < 36; ++xi)
      for (int64_t c = 0; c < C; ++c) {
        float* p = V + xi * vs + (nbp - kPanel) * C + c * kPanel;
        std::fill(p + nb % kPanel, p + kPanel, 0.f);
      }
}

// y tiles [g0, gend) for output channels [k0, k1) from M (see top): A^T M A + bias, ReLU. Each
// output row of a run is 4 vectors, interleaved by two transposes into 64 contiguous floats.
FC_TARGET_AVX512 void output_transform(const float* M, int64_t ms, const WinoShape& s, int64_t g0, int64_t gend,
                                       int64_t nbp, int64_t k0, int64_t k1, const float* bias, bool relu, float* y) {
  const int64_t P = s.P(), Q = s.Q(), PQ = P * Q;
  for (int64_t k = k0; k < k1; ++k)  // channel outer: consecutive runs write consecutive row segments
    for (int64_t g = g0; g < gend;) {
      const Run r = run_at(s, g0, g, gend);
      g += r.n;
      const __mmask16 lanes = lane_range(0, r.n);
      const int64_t q0 = 4 * r.tw, qend = std::min(Q, 4 * (r.tw + r.n));  // output columns [q0, qend)
      __m512 m[36], t[24], out[16];
      for (int xi = 0; xi < 36; ++xi) m[xi] = _mm512_maskz_loadu_ps(lanes, M + xi * ms + k * nbp + r.col);
      for (int j = 0; j < 6; ++j) at6(m + j, 6, t + j, 6);         // t (4x6) = A^T m
      for (int i = 0; i < 4; ++i) at6(t + 6 * i, 1, out + 4 * i, 1);  // out (4x4) = t A
      const __m512 b = _mm512_set1_ps(bias ? bias[k] : 0.f), zero = _mm512_setzero_ps();
      for (int p = 0; p < 16; ++p) {
        out[p] = _mm512_add_ps(out[p], b);
        if (relu) out[p] = _mm512_max_ps(zero, out[p]);  // NaN stays NaN (max returns its second operand)
      }
      float* yk = y + (r.img * s.K + k) * PQ;
      if (k + 1 < k1) prefetch_rows(yk + PQ, P, Q, 4 * r.th, 4, q0, 4, true);
      for (int i = 0; i < 4 && 4 * r.th + i < P; ++i) {
        __m512* v = out + 4 * i;
        transpose_in_chunks(v);
        transpose_chunks(v);  // v[m] = output row columns q0 + 16m ...
        float* row = yk + (4 * r.th + i) * Q;
        for (int mm = 0; mm < 4; ++mm)
          _mm512_mask_storeu_ps(row + q0 + 16 * mm, lane_range(0, qend - q0 - 16 * mm), v[mm]);
      }
    }
}

// Tiles per block: V and M of a block (36*(C+Kpad)*nb floats) as close to 1 MiB as 32-tile
// steps allow, but 32 or 64 tiles (measured best for C + K from 64 to 1024; 128 is slower).
// Derived from the shape alone; not a setting.
int64_t tiles_per_block(const WinoShape& s, int64_t Kpad) {
  const int64_t fit = (int64_t(1) << 20) / (36 * 4 * (s.C + Kpad));
  return std::clamp<int64_t>((fit + kPanel / 2) / kPanel * kPanel, kPanel, 2 * kPanel);
}

// y = the convolution s of x with the transformed weights U (weight_transform).
void winograd_run(const float* x, const float* gate, const float* U, const float* bias, float* y, const WinoShape& s,
                  bool relu) {
  const MicroKernel<float> uk = micro_kernel<float>();
  TORCH_INTERNAL_ASSERT(uk.mr == 8 && uk.nr == kPanel, "fastconv: Winograd needs the AVX-512 8x32 micro-kernel");
  const int64_t C = s.C, K = s.K, Kpad = round_up(K, 16);

  const int64_t G = s.N * s.T();
  int64_t nb = tiles_per_block(s, Kpad);
  const int64_t threads = at::get_num_threads();
  // Enough blocks for every thread, if each keeps >= 32 tiles; then split K when still short.
  nb = std::min(nb, std::max(kPanel, round_up(ceil_div(G, threads), kPanel)));
  const int64_t blocks = ceil_div(G, nb);
  const int64_t kchunks = std::min(Kpad / 8, ceil_div(threads, blocks));
  const int64_t kcs = round_up(ceil_div(Kpad, kchunks), 8);  // output channels per chunk

  at::parallel_for(0, blocks * kchunks, 1, [&](int64_t begin, int64_t end) {
    static thread_local Scratch<float> v_scratch, m_scratch;
    const int64_t nbmax = round_up(nb, kPanel);
    float* V = v_scratch.get(36 * (C * nbmax + 16));
    float* M = m_scratch.get(36 * (Kpad * nbmax + 16));
    int64_t have = -1;  // the block whose V is in this thread's scratch
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / kchunks, kc = task % kchunks;
      const int64_t g0 = b * nb, gend = std::min(G, g0 + nb), nbp = round_up(gend - g0, kPanel);
      const int64_t k0 = kc * kcs, k1 = std::min(Kpad, k0 + kcs);
      if (k0 >= k1) continue;
      const int64_t vs = C * nbp + 16, ms = Kpad * nbp + 16;  // plane strides (see top)
      if (have != b) input_transform(x, gate, s, g0, gend, nbp, V, vs);
      have = b;
      for (int64_t xi = 0; xi < 36; ++xi) {
        const float* Uxi = U + xi * (Kpad * C + 16);
        const float* Vxi = V + xi * vs;
        float* Mxi = M + xi * ms;
        for (int64_t k = k0; k < k1; k += 8)
          for (int64_t j = 0; j < nbp; j += kPanel)
            uk.fn(C, Uxi + k * C, Vxi + j * C, Mxi + k * nbp + j, nbp, 1, false, 8, int(kPanel));
      }
      output_transform(M, ms, s, g0, gend, nbp, k0, std::min(K, k1), bias, relu, y);
    }
  });
}

#endif  // __x86_64__

}  // namespace

bool winograd_supports(const Conv2dShape& s) {
  if (s.R != 3 || s.S != 3 || s.stride_h != 1 || s.stride_w != 1 || s.dil_h != 1 || s.dil_w != 1 || s.groups != 1)
    return false;
  return current_isa() >= Isa::kAvx512 && s.pad_h >= 0 && s.pad_w >= 0 && s.N > 0 && s.P > 0 && s.Q > 0 &&
         s.C > 0 && s.K > 0;
}

int64_t winograd_weights_size(const Conv2dShape& s) { return u_size(s.K, s.C); }

void winograd_transform_weights(const float* w, const Conv2dShape& s, float* U) {
#if defined(__x86_64__)
  weight_transform(WeightView{w, s.C * 9, 9, false}, s.K, s.C, round_up(s.K, 16), U);
#else
  std::abort();  // the dispatch checks winograd_supports, which is false here
#endif
}

void winograd_conv3x3(const float* x, const float* U, const float* bias, float* y, const Conv2dShape& s,
                      bool relu) {
#if defined(__x86_64__)
  const WinoShape ws{s.N, s.C, s.H, s.W, s.K, s.pad_h, s.pad_w};
  winograd_run(x, nullptr, U, bias, y, ws, relu);
#else
  std::abort();  // the dispatch checks winograd_supports, which is false here
#endif
}

void winograd_backward_input(const float* dy, const float* w, float* dx, const Conv2dShape& s, const float* gate) {
#if defined(__x86_64__)
  // The dual convolution: dy (N, K, P, Q) -> dx (N, C, H, W), weight w'[c][k] = flip(w[k][c]).
  const Conv2dShape d = input_grad_dual(s);
  const WinoShape ws{d.N, d.C, d.H, d.W, d.K, d.pad_h, d.pad_w};
  static thread_local Scratch<float> u_scratch;  // the calling thread's, reused across calls
  float* U = u_scratch.get(u_size(d.K, d.C));
  weight_transform(WeightView{w, 9, s.C * 9, true}, d.K, d.C, round_up(d.K, 16), U);
  winograd_run(dy, gate, U, nullptr, dx, ws, false);
#else
  std::abort();  // the dispatch checks winograd_supports, which is false here
#endif
}

}  // namespace cpu
}  // namespace fastconv
