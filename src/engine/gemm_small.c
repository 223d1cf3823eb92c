/*
 * gemm_small.c — y = x . W^T for few rows (decoder steps): reads each weight
 * row once and dots it with every input row while it sits in L1. OpenBLAS's
 * sgemm packs the whole weight matrix first, which for a handful of rows
 * costs several times the memory traffic of the product itself. AVX2+FMA
 * when the CPU has it, plain C otherwise.
 */
#include "gemm_small.h"

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
#endif

static int	have_avx2 = -1;

void
mms_small_gemm(float *y, int64_t ldy, const float *x, const float *w, int64_t rows, int64_t k,
			   int64_t o0, int64_t o1, int accumulate)
{
#ifdef MMS_HAVE_X86
	if (have_avx2 < 0)
	{
		__builtin_cpu_init();
		have_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
	}
	if (have_avx2 && k % 8 == 0)
	{
		small_gemm_avx2(y, ldy, x, w, rows, k, o0, o1, accumulate);
		return;
	}
#endif
	small_gemm_c(y, ldy, x, w, rows, k, o0, o1, accumulate);
}
