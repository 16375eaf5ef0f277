// Sparse int8 x int8 products with AVX-512 VNNI for prunekit's CPU runtime.
//
// Weights: int8, one scale per output row, stored by groups of 4 consecutive input columns (a
// 1x4 block; unstructured rows keep every group that holds a nonzero, zeros inside). Activations:
// quantized per token to int8 at run time, shifted to uint8 (+128), and laid out as token tiles
// xq: (ntiles, groups, TILE, 4) bytes, so one zmm holds 16 tokens x 4 columns: a single vpdpbusd
// adds 16 tokens x 4 products into int32 lanes, four times the work of an fp32 FMA per instruction.
// The +128 shift is undone with each row's weight sum: sum w * (q + 128) - 128 * sum w.
//
// Built only where the compiler has AVX-512F; VNNI itself is checked at run time (has_vnni) and the
// VNNI functions carry their own target attribute.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "parallel.h"
#include "transpose16.h"

#ifdef PRUNEKIT_AVX512
namespace {

using prunekit::transpose16;
constexpr int TILE = 32;  // tokens per tile: two zmm per group

// Per-token symmetric int8 quantization of x (tokens, in), shifted to uint8 and padded to
// groups * 4 columns with the zero point; scales[t] = max |x[t]| / 127.
void quantize_rows(const float* x, int64_t t0, int64_t t1, int64_t in_features, int64_t groups, uint8_t* q,
                   float* scales) {
  for (int64_t t = t0; t < t1; ++t) {
    const float* row = x + t * in_features;
    __m512 vmax = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= in_features; i += 16) vmax = _mm512_max_ps(vmax, _mm512_abs_ps(_mm512_loadu_ps(row + i)));
    float amax = _mm512_reduce_max_ps(vmax);
    for (; i < in_features; ++i) amax = std::max(amax, std::fabs(row[i]));
    const float scale = amax > 0.0f ? amax / 127.0f : 1.0f;
    scales[t] = scale;
    const __m512 inv = _mm512_set1_ps(1.0f / scale);
    const __m512i shift = _mm512_set1_epi32(128);
    uint8_t* dst = q + t * groups * 4;
    for (i = 0; i + 16 <= in_features; i += 16) {
      const __m512i v = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(row + i), inv)), shift);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), _mm512_cvtepi32_epi8(v));
    }
    for (; i < in_features; ++i) dst[i] = static_cast<uint8_t>(std::nearbyint(row[i] / scale) + 128.0f);
    for (; i < groups * 4; ++i) dst[i] = 128;
  }
}

__attribute__((target("avx512bw,avx512vnni"))) void tile_rows_vnni(
    int64_t o0, int64_t o1, const int64_t* indptr, const int32_t* gidx, const int32_t* w4, const int32_t* wsum,
    const float* wscale, const float* bias, const uint8_t* xq, const float* xscale, float* y, int64_t groups,
    int64_t out_features, int64_t tokens, int64_t tile0, int64_t tile1) {
  constexpr int NV = TILE / 16, NACC = 4;
  std::vector<float> stage(static_cast<size_t>(o1 - o0) * TILE);
  std::vector<float> scale_pad(TILE);
  for (int64_t tile = tile0; tile < tile1; ++tile) {
    const int64_t t0 = tile * TILE;
    const int64_t valid = std::min<int64_t>(TILE, tokens - t0);
    for (int t = 0; t < TILE; ++t) scale_pad[t] = t < valid ? xscale[t0 + t] : 0.0f;
    const uint8_t* xtile = xq + tile * groups * TILE * 4;
    for (int64_t o = o0; o < o1; ++o) {
      __m512i acc[NACC][NV];
      for (int j = 0; j < NACC; ++j)
        for (int v = 0; v < NV; ++v) acc[j][v] = _mm512_setzero_si512();
      int64_t k = indptr[o];
      const int64_t k1 = indptr[o + 1];
      for (; k + NACC <= k1; k += NACC) {
#pragma GCC unroll 4
        for (int j = 0; j < NACC; ++j) {
          const __m512i w = _mm512_set1_epi32(w4[k + j]);
          const uint8_t* row = xtile + static_cast<int64_t>(gidx[k + j]) * TILE * 4;
          for (int v = 0; v < NV; ++v)
            acc[j][v] = _mm512_dpbusd_epi32(acc[j][v], _mm512_loadu_si512(row + 64 * v), w);
        }
      }
      for (; k < k1; ++k) {
        const __m512i w = _mm512_set1_epi32(w4[k]);
        const uint8_t* row = xtile + static_cast<int64_t>(gidx[k]) * TILE * 4;
        for (int v = 0; v < NV; ++v) acc[0][v] = _mm512_dpbusd_epi32(acc[0][v], _mm512_loadu_si512(row + 64 * v), w);
      }
      const __m512i correction = _mm512_set1_epi32(128 * wsum[o]);
      const __m512 ws = _mm512_set1_ps(wscale[o]), b = _mm512_set1_ps(bias ? bias[o] : 0.0f);
      for (int v = 0; v < NV; ++v) {
        __m512i sum = acc[0][v];
        for (int j = 1; j < NACC; ++j) sum = _mm512_add_epi32(sum, acc[j][v]);
        sum = _mm512_sub_epi32(sum, correction);
        const __m512 xs = _mm512_loadu_ps(scale_pad.data() + 16 * v);
        const __m512 out = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(sum), ws), xs, b);
        _mm512_storeu_ps(stage.data() + (o - o0) * TILE + 16 * v, out);
      }
    }
    for (int64_t ob = o0; ob < o1; ob += 16) {
      const int rows = static_cast<int>(std::min<int64_t>(16, o1 - ob));
      for (int h = 0; h < NV && h * 16 < valid; ++h) {
        transpose16(stage.data() + (ob - o0) * TILE + h * 16, TILE, rows, 16, y + (t0 + h * 16) * out_features + ob,
                    out_features, static_cast<int>(std::min<int64_t>(16, valid - h * 16)), rows);
      }
    }
  }
}

}  // namespace
#endif  // PRUNEKIT_AVX512

bool has_vnni() {
#ifdef PRUNEKIT_AVX512
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw");
#else
  return false;
#endif
}

// y = dequant(xq Wq^T) + b. indptr/gidx: per output row, the groups of 4 input columns it keeps;
// w4: their 4 int8 weights packed little-endian in an int32; wsum: each row's int8 weight sum.
torch::Tensor spmm_int8(torch::Tensor chunks, torch::Tensor indptr, torch::Tensor gidx, torch::Tensor w4,
                        torch::Tensor wsum, torch::Tensor wscale, torch::Tensor x, c10::optional<torch::Tensor> bias) {
  TORCH_CHECK(has_vnni(), "spmm_int8 needs AVX-512 VNNI (check has_vnni() first)");
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.scalar_type() == torch::kFloat,
              "x must be contiguous float32 (tokens, in)");
  auto y = torch::empty({x.size(0), indptr.size(0) - 1}, x.options());
#ifdef PRUNEKIT_AVX512
  const int64_t tokens = x.size(0), in_features = x.size(1), out_features = indptr.size(0) - 1;
  const int64_t groups = (in_features + 3) / 4, ntiles = (tokens + TILE - 1) / TILE;
  auto q = torch::empty({ntiles * TILE, groups * 4}, x.options().dtype(torch::kUInt8));
  auto xq = torch::empty({ntiles, groups, TILE, 4}, x.options().dtype(torch::kUInt8));
  auto scales = torch::empty({tokens}, x.options());
  const float* xp = x.data_ptr<float>();
  uint8_t* qp = q.data_ptr<uint8_t>();
  uint8_t* xqp = xq.data_ptr<uint8_t>();
  float* sp = scales.data_ptr<float>();
  const int64_t* ch = chunks.data_ptr<int64_t>();
  const float* b = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  // one token tile: quantize its rows, then move groups of 4 bytes as 32-bit values (the float
  // transpose is a bit-exact copy) into xq[tile]
  const auto prepare = [&](int64_t tl) {
    const int64_t first = tl * TILE, last = std::min<int64_t>(tokens, first + TILE);
    quantize_rows(xp, first, last, in_features, groups, qp, sp);
    const float* src = reinterpret_cast<const float*>(qp);
    float* dst = reinterpret_cast<float*>(xqp);
    for (int64_t g0 = 0; g0 < groups; g0 += 16) {
      for (int h = 0; h < TILE / 16; ++h) {
        const int64_t row = first + h * 16;
        const int rows = static_cast<int>(std::max<int64_t>(0, std::min<int64_t>(16, tokens - row)));
        const int cols = static_cast<int>(std::min<int64_t>(16, groups - g0));
        transpose16(src + row * groups + g0, groups, rows, cols, dst + (tl * groups + g0) * TILE + h * 16, TILE, cols, 16);
      }
    }
  };
  const auto work = [&](int64_t c0, int64_t c1, int64_t a, int64_t z) {
    tile_rows_vnni(ch[c0], ch[c1], indptr.data_ptr<int64_t>(), gidx.data_ptr<int32_t>(), w4.data_ptr<int32_t>(),
                   wsum.data_ptr<int32_t>(), wscale.data_ptr<float>(), b, xqp, sp, yp, groups, out_features, tokens, a, z);
  };
  // small calls run serially: waking the thread pool costs more than it saves
  prunekit::tiles_or_chunks(ntiles, prepare, chunks.size(0) - 1, work, gidx.numel() * 4 * tokens < (1 << 19));
#endif
  return y;
}

// SparseLinearInt8's forward in one call: x (..., in) of any float dtype -> y (..., out) float32.
torch::Tensor linear_int8(torch::Tensor chunks, torch::Tensor indptr, torch::Tensor gidx, torch::Tensor w4,
                          torch::Tensor wsum, torch::Tensor wscale, torch::Tensor x, c10::optional<torch::Tensor> bias) {
  TORCH_CHECK(x.device().is_cpu() && w4.device().is_cpu(), "prunekit's sparse kernels run on the CPU");
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = indptr.size(0) - 1;
  auto x2 = x.reshape({-1, x.size(-1)}).to(torch::kFloat).contiguous();
  return spmm_int8(chunks, indptr, gidx, w4, wsum, wscale, x2, bias).reshape(shape);
}
