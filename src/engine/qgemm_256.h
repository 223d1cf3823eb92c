/*
 * qgemm_256.h — the 256-bit int8 kernel, included by qgemm.c once per
 * instruction set with QNAME (function name), QTARGET (its target attribute)
 * and QDOT(u, s) (eight int32 sums of four u8 x s8 products each) defined.
 *
 * Two weight rows x four input rows per pass, every block: the weight block
 * is made unsigned (|w|) and its signs moved onto x (sign(x, w)), as the u8 x
 * s8 instructions need; the exact int32 sums are scaled by dw * dx in float.
 * Rows are walked in tiles of QGEMM_MTILE so the int8 inputs stay in cache
 * while a task's weights go by. Each (row, output) sees the same operations
 * in the same order wherever it falls in a pass, so a row's result does not
 * depend on the rows sharing the call.
 */

#define QCAT2(a, b) a##b
#define QCAT(a, b) QCAT2(a, b)

QTARGET static inline __m256i
QCAT(QNAME, _wblock) (const uint8_t *blk, const int wtype)
{
	if (wtype == MMS_T_Q8_0)
		return _mm256_loadu_si256((const __m256i *) (blk + 2));
	else
	{
		/* Q4_0: value j is the low nibble of byte j, value j + 16 its high nibble, minus 8 */
		__m128i		b = _mm_loadu_si128((const __m128i *) (blk + 2));
		__m128i		lo = _mm_and_si128(b, _mm_set1_epi8(0x0f));
		__m128i		hi = _mm_and_si128(_mm_srli_epi16(b, 4), _mm_set1_epi8(0x0f));

		return _mm256_sub_epi8(_mm256_set_m128i(hi, lo), _mm256_set1_epi8(8));
	}
}

QTARGET static inline float
QCAT(QNAME, _hsum) (__m256 v)
{
	__m128		s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));

	s = _mm_add_ps(s, _mm_movehl_ps(s, s));
	s = _mm_add_ss(s, _mm_movehdup_ps(s));
	return _mm_cvtss_f32(s);
}

/*
 * NM (1..4, a constant where inlined) input rows from row m against weight
 * rows w0 and w1 (nw of them): the compiler unrolls the row loops, and a
 * row's operations are the same whatever NM.
 */
QTARGET static inline __attribute__((always_inline)) void
QCAT(QNAME, _pass) (float *y, int64_t ldy, const int8_t *xq, const float *xd, const uint8_t *w0,
					const uint8_t *w1, int nw, int64_t m, int64_t k, int64_t o, int accumulate,
					const int wtype, const int NM)
{
	const int64_t nb = k / MMS_QK;
	const int64_t bb = wtype == MMS_T_Q8_0 ? 34 : 18;
	const int8_t *xr[4];
	const float *dr[4];
	__m256		acc[2][4];

	for (int r = 0; r < NM; r++)
	{
		int64_t		row = m + r;

		xr[r] = xq + row * k;
		dr[r] = xd + row * nb;
		acc[0][r] = _mm256_setzero_ps();
		acc[1][r] = _mm256_setzero_ps();
	}
	for (int64_t b = 0; b < nb; b++)
	{
		/*
		 * Rows o, o + 1 and the ones after lie one after the other: ask for
		 * the bytes QGEMM_PF ahead of where the pair is reading, a bit more
		 * than it reads per step, so memory stays busy.
		 */
		_mm_prefetch((const char *) (w0 + 2 * b * bb + QGEMM_PF), _MM_HINT_T0);
		_mm_prefetch((const char *) (w0 + 2 * b * bb + QGEMM_PF + 64), _MM_HINT_T0);
		const uint8_t *ba = w0 + b * bb,
				   *bw = w1 + b * bb;
		__m256i		wa = QCAT(QNAME, _wblock) (ba, wtype);
		__m256i		wb = QCAT(QNAME, _wblock) (bw, wtype);
		__m256i		ua = _mm256_sign_epi8(wa, wa);
		__m256i		ub = _mm256_sign_epi8(wb, wb);
		__m256		da = _mm256_set1_ps(_cvtsh_ss(mms_load_u16(ba)));
		__m256		db = _mm256_set1_ps(_cvtsh_ss(mms_load_u16(bw)));

		for (int r = 0; r < NM; r++)
		{
			__m256i		xv = _mm256_loadu_si256((const __m256i *) (xr[r] + b * MMS_QK));
			__m256		dx = _mm256_set1_ps(dr[r][b]);
			__m256		sa = _mm256_cvtepi32_ps(QDOT(ua, _mm256_sign_epi8(xv, wa)));
			__m256		sb = _mm256_cvtepi32_ps(QDOT(ub, _mm256_sign_epi8(xv, wb)));

			acc[0][r] = _mm256_fmadd_ps(sa, _mm256_mul_ps(da, dx), acc[0][r]);
			acc[1][r] = _mm256_fmadd_ps(sb, _mm256_mul_ps(db, dx), acc[1][r]);
		}
	}
	for (int r = 0; r < NM; r++)
		for (int a = 0; a < nw; a++)
		{
			float	   *dst = y + (m + r) * ldy + o + a;
			float		v = QCAT(QNAME, _hsum) (acc[a][r]);

			*dst = accumulate ? *dst + v : v;
		}
}

#include "qgemm_drive.h"

#undef QCAT
#undef QCAT2
