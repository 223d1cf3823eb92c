/*
 * qgemm_512.h — the 512-bit int8 kernel, included by qgemm.c once per
 * instruction set with QNAME, QTARGET and QDOT(u, s) (sixteen int32 sums of
 * four u8 x s8 products each) defined.
 *
 * With QU8 defined (VNNI), x is made unsigned by adding 128 (one xor per
 * row) and each lane's dot product starts from -128 x its sum of w, computed
 * once per weight pair: no sign juggling per (row, weight row) pair.
 *
 * As qgemm_256.h, but a vector holds two consecutive blocks (lanes 0-7 the
 * first, 8-15 the second), scaled by a vector of their two scales; an odd
 * last block runs with a zero second half. Signs move from w to x with a
 * mask (AVX-512 has no 512-bit vpsignb).
 */

#define QCAT2(a, b) a##b
#define QCAT(a, b) QCAT2(a, b)

/* Two consecutive weight blocks at blk (the second one zero when only one). */
QTARGET static inline __m512i
QCAT(QNAME, _wpair) (const uint8_t *blk, int64_t bb, int two, const int wtype)
{
	__m256i		v[2];

	for (int h = 0; h < 2; h++)
	{
		const uint8_t *p = blk + h * bb;

		if (h == 1 && !two)
			v[h] = _mm256_setzero_si256();
		else if (wtype == MMS_T_Q8_0)
			v[h] = _mm256_loadu_si256((const __m256i *) (p + 2));
		else
		{
			__m128i		b = _mm_loadu_si128((const __m128i *) (p + 2));
			__m128i		lo = _mm_and_si128(b, _mm_set1_epi8(0x0f));
			__m128i		hi = _mm_and_si128(_mm_srli_epi16(b, 4), _mm_set1_epi8(0x0f));

			v[h] = _mm256_sub_epi8(_mm256_set_m128i(hi, lo), _mm256_set1_epi8(8));
		}
	}
	return _mm512_inserti64x4(_mm512_castsi256_si512(v[0]), v[1], 1);
}

/* [p[0], p[1], p[0], p[1]] from any float address */
QTARGET static inline __m128
QCAT(QNAME, _dup2) (const float *p)
{
	__m128		v = _mm_castsi128_ps(_mm_loadl_epi64((const __m128i *) p));

	return _mm_movelh_ps(v, v);
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
	const __m512i zero = _mm512_setzero_si512();
	/* lanes 0-7 take scale 0 (block b), 8-15 scale 1 (block b + 1); pick_b the same from w1's */
	const __m512i pick_a = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
	const __m512i pick_b = _mm512_set_epi32(3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2);
	const int8_t *xr[4];
	const float *dr[4];
	__m512		acc[2][4];

	for (int r = 0; r < NM; r++)
	{
		int64_t		row = m + r;

		xr[r] = xq + row * k;
		dr[r] = xd + row * nb;
		acc[0][r] = _mm512_setzero_ps();
		acc[1][r] = _mm512_setzero_ps();
	}
	for (int64_t b = 0; b < nb; b += 2)
	{
		int			two = b + 1 < nb;
		const uint8_t *ba = w0 + b * bb,
				   *bw = w1 + b * bb;
		__m512i		wa = QCAT(QNAME, _wpair) (ba, bb, two, wtype);
		__m512i		wb = QCAT(QNAME, _wpair) (bw, bb, two, wtype);
#ifdef QU8
		/* -128 x each lane's sum of w: what x + 128 adds to the dot products */
		const __m512i nca = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, _mm512_set1_epi8((char) 0x80), wa));
		const __m512i ncb = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, _mm512_set1_epi8((char) 0x80), wb));
#else
		__m512i		ua = _mm512_abs_epi8(wa);
		__m512i		ub = _mm512_abs_epi8(wb);
		__mmask64	na = _mm512_movepi8_mask(wa);
		__mmask64	nbm = _mm512_movepi8_mask(wb);
#endif

		/* the four block scales at once: [a b, a b+1, w1's b, w1's b+1] */
		uint32_t	ha = mms_load_u16(ba) | (two ? (uint32_t) mms_load_u16(ba + bb) << 16 : 0);
		uint32_t	hb = mms_load_u16(bw) | (two ? (uint32_t) mms_load_u16(bw + bb) << 16 : 0);
		__m128		dw4 = _mm_cvtph_ps(_mm_insert_epi32(_mm_cvtsi32_si128((int) ha), (int) hb, 1));

		/*
		 * Rows o, o + 1 and the ones after lie one after the other: ask for
		 * the bytes QGEMM_PF ahead of where the pair is reading, a bit more
		 * than it reads per step, so memory stays busy.
		 */
		_mm_prefetch((const char *) (w0 + 2 * b * bb + QGEMM_PF), _MM_HINT_T0);
		_mm_prefetch((const char *) (w0 + 2 * b * bb + QGEMM_PF + 64), _MM_HINT_T0);
		_mm_prefetch((const char *) (w0 + 2 * b * bb + QGEMM_PF + 128), _MM_HINT_T0);
		for (int r = 0; r < NM; r++)
		{
			__m512i		xv = two ? _mm512_loadu_si512(xr[r] + b * MMS_QK)
				: _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *) (xr[r] + b * MMS_QK)));
			/* [dx b, dx b+1, the same again]; the second is past the row's end when !two */
			__m128		dx4 = two ? QCAT(QNAME, _dup2) (dr[r] + b)
				: _mm_set_ps(0.0f, dr[r][b], 0.0f, dr[r][b]);
			__m512		s4 = _mm512_castps128_ps512(_mm_mul_ps(dw4, dx4));
#ifdef QU8
			/* x + 128 as unsigned against w as it is: the sums come out exact after nca, ncb */
			__m512i		xu = _mm512_xor_si512(xv, _mm512_set1_epi8((char) 0x80));
			__m512		sa = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(nca, xu, wa));
			__m512		sb = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(ncb, xu, wb));
#else
			__m512		sa = _mm512_cvtepi32_ps(QDOT(ua, _mm512_mask_sub_epi8(xv, na, zero, xv)));
			__m512		sb = _mm512_cvtepi32_ps(QDOT(ub, _mm512_mask_sub_epi8(xv, nbm, zero, xv)));
#endif
			__m512		da = _mm512_permutexvar_ps(pick_a, s4);
			__m512		db = _mm512_permutexvar_ps(pick_b, s4);

			acc[0][r] = _mm512_fmadd_ps(sa, da, acc[0][r]);
			acc[1][r] = _mm512_fmadd_ps(sb, db, acc[1][r]);
		}
	}
	for (int r = 0; r < NM; r++)
		for (int a = 0; a < nw; a++)
		{
			float	   *dst = y + (m + r) * ldy + o + a;
			float		v = _mm512_reduce_add_ps(acc[a][r]);

			*dst = accumulate ? *dst + v : v;
		}
}

#include "qgemm_drive.h"

#undef QCAT
#undef QCAT2
