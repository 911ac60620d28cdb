/* Group-wise int8 (uint8 codes) weight-only kernels with fp32 activations, for lmlab.nn.cpu_kernels.

   W[r, j*g + i] = s[r, j] * c[r, j*g + i] + z[r, j]      c uint8 (n, k), s and z fp32 (n, k/g), g % 16 == 0

   lmlab_u8g_gemm:    y (m, n) = x (m, k) @ W^T, fp32 throughout:
                      y[b, r] = sum_j s[r, j] * (x[b, group j] . c[r, group j]) + sum_j z[r, j] * (sum of x[b, group j])
   lmlab_u8g_dequant: out (n, k) fp32 = W.

   One thread. With AVX-512 the codes of a 16-wide chunk are widened to fp32 once and used for up to 4 rows of x;
   without it, plain loops for the compiler to vectorise. Built by lmlab/nn/cpu_kernels.py (-O3 -march=native). */
#include <stdint.h>
#include <stdlib.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

static void group_sums(const float *x, float *xs, int64_t m, int64_t k, int64_t g) {
  const int64_t G = k / g;
  for (int64_t b = 0; b < m; b++)
    for (int64_t j = 0; j < G; j++) {
      float t = 0.f;
      for (int64_t i = 0; i < g; i++) t += x[b * k + j * g + i];
      xs[b * G + j] = t;
    }
}

#ifdef __AVX512F__
/* NB rows of x (at x, stride k) against output row r: NB dot products, written to y[b*n + r]. */
static inline __attribute__((always_inline)) void rows_avx512(
    const float *x, const uint8_t *cr, const float *sr, const float *zr, const float *xs, float *y,
    int64_t n, int64_t k, int64_t g, int64_t r, const int NB) {
  const int64_t G = k / g;
  __m512 acc[4];
  for (int b = 0; b < NB; b++) acc[b] = _mm512_setzero_ps();
  for (int64_t j = 0; j < G; j++) {
    __m512 t[4];
    for (int b = 0; b < NB; b++) t[b] = _mm512_setzero_ps();
    for (int64_t i = j * g; i < (j + 1) * g; i += 16) {
      __m512 w = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(cr + i))));
      for (int b = 0; b < NB; b++) t[b] = _mm512_fmadd_ps(_mm512_loadu_ps(x + b * k + i), w, t[b]);
    }
    __m512 sj = _mm512_set1_ps(sr[j]);
    for (int b = 0; b < NB; b++) acc[b] = _mm512_fmadd_ps(sj, t[b], acc[b]);
  }
  for (int b = 0; b < NB; b++) {
    float out = _mm512_reduce_add_ps(acc[b]);
    for (int64_t j = 0; j < G; j++) out += zr[j] * xs[b * G + j];
    y[b * n + r] = out;
  }
}
#endif

int lmlab_u8g_gemm(const float *x, const uint8_t *c, const float *s, const float *z, float *y,
                   int64_t m, int64_t n, int64_t k, int64_t g) {
  if (g <= 0 || g % 16 || k % g) return 1;
  const int64_t G = k / g;
  float *xs = (float *)malloc(sizeof(float) * (size_t)(m * G + 1));
  if (!xs) return 2;
  group_sums(x, xs, m, k, g);
  for (int64_t r = 0; r < n; r++) {
    const uint8_t *cr = c + r * k;
    const float *sr = s + r * G, *zr = z + r * G;
    int64_t b = 0;
#ifdef __AVX512F__
    for (; b + 4 <= m; b += 4) rows_avx512(x + b * k, cr, sr, zr, xs + b * G, y + b * n, n, k, g, r, 4);
    switch (m - b) {
      case 3: rows_avx512(x + b * k, cr, sr, zr, xs + b * G, y + b * n, n, k, g, r, 3); break;
      case 2: rows_avx512(x + b * k, cr, sr, zr, xs + b * G, y + b * n, n, k, g, r, 2); break;
      case 1: rows_avx512(x + b * k, cr, sr, zr, xs + b * G, y + b * n, n, k, g, r, 1); break;
      default: break;
    }
#else
    for (; b < m; b++) {
      const float *xb = x + b * k;
      float out = 0.f;
      for (int64_t j = 0; j < G; j++) {
        float t = 0.f;
        for (int64_t i = j * g; i < (j + 1) * g; i++) t += xb[i] * (float)cr[i];
        out += sr[j] * t + zr[j] * xs[b * G + j];
      }
      y[b * n + r] = out;
    }
#endif
  }
  free(xs);
  return 0;
}

int lmlab_u8g_dequant(const uint8_t *c, const float *s, const float *z, float *out, int64_t n, int64_t k, int64_t g) {
  if (g <= 0 || k % g) return 1;
  const int64_t G = k / g;
  for (int64_t r = 0; r < n; r++)
    for (int64_t j = 0; j < G; j++) {
      const float sj = s[r * G + j], zj = z[r * G + j];
      const uint8_t *cj = c + r * k + j * g;
      float *oj = out + r * k + j * g;
      for (int64_t i = 0; i < g; i++) oj[i] = sj * (float)cj[i] + zj;
    }
  return 0;
}
