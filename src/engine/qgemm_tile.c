/*
 * qgemm_tile.c — the wide int8 kernel (see qgemm.h, mms_qtile_gemm): weight
 * rows repacked per call, 16 at a time, so that the outputs lie across the
 * lanes of a vector and vpdpbusd's input is one broadcast group of four
 * activations. AVX-512 VNNI; elsewhere the caller dequantizes tiles for
 * sgemm instead.
 */
#include "qgemm.h"

#include <stdatomic.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define MMS_QTILE_X86 1
#endif

/* a group's tile: per block, 8 x 64 bytes of four-value groups, then -128 x block sums, then scales */
#define GROUP_BLOCK_BYTES (8 * 64 + 64 + 64)

size_t
mms_qtile_bytes(int64_t k)
{
	/* two groups of 16 rows, 64-byte aligned inside */
	return 2 * (size_t) (k / MMS_QK) * GROUP_BLOCK_BYTES + 64;
}

int
mms_qtile_available(void)
{
#ifdef MMS_QTILE_X86
	/* asked per layer and per task: decided once (threads racing here compute the same answer) */
	static _Atomic int avail = -1;
	int			a = atomic_load_explicit(&avail, memory_order_relaxed);

	if (a < 0)
	{
		a = mms_qpath_available(MMS_QPATH_AVX512_VNNI);
		atomic_store_explicit(&avail, a, memory_order_relaxed);
	}
	return a;
#else
	return 0;
#endif
}

#ifdef MMS_QTILE_X86

#define QT_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")))

/*
 * Rows w .. w + n - 1 (n <= 16; the other lanes zero) into group tile t:
 * gathers the four-value groups of each block (Q4_0: unpacked to int8), the
 * scales, and -128 x each block's sum for the +128 stored with the inputs.
 */
QT_TARGET static void
repack(uint8_t *t, const uint8_t *w, int wtype, int64_t nb, int64_t rowbytes, int n)
{
	const int	bb = wtype == MMS_T_Q8_0 ? 34 : 18;
	const __mmask16 valid = (__mmask16) ((1u << n) - 1);
	const __m512i rowoff = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
											  _mm512_set1_epi32((int) rowbytes));
	const __m512i zero = _mm512_setzero_si512();
	__m512i    *packed = (__m512i *) t;
	__m512i    *negsum = (__m512i *) (t + nb * 8 * 64);
	__m512	   *scale = (__m512 *) (t + nb * (8 * 64 + 64));

	for (int64_t b = 0; b < nb; b++)
	{
		const uint8_t *blk = w + b * bb;
		__m512i		h = _mm512_mask_i32gather_epi32(zero, valid, rowoff, blk, 1);
		__m512i		sum = zero;

		scale[b] = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(h));
		for (int q = 0; q < 8; q++)
		{
			__m512i		v;

			if (wtype == MMS_T_Q8_0)
				v = _mm512_mask_i32gather_epi32(zero, valid, rowoff, blk + 2 + 4 * q, 1);
			else
			{
				v = _mm512_mask_i32gather_epi32(zero, valid, rowoff, blk + 2 + 4 * (q & 3), 1);
				if (q >= 4)
					v = _mm512_srli_epi32(v, 4);
				v = _mm512_sub_epi8(_mm512_and_si512(v, _mm512_set1_epi8(0x0f)), _mm512_set1_epi8(8));
				v = _mm512_maskz_mov_epi32(valid, v);
			}
			packed[b * 8 + q] = v;
			sum = _mm512_dpbusd_epi32(sum, _mm512_set1_epi8(1), v);
		}
		negsum[b] = _mm512_sub_epi32(zero, _mm512_slli_epi32(sum, 7));
	}
}

static inline int32_t
load_i32(const uint8_t *p)
{
	int32_t		v;

	memcpy(&v, p, sizeof(v));
	return v;
}

/*
 * NM (1..4) input rows from row m against the two group tiles t0, t1
 * (outputs o .. o + 15 and o + 16 .. o + 31; n0, n1 of them real). Each
 * (row, output) sees the same operations whatever NM.
 */
QT_TARGET static inline __attribute__((always_inline)) void
tile_pass(float *y, int64_t ldy, const uint8_t *xu, const float *xd, const uint8_t *t0, const uint8_t *t1,
		  int64_t nb, int64_t k, int64_t m, int64_t o, int n0, int n1, int accumulate, const int NM)
{
	const __m512i *p0 = (const __m512i *) t0,
			   *p1 = (const __m512i *) t1;
	const __m512i *c0 = (const __m512i *) (t0 + nb * 8 * 64),
			   *c1 = (const __m512i *) (t1 + nb * 8 * 64);
	const __m512 *s0 = (const __m512 *) (t0 + nb * (8 * 64 + 64)),
			   *s1 = (const __m512 *) (t1 + nb * (8 * 64 + 64));
	__m512		acc[4][2];

	for (int r = 0; r < NM; r++)
		acc[r][0] = acc[r][1] = _mm512_setzero_ps();
	for (int64_t b = 0; b < nb; b++)
	{
		__m512i		ai[4][2];

		for (int r = 0; r < NM; r++)
		{
			ai[r][0] = c0[b];
			ai[r][1] = c1[b];
		}
		for (int q = 0; q < 8; q++)
		{
			__m512i		w0 = p0[b * 8 + q],
						w1 = p1[b * 8 + q];

			for (int r = 0; r < NM; r++)
			{
				__m512i		xb = _mm512_set1_epi32(load_i32(xu + (m + r) * k + b * MMS_QK + 4 * q));

				ai[r][0] = _mm512_dpbusd_epi32(ai[r][0], xb, w0);
				ai[r][1] = _mm512_dpbusd_epi32(ai[r][1], xb, w1);
			}
		}
		for (int r = 0; r < NM; r++)
		{
			__m512		dx = _mm512_set1_ps(xd[(m + r) * nb + b]);

			acc[r][0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ai[r][0]), _mm512_mul_ps(s0[b], dx), acc[r][0]);
			acc[r][1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ai[r][1]), _mm512_mul_ps(s1[b], dx), acc[r][1]);
		}
	}
	for (int r = 0; r < NM; r++)
		for (int g = 0; g < 2; g++)
		{
			int			n = g ? n1 : n0;
			__mmask16	valid = (__mmask16) ((1u << n) - 1);
			float	   *dst = y + (m + r) * ldy + o + 16 * g;
			__m512		v = acc[r][g];

			if (n == 0)
				continue;
			if (accumulate)
				v = _mm512_add_ps(_mm512_maskz_loadu_ps(valid, dst), v);
			_mm512_mask_storeu_ps(dst, valid, v);
		}
}

QT_TARGET static void
qtile_gemm_vnni(float *y, int64_t ldy, const void *act, const uint8_t *w, int wtype, int64_t rows,
				int64_t k, int64_t o0, int64_t o1, int accumulate, void *tile)
{
	const int64_t nb = k / MMS_QK;
	const int64_t rowbytes = nb * (wtype == MMS_T_Q8_0 ? 34 : 18);
	const uint8_t *xu = act;
	const float *xd = (const float *) (xu + rows * k);
	uint8_t    *t0 = (uint8_t *) (((uintptr_t) tile + 63) & ~(uintptr_t) 63);
	uint8_t    *t1 = t0 + nb * GROUP_BLOCK_BYTES;

	for (int64_t o = o0; o < o1; o += 32)
	{
		int			n0 = o1 - o < 16 ? (int) (o1 - o) : 16;
		int			n1 = o1 - o - 16 <= 0 ? 0 : o1 - o - 16 < 16 ? (int) (o1 - o - 16) : 16;
		int64_t		m = 0;

		repack(t0, w + o * rowbytes, wtype, nb, rowbytes, n0);
		if (n1 > 0)
			repack(t1, w + (o + 16) * rowbytes, wtype, nb, rowbytes, n1);
		else
			memset(t1, 0, (size_t) nb * GROUP_BLOCK_BYTES);
		for (; m + 4 <= rows; m += 4)
			tile_pass(y, ldy, xu, xd, t0, t1, nb, k, m, o, n0, n1, accumulate, 4);
		switch (rows - m)
		{
			case 3:
				tile_pass(y, ldy, xu, xd, t0, t1, nb, k, m, o, n0, n1, accumulate, 3);
				break;
			case 2:
				tile_pass(y, ldy, xu, xd, t0, t1, nb, k, m, o, n0, n1, accumulate, 2);
				break;
			case 1:
				tile_pass(y, ldy, xu, xd, t0, t1, nb, k, m, o, n0, n1, accumulate, 1);
				break;
		}
	}
}
#endif

void
mms_qtile_gemm(float *y, int64_t ldy, const void *act, const uint8_t *w, int wtype, int64_t rows,
			   int64_t k, int64_t o0, int64_t o1, int accumulate, void *tile)
{
#ifdef MMS_QTILE_X86
	qtile_gemm_vnni(y, ldy, act, w, wtype, rows, k, o0, o1, accumulate, tile);
#endif
}
