// Sparse x dense products for prunekit's CPU runtime (float32).
//
// y = x W^T + b with W in CSR (rows = output features). Activations are used transposed in token
// tiles, xt: (ntiles, in, TILE), so that for each nonzero w[o, i] the kernel adds w * xt[tile, i, :]
// into TILE accumulators held in vector registers: contiguous loads and FMAs instead of scattered
// gathers. Threads (ATen's own pool, so the kernel never fights PyTorch's threads) split the token
// tiles when there are enough to go round evenly (parallel.h: tiles_or_chunks), else the rows in
// chunks of equal nonzero counts (global pruning leaves rows and layers very uneven).
//
// Two builds of the same loop, chosen at compile time (the extension is compiled on the machine that
// runs it, with flags for its CPU):
// - AVX-512 (tiles of 16 or 32 tokens, one or two zmm per nonzero): four independent accumulator sets,
//   because with one set every nonzero waits for the previous FMA (4-cycle latency): 1.5x measured;
//   tiles go in and out through 16x16 register transposes (the scalar transposes took 30% of a
//   384x1536 layer). 1.5-1.75x the portable loop on MiniLM's layers at 90% (Zen 4, 2 threads;
//   bench/results/kernels.md).
// - portable (any compiler, auto-vectorized): tiles of 8 or 16 tokens. Measured with GCC 12 on Zen 3:
//   16 reached 34 GFLOP/s per core where 32 reached 10 and 64 spilled (6).
//
// For a single token the transposed layout wastes the tile, so spmv_rows computes plain row-wise
// dot products with four partial sums. `linear` is SparseLinear's whole forward in one call.
// spmm_conv runs Conv2d with the same row loop over pixel tiles (both builds); the int8 kernel
// is in sparse_int8.cpp.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <functional>
#include <string>
#include <cstdint>
#include <vector>

#include "parallel.h"
#include "transpose16.h"  // defines PRUNEKIT_AVX512 where the build has AVX-512F

namespace {

// acc[t] = bias + the nonzeros k0..k1 of one row times a tile (in, TILE) of activations, TILE values
// per nonzero (the portable loops of Linear and Conv2d).
template <int TILE>
inline void row_times_tile_portable(int64_t k0, int64_t k1, const int32_t* idx, const float* val, const float* tile,
                                    int64_t stride, float bias, float* acc) {
  for (int t = 0; t < TILE; ++t) acc[t] = bias;
  for (int64_t k = k0; k < k1; ++k) {
    const float w = val[k];
    const float* row = tile + static_cast<int64_t>(idx[k]) * stride;
#pragma GCC unroll 16
    for (int t = 0; t < TILE; ++t) acc[t] += w * row[t];
  }
}

// xt: token tiles, (ntiles, in, TILE) contiguous; y: (tokens, out) row-major.
// Tile-outer order keeps one tile of activations (in * TILE floats) hot in L2 while the chunk's rows
// stream their nonzeros; results are stored straight into y's layout (no transpose afterwards).
template <int TILE>
void tile_rows(int64_t o0, int64_t o1, const int64_t* indptr, const int32_t* idx, const float* val,
               const float* xt, const float* bias, float* y, int64_t in_features, int64_t out_features,
               int64_t tokens, int64_t stride, int64_t tile0, int64_t tile1) {
  // stride == TILE, passed at run time on purpose: with the compile-time constant GCC 12 generated
  // code 8x slower for the inner loop (5 vs 43 GFLOP/s per core, measured on Zen 3).
  // stage: results for these rows, written out token by token so the stores into y run along
  // contiguous output features; storing each row's TILE results straight into y hits TILE lines one
  // row-stride apart, which map to very few L1 sets when the stride is a multiple of 2 KiB
  // (out_features 1536: 4x slower, measured).
  std::vector<float> stage(static_cast<size_t>(o1 - o0) * TILE);
  for (int64_t tile = tile0; tile < tile1; ++tile) {
    const int64_t t0 = tile * TILE;
    const int64_t valid = tokens - t0 < TILE ? tokens - t0 : TILE;
    const float* xtile = xt + tile * in_features * TILE;
    for (int64_t o = o0; o < o1; ++o) {
      float acc[TILE];
      row_times_tile_portable<TILE>(indptr[o], indptr[o + 1], idx, val, xtile, stride, bias ? bias[o] : 0.0f, acc);
      float* st = stage.data() + (o - o0) * TILE;
      for (int t = 0; t < TILE; ++t) st[t] = acc[t];
    }
    for (int64_t t = 0; t < valid; ++t) {
      float* out = y + (t0 + t) * out_features;
      for (int64_t o = o0; o < o1; ++o) out[o] = stage[(o - o0) * TILE + t];
    }
  }
}

// xt[tile, i, t] = x[tile * TILE + t, i] (zero past the last token): token tiles, transposed.
// Built once per call (in parallel over tiles) in 16x16 blocks, so reads and writes both stay within
// a few cache lines; doing it inside every thread's row loop duplicated the work (measured).
void transpose_tiles(const float* x, float* xt, int64_t tokens, int64_t in_features, int64_t tile, int64_t t0_tile,
                     int64_t t1_tile) {
  for (int64_t tl = t0_tile; tl < t1_tile; ++tl) {
    float* dst = xt + tl * in_features * tile;
    for (int64_t i0 = 0; i0 < in_features; i0 += 16) {
      const int64_t i1 = i0 + 16 < in_features ? i0 + 16 : in_features;
      for (int64_t t = 0; t < tile; ++t) {
        const int64_t row = tl * tile + t;
        if (row < tokens) {
          const float* src = x + row * in_features;
          for (int64_t i = i0; i < i1; ++i) dst[i * tile + t] = src[i];
        } else {
          for (int64_t i = i0; i < i1; ++i) dst[i * tile + t] = 0.0f;
        }
      }
    }
  }
}

// Geometry of a 2-D convolution (one image: x is (C, H, W), output (O, ho, wo)).
struct ConvShape {
  int64_t channels, height, width, out_width, pixels;  // pixels = ho * wo
  int kh, kw, sh, sw, dh, dw, ph, pw;
};

// Portable convolution: the implicit im2col of one tile of TILE output pixels, dst[(c * kh + ki) *
// kw + kj, t] (zero in the padding and past the last pixel), then tile_rows' loop over it, written
// out per output channel. The AVX-512 build has its own (gathers, masked stores).
template <int TILE>
void conv_tile_portable(const float* x, float* dst, float* y, const ConvShape& s, int64_t t0, int64_t out_features,
                        const int64_t* indptr, const int32_t* idx, const float* val, const float* bias,
                        int64_t stride) {
  const int64_t plane = s.height * s.width;
  const int64_t valid = std::min<int64_t>(TILE, s.pixels - t0);
  for (int ki = 0; ki < s.kh; ++ki) {
    for (int kj = 0; kj < s.kw; ++kj) {
      int64_t src[TILE];
      for (int l = 0; l < TILE; ++l) {
        const int64_t p = t0 + l;
        const int64_t ih = (p / s.out_width) * s.sh + ki * s.dh - s.ph;
        const int64_t iw = (p % s.out_width) * s.sw + kj * s.dw - s.pw;
        src[l] = (l < valid && ih >= 0 && ih < s.height && iw >= 0 && iw < s.width) ? ih * s.width + iw : -1;
      }
      const int64_t kk = ki * s.kw + kj;
      for (int64_t c = 0; c < s.channels; ++c) {
        const float* xc = x + c * plane;
        float* d = dst + (c * s.kh * s.kw + kk) * stride;
        for (int l = 0; l < TILE; ++l) d[l] = src[l] >= 0 ? xc[src[l]] : 0.0f;
      }
    }
  }
  for (int64_t o = 0; o < out_features; ++o) {
    float acc[TILE];
    row_times_tile_portable<TILE>(indptr[o], indptr[o + 1], idx, val, dst, stride, bias ? bias[o] : 0.0f, acc);
    float* out = y + o * s.pixels + t0;
    for (int64_t t = 0; t < valid; ++t) out[t] = acc[t];
  }
}

#ifdef PRUNEKIT_AVX512
using prunekit::transpose16;

// xt[tile, i, t] = x[tile * 16 * NV + t, i], zero past the last token.
template <int NV>
void transpose_tiles_512(const float* x, float* xt, int64_t tokens, int64_t in_features, int64_t t0_tile,
                         int64_t t1_tile) {
  constexpr int TILE = 16 * NV;
  for (int64_t tl = t0_tile; tl < t1_tile; ++tl) {
    for (int64_t i0 = 0; i0 < in_features; i0 += 16) {
      const int cols = static_cast<int>(std::min<int64_t>(16, in_features - i0));
      for (int h = 0; h < NV; ++h) {
        const int64_t first = tl * TILE + h * 16;
        const int rows = static_cast<int>(std::max<int64_t>(0, std::min<int64_t>(16, tokens - first)));
        transpose16(x + first * in_features + i0, in_features, rows, cols, xt + (tl * in_features + i0) * TILE + h * 16,
                    TILE, cols, 16);
      }
    }
  }
}

// Implicit im2col of one tile: dst[(c * kh + ki) * kw + kj, t] = x[c, ih, iw] for output pixel
// t0 + t, zero where the window falls in the padding or past the last pixel. Unfolding the whole
// input first (F.unfold) cost as much as the dense convolution (measured: 1.2 ms for 64 x 56 x 56,
// 3x3). Lanes whose sources are consecutive (stride 1 inside an output row) load as one vector,
// the others are gathered.
template <int NV>
void pack_conv_tile(const float* x, float* dst, const ConvShape& s, int64_t t0) {
  constexpr int TILE = 16 * NV;
  const int64_t plane = s.height * s.width;
  for (int ki = 0; ki < s.kh; ++ki) {
    for (int kj = 0; kj < s.kw; ++kj) {
      for (int v = 0; v < NV; ++v) {
        alignas(64) int32_t idx[16];
        __mmask16 mask = 0;
        bool consecutive = true;
        int64_t first = 0;
        bool seen = false;
        for (int l = 0; l < 16; ++l) {
          const int64_t p = t0 + 16 * v + l;
          idx[l] = 0;
          if (p >= s.pixels) continue;
          const int64_t ih = (p / s.out_width) * s.sh + ki * s.dh - s.ph;
          const int64_t iw = (p % s.out_width) * s.sw + kj * s.dw - s.pw;
          if (ih < 0 || ih >= s.height || iw < 0 || iw >= s.width) continue;
          idx[l] = static_cast<int32_t>(ih * s.width + iw);
          mask |= static_cast<__mmask16>(1u << l);
          if (!seen) {
            first = idx[l] - l;
            seen = true;
          } else if (idx[l] - l != first) {
            consecutive = false;
          }
        }
        const __m512i vidx = _mm512_load_si512(idx);
        const int64_t kk = ki * s.kw + kj;
        for (int64_t c = 0; c < s.channels; ++c) {
          const float* xc = x + c * plane;
          __m512 val = _mm512_setzero_ps();
          if (mask && consecutive) {
            val = _mm512_maskz_loadu_ps(mask, xc + first);  // masked-off lanes are never read
          } else if (mask) {
            val = _mm512_mask_i32gather_ps(val, mask, vidx, xc, 4);
          }
          _mm512_storeu_ps(dst + (c * s.kh * s.kw + kk) * TILE + 16 * v, val);
        }
      }
    }
  }
}

// sum = bias + the nonzeros k0..k1 of one row times a tile (in, 16 * NV) of activations: NV zmm per
// nonzero, with NACC independent accumulator sets (one set would wait on the FMA latency each time).
template <int NV>
inline void row_times_tile(int64_t k0, int64_t k1, const int32_t* idx, const float* val, const float* xtile, float bias,
                           __m512* sum) {
  constexpr int TILE = 16 * NV, NACC = 4;
  __m512 acc[NACC][NV];
  for (int v = 0; v < NV; ++v) {
    acc[0][v] = _mm512_set1_ps(bias);
    for (int j = 1; j < NACC; ++j) acc[j][v] = _mm512_setzero_ps();
  }
  int64_t k = k0;
  for (; k + NACC <= k1; k += NACC) {
#pragma GCC unroll 4
    for (int j = 0; j < NACC; ++j) {
      const __m512 w = _mm512_set1_ps(val[k + j]);
      const float* row = xtile + static_cast<int64_t>(idx[k + j]) * TILE;
      for (int v = 0; v < NV; ++v) acc[j][v] = _mm512_fmadd_ps(w, _mm512_loadu_ps(row + 16 * v), acc[j][v]);
    }
  }
  for (; k < k1; ++k) {
    const __m512 w = _mm512_set1_ps(val[k]);
    const float* row = xtile + static_cast<int64_t>(idx[k]) * TILE;
    for (int v = 0; v < NV; ++v) acc[0][v] = _mm512_fmadd_ps(w, _mm512_loadu_ps(row + 16 * v), acc[0][v]);
  }
  for (int v = 0; v < NV; ++v) sum[v] = _mm512_add_ps(_mm512_add_ps(acc[0][v], acc[1][v]), _mm512_add_ps(acc[2][v], acc[3][v]));
}

// The token-tile loop: rows o0..o1 for every tile, y written as (tokens, out_features).
template <int NV>
void tile_rows_512(int64_t o0, int64_t o1, const int64_t* indptr, const int32_t* idx, const float* val,
                   const float* xt, const float* bias, float* y, int64_t in_features, int64_t out_features,
                   int64_t tokens, int64_t tile0, int64_t tile1) {
  constexpr int TILE = 16 * NV;
  std::vector<float> stage(static_cast<size_t>(o1 - o0) * TILE);
  for (int64_t tile = tile0; tile < tile1; ++tile) {
    const int64_t t0 = tile * TILE;
    const int64_t valid = std::min<int64_t>(TILE, tokens - t0);
    const float* xtile = xt + tile * in_features * TILE;
    for (int64_t o = o0; o < o1; ++o) {
      __m512 sum[NV];
      row_times_tile<NV>(indptr[o], indptr[o + 1], idx, val, xtile, bias ? bias[o] : 0.0f, sum);
      for (int v = 0; v < NV; ++v) _mm512_storeu_ps(stage.data() + (o - o0) * TILE + 16 * v, sum[v]);
    }
    for (int64_t ob = o0; ob < o1; ob += 16) {  // stage (rows, tokens) -> y (tokens, rows), 16x16 at a time
      const int rows = static_cast<int>(std::min<int64_t>(16, o1 - ob));
      for (int h = 0; h < NV && h * 16 < valid; ++h) {
        transpose16(stage.data() + (ob - o0) * TILE + h * 16, TILE, rows, 16, y + (t0 + h * 16) * out_features + ob,
                    out_features, static_cast<int>(std::min<int64_t>(16, valid - h * 16)), rows);
      }
    }
  }
}
#endif  // PRUNEKIT_AVX512

// Small problems run on the calling thread: waking the pool costs more than it saves.
constexpr int64_t kSerialWork = 1 << 19;

}  // namespace

// chunks: row boundaries (size nchunks + 1) with about equal nonzeros per chunk; each thread takes a
// contiguous range of chunks and transposes each token tile once for all of its rows.
torch::Tensor spmm_tiles(torch::Tensor chunks, torch::Tensor indptr, torch::Tensor indices, torch::Tensor values,
                         torch::Tensor x, c10::optional<torch::Tensor> bias, int64_t tile) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.scalar_type() == torch::kFloat,
              "x must be contiguous float32 (tokens, in)");
  TORCH_CHECK(tile == 8 || tile == 16 || tile == 32, "tile must be 8, 16 or 32 (see preferred_tile)");
#ifndef PRUNEKIT_AVX512
  TORCH_CHECK(tile != 32, "tile 32 needs the AVX-512 build");
#endif
  const int64_t out_features = indptr.size(0) - 1;
  const int64_t tokens = x.size(0);
  const int64_t in_features = x.size(1);
  auto y = torch::empty({tokens, out_features}, x.options());
  const int64_t* ch = chunks.data_ptr<int64_t>();
  const int64_t* ip = indptr.data_ptr<int64_t>();
  const int32_t* ix = indices.data_ptr<int32_t>();
  const float* v = values.data_ptr<float>();
  const float* xp = x.data_ptr<float>();
  const float* b = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  const int64_t nchunks = chunks.size(0) - 1;
  const int64_t ntiles = (tokens + tile - 1) / tile;
  auto xt_tensor = torch::empty({ntiles, in_features, tile}, x.options());
  float* xt = xt_tensor.data_ptr<float>();
  // work(c0, c1, tile0, tile1): rows of chunks c0..c1 times token tiles tile0..tile1.
  std::function<void(int64_t, int64_t)> transpose;
  std::function<void(int64_t, int64_t, int64_t, int64_t)> work;
#ifdef PRUNEKIT_AVX512
  if (tile == 16 || tile == 32) {
    transpose = [&](int64_t a, int64_t z) {
      if (tile == 16) transpose_tiles_512<1>(xp, xt, tokens, in_features, a, z);
      else transpose_tiles_512<2>(xp, xt, tokens, in_features, a, z);
    };
    work = [&](int64_t c0, int64_t c1, int64_t a, int64_t z) {
      if (tile == 16) tile_rows_512<1>(ch[c0], ch[c1], ip, ix, v, xt, b, yp, in_features, out_features, tokens, a, z);
      else tile_rows_512<2>(ch[c0], ch[c1], ip, ix, v, xt, b, yp, in_features, out_features, tokens, a, z);
    };
  }
#endif
  if (!transpose) {
    transpose = [&](int64_t a, int64_t z) { transpose_tiles(xp, xt, tokens, in_features, tile, a, z); };
    work = [&](int64_t c0, int64_t c1, int64_t a, int64_t z) {
      if (tile == 8) {
        tile_rows<8>(ch[c0], ch[c1], ip, ix, v, xt, b, yp, in_features, out_features, tokens, tile, a, z);
      } else {
        tile_rows<16>(ch[c0], ch[c1], ip, ix, v, xt, b, yp, in_features, out_features, tokens, tile, a, z);
      }
    };
  }
  prunekit::tiles_or_chunks(ntiles, [&](int64_t t) { transpose(t, t + 1); }, nchunks, work,
                            values.numel() * tokens < kSerialWork);
  return y;
}

// One token: y[o] = b[o] + sum_k val[k] * x[idx[k]].
torch::Tensor spmv_rows(torch::Tensor chunks, torch::Tensor indptr, torch::Tensor indices, torch::Tensor values,
                        torch::Tensor x, c10::optional<torch::Tensor> bias) {
  TORCH_CHECK(x.dim() == 1 && x.is_contiguous() && x.scalar_type() == torch::kFloat, "x must be contiguous float32 (in,)");
  const int64_t out_features = indptr.size(0) - 1;
  auto y = torch::empty({out_features}, x.options());
  const int64_t* ch = chunks.data_ptr<int64_t>();
  const int64_t* ip = indptr.data_ptr<int64_t>();
  const int32_t* ix = indices.data_ptr<int32_t>();
  const float* v = values.data_ptr<float>();
  const float* xp = x.data_ptr<float>();
  const float* b = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  auto work = [&](int64_t c0, int64_t c1) {
    for (int64_t o = ch[c0]; o < ch[c1]; ++o) {
      float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      int64_t k = ip[o];
      const int64_t k1 = ip[o + 1];
      for (; k + 3 < k1; k += 4) {
        s0 += v[k] * xp[ix[k]];
        s1 += v[k + 1] * xp[ix[k + 1]];
        s2 += v[k + 2] * xp[ix[k + 2]];
        s3 += v[k + 3] * xp[ix[k + 3]];
      }
      for (; k < k1; ++k) s0 += v[k] * xp[ix[k]];
      yp[o] = (s0 + s1) + (s2 + s3) + (b ? b[o] : 0.0f);
    }
  };
  if (values.numel() < kSerialWork / 16) {
    work(0, chunks.size(0) - 1);
  } else {
    prunekit::for_each_chunk(chunks.size(0) - 1, work);
  }
  return y;
}

// Convolution: x (N, C, H, W) -> y (N, O, ho, wo) = W (O, C * kh * kw) unfold(x) + b, with the
// unfold done tile by tile (pack_conv_tile). params: kh, kw, sh, sw, dh, dw, pad_top, pad_left, ho, wo.
// Both builds: the AVX-512 one with gathers and 32-pixel tiles, the portable one with 16-pixel tiles.
torch::Tensor spmm_conv(torch::Tensor indptr, torch::Tensor indices, torch::Tensor values, torch::Tensor x,
                        c10::optional<torch::Tensor> bias, std::vector<int64_t> params) {
  TORCH_CHECK(x.dim() == 4 && x.is_contiguous() && x.scalar_type() == torch::kFloat && x.device().is_cpu() &&
                  values.device().is_cpu(),
              "x must be contiguous float32 (N, C, H, W) on the CPU");
  TORCH_CHECK(params.size() == 10, "params: kh, kw, sh, sw, dh, dw, pad_top, pad_left, ho, wo");
  const int64_t batch = x.size(0), out_features = indptr.size(0) - 1, ho = params[8], wo = params[9];
  auto y = torch::empty({batch, out_features, ho, wo}, x.options());
  const ConvShape shape{x.size(1), x.size(2), x.size(3), wo, ho * wo,
                        static_cast<int>(params[0]), static_cast<int>(params[1]), static_cast<int>(params[2]),
                        static_cast<int>(params[3]), static_cast<int>(params[4]), static_cast<int>(params[5]),
                        static_cast<int>(params[6]), static_cast<int>(params[7])};
  const int64_t in_features = shape.channels * shape.kh * shape.kw, columns = shape.pixels;
  const int64_t* ip = indptr.data_ptr<int64_t>();
  const int32_t* ix = indices.data_ptr<int32_t>();
  const float* v = values.data_ptr<float>();
  const float* b = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
#ifdef PRUNEKIT_AVX512
  // Parallel over column tiles (a feature map has many; each thread packs its tile into a buffer that
  // stays in cache while every row passes over it). Splitting rows instead made each thread stream
  // the whole unfolded input: 7x slower than dense on a 3x3 layer (measured).
  constexpr int NV = 2, TILE = 16 * NV;
  const int64_t ntiles = (columns + TILE - 1) / TILE;
  const auto work = [&](int64_t a, int64_t z) {
    std::vector<float> tile(static_cast<size_t>(in_features) * TILE);
    for (int64_t job = a; job < z; ++job) {
      const int64_t n = job / ntiles, t0 = (job % ntiles) * TILE;
      const int64_t valid = std::min<int64_t>(TILE, columns - t0);
      __mmask16 masks[NV];
      for (int h = 0; h < NV; ++h) {
        const int64_t lanes = std::max<int64_t>(0, std::min<int64_t>(16, valid - 16 * h));
        masks[h] = lanes >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << lanes) - 1);
      }
      pack_conv_tile<NV>(xp + n * shape.channels * shape.height * shape.width, tile.data(), shape, t0);
      float* yn = yp + n * out_features * columns + t0;
      for (int64_t o = 0; o < out_features; ++o) {
        __m512 sum[NV];
        row_times_tile<NV>(ip[o], ip[o + 1], ix, v, tile.data(), b ? b[o] : 0.0f, sum);
        for (int h = 0; h < NV; ++h) _mm512_mask_storeu_ps(yn + o * columns + 16 * h, masks[h], sum[h]);
      }
    }
  };
  if (values.numel() * columns * batch < kSerialWork) {
    work(0, batch * ntiles);
  } else {
    at::parallel_for(0, batch * ntiles, 1, work);
  }
#else
  constexpr int TILE = 16;  // as the portable Linear loop (tile_rows): 32 measured slower there
  const int64_t ntiles = (columns + TILE - 1) / TILE;
  const int64_t image = shape.channels * shape.height * shape.width;
  const auto work = [&](int64_t a, int64_t z) {
    std::vector<float> tile(static_cast<size_t>(in_features) * TILE);
    for (int64_t job = a; job < z; ++job) {
      const int64_t n = job / ntiles, t0 = (job % ntiles) * TILE;
      conv_tile_portable<TILE>(xp + n * image, tile.data(), yp + n * out_features * columns, shape, t0,
                               out_features, ip, ix, v, b, TILE);
    }
  };
  if (values.numel() * columns * batch < kSerialWork) {
    work(0, batch * ntiles);
  } else {
    at::parallel_for(0, batch * ntiles, 1, work);
  }
#endif
  return y;
}

bool has_conv() { return true; }  // both builds (kept for files and callers that ask)

// The token tile this build runs fastest for a call with `tokens` rows (1 token: use spmv_rows).
int64_t preferred_tile(int64_t tokens) {
#ifdef PRUNEKIT_AVX512
  return tokens <= 16 ? 16 : 32;
#else
  return tokens <= 8 ? 8 : 16;
#endif
}

// SparseLinear's forward in one call: x (..., in) of any float dtype -> y (..., out) float32.
// Reshaping here instead of in Python saves microseconds per call, which add up over a model's
// dozens of small layers.
torch::Tensor linear(torch::Tensor chunks, torch::Tensor indptr, torch::Tensor indices, torch::Tensor values,
                     torch::Tensor x, c10::optional<torch::Tensor> bias) {
  TORCH_CHECK(x.device().is_cpu() && values.device().is_cpu(), "prunekit's sparse kernels run on the CPU");
  const int64_t in_features = x.size(-1), out_features = indptr.size(0) - 1;
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = out_features;
  auto x2 = x.reshape({-1, in_features}).to(torch::kFloat).contiguous();
  if (x2.size(0) == 1) {
    return spmv_rows(chunks, indptr, indices, values, x2.reshape({in_features}), bias).reshape(shape);
  }
  return spmm_tiles(chunks, indptr, indices, values, x2, bias, preferred_tile(x2.size(0))).reshape(shape);
}

// Which loop this build compiled: "avx512" or "portable".
std::string isa() {
#ifdef PRUNEKIT_AVX512
  return "avx512";
#else
  return "portable";
#endif
}

// sparse_int8.cpp
bool has_vnni();
torch::Tensor spmm_int8(torch::Tensor chunks, torch::Tensor indptr, torch::Tensor gidx, torch::Tensor w4,
                        torch::Tensor wsum, torch::Tensor wscale, torch::Tensor x, c10::optional<torch::Tensor> bias);
torch::Tensor linear_int8(torch::Tensor chunks, torch::Tensor indptr, torch::Tensor gidx, torch::Tensor w4,
                          torch::Tensor wsum, torch::Tensor wscale, torch::Tensor x, c10::optional<torch::Tensor> bias);

// The forwards as PyTorch operators (torch.library), so torch.compile, torch.export and AOTInductor
// see a call to an operator with a schema instead of an opaque Python function. Each build has its
// own namespace (PRUNEKIT_OPS: prunekit_avx512 or prunekit_portable), because both builds can be
// loaded in one process. Shape-only ("fake") implementations are registered from Python (kernels/
// __init__.py), where the output shapes are one line each.
torch::Tensor conv_op(torch::Tensor indptr, torch::Tensor indices, torch::Tensor values, torch::Tensor x,
                      c10::optional<torch::Tensor> bias, c10::IntArrayRef params) {
  return spmm_conv(indptr, indices, values, x, bias, params.vec());
}

#define PRUNEKIT_LIBRARY(ns, m) TORCH_LIBRARY(ns, m)  // expands PRUNEKIT_OPS before TORCH_LIBRARY pastes it
#define PRUNEKIT_LIBRARY_IMPL(ns, m) TORCH_LIBRARY_IMPL(ns, CPU, m)

PRUNEKIT_LIBRARY(PRUNEKIT_OPS, m) {
  m.def("linear(Tensor chunks, Tensor indptr, Tensor indices, Tensor values, Tensor x, Tensor? bias) -> Tensor");
  m.def("linear_int8(Tensor chunks, Tensor indptr, Tensor groups, Tensor packed, Tensor row_sums, Tensor scale, "
        "Tensor x, Tensor? bias) -> Tensor");
  m.def("conv2d(Tensor indptr, Tensor indices, Tensor values, Tensor x, Tensor? bias, int[] params) -> Tensor");
}

PRUNEKIT_LIBRARY_IMPL(PRUNEKIT_OPS, m) {
  m.impl("linear", &linear);
  m.impl("linear_int8", &linear_int8);
  m.impl("conv2d", &conv_op);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("spmm_conv", &spmm_conv, "CSR weights x implicitly unfolded NCHW input");
  m.def("has_conv", &has_conv, "whether spmm_conv is compiled in (always, since both builds have it)");
  m.def("has_vnni", &has_vnni, "whether spmm_int8 can run here (AVX-512 build and a VNNI CPU)");
  m.def("linear_int8", &linear_int8, "SparseLinearInt8 forward: x (..., in) -> (..., out)");
  m.def("spmm_int8", &spmm_int8, "int8 weights in groups of 4 columns x per-token int8 activations (VNNI)");
  m.def("preferred_tile", &preferred_tile, "token tile for a call with this many rows");
  m.def("linear", &linear, "SparseLinear forward: x (..., in) -> (..., out)");
  m.def("isa", &isa, "which vector loop this build compiled");
  m.def("spmm_tiles", &spmm_tiles, "CSR x dense over token tiles of transposed activations");
  m.def("spmv_rows", &spmv_rows, "CSR x vector, one token");
}
