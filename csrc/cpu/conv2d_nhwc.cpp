// The NHWC conv2d kernels (cpu/conv2d_nhwc.h): packers that read NHWC im2col matrices for the GEMM
// of cpu/gemm.h, and the passes built on them.
#include "cpu/conv2d_nhwc.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <functional>
#include <optional>
#include <utility>
#include <type_traits>
#include <vector>

#include "cpu/avx512.h"
#include "cpu/dispatch.h"
#include "cpu/partial_sums.h"
#include "cpu/gemm.h"

namespace fastconv {
namespace cpu {
namespace {

constexpr int64_t kPixelTile = 192;  // output pixels per forward task (two MC blocks)

// The geometry of one NHWC convolution seen as col[m][k], m = (n*P + p)*Q + q an output pixel,
// k = (r*S + s)*Cg + c a depth index within one group (channel offset c0 = g*Cg in x).
struct NhwcGeometry {
  int64_t H, W, C, P, Q, R, S, Cg, sh, sw, ph, pw, dh, dw;
  NhwcGeometry(const Conv2dShape& s)
      : H(s.H), W(s.W), C(s.C), P(s.P), Q(s.Q), R(s.R), S(s.S), Cg(s.Cg()), sh(s.stride_h), sw(s.stride_w),
        ph(s.pad_h), pw(s.pad_w), dh(s.dil_h), dw(s.dil_w) {}
  int64_t depth() const { return R * S * Cg; }

  // Where pixel m's window starts: image n's first element index and (h, w) of tap (0, 0).
  struct Origin {
    int64_t img, h, w;
  };
  Origin origin(int64_t m) const {
    const int64_t q = m % Q, p = (m / Q) % P, n = m / (P * Q);
    return {n * H * W * C, p * sh - ph, q * sw - pw};
  }
  // With groups == 1 and dilation_w == 1, taps (r, s), (r, s+1), ... of a pixel are adjacent in
  // memory (pixel stride C == Cg), and so are padding taps (all read as zeros): the taps
  // [s, run_end) of o continue tap (r, s)'s run without a break.
  bool taps_adjacent() const { return dw == 1 && Cg == C; }
  int64_t run_end(const Origin& o, int64_t r, int64_t s) const {
    const int64_t h = o.h + r * dh, w = o.w + s;
    if (h < 0 || h >= H || w >= W) return S;  // padding to the end of the row of taps
    if (w < 0) return std::min(S, -o.w);        // left padding until the image starts
    return std::min(S, W - o.w);                // in the image until its right edge
  }
  // The offset of x[n][h][w][0] for tap (r, s) of o, or -1 in the padding.
  int64_t tap(const Origin& o, int64_t r, int64_t s) const {
    const int64_t h = o.h + r * dh, w = o.w + s * dw;
    return h < 0 || h >= H || w < 0 || w >= W ? -1 : o.img + (h * W + w) * C;
  }
};

// A zero row to read padding from (long enough for any run of taps: S*Cg values).
template <typename T>
const T* zeros(int64_t n) {
  static thread_local std::vector<T> z;
  if (int64_t(z.size()) < n) z.assign(size_t(n), T(0));
  return z.data();
}

// d[t*MR + i] = src[i][t] for t < len, i < MR: MR rows of len values interleaved.
template <typename T, int MR>
inline void interleave(const T* const* src, int64_t len, T* d) {
  for (int64_t t = 0; t < len; ++t, d += MR)
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) d[i] = src[i][t];
}

#if defined(__x86_64__)
// AVX-512 float, MR = 8: 16 depth values of 8 rows per step, transposed in registers
// (8 x 16 -> 16 x 8) and stored as 128 contiguous floats; the tail by the scalar loop.
FC_TARGET_AVX512 void interleave8_avx512(const float* const* src, int64_t len, float* d) {
  int64_t t = 0;
  const __m512i idx_lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i idx_hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  for (; t + 16 <= len; t += 16, d += 128) {
    __m512 r[8];
    for (int i = 0; i < 8; ++i) r[i] = _mm512_loadu_ps(src[i] + t);
    // Stage 1: pairs of rows interleaved: a[i] holds (r[2i][t], r[2i+1][t]) for t in 0..7 / 8..15.
    __m512 a[8];
    for (int i = 0; i < 4; ++i) {
      a[2 * i] = _mm512_permutex2var_ps(r[2 * i], idx_lo, r[2 * i + 1]);
      a[2 * i + 1] = _mm512_permutex2var_ps(r[2 * i], idx_hi, r[2 * i + 1]);
    }
    // Stages 2 and 3 transpose the 64-bit pairs (4 pairs x 8 depths per half h).
    const __m512i q_lo = _mm512_setr_epi64(0, 8, 1, 9, 2, 10, 3, 11);
    const __m512i q_hi = _mm512_setr_epi64(4, 12, 5, 13, 6, 14, 7, 15);
    __m512d b[8];
    for (int h = 0; h < 2; ++h)
      for (int j = 0; j < 2; ++j) {  // pairs (rows 0-1, 2-3) for j = 0, (4-5, 6-7) for j = 1
        const __m512d x0 = _mm512_castps_pd(a[4 * j + h]), x1 = _mm512_castps_pd(a[4 * j + 2 + h]);
        b[4 * h + 2 * j] = _mm512_permutex2var_pd(x0, q_lo, x1);
        b[4 * h + 2 * j + 1] = _mm512_permutex2var_pd(x0, q_hi, x1);
      }
    // b[4h + 2j + e] holds, for depth t in (8h + 4e .. 8h + 4e + 3), the 4 floats of rows
    // 4j..4j+3. Combine j = 0 and 1 halves: 256-bit lanes.
    for (int h = 0; h < 2; ++h)
      for (int e = 0; e < 2; ++e) {
        const __m512d lo = b[4 * h + e], hi = b[4 * h + 2 + e];
        const __m512d o0 = _mm512_shuffle_f64x2(lo, hi, 0x44);  // depth 0,1 of this quad
        const __m512d o1 = _mm512_shuffle_f64x2(lo, hi, 0xEE);  // depth 2,3
        float* out = d + (8 * h + 4 * e) * 8;
        // lanes (0, 2, 1, 3): depth t's 8 rows (lo.l0, hi.l0), then depth t+1's (lo.l1, hi.l1)
        _mm512_storeu_pd(reinterpret_cast<double*>(out), _mm512_shuffle_f64x2(o0, o0, 0xD8));
        _mm512_storeu_pd(reinterpret_cast<double*>(out + 16), _mm512_shuffle_f64x2(o1, o1, 0xD8));
      }
  }
  for (; t < len; ++t, d += 8)
    for (int i = 0; i < 8; ++i) d[i] = src[i][t];
}
#endif

#if defined(__x86_64__)
// The A panel rows of 8 consecutive output pixels (stride 1, dilation 1, groups 1) for one kernel
// row: `in` is the input span of those pixels' taps, (7 + S) pixels of Cg channels, so depth
// kk < S*Cg of pixel i is in[Cg*i + kk]; out[kk*8 + i] receives it. Needs (7 + S)*Cg <= 32.
FC_TARGET_AVX512 void small_taps_avx512(const float* in, int SC, int Cg, float* out) {
  const int n_in = 7 * Cg + SC;
  const __m512 lo = _mm512_maskz_loadu_ps(__mmask16(n_in >= 16 ? 0xFFFF : (1u << n_in) - 1), in);
  const __m512 hi = _mm512_maskz_loadu_ps(__mmask16(n_in <= 16 ? 0 : (1u << (n_in - 16)) - 1), in + 16);
  // lanes 0-7: pixel i's depth kk; lanes 8-15: its depth kk + 1
  const __m512i base = _mm512_add_epi32(_mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7),
                                                           _mm512_set1_epi32(Cg)),
                                        _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1));
  for (int kk = 0; kk < SC; kk += 2) {
    const __m512 v = _mm512_permutex2var_ps(lo, _mm512_add_epi32(base, _mm512_set1_epi32(kk)), hi);
    _mm512_mask_storeu_ps(out + kk * 8, kk + 1 < SC ? __mmask16(0xFFFF) : __mmask16(0xFF), v);
  }
}
#endif

// col as the A operand (rows = pixels m_base + i, depth k), rows at or past m_end zero.
// Per tap (r, s) the MR rows' sources are Cg contiguous values each; they are interleaved into
// the panel (element (i, k) at panel[k*MR + i]) one depth index at a time.
template <typename T>
struct NhwcColAsA {
  const NhwcGeometry& g;
  const T* x;  // x + g*Cg: the group's first channel
  int64_t m_base, m_end;
  const T* operator()(T* dst, int64_t i0, int64_t mc, int64_t k0, int64_t kc, int mr) const {
    const T* zero = zeros<T>(g.S * g.Cg);
    const bool adjacent = g.taps_adjacent();
    const bool avx512 = current_isa() >= Isa::kAvx512;
    // small_taps_avx512's case: groups 1, unit horizontal stride and dilation, the 8 rows' span of
    // (7 + S) pixels fits one 32-float register pair.
    const bool small = avx512 && adjacent && g.sw == 1 && (7 + g.S) * g.Cg <= 32;
    const T* src[16];
    NhwcGeometry::Origin o[16];
    for (int64_t ip = 0; ip < mc; ip += mr) {
      T* panel = dst + ip * kc;
      bool valid[16];
      for (int i = 0; i < mr; ++i) {
        const int64_t m = m_base + i0 + ip + i;
        valid[i] = ip + i < mc && m < m_end;
        if (valid[i]) o[i] = g.origin(m);
      }
      // Depth [kb, ke) of this panel, tap run by tap run.
      auto pack_range = [&](int64_t kb, int64_t ke) {
      for (int64_t k = kb; k < ke;) {
        const int64_t rs = k / g.Cg, c = k % g.Cg;
        const int64_t r = rs / g.S, s = rs % g.S;
        // A run of contiguous depth: this tap's channels, or with adjacent taps as far as every
        // row's source stays contiguous (all in the image, or all padding).
        int64_t s_end = s + 1;
        if (adjacent) {
          s_end = g.S;
          for (int i = 0; i < mr; ++i)
            if (valid[i]) s_end = std::min(s_end, g.run_end(o[i], r, s));
        }
        const int64_t len = std::min((s_end - s) * g.Cg - c, ke - k);
        for (int i = 0; i < mr; ++i) {
          const int64_t off = valid[i] ? g.tap(o[i], r, s) : -1;
          src[i] = off < 0 ? zero : x + off + c;
        }
        T* d = panel + (k - k0) * mr;
        switch (mr) {  // the micro-kernels' MR as a constant, so the row loop unrolls
          case 8:
#if defined(__x86_64__)
            if constexpr (std::is_same_v<T, float>) {
              if (avx512) {
                interleave8_avx512(src, len, d);
                break;
              }
            }
#endif
            interleave<T, 8>(src, len, d);
            break;
          case 6: interleave<T, 6>(src, len, d); break;
          case 4: interleave<T, 4>(src, len, d); break;
          default:
            for (int64_t t = 0; t < len; ++t, d += mr)
              for (int i = 0; i < mr; ++i) d[i] = src[i][t];
        }
        k += len;
      }
      };
#if defined(__x86_64__)
      // Few channels (the first layer, C = 3): when the 8 rows are 8 consecutive pixels of one
      // output row, each kernel row's S*C depth values of all 8 come from one contiguous input
      // span, rearranged by register permutes (small_taps_avx512).
      if constexpr (std::is_same_v<T, float>) {
        if (small && mr == 8 && k0 == 0 && kc == g.depth() && valid[7] && o[7].img == o[0].img &&
            o[7].h == o[0].h && o[7].w == o[0].w + 7) {
          const int64_t SC = g.S * g.Cg;
          for (int64_t r = 0; r < g.R; ++r) {
            const int64_t h = o[0].h + r * g.dh;
            if (h >= 0 && h < g.H && o[0].w >= 0 && o[0].w + 7 + g.S - 1 < g.W)
              small_taps_avx512(x + o[0].img + (h * g.W + o[0].w) * g.C, int(SC), int(g.Cg), panel + r * SC * 8);
            else
              pack_range(r * SC, (r + 1) * SC);
          }
          continue;
        }
      }
#endif
      pack_range(k0, k0 + kc);
    }
    return dst;
  }
};

// col as the B operand (depth = pixels m_base + k, panel dimension = depth index j of col): the
// weight gradient. Per pixel, the panel's NR columns are runs of contiguous channels.
template <typename T>
struct NhwcColAsB {
  const NhwcGeometry& g;
  const T* x;
  int64_t m_base;
  const T* operator()(T* dst, int64_t j0, int64_t nc, int64_t k0, int64_t kc, int nr) const {
    const int64_t panels = ceil_div(nc, nr);
    for (int64_t k = 0; k < kc; ++k) {
      const NhwcGeometry::Origin o = g.origin(m_base + k0 + k);
      for (int64_t jp = 0; jp < panels; ++jp) {
        T* d = dst + jp * nr * kc + k * nr;
        const int64_t jb = j0 + jp * nr, je = std::min(j0 + nc, jb + nr);
        for (int64_t j = jb; j < je;) {
          const int64_t rs = j / g.Cg, c = j % g.Cg, len = std::min(g.Cg - c, je - j);
          const int64_t off = g.tap(o, rs / g.S, rs % g.S);
          T* dd = d + (j - jb);
          if (off < 0) std::fill(dd, dd + len, T(0));
          else std::copy(x + off + c, x + off + c + len, dd);
          j += len;
        }
        for (int64_t j = je - jb; j < nr; ++j) d[j] = T(0);
      }
    }
    return dst;
  }
};

// A matrix given by an element function f(x, k) (x the panel dimension): the weights, packed once.
template <typename T, typename F>
struct FnMatrix {
  F f;
  const T* operator()(T* dst, int64_t x0, int64_t xn, int64_t k0, int64_t kc, int width) const {
    for (int64_t xp = 0; xp < xn; xp += width)
      for (int64_t x = 0; x < width; ++x) {
        T* d = dst + xp * kc + x;
        const bool in = xp + x < xn;
        for (int64_t k = 0; k < kc; ++k) d[k * width] = in ? f(x0 + xp + x, k0 + k) : T(0);
      }
    return dst;
  }
};

// A matrix with columns at offsets: element (x, k) at p[off[x] + k*sk] (x the panel dimension);
// packed depth row by depth row across all panels, so that each row is read in memory order.
template <typename T>
struct OffsetColumns {
  const T* p;
  const int64_t* off;
  int64_t sk;
  const T* operator()(T* dst, int64_t x0, int64_t xn, int64_t k0, int64_t kc, int width) const {
    // whether each panel's columns are adjacent in memory (copied as one run)
    std::vector<char> run(size_t(ceil_div(xn, width)));
    for (int64_t x = 0; x < xn; ++x) {
      char& r = run[size_t(x / width)];
      r = x % width == 0 || (r && off[x0 + x] == off[x0 + x - 1] + 1);
    }
    for (int64_t k = 0; k < kc; ++k) {
      const T* pk = p + (k0 + k) * sk;
      for (int64_t xp = 0; xp < xn; xp += width) {
        const int64_t w = std::min<int64_t>(width, xn - xp);
        const int64_t* o = off + x0 + xp;
        T* d = dst + xp * kc + k * width;
        if (run[size_t(xp / width)]) std::copy(pk + o[0], pk + o[0] + w, d);
        else for (int64_t x = 0; x < w; ++x) d[x] = pk[o[x]];
        std::fill(d + w, d + width, T(0));
      }
    }
    return dst;
  }
};

// The forward GEMMs for groups of `cols` output channels over input x (N, H, W, C) with weights
// wt(g, j, k) = Wt_g[k][j] (k = (r*S + s)*Cg + c): y (N, P, Q, K) = col * Wt (+ bias, ReLU).
// Serves the forward pass and, on the dual convolution, the stride-1 input gradient.
template <typename T, typename WtFn>
void nhwc_conv_gemm(const T* x, WtFn wt, const T* bias, acc_t<T>* y, const Conv2dShape& s, bool relu) {
  using Acc = acc_t<T>;
  const NhwcGeometry geo(s);
  const int64_t Kg = s.Kg(), CRS = geo.depth(), M = s.N * s.P * s.Q;
  const int64_t tiles = ceil_div(M, kPixelTile);
  const int nr = micro_kernel<T>().nr;
  // Wt_g packed as B panels (column = output channel), once for all tasks; 64-byte aligned (the
  // micro-kernels load B panels with aligned loads).
  const int64_t size = PackedA<T>::size(Kg, CRS, nr);
  Scratch<T> storage_buf;
  T* storage = storage_buf.get(size * s.groups);
  std::vector<PackedA<T>> packed;
  for (int64_t g = 0; g < s.groups; ++g) {
    auto f = [&, g](int64_t j, int64_t k) { return wt(g, j, k); };
    packed.emplace_back(FnMatrix<T, decltype(f)>{f}, Kg, CRS, nr, storage + g * size);
  }
  // Tasks: pixel tiles x groups x blocks of kColBlock output channels (a multiple of every NR;
  // more, smaller tasks for wide layers on few pixels, and A is packed once per 256 columns
  // either way, as the GEMM's column blocking would).
  constexpr int64_t kColBlock = 256;
  const int64_t cblocks = ceil_div(Kg, kColBlock);
  at::parallel_for(0, tiles * s.groups * cblocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task % cblocks, g = (task / cblocks) % s.groups, t = task / (cblocks * s.groups);
      const int64_t m0 = t * kPixelTile, mt = std::min(kPixelTile, M - m0);
      const int64_t j0 = b * kColBlock, nc = std::min(kColBlock, Kg - j0);
      Acc* yt = y + m0 * s.K + g * Kg + j0;  // Y rows m0.., this block's columns; row stride K
      gemm<T>(mt, nc, CRS, NhwcColAsA<T>{geo, x + g * geo.Cg, m0, M}, packed[g].rows_from(j0), yt, s.K, 1, false);
      // Epilogue on contiguous output rows, one loop per case so that each vectorises.
      const T* bb = bias ? bias + g * Kg + j0 : nullptr;
      for (int64_t i = 0; i < mt && (bb || relu); ++i) {
        Acc* __restrict__ row = yt + i * s.K;
        if (bb && relu) {
          for (int64_t j = 0; j < nc; ++j) {
            const Acc v = row[j] + Acc(bb[j]);
            row[j] = v < Acc(0) ? Acc(0) : v;  // NaN stays NaN, as in relu
          }
        } else if (bb) {
          for (int64_t j = 0; j < nc; ++j) row[j] += Acc(bb[j]);
        } else {
          for (int64_t j = 0; j < nc; ++j) row[j] = row[j] < Acc(0) ? Acc(0) : row[j];
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// The direct path (float32 on AVX-512): no im2col panels. For a chunk of output pixels a *tap
// table* gives, per pixel and segment, where that segment's depth values lie: a segment is a
// kernel row r (taps adjacent: S*Cg values, contiguous in x) or one tap (r, s) (Cg values). The
// pointer is into x itself, into a zero row (the segment is all padding), or into a row of the
// chunk's edge buffer (a kernel row that straddles the left/right padding, copied with zeros).
// The micro-kernels then broadcast A straight from those rows: the forward's MR x 32 tile
// (pixels x output channels) and the weight gradient's MR x 32 tile (depth x output channels,
// summed over the chunk's pixels); B (weights, resp. dy rows) is read as 32-float rows.

constexpr int kDirectMR = 14;  // rows of a tile: 2*14 accumulators + 2 B vectors of the 32 zmm
constexpr int64_t kDirectNR = 32; // output channels of a tile (two 16-float vectors)

// Whether the direct path's tiles are 64 output channels wide: there are at least 64 and the last
// 64-wide panel leaves no more lanes idle than 32-wide panels would (80 channels: 32-wide panels).
inline bool direct_wide(int64_t Kg) { return Kg >= 64 && round_up(Kg, 2 * kDirectNR) == round_up(Kg, kDirectNR); }

// Whether the direct path serves T on the ISA in use.
template <typename T>
bool direct_nhwc() {
  return std::is_same_v<T, float> && current_isa() >= Isa::kAvx512;
}

// The segments of NhwcGeometry g: count, values per segment (Ls), and depth k = seg*Ls + u.
struct Segments {
  bool adjacent;
  int64_t count, len;
  explicit Segments(const NhwcGeometry& g)
      : adjacent(g.taps_adjacent()), count(adjacent ? g.R : g.R * g.S), len(adjacent ? g.S * g.Cg : g.Cg) {}
  Segments(int64_t count_, int64_t len_) : adjacent(false), count(count_), len(len_) {}
};

// The tap table of pixels [m0, m0 + n): rows[i*seg.count + sg] points at segment sg of pixel m0+i.
template <typename T>
struct TapTable {
  std::vector<const T*> rows;
  Scratch<T> edge;
  void build(const NhwcGeometry& g, const Segments& seg, const T* xg, int64_t m0, int64_t n) {
    rows.resize(size_t(n * seg.count));
    const T* zero = zeros<T>(seg.len);
    // Edge rows: only merged kernel rows can straddle the padding, at most R per pixel.
    int64_t straddling = 0;
    for (int64_t i = 0, q = m0 % g.Q; i < n; ++i, q = q + 1 == g.Q ? 0 : q + 1) {
      const int64_t w0 = q * g.sw - g.pw;
      straddling += (w0 < 0 || w0 + g.S > g.W) && w0 + g.S > 0 && w0 < g.W;
    }
    T* e = seg.adjacent ? edge.get(std::max<int64_t>(1, straddling * g.R * seg.len)) : nullptr;
    int64_t q = m0 % g.Q, p = (m0 / g.Q) % g.P, img = (m0 / (g.P * g.Q)) * g.H * g.W * g.C;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t h0 = p * g.sh - g.ph, w0 = q * g.sw - g.pw;
      const T** out = rows.data() + i * seg.count;
      if (seg.adjacent) {
        const bool inside = w0 >= 0 && w0 + g.S - 1 < g.W;
        for (int64_t r = 0; r < g.R; ++r) {
          const int64_t h = h0 + r * g.dh;
          if (h < 0 || h >= g.H || w0 + g.S <= 0 || w0 >= g.W) {
            out[r] = zero;
          } else if (inside) {
            out[r] = xg + img + (h * g.W + w0) * g.C;
          } else {
            for (int64_t s = 0; s < g.S; ++s) {
              const int64_t w = w0 + s;
              T* d = e + s * g.Cg;
              if (w < 0 || w >= g.W) std::fill(d, d + g.Cg, T(0));
              else std::copy(xg + img + (h * g.W + w) * g.C, xg + img + (h * g.W + w) * g.C + g.Cg, d);
            }
            out[r] = e;
            e += seg.len;
          }
        }
      } else {
        for (int64_t r = 0; r < g.R; ++r)
          for (int64_t s = 0; s < g.S; ++s) {
            const int64_t h = h0 + r * g.dh, w = w0 + s * g.dw;
            out[r * g.S + s] = h < 0 || h >= g.H || w < 0 || w >= g.W ? zero : xg + img + (h * g.W + w) * g.C;
          }
      }
      if (++q == g.Q) {
        q = 0;
        if (++p == g.P) p = 0, img += g.H * g.W * g.C;
      }
    }
  }
};

// Output pixels per chunk: `depth` input values and K outputs per pixel in about half of L2; a
// multiple of MR.
inline int64_t direct_chunk(int64_t depth, int64_t K, int64_t M, int64_t groups) {
  const int64_t per_px = int64_t(sizeof(float)) * (depth + K);
  int64_t px = std::max<int64_t>(4 * kDirectMR, cache_sizes().l2 / 2 / per_px);
  // at least 8 tasks for the threads (the result does not depend on the chunking)
  px = std::min(px, std::max<int64_t>(kDirectMR, ceil_div(M, ceil_div(8, groups))));
  return round_up(px, kDirectMR);
}

#if defined(__x86_64__)
inline __mmask16 lanes(int n) { return n >= 16 ? __mmask16(0xFFFF) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1); }

// a[t] broadcast to 16 lanes by one load, written out so that the compiler neither folds the
// broadcast into each FMA using it (one load per FMA) nor spends a register per row offset.
FC_TARGET_AVX512 inline __m512 bcast_at(const float* a, int64_t t) {
  __m512 v;
  asm("vbroadcastss (%1,%2,4), %0" : "=v"(v) : "r"(a), "r"(t), "m"(a[t]));
  return v;
}

// acc[v] += a * b[v]: one tile row's FMAs.
template <int NV>
FC_TARGET_AVX512 inline void fma_row(__m512 (&acc)[NV], __m512 a, const __m512 (&b)[NV]) {
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) acc[v] = _mm512_fmadd_ps(a, b[v], acc[v]);
}

// Forward tile of MR pixels x NV*16 output channels: C[i][0..n) (=|+=) sum over segments sg in
// [s0, s1), t < len of rows[i*nseg + sg][u0 + t] * b[sg*bseg + t*NV*16 + j] (b already offset to
// depth u0). MR*NV accumulators + NV weight vectors fit the 32 zmm registers.
template <int MR, int NV>
FC_TARGET_AVX512 void direct_fwd_tile(const float* const* rows, int64_t nseg, int64_t s0, int64_t s1, int64_t u0,
                                      int64_t len, const float* b, int64_t bseg, float* c, int64_t rsc,
                                      bool accumulate, int n) {
  __m512 acc[MR][NV];
#pragma GCC unroll 14
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_setzero_ps();
  for (int64_t sg = s0; sg < s1; ++sg) {
    const float* a[MR];
#pragma GCC unroll 14
    for (int i = 0; i < MR; ++i) a[i] = rows[i * nseg + sg] + u0;
    const float* bp = b + sg * bseg;
    for (int64_t t = 0; t < len; ++t, bp += NV * 16) {
      __m512 bv[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) bv[v] = _mm512_loadu_ps(bp + 16 * v);
#pragma GCC unroll 14
      for (int i = 0; i < MR; ++i) fma_row(acc[i], bcast_at(a[i], t), bv);
    }
  }
#pragma GCC unroll 14
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      float* ci = c + i * rsc + 16 * v;
      const __mmask16 k = lanes(n - 16 * v);
      if (accumulate) acc[i][v] = _mm512_add_ps(acc[i][v], _mm512_maskz_loadu_ps(k, ci));
      _mm512_mask_storeu_ps(ci, k, acc[i][v]);
    }
}

// Weight-gradient tile of MR depth indices x NV*16 output channels: out[i*NV*16 + j] += sum over
// pixels p < np of rows[p*nseg][u0 + i] * dy[p*K + j] (dy read as zeros from column n on): rows
// of the transposed gradient.
template <int MR, int NV>
FC_TARGET_AVX512 void direct_wgt_tile(const float* const* rows, int64_t nseg, int64_t np, int64_t u0, const float* dy,
                                      int64_t K, float* out, int n) {
  __m512 acc[MR][NV];
#pragma GCC unroll 14
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_setzero_ps();
  __mmask16 k[NV];
  for (int v = 0; v < NV; ++v) k[v] = lanes(n - 16 * v);
  for (int64_t p = 0; p < np; ++p, dy += K) {
    const float* a = rows[p * nseg] + u0;
    __m512 d[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) d[v] = _mm512_maskz_loadu_ps(k[v], dy + 16 * v);
#pragma GCC unroll 14
    for (int i = 0; i < MR; ++i) fma_row(acc[i], bcast_at(a, i), d);
  }
#pragma GCC unroll 14
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      float* o = out + i * NV * 16 + 16 * v;
      _mm512_storeu_ps(o, _mm512_add_ps(acc[i][v], _mm512_loadu_ps(o)));
    }
}

// The tiles of NV vectors by row count 1..sizeof...(I).
template <int NV, int... I>
constexpr auto fwd_tiles(std::integer_sequence<int, I...>) {
  return std::array{&direct_fwd_tile<I + 1, NV>...};
}
template <int NV, int... I>
constexpr auto wgt_tiles(std::integer_sequence<int, I...>) {
  return std::array{&direct_wgt_tile<I + 1, NV>...};
}
// 64 output channels (wide layers): 6 x 4 accumulators, a broadcast feeding 4 FMAs
constexpr int kWideMR = 6;
constexpr auto kFwdTiles = fwd_tiles<2>(std::make_integer_sequence<int, kDirectMR>{});
constexpr auto kFwdTilesWide = fwd_tiles<4>(std::make_integer_sequence<int, kWideMR>{});
constexpr auto kFwdTilesNarrow = fwd_tiles<1>(std::make_integer_sequence<int, kDirectMR>{});
constexpr auto kWgtTiles = wgt_tiles<2>(std::make_integer_sequence<int, kDirectMR>{});
constexpr auto kWgtTilesWide = wgt_tiles<4>(std::make_integer_sequence<int, kWideMR>{});
#endif

// The weights of every group as nr-column B panels over the whole depth: panel (g, jp) holds
// bw[k*nr + j] = wt(g, jp*nr + j, r, s, c) for k = (r*S + s)*Cg + c, zero past Kg.
template <typename WtFn>
float* pack_direct_weights(Scratch<float>& buf, WtFn wt, int64_t groups, int64_t Kg, int64_t R, int64_t S,
                           int64_t Cg, int64_t nr) {
  const int64_t panels = ceil_div(Kg, nr), psize = R * S * Cg * nr;
  float* bw = buf.get(groups * panels * psize);
  at::parallel_for(0, groups * panels, 1, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const int64_t g = t / panels, j0 = (t % panels) * nr, nj = std::min(nr, Kg - j0);
      float* d = bw + t * psize;
      for (int64_t r = 0; r < R; ++r)
        for (int64_t s = 0; s < S; ++s)
          for (int64_t c = 0; c < Cg; ++c, d += nr) {
            for (int64_t j = 0; j < nj; ++j) d[j] = wt(g, j0 + j, r, s, c);
            std::fill(d + nj, d + nr, 0.f);
          }
    }
  });
  return bw;
}

#if defined(__x86_64__)
// The direct path's forward tiling for Kg output channels: tiles of 14 pixels x 32 output
// channels, 6 x 64 when direct_wide (fewer broadcasts per FMA), 14 x 16 when there are 16 or
// fewer (fewer idle lanes: the input gradient of an RGB layer has 3); depth blocks of B (depth x
// nr floats) of about half of L1.
struct DirectTiling {
  int64_t Kg, nr, mr_max, panels, kc;
  const decltype(kFwdTiles)::value_type* tiles;
  explicit DirectTiling(int64_t Kg_) : Kg(Kg_) {
    const bool wide = direct_wide(Kg), narrow = Kg <= 16;
    nr = wide ? 2 * kDirectNR : narrow ? kDirectNR / 2 : kDirectNR;
    mr_max = wide ? kWideMR : kDirectMR;
    tiles = wide ? kFwdTilesWide.data() : narrow ? kFwdTilesNarrow.data() : kFwdTiles.data();
    panels = ceil_div(Kg, nr);
    kc = std::max<int64_t>(16, cache_sizes().l1 / 2 / (nr * int64_t(sizeof(float))));
  }
  // y[i][0..Kg) (row stride ldy) = the products of pixels i < n of a tap table (rows, seg) with
  // the column panels bw (pack_direct_weights' layout for one group): whole segments per depth
  // block when they fit, else slices of one segment.
  void run(const float* const* rows, const Segments& seg, int64_t n, const float* bw, float* y, int64_t ldy) const {
    const int64_t segs_per_block = std::max<int64_t>(1, kc / seg.len), ulen = std::min(seg.len, kc);
    const int64_t psize = seg.count * seg.len * nr;
    for (int64_t s0 = 0; s0 < seg.count; s0 += segs_per_block) {
      const int64_t s1 = std::min(seg.count, s0 + segs_per_block);
      for (int64_t u0 = 0; u0 < seg.len; u0 += ulen) {
        const int64_t len = std::min(ulen, seg.len - u0);
        const bool acc = s0 > 0 || u0 > 0;
        for (int64_t jp = 0; jp < panels; ++jp) {
          const float* b = bw + jp * psize + u0 * nr;
          const int nc = int(std::min(nr, Kg - jp * nr));
          for (int64_t i0 = 0; i0 < n; i0 += mr_max) {
            const int mr = int(std::min(mr_max, n - i0));
            tiles[mr - 1](rows + i0 * seg.count, seg.count, s0, s1, u0, len, b, seg.len * nr, y + i0 * ldy + jp * nr,
                          ldy, acc, nc);
          }
        }
      }
    }
  }
};
#endif

#if defined(__x86_64__)
// The strided input gradient's col[i][j] (row stride cols) = sum over kout < Kg of dy_i[kout] *
// B[kout][j], j < cols, by the direct path's tiles: each pixel's dY row is one segment of Kg
// values, broadcast in place (no packing of dY); B's panels over the whole depth are the layout
// of pack_direct_weights.
struct DirectColGrad {
  DirectTiling tiling;
  Segments seg;
  const float* bw;
  DirectColGrad(Scratch<float>& buf, const OffsetColumns<float>& b, int64_t Kg, int64_t cols)
      : tiling(cols), seg(1, Kg), bw(b(buf.get(tiling.panels * tiling.nr * Kg), 0, cols, 0, Kg, int(tiling.nr))) {}
  // n pixels' rows dy + i*ldy
  void operator()(const float* dy, int64_t ldy, int64_t n, float* col, std::vector<const float*>& rows) const {
    rows.resize(size_t(n));
    for (int64_t i = 0; i < n; ++i) rows[size_t(i)] = dy + i * ldy;
    tiling.run(rows.data(), seg, n, bw, col, tiling.Kg);
  }
};
#endif

// The forward (or the stride-1 input gradient as its dual) by the direct path: y (N, P, Q, K)
// = conv(x, w) with wt(g, j, r, s, c) the weight of output channel j of group g.
template <typename WtFn>
void direct_conv(const float* x, WtFn wt, const float* bias, float* y, const Conv2dShape& s, bool relu) {
#if defined(__x86_64__)
  const NhwcGeometry geo(s);
  const Segments seg(geo);
  const int64_t Kg = s.Kg(), M = s.N * s.P * s.Q;
  const DirectTiling tiling(Kg);
  Scratch<float> wbuf;
  const float* bw = pack_direct_weights(wbuf, wt, s.groups, Kg, geo.R, geo.S, geo.Cg, tiling.nr);
  const int64_t gsize = tiling.panels * geo.depth() * tiling.nr;  // one group's panels
  // A chunk's depth block of A stays in L2 while the tiles run over every column panel.
  const int64_t chunk = direct_chunk(std::min(tiling.kc, geo.depth()), s.K, M, s.groups), chunks = ceil_div(M, chunk);
  at::parallel_for(0, chunks * s.groups, 1, [&](int64_t begin, int64_t end) {
    static thread_local TapTable<float> table;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t g = task % s.groups, m0 = (task / s.groups) * chunk, n = std::min(chunk, M - m0);
      table.build(geo, seg, x + g * geo.Cg, m0, n);
      float* yt = y + m0 * s.K + g * Kg;
      tiling.run(table.rows.data(), seg, n, bw + g * gsize, yt, s.K);
      const float* bb = bias ? bias + g * Kg : nullptr;
      for (int64_t i = 0; i < n && (bb || relu); ++i) {
        float* __restrict__ row = yt + i * s.K;
        for (int64_t j = 0; j < Kg; ++j) {
          const float v = bb ? row[j] + bb[j] : row[j];
          row[j] = relu && v < 0.f ? 0.f : v;  // NaN stays NaN, as in relu
        }
      }
    }
  });
#else
  (void)x, (void)wt, (void)bias, (void)y, (void)s, (void)relu;
#endif
}

// The weight gradient by the direct path: dW[kout][k] (k = (r*S + s)*Cg + c) summed over the
// pixels in `splits` ranges fixed by the shape, partial sums added in order.
void direct_weight_grad(const float* dy, const float* x, float* dw, const Conv2dShape& s) {
#if defined(__x86_64__)
  const NhwcGeometry geo(s);
  const Segments seg(geo);
  // Tiles of 14 depth indices x 32 output channels, or 6 x 64 when direct_wide.
  const int64_t Kg = s.Kg(), CRS = geo.depth(), M = s.N * s.P * s.Q;
  const bool wide = direct_wide(Kg);
  const int64_t nr = wide ? 2 * kDirectNR : kDirectNR, mr_max = wide ? kWideMR : kDirectMR;
  const auto tiles = wide ? kWgtTilesWide.data() : kWgtTiles.data();
  const int64_t panels = ceil_div(Kg, nr);
  // Tasks: groups x panel groups (disjoint parts of dW) x pixel splits (partial sums).
  const int64_t ppg = ceil_div(panels, std::min<int64_t>(panels, 8)), pgroups = ceil_div(panels, ppg);
  const int64_t splits = std::max<int64_t>(1, std::min<int64_t>(ceil_div(8, s.groups * pgroups), M / 2048));
  const int64_t wsize = s.K * CRS;
  std::vector<float> partial(size_t((splits - 1) * wsize));
  const int64_t chunk = direct_chunk(geo.R * geo.C, s.K, M, 1);  // the pixels' input rows
  // depth rows per tile: the segment cut into near-equal blocks of at most MR
  const int64_t ublocks = ceil_div(seg.len, mr_max), ub = ceil_div(seg.len, ublocks);
  at::parallel_for(0, s.groups * pgroups * splits, 1, [&](int64_t begin, int64_t end) {
    static thread_local TapTable<float> table;
    static thread_local Scratch<float> dwt_buf;  // this task's panels of dW transposed: [panel][k][nr]
    for (int64_t task = begin; task < end; ++task) {
      const int64_t g = task % s.groups, pg = (task / s.groups) % pgroups, sp = task / (s.groups * pgroups);
      const int64_t m_begin = sp * M / splits, m_end = (sp + 1) * M / splits;
      const int64_t jp0 = pg * ppg, jp1 = std::min(panels, jp0 + ppg);
      float* dwt = dwt_buf.get((jp1 - jp0) * CRS * nr);
      std::fill(dwt, dwt + (jp1 - jp0) * CRS * nr, 0.f);
      for (int64_t m0 = m_begin; m0 < m_end; m0 += chunk) {
        const int64_t n = std::min(chunk, m_end - m0);
        table.build(geo, seg, x + g * geo.Cg, m0, n);
        for (int64_t jp = jp0; jp < jp1; ++jp) {
          const int nc = int(std::min(nr, Kg - jp * nr));
          const float* dyp = dy + m0 * s.K + g * Kg + jp * nr;
          for (int64_t sg = 0; sg < seg.count; ++sg)
            for (int64_t u0 = 0; u0 < seg.len; u0 += ub) {
              const int mr = int(std::min(ub, seg.len - u0));
              tiles[mr - 1](table.rows.data() + sg, seg.count, n, u0, dyp, s.K,
                            dwt + ((jp - jp0) * CRS + sg * seg.len + u0) * nr, nc);
            }
        }
      }
      float* out = (sp == 0 ? dw : partial.data() + (sp - 1) * wsize) + g * Kg * CRS;
      for (int64_t jp = jp0; jp < jp1; ++jp)
        for (int64_t j = 0; j < std::min(nr, Kg - jp * nr); ++j)
          for (int64_t k = 0; k < CRS; ++k)
            out[(jp * nr + j) * CRS + k] = dwt[((jp - jp0) * CRS + k) * nr + j];
    }
  });
  add_partial_sums(dw, partial.data(), splits, wsize);
#else
  (void)dy, (void)x, (void)dw, (void)s;
#endif
}

}  // namespace

template <typename T>
void conv2d_forward_nhwc(const T* x, const T* w, WeightStrides ws, const T* bias, acc_t<T>* y,
                         const Conv2dShape& s, bool relu) {
  const int64_t Kg = s.Kg(), Cg = s.Cg(), S = s.S;
  // Wt_g[k = (r*S + s)*Cg + c][j] = w[g*Kg + j][c][r][s]
  if constexpr (std::is_same_v<T, float>) {
    if (direct_nhwc<T>()) {
      auto wt = [=](int64_t g, int64_t j, int64_t r, int64_t ss, int64_t c) {
        return w[(g * Kg + j) * ws.k + c * ws.c + r * ws.r + ss * ws.s];
      };
      return direct_conv(x, wt, bias, y, s, relu);
    }
  }
  auto wt = [=](int64_t g, int64_t j, int64_t k) {
    const int64_t c = k % Cg, rs = k / Cg;
    return w[(g * Kg + j) * ws.k + c * ws.c + (rs / S) * ws.r + (rs % S) * ws.s];
  };
  nhwc_conv_gemm<T>(x, wt, bias, y, s, relu);
}

template <typename T>
void conv2d_backward_input_nhwc(const T* dy, const T* w, WeightStrides ws, acc_t<T>* dx, const Conv2dShape& s) {
  using Acc = acc_t<T>;
  const int64_t Kg = s.Kg(), Cg = s.Cg(), R = s.R, S = s.S;
  const bool dual = s.stride_h == 1 && s.stride_w == 1 && s.pad_h <= s.dil_h * (R - 1) &&
                    s.pad_w <= s.dil_w * (S - 1);
  if (dual) {
    // dx = conv(dy, w') with w'[c][kout][r][s] = w[kout][c][R-1-r][S-1-s] per group: as the
    // forward, Wt'_g[k = (r*S + s)*Kg + kout][j = c].
    const Conv2dShape d = input_grad_dual(s);
    if constexpr (std::is_same_v<T, float>) {
      if (direct_nhwc<T>()) {
        auto wt = [=](int64_t g, int64_t j, int64_t r, int64_t ss, int64_t kout) {
          return w[(g * Kg + kout) * ws.k + j * ws.c + (R - 1 - r) * ws.r + (S - 1 - ss) * ws.s];
        };
        return direct_conv(dy, wt, nullptr, dx, d, false);
      }
    }
    auto wt = [=](int64_t g, int64_t j, int64_t k) {
      const int64_t kout = k % Kg, rs = k / Kg;
      return w[(g * Kg + kout) * ws.k + j * ws.c + (R - 1 - rs / S) * ws.r + (S - 1 - rs % S) * ws.s];
    };
    return nhwc_conv_gemm<T>(dy, wt, nullptr, dx, d, false);
  }
  // Strided or over-padded: tasks are image ranges x groups x blocks of input channels (disjoint
  // parts of dx), about 8 per group, split so as to pack the least: a task packs its images' dY
  // rows and its channels' weights. Columns of W_g as B (depth
  // kout) in the order (channel block, r, s, c), so a task's RS*cbn columns are contiguous and
  // packed by the task itself; per tile of pixels (any image) colgrad[mt x RS*cbn] = dY * W, then
  // col2im adds it into dx in pixel order: deterministic, whatever the blocking.
  const NhwcGeometry geo(s);
  const int64_t RS = R * S;
  const int nr = micro_kernel<T>().nr;
  const int64_t tasks = ceil_div(8, s.groups), M = s.N * s.P * s.Q;
  int64_t nsplits = 1, cb = Cg, best = -1;
  for (int64_t n = 1; n <= std::min(s.N, tasks); ++n) {
    const int64_t b = round_up(ceil_div(Cg, ceil_div(tasks, n)), nr), packed = n * Cg * RS + ceil_div(Cg, b) * M;
    if (best < 0 || packed < best) best = packed, nsplits = n, cb = b;
  }
  const int64_t cblocks = ceil_div(Cg, cb);
  constexpr int64_t kTile = 96;
  at::parallel_for(0, nsplits * s.groups * cblocks, 1, [&](int64_t begin, int64_t end) {
    static thread_local Scratch<T> wbuf;
    static thread_local std::vector<int64_t> off;
    static thread_local Scratch<Acc> col_scratch;
    [[maybe_unused]] static thread_local std::vector<const T*> rows;  // the direct path's dY rows
    for (int64_t task = begin; task < end; ++task) {
      const int64_t g = task % s.groups, c0 = (task / s.groups % cblocks) * cb, sp = task / (s.groups * cblocks);
      const int64_t cbn = std::min(cb, Cg - c0), cols = RS * cbn;
      const int64_t n0 = sp * s.N / nsplits, n1 = (sp + 1) * s.N / nsplits, HW = s.H * s.W, PQ = s.P * s.Q;
      // B[kout][rs*cbn + u] = w[g*Kg + kout][c0 + u][r][s]
      off.resize(size_t(cols));
      for (int64_t rs = 0, j = 0; rs < RS; ++rs)
        for (int64_t u = 0; u < cbn; ++u, ++j) off[j] = (c0 + u) * ws.c + (rs / S) * ws.r + (rs % S) * ws.s;
      const T* wg = w + g * Kg * ws.k;
      Acc* col = col_scratch.get(kTile * cols);
      // colgrad(m0, mt): col[mt x cols] = dY rows m0.. times B; float32 on AVX-512 by the direct
      // path's tiles, else by the GEMM
      std::function<void(int64_t, int64_t)> colgrad;
#if defined(__x86_64__)
      if constexpr (std::is_same_v<T, float>) {
        if (direct_nhwc<T>()) {
          const DirectColGrad d(wbuf, OffsetColumns<T>{wg, off.data(), ws.k}, Kg, cols);
          colgrad = [&, d](int64_t m0, int64_t mt) {
            d(dy + m0 * s.K + g * Kg, s.K, mt, col, rows);
          };
        }
      }
#endif
      std::optional<PackedA<T>> wp;
      if (!colgrad) {
        wp.emplace(OffsetColumns<T>{wg, off.data(), ws.k}, cols, Kg, nr, wbuf.get(PackedA<T>::size(cols, Kg, nr)));
        colgrad = [&](int64_t m0, int64_t mt) {
          gemm<T>(mt, cols, Kg, StridedMatrix<T>{dy + m0 * s.K + g * Kg, s.K, 1}, wp->rows_from(0), col, cols, 1, false);
        };
      }
      Acc* dxc = dx + g * Cg + c0;  // this task's channels of pixel 0
      for (int64_t i = n0 * HW; i < n1 * HW; ++i) std::fill(dxc + i * s.C, dxc + i * s.C + cbn, Acc(0));
      for (int64_t m0 = n0 * PQ; m0 < n1 * PQ; m0 += kTile) {
        const int64_t mt = std::min(kTile, n1 * PQ - m0);
        colgrad(m0, mt);
        for (int64_t i = 0; i < mt; ++i) {
          const NhwcGeometry::Origin o = geo.origin(m0 + i);
          for (int64_t rs = 0; rs < RS; ++rs) {
            const int64_t off = geo.tap(o, rs / S, rs % S);
            if (off < 0) continue;
            Acc* __restrict__ d = dxc + off;
            const Acc* src = col + i * cols + rs * cbn;
            for (int64_t c = 0; c < cbn; ++c) d[c] += src[c];
          }
        }
      }
    }
  });
}

template <typename T>
void conv2d_backward_weight_nhwc(const T* dy, const T* x, acc_t<T>* dw, const Conv2dShape& s) {
  using Acc = acc_t<T>;
  if constexpr (std::is_same_v<T, float>) {
    if (direct_nhwc<T>()) return direct_weight_grad(dy, x, dw, s);
  }
  const NhwcGeometry geo(s);
  const int64_t Kg = s.Kg(), Cg = s.Cg(), CRS = geo.depth(), M = s.N * s.P * s.Q;
  const int64_t cb = std::max<int64_t>(64, ceil_div(ceil_div(CRS, 2), 32) * 32);  // dW columns per task
  const int64_t cblocks = ceil_div(CRS, cb);
  // Partial sums over pixel ranges: a count fixed by the shape (never by the thread count).
  const int64_t splits = std::max<int64_t>(1, std::min<int64_t>(M / 1024, 8 / (s.groups * cblocks)));
  const int64_t wsize = s.K * CRS;
  std::vector<Acc> partial(size_t((splits - 1) * wsize));
  at::parallel_for(0, splits * s.groups * cblocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task % cblocks, rest = task / cblocks, g = rest % s.groups, sp = rest / s.groups;
      const int64_t j0 = b * cb, cols = std::min(cb, CRS - j0);
      const int64_t m0 = sp * M / splits, m1 = (sp + 1) * M / splits;
      Acc* out = (sp == 0 ? dw : partial.data() + (sp - 1) * wsize) + g * Kg * CRS + j0;
      // dW_g[kout][j0 + j] = sum_m dy[m][g*Kg + kout] * col[m][j0 + j]; A = dY^T (rows kout, depth m).
      NhwcColAsB<T> colb{geo, x + g * Cg, m0};
      auto shifted = [&](T* dst, int64_t jj, int64_t nc, int64_t k0, int64_t kc, int nr) {
        return colb(dst, j0 + jj, nc, k0, kc, nr);
      };
      gemm<T>(Kg, cols, m1 - m0, StridedMatrix<T>{dy + m0 * s.K + g * Kg, 1, s.K}, shifted, out, CRS, 1, false);
    }
  });
  add_partial_sums(dw, partial.data(), splits, wsize);
}

template <typename T>
void conv2d_backward_bias_nhwc(const T* dy, T* db, const Conv2dShape& s) {
  const int64_t M = s.N * s.P * s.Q, K = s.K;
  constexpr int64_t kCB = 16;
  at::parallel_for(0, ceil_div(K, kCB), 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t k0 = b * kCB, k1 = std::min(K, k0 + kCB);
      double acc[kCB] = {};
      for (int64_t m = 0; m < M; ++m)
        for (int64_t k = k0; k < k1; ++k) acc[k - k0] += dy[m * K + k];
      for (int64_t k = k0; k < k1; ++k) db[k] = T(acc[k - k0]);
    }
  });
}

#define FC_INSTANTIATE(T)                                                                                   \
  template void conv2d_forward_nhwc<T>(const T*, const T*, WeightStrides, const T*, acc_t<T>*,            \
                                       const Conv2dShape&, bool);                                           \
  template void conv2d_backward_input_nhwc<T>(const T*, const T*, WeightStrides, acc_t<T>*, const Conv2dShape&); \
  template void conv2d_backward_weight_nhwc<T>(const T*, const T*, acc_t<T>*, const Conv2dShape&);          \
  template void conv2d_backward_bias_nhwc<T>(const T*, T*, const Conv2dShape&);
FC_INSTANTIATE(float)
FC_INSTANTIATE(double)
FC_INSTANTIATE(c10::BFloat16)

}  // namespace cpu
}  // namespace fastconv
