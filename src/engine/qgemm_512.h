/*
 * qgemm_512.h — the 512-bit int8 kernel, included by qgemm.c once per
 * instruction set with QNAME, QTARGET and QDOT(u, s) (sixteen int32 sums of
 * four u8 x s8 products each) defined.
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

/* [a x 8, b x 8] */
QTARGET static inline __m512
QCAT(QNAME, _pair) (float a, float b)
{
	return _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_set1_ps(a)), _mm256_set1_ps(b), 1);
}

QTARGET static inline __attribute__((always_inline)) void
QCAT(QNAME, _impl) (float *y, int64_t ldy, const int8_t *xq, const float *xd, const uint8_t *w,
					int64_t rows, int64_t k, int64_t o0, int64_t o1, int accumulate, const int wtype)
{
	const int64_t nb = k / MMS_QK;
	const int64_t bb = wtype == MMS_T_Q8_0 ? 34 : 18;
	const __m512i zero = _mm512_setzero_si512();

	for (int64_t mt = 0; mt < rows; mt += QGEMM_MTILE)
	{
		int64_t		me = mt + QGEMM_MTILE < rows ? mt + QGEMM_MTILE : rows;

		for (int64_t o = o0; o < o1; o += 2)
		{
			int			nw = o + 1 < o1 ? 2 : 1;
			const uint8_t *w0 = w + o * nb * bb;
			const uint8_t *w1 = nw == 2 ? w0 + nb * bb : w0;

			for (int64_t m = mt; m < me; m += 4)
			{
				int			nm = me - m < 4 ? (int) (me - m) : 4;
				const int8_t *xr[4];
				const float *dr[4];
				__m512		acc[2][4];

				for (int r = 0; r < 4; r++)
				{
					int64_t		row = m + (r < nm ? r : 0);

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
					__m512i		ua = _mm512_abs_epi8(wa);
					__m512i		ub = _mm512_abs_epi8(wb);
					__mmask64	na = _mm512_movepi8_mask(wa);
					__mmask64	nbm = _mm512_movepi8_mask(wb);
					__m512		da = QCAT(QNAME, _pair) (_cvtsh_ss(mms_load_u16(ba)),
														 two ? _cvtsh_ss(mms_load_u16(ba + bb)) : 0.0f);
					__m512		db = QCAT(QNAME, _pair) (_cvtsh_ss(mms_load_u16(bw)),
														 two ? _cvtsh_ss(mms_load_u16(bw + bb)) : 0.0f);

					for (int r = 0; r < 4; r++)
					{
						__m512i		xv = two ? _mm512_loadu_si512(xr[r] + b * MMS_QK)
							: _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *) (xr[r] + b * MMS_QK)));
						__m512		dx = QCAT(QNAME, _pair) (dr[r][b], two ? dr[r][b + 1] : 0.0f);
						__m512		sa = _mm512_cvtepi32_ps(QDOT(ua, _mm512_mask_sub_epi8(xv, na, zero, xv)));
						__m512		sb = _mm512_cvtepi32_ps(QDOT(ub, _mm512_mask_sub_epi8(xv, nbm, zero, xv)));

						acc[0][r] = _mm512_fmadd_ps(sa, _mm512_mul_ps(da, dx), acc[0][r]);
						acc[1][r] = _mm512_fmadd_ps(sb, _mm512_mul_ps(db, dx), acc[1][r]);
					}
				}
				for (int r = 0; r < nm; r++)
					for (int a = 0; a < nw; a++)
					{
						float	   *dst = y + (m + r) * ldy + o + a;
						float		v = _mm512_reduce_add_ps(acc[a][r]);

						*dst = accumulate ? *dst + v : v;
					}
			}
		}
	}
}

QTARGET static void
QNAME(float *y, int64_t ldy, const int8_t *xq, const float *xd, const uint8_t *w, int wtype,
	  int64_t rows, int64_t k, int64_t o0, int64_t o1, int accumulate)
{
	if (wtype == MMS_T_Q8_0)
		QCAT(QNAME, _impl) (y, ldy, xq, xd, w, rows, k, o0, o1, accumulate, MMS_T_Q8_0);
	else
		QCAT(QNAME, _impl) (y, ldy, xq, xd, w, rows, k, o0, o1, accumulate, MMS_T_Q4_0);
}

#undef QCAT
#undef QCAT2
