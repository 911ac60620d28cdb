/* Group-wise int8 (uint8 codes) weight-only kernels with fp32 activations, for lmlab.nn.cpu_kernels.

   W[r, j*g + i] = s[r, j] * c[r, j*g + i] + z[r, j]      c uint8 (n, k), s and z fp32 (n, k/g), g % 16 == 0

   lmlab_u8g_gemm:    y (m, n) = x (m, k) @ W^T, fp32 throughout, on up to `threads` threads (output rows split;
                      one thread below ~4M weights):
                      y[b, r] = sum_j s[r, j] * (x[b, group j] . c[r, group j]) + sum_j z[r, j] * (sum of x[b, group j])
   lmlab_u8g_dequant: out (n, k) fp32 = W.

   Per thread: with AVX-512 the codes of a 16-wide chunk are widened to fp32 once and used for up to 4 rows of x;
   without it, plain loops for the compiler to vectorise. Built by lmlab/nn/cpu_kernels.py (-O3 -march=native). */
#include <stdint.h>
#include <pthread.h>
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
/* NB rows of x (at x, stride k) against output row r, without the zero-point term: y[b*n + r] = sum_j s[r, j] *
   (x[b, group j] . c[r, group j]). Inlined with a constant g where g == 32, so the chunk loop unrolls. */
static inline __attribute__((always_inline)) void rows_avx512(
    const float *x, const uint8_t *cr, const float *sr, float *y, int64_t n, int64_t k, const int64_t g,
    int64_t r, const int NB) {
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
  for (int b = 0; b < NB; b++) y[b * n + r] = _mm512_reduce_add_ps(acc[b]);
}

/* one row of x (m == 1), groups of 32: the loop the compiler unrolls best; y = sum_j s[r, j] * (x_j . c_rj) */
static void gemv32_avx512(const float *x, const uint8_t *c, const float *s, float *y, int64_t n, int64_t k) {
  const int64_t G = k / 32;
  for (int64_t r = 0; r < n; r++) {
    const uint8_t *cr = c + r * k;
    const float *sr = s + r * G;
    __m512 acc = _mm512_setzero_ps();
    for (int64_t j = 0; j < G; j++) {
      __m512 w0 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(cr + j * 32))));
      __m512 w1 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(cr + j * 32 + 16))));
      __m512 t = _mm512_mul_ps(_mm512_loadu_ps(x + j * 32), w0);
      t = _mm512_fmadd_ps(_mm512_loadu_ps(x + j * 32 + 16), w1, t);
      acc = _mm512_fmadd_ps(_mm512_set1_ps(sr[j]), t, acc);
    }
    y[r] = _mm512_reduce_add_ps(acc);
  }
}

static inline __attribute__((always_inline)) void gemm_avx512(
    const float *x, const uint8_t *c, const float *s, float *y, int64_t m, int64_t rows, int64_t ystride,
    int64_t k, const int64_t g) {
  const int64_t G = k / g;
  for (int64_t r = 0; r < rows; r++) {
    const uint8_t *cr = c + r * k;
    const float *sr = s + r * G;
    int64_t b = 0;
    for (; b + 4 <= m; b += 4) rows_avx512(x + b * k, cr, sr, y + b * ystride, ystride, k, g, r, 4);
    switch (m - b) {
      case 3: rows_avx512(x + b * k, cr, sr, y + b * ystride, ystride, k, g, r, 3); break;
      case 2: rows_avx512(x + b * k, cr, sr, y + b * ystride, ystride, k, g, r, 2); break;
      case 1: rows_avx512(x + b * k, cr, sr, y + b * ystride, ystride, k, g, r, 1); break;
      default: break;
    }
  }
}
#endif

/* Output rows [r0, r1) of y (m, n): what one thread computes. */
typedef struct {
  const float *x, *s, *z, *xs;
  const uint8_t *c;
  float *y;
  int64_t m, n, k, g, r0, r1;
} job_t;

static void *run_job(void *arg) {
  const job_t *j = (const job_t *)arg;
  const int64_t m = j->m, n = j->n, k = j->k, g = j->g, G = k / g, rows = j->r1 - j->r0;
  const uint8_t *c = j->c + j->r0 * k;
  const float *s = j->s + j->r0 * G, *z = j->z + j->r0 * G, *x = j->x, *xs = j->xs;
  float *y = j->y + j->r0;
#ifdef __AVX512F__
  if (g == 32 && m == 1) gemv32_avx512(x, c, s, y, rows, k);
  else if (g == 32) gemm_avx512(x, c, s, y, m, rows, n, k, 32);
  else gemm_avx512(x, c, s, y, m, rows, n, k, g);
#else
  for (int64_t r = 0; r < rows; r++) {
    const uint8_t *cr = c + r * k;
    const float *sr = s + r * G;
    for (int64_t b = 0; b < m; b++) {
      const float *xb = x + b * k;
      float out = 0.f;
      for (int64_t q = 0; q < G; q++) {
        float t = 0.f;
        for (int64_t i = q * g; i < (q + 1) * g; i++) t += xb[i] * (float)cr[i];
        out += sr[q] * t;
      }
      y[b * n + r] = out;
    }
  }
#endif
  for (int64_t b = 0; b < m; b++)          /* the zero points: y[b, r] += z[r, :] . xs[b, :] */
    for (int64_t r = 0; r < rows; r++) {
      float o = 0.f;
      for (int64_t q = 0; q < G; q++) o += z[r * G + q] * xs[b * G + q];
      y[b * n + r] += o;
    }
  return NULL;
}

#define MAX_THREADS 64
#define PAR_MIN_WEIGHTS (1 << 22)   /* below ~4M weights a thread's start costs more than it saves */

int lmlab_u8g_gemm(const float *x, const uint8_t *c, const float *s, const float *z, float *y,
                   int64_t m, int64_t n, int64_t k, int64_t g, int64_t threads) {
  if (g <= 0 || g % 16 || k % g) return 1;
  const int64_t G = k / g;
  float *xs = (float *)malloc(sizeof(float) * (size_t)(m * G + 1));
  if (!xs) return 2;
  group_sums(x, xs, m, k, g);
  int64_t T = threads < 1 ? 1 : threads > MAX_THREADS ? MAX_THREADS : threads;
  if (n * k < PAR_MIN_WEIGHTS || n < 16 * T) T = 1;
  job_t jobs[MAX_THREADS];
  pthread_t tids[MAX_THREADS];
  int started[MAX_THREADS] = {0};
  const int64_t per = ((n + T - 1) / T + 15) / 16 * 16;   /* rows per thread, a multiple of 16 */
  for (int64_t t = 0; t < T; t++) {
    const int64_t r0 = t * per < n ? t * per : n, r1 = (t + 1) * per < n ? (t + 1) * per : n;
    jobs[t] = (job_t){x, s, z, xs, c, y, m, n, k, g, r0, r1};
  }
  for (int64_t t = 1; t < T; t++) started[t] = pthread_create(&tids[t], NULL, run_job, &jobs[t]) == 0;
  run_job(&jobs[0]);
  for (int64_t t = 1; t < T; t++) {
    if (started[t]) pthread_join(tids[t], NULL);
    else run_job(&jobs[t]);                 /* no thread to be had: this one does it */
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
