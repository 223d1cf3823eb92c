/*
 * gemm_small.c — y = x . W^T for few rows (decoder steps): reads each weight
 * row once and dots it with every input row while it sits in L1. OpenBLAS's
 * sgemm packs the whole weight matrix first, which for a handful of rows
 * costs several times the memory traffic of the product itself. AVX2+FMA
 * when the CPU has it, plain C otherwise.
 */
#include "gemm_small.h"

#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define MMS_HAVE_X86 1
#endif

static void
small_gemm_c(float *y, int64_t ldy, const float *x, const float *w, int64_t rows, int64_t k,
			 int64_t o0, int64_t o1, int accumulate)
{
	for (int64_t o = o0; o < o1; o++)
	{
		const float *wo = w + o * k;

		for (int64_t m = 0; m < rows; m++)
		{
			const float *xm = x + m * k;
			float		s[8] = {0};
			float		t;

			for (int64_t i = 0; i + 8 <= k; i += 8)
				for (int j = 0; j < 8; j++)
					s[j] += xm[i + j] * wo[i + j];
			t = ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
			for (int64_t i = k & ~(int64_t) 7; i < k; i++)
				t += xm[i] * wo[i];
			y[m * ldy + o] = accumulate ? y[m * ldy + o] + t : t;
		}
	}
}

#ifdef MMS_HAVE_X86
__attribute__((target("avx2,fma")))
static inline float
hsum256(__m256 v)
{
	__m128		lo = _mm256_castps256_ps128(v);
	__m128		hi = _mm256_extractf128_ps(v, 1);
	__m128		s = _mm_add_ps(lo, hi);

	s = _mm_add_ps(s, _mm_movehl_ps(s, s));
	s = _mm_add_ss(s, _mm_movehdup_ps(s));
	return _mm_cvtss_f32(s);
}

/* y[m..m+3][o..o+2] from weight rows w, w+k, w+2k and input rows xm .. xm+3k. */
__attribute__((target("avx2,fma")))
static void
block_3x4(float *y, int64_t ldy, const float *xm, const float *w, int64_t k, int64_t o, int64_t m,
		  int accumulate)
{
	const float *w0 = w,
			   *w1 = w + k,
			   *w2 = w + 2 * k;
	const float *x0 = xm,
			   *x1 = xm + k,
			   *x2 = xm + 2 * k,
			   *x3 = xm + 3 * k;
	__m256		c[12];
	float		r[12];

	for (int j = 0; j < 12; j++)
		c[j] = _mm256_setzero_ps();
	for (int64_t i = 0; i < k; i += 8)
	{
		__m256		a0 = _mm256_loadu_ps(w0 + i);
		__m256		a1 = _mm256_loadu_ps(w1 + i);
		__m256		a2 = _mm256_loadu_ps(w2 + i);
		__m256		b;

		b = _mm256_loadu_ps(x0 + i);
		c[0] = _mm256_fmadd_ps(b, a0, c[0]);
		c[1] = _mm256_fmadd_ps(b, a1, c[1]);
		c[2] = _mm256_fmadd_ps(b, a2, c[2]);
		b = _mm256_loadu_ps(x1 + i);
		c[3] = _mm256_fmadd_ps(b, a0, c[3]);
		c[4] = _mm256_fmadd_ps(b, a1, c[4]);
		c[5] = _mm256_fmadd_ps(b, a2, c[5]);
		b = _mm256_loadu_ps(x2 + i);
		c[6] = _mm256_fmadd_ps(b, a0, c[6]);
		c[7] = _mm256_fmadd_ps(b, a1, c[7]);
		c[8] = _mm256_fmadd_ps(b, a2, c[8]);
		b = _mm256_loadu_ps(x3 + i);
		c[9] = _mm256_fmadd_ps(b, a0, c[9]);
		c[10] = _mm256_fmadd_ps(b, a1, c[10]);
		c[11] = _mm256_fmadd_ps(b, a2, c[11]);
	}
	for (int j = 0; j < 12; j++)
		r[j] = hsum256(c[j]);
	for (int j = 0; j < 12; j++)
	{
		float	   *dst = y + (m + j / 3) * ldy + o + j % 3;

		*dst = accumulate ? *dst + r[j] : r[j];
	}
}

/* y[m..m+3][o] from one weight row. */
__attribute__((target("avx2,fma")))
static void
block_1x4(float *y, int64_t ldy, const float *xm, const float *w0, int64_t k, int64_t o, int64_t m,
		  int accumulate)
{
	__m256		c0 = _mm256_setzero_ps(),
				c1 = _mm256_setzero_ps(),
				c2 = _mm256_setzero_ps(),
				c3 = _mm256_setzero_ps();
	float		r[4];

	for (int64_t i = 0; i < k; i += 8)
	{
		__m256		a = _mm256_loadu_ps(w0 + i);

		c0 = _mm256_fmadd_ps(_mm256_loadu_ps(xm + i), a, c0);
		c1 = _mm256_fmadd_ps(_mm256_loadu_ps(xm + k + i), a, c1);
		c2 = _mm256_fmadd_ps(_mm256_loadu_ps(xm + 2 * k + i), a, c2);
		c3 = _mm256_fmadd_ps(_mm256_loadu_ps(xm + 3 * k + i), a, c3);
	}
	r[0] = hsum256(c0);
	r[1] = hsum256(c1);
	r[2] = hsum256(c2);
	r[3] = hsum256(c3);
	for (int j = 0; j < 4; j++)
	{
		float	   *dst = y + (m + j) * ldy + o;

		*dst = accumulate ? *dst + r[j] : r[j];
	}
}

/*
 * Four weight rows against two input rows at a time (eight accumulators):
 * each weight vector loaded from L1 feeds two FMAs; k a multiple of 8.
 */
__attribute__((target("avx2,fma")))
static void
small_gemm_avx2(float *y, int64_t ldy, const float *x, const float *w, int64_t rows, int64_t k,
				int64_t o0, int64_t o1, int accumulate)
{
	int64_t		o = o0;

	for (; o + 4 <= o1; o += 4)
	{
		const float *w0 = w + o * k,
				   *w1 = w0 + k,
				   *w2 = w1 + k,
				   *w3 = w2 + k;
		int64_t		m = 0;

		/* many rows: 3 weight rows x 4 input rows (12 accumulators), then the 4th weight row */
		if (rows >= 8)
		{
			for (; m + 4 <= rows; m += 4)
			{
				block_3x4(y, ldy, x + m * k, w0, k, o, m, accumulate);
				block_1x4(y, ldy, x + m * k, w3, k, o + 3, m, accumulate);
			}
		}
		for (; m + 2 <= rows; m += 2)
		{
			const float *xa = x + m * k,
					   *xb = xa + k;
			__m256		a0 = _mm256_setzero_ps(),
						a1 = _mm256_setzero_ps(),
						a2 = _mm256_setzero_ps(),
						a3 = _mm256_setzero_ps(),
						b0 = _mm256_setzero_ps(),
						b1 = _mm256_setzero_ps(),
						b2 = _mm256_setzero_ps(),
						b3 = _mm256_setzero_ps();
			float		r[8];

			for (int64_t i = 0; i < k; i += 8)
			{
				__m256		xv = _mm256_loadu_ps(xa + i);
				__m256		xw = _mm256_loadu_ps(xb + i);
				__m256		v0 = _mm256_loadu_ps(w0 + i);
				__m256		v1 = _mm256_loadu_ps(w1 + i);
				__m256		v2 = _mm256_loadu_ps(w2 + i);
				__m256		v3 = _mm256_loadu_ps(w3 + i);

				a0 = _mm256_fmadd_ps(xv, v0, a0);
				a1 = _mm256_fmadd_ps(xv, v1, a1);
				a2 = _mm256_fmadd_ps(xv, v2, a2);
				a3 = _mm256_fmadd_ps(xv, v3, a3);
				b0 = _mm256_fmadd_ps(xw, v0, b0);
				b1 = _mm256_fmadd_ps(xw, v1, b1);
				b2 = _mm256_fmadd_ps(xw, v2, b2);
				b3 = _mm256_fmadd_ps(xw, v3, b3);
			}
			r[0] = hsum256(a0);
			r[1] = hsum256(a1);
			r[2] = hsum256(a2);
			r[3] = hsum256(a3);
			r[4] = hsum256(b0);
			r[5] = hsum256(b1);
			r[6] = hsum256(b2);
			r[7] = hsum256(b3);
			for (int j = 0; j < 8; j++)
			{
				float	   *dst = y + (m + j / 4) * ldy + o + j % 4;

				*dst = accumulate ? *dst + r[j] : r[j];
			}
		}
		for (; m < rows; m++)
		{
			const float *xm = x + m * k;
			__m256		a0 = _mm256_setzero_ps(),
						a1 = _mm256_setzero_ps(),
						a2 = _mm256_setzero_ps(),
						a3 = _mm256_setzero_ps();
			float	   *ym = y + m * ldy + o;

			for (int64_t i = 0; i < k; i += 8)
			{
				__m256		xv = _mm256_loadu_ps(xm + i);

				a0 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w0 + i), a0);
				a1 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w1 + i), a1);
				a2 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w2 + i), a2);
				a3 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w3 + i), a3);
			}
			ym[0] = accumulate ? ym[0] + hsum256(a0) : hsum256(a0);
			ym[1] = accumulate ? ym[1] + hsum256(a1) : hsum256(a1);
			ym[2] = accumulate ? ym[2] + hsum256(a2) : hsum256(a2);
			ym[3] = accumulate ? ym[3] + hsum256(a3) : hsum256(a3);
		}
	}
	for (; o < o1; o++)
	{
		const float *w0 = w + o * k;

		for (int64_t m = 0; m < rows; m++)
		{
			const float *xm = x + m * k;
			__m256		a0 = _mm256_setzero_ps();
			float		t;

			for (int64_t i = 0; i < k; i += 8)
				a0 = _mm256_fmadd_ps(_mm256_loadu_ps(xm + i), _mm256_loadu_ps(w0 + i), a0);
			t = hsum256(a0);
			y[m * ldy + o] = accumulate ? y[m * ldy + o] + t : t;
		}
	}
}

/*
 * Sums of four accumulators (one per weight row) as four floats: a
 * transpose-and-add, a third of the work of four separate reductions.
 */
__attribute__((target("avx512f,avx512dq")))
static inline __m128
reduce4_512(__m512 c0, __m512 c1, __m512 c2, __m512 c3)
{
	__m512		t0 = _mm512_add_ps(_mm512_unpacklo_ps(c0, c1), _mm512_unpackhi_ps(c0, c1));
	__m512		t1 = _mm512_add_ps(_mm512_unpacklo_ps(c2, c3), _mm512_unpackhi_ps(c2, c3));
	__m512		u = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t0), _mm512_castps_pd(t1))),
								  _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t0), _mm512_castps_pd(t1))));
	__m256		h = _mm256_add_ps(_mm512_castps512_ps256(u), _mm512_extractf32x8_ps(u, 1));

	return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

/*
 * Four weight rows (w0's first, the others absent past o1 are w0 again)
 * against NM (1..6, a constant where inlined) input rows from row m. Each
 * (row, output) sees the same operations whatever NM, so a row's result does
 * not depend on the rows sharing the call.
 */
__attribute__((target("avx512f,avx512dq")))
static inline __attribute__((always_inline)) void
pass_512(float *y, int64_t ldy, const float *x, const float *const *wr, int nw, int64_t k, int64_t o,
		 int64_t m, int accumulate, int prefetch, const int NM)
{
	__m512		c[4][6];

	for (int a = 0; a < 4; a++)
		for (int b = 0; b < NM; b++)
			c[a][b] = _mm512_setzero_ps();
	for (int64_t i = 0; i < k; i += 16)
	{
		__m512		wa[4];

		/* the next four weight rows, while these are in use: memory stays busy */
		if (prefetch)
			for (int a = 0; a < 4; a++)
				_mm_prefetch((const char *) (wr[a] + 4 * k + i), _MM_HINT_T0);
		for (int a = 0; a < 4; a++)
			wa[a] = _mm512_loadu_ps(wr[a] + i);
		for (int b = 0; b < NM; b++)
		{
			__m512		xv = _mm512_loadu_ps(x + (m + b) * k + i);

			for (int a = 0; a < 4; a++)
				c[a][b] = _mm512_fmadd_ps(xv, wa[a], c[a][b]);
		}
	}
	for (int b = 0; b < NM; b++)
	{
		float		r[4];
		float	   *dst = y + (m + b) * ldy + o;

		_mm_storeu_ps(r, reduce4_512(c[0][b], c[1][b], c[2][b], c[3][b]));
		for (int a = 0; a < nw; a++)
			dst[a] = accumulate ? dst[a] + r[a] : r[a];
	}
}

/*
 * AVX-512: four weight rows x up to six input rows (24 accumulators of 16
 * floats) per pass; k a multiple of 16. About twice the AVX2 kernel where
 * the CPU has it.
 */
__attribute__((target("avx512f,avx512dq")))
static void
small_gemm_avx512(float *y, int64_t ldy, const float *x, const float *w, int64_t rows, int64_t k,
				  int64_t o0, int64_t o1, int accumulate)
{
	for (int64_t o = o0; o < o1; o += 4)
	{
		int			nw = o1 - o < 4 ? (int) (o1 - o) : 4;
		int			pf = o + 8 <= o1;
		const float *wr[4];
		int64_t		m = 0;

		for (int a = 0; a < 4; a++)
			wr[a] = w + (o + (a < nw ? a : 0)) * k;
		for (; m + 6 <= rows; m += 6)
			pass_512(y, ldy, x, wr, nw, k, o, m, accumulate, pf && m == 0, 6);
		switch (rows - m)
		{
			case 5:
				pass_512(y, ldy, x, wr, nw, k, o, m, accumulate, pf && m == 0, 5);
				break;
			case 4:
				pass_512(y, ldy, x, wr, nw, k, o, m, accumulate, pf && m == 0, 4);
				break;
			case 3:
				pass_512(y, ldy, x, wr, nw, k, o, m, accumulate, pf && m == 0, 3);
				break;
			case 2:
				pass_512(y, ldy, x, wr, nw, k, o, m, accumulate, pf && m == 0, 2);
				break;
			case 1:
				pass_512(y, ldy, x, wr, nw, k, o, m, accumulate, pf && m == 0, 1);
				break;
		}
	}
}
#endif

int
mms_cpu_avx2(void)
{
#ifdef MMS_HAVE_X86
	static int	cached = -1;

	if (cached < 0)
	{
		__builtin_cpu_init();
		cached = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
	}
	return cached;
#else
	return 0;
#endif
}

static int
cpu_avx512(void)
{
#ifdef MMS_HAVE_X86
	static int	cached = -1;

	if (cached < 0)
		cached = mms_cpu_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
			getenv("MMS_NO_AVX512") == NULL;
	return cached;
#else
	return 0;
#endif
}

#ifdef MMS_HAVE_X86
__attribute__((target("avx2,fma")))
static float
dot_avx2(const float *a, const float *b, int64_t n)
{
	__m256		acc0 = _mm256_setzero_ps(),
				acc1 = _mm256_setzero_ps();
	int64_t		i = 0;
	float		t;

	for (; i + 16 <= n; i += 16)
	{
		acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
		acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
	}
	for (; i + 8 <= n; i += 8)
		acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
	t = hsum256(_mm256_add_ps(acc0, acc1));
	for (; i < n; i++)
		t += a[i] * b[i];
	return t;
}
#endif

float
mms_dot(const float *a, const float *b, int64_t n)
{
	float		s = 0.0f;

#ifdef MMS_HAVE_X86
	if (mms_cpu_avx2())
		return dot_avx2(a, b, n);
#endif
	for (int64_t i = 0; i < n; i++)
		s += a[i] * b[i];
	return s;
}

void
mms_small_gemm(float *y, int64_t ldy, const float *x, const float *w, int64_t rows, int64_t k,
			   int64_t o0, int64_t o1, int accumulate)
{
#ifdef MMS_HAVE_X86
	if (cpu_avx512() && k % 16 == 0 && rows >= 4)
	{
		small_gemm_avx512(y, ldy, x, w, rows, k, o0, o1, accumulate);
		return;
	}
	if (mms_cpu_avx2() && k % 8 == 0)
	{
		small_gemm_avx2(y, ldy, x, w, rows, k, o0, o1, accumulate);
		return;
	}
#endif
	small_gemm_c(y, ldy, x, w, rows, k, o0, o1, accumulate);
}
