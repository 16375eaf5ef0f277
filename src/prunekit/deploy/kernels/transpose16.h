// A 16x16 register transpose of 32-bit values (AVX-512), shared by the float and int8 kernels.
#pragma once

#include <cstdint>

#if defined(__AVX512F__)
#include <immintrin.h>
#define PRUNEKIT_AVX512 1

namespace prunekit {

// dst[j, r] = src[r, j] for a 16x16 block in registers. Source rows >= nrows and columns >= ncols
// read as zero; destination rows j < store_rows are written, each with its first store_cols lanes.
inline void transpose16(const float* src, int64_t src_stride, int nrows, int ncols, float* dst, int64_t dst_stride,
                        int store_rows, int store_cols) {
  const __mmask16 load_mask = ncols >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << ncols) - 1);
  const __mmask16 store_mask = store_cols >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << store_cols) - 1);
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) {
    r[i] = i < nrows ? _mm512_maskz_loadu_ps(load_mask, src + i * src_stride) : _mm512_setzero_ps();
  }
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {  // r[4i + c], 128-bit lane L: column 4L + c of rows 4i..4i+3
    const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 1]);
    const __m512d c = _mm512_castps_pd(t[4 * i + 2]), d = _mm512_castps_pd(t[4 * i + 3]);
    r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  for (int c = 0; c < 4; ++c) {  // gather lane L of r[c], r[4+c], r[8+c], r[12+c]: column 4L + c
    const __m512 lo01 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x44), lo23 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x44);
    const __m512 hi01 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xEE), hi23 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xEE);
    const __m512 col[4] = {_mm512_shuffle_f32x4(lo01, lo23, 0x88), _mm512_shuffle_f32x4(lo01, lo23, 0xDD),
                           _mm512_shuffle_f32x4(hi01, hi23, 0x88), _mm512_shuffle_f32x4(hi01, hi23, 0xDD)};
    for (int L = 0; L < 4; ++L) {
      if (4 * L + c < store_rows) _mm512_mask_storeu_ps(dst + (4 * L + c) * dst_stride, store_mask, col[L]);
    }
  }
}

}  // namespace prunekit

#endif  // __AVX512F__
