/*
 * qgemm.c — int8 linear layers over Q8_0 / Q4_0 weights in place (see
 * qgemm.h): activation quantization, the portable reference path, the SIMD
 * paths (instantiated from qgemm_256.h / qgemm_512.h per instruction set)
 * and the choice among them, made once.
 */
#include "qgemm.h"

#include <float.h>
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "half.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define MMS_QGEMM_X86 1
#endif

/* clang 14 cannot ask for F16C; every CPU with AVX2 has it */
#if defined(__clang__)
#define CPU_F16C() 1
#else
#define CPU_F16C() __builtin_cpu_supports("f16c")
#endif

/* rows per tile: 64 rows of int8 inputs (k <= 4096: 256 KB) stay in L2 while a task's weights pass */
#define QGEMM_MTILE 64
/* bytes of weights requested ahead of the kernels' reading (about a DRAM latency's worth) */
#ifndef QGEMM_PF
#define QGEMM_PF 4096
#endif

size_t
mms_qblock_bytes(int wtype)
{
	return wtype == MMS_T_Q8_0 ? 34 : wtype == MMS_T_Q4_0 ? 18 : 0;
}

size_t
mms_qact_bytes(int64_t rows, int64_t k)
{
	/* k is a multiple of 32, so the float scales after the int8 values are aligned */
	return (size_t) rows * (size_t) k + (size_t) rows * (size_t) (k / MMS_QK) * sizeof(float);
}

/*
 * One block of 32 values, portable: scale max|x| / 127, values rounded
 * half away from zero (roundf, as ggml's reference quantizer). offset 0
 * stores int8 values, 128 stores them + 128 as uint8.
 */
static void
quantize_block_c(const float *xb, uint8_t *q, float *d, int offset)
{
	float		amax = 0.0f;

	for (int j = 0; j < MMS_QK; j++)
	{
		float		a = fabsf(xb[j]);

		/* written so that a NaN makes amax NaN rather than being skipped */
		amax = a > amax || a != a ? a : amax;
	}
	if (!isfinite(amax))
	{
		for (int j = 0; j < MMS_QK; j++)
			q[j] = (uint8_t) offset;
		*d = NAN;
		return;
	}
	if (!(amax / 127.0f >= FLT_MIN))
	{
		/* all zeros, or so small that 1 / scale overflows: a zero block */
		for (int j = 0; j < MMS_QK; j++)
			q[j] = (uint8_t) offset;
		*d = 0.0f;
		return;
	}
	{
		float		db = amax / 127.0f;
		float		id = 1.0f / db;

		for (int j = 0; j < MMS_QK; j++)
		{
			float		v = roundf(xb[j] * id);
			int			iv = (int) (v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v);

			q[j] = (uint8_t) (iv + offset);
		}
		*d = db;
	}
}

#ifdef MMS_QGEMM_X86
/*
 * The same with AVX2, rounding half to even (_mm256_round_ps, as ggml's
 * SIMD quantizers): the two differ only on exact halves, and a machine
 * always uses the same one. Non-finite blocks go to the portable code.
 */
__attribute__((target("avx2,fma")))
static void
quantize_rows_avx2(const float *x, int64_t n_blocks, uint8_t *q, float *d, int offset)
{
	const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
	const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);

	for (int64_t i = 0; i < n_blocks; i++)
	{
		const float *xb = x + i * MMS_QK;
		__m256		v0 = _mm256_loadu_ps(xb),
					v1 = _mm256_loadu_ps(xb + 8),
					v2 = _mm256_loadu_ps(xb + 16),
					v3 = _mm256_loadu_ps(xb + 24);
		__m256		mx = _mm256_max_ps(_mm256_max_ps(_mm256_and_ps(v0, absmask), _mm256_and_ps(v1, absmask)),
									   _mm256_max_ps(_mm256_and_ps(v2, absmask), _mm256_and_ps(v3, absmask)));
		__m128		m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
		float		amax;

		m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
		m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
		amax = _mm_cvtss_f32(m4);
		/* max_ps drops NaNs: an infinite max, any NaN, or a scale too small to invert goes the portable way */
		if (!isfinite(amax) || !(amax / 127.0f >= FLT_MIN) ||
			_mm256_movemask_ps(_mm256_or_ps(_mm256_or_ps(_mm256_cmp_ps(v0, v0, _CMP_UNORD_Q),
														 _mm256_cmp_ps(v1, v1, _CMP_UNORD_Q)),
											_mm256_or_ps(_mm256_cmp_ps(v2, v2, _CMP_UNORD_Q),
														 _mm256_cmp_ps(v3, v3, _CMP_UNORD_Q)))) != 0)
		{
			quantize_block_c(xb, q + i * MMS_QK, d + i, offset);
			continue;
		}
		{
			float		db = amax / 127.0f;
			__m256		id = _mm256_set1_ps(1.0f / db);
			__m256i		i0 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v0, id), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
			__m256i		i1 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v1, id), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
			__m256i		i2 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v2, id), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
			__m256i		i3 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v3, id), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
			/* packs saturate to [-128, 127]; |x| * 127 / max|x| never passes 127 by more than rounding */
			__m256i		p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));

			p = _mm256_max_epi8(p, _mm256_set1_epi8(-127));
			p = _mm256_permutevar8x32_epi32(p, order);
			if (offset)
				p = _mm256_xor_si256(p, _mm256_set1_epi8((char) 0x80));
			_mm256_storeu_si256((__m256i *) (q + i * MMS_QK), p);
			d[i] = db;
		}
	}
}
#endif

/* Every block of rows x k values (k a multiple of 32) into scratch: values, then scales. */
static void
quantize_rows(const float *x, int64_t rows, int64_t k, void *scratch, int offset)
{
	uint8_t    *q = scratch;
	float	   *d = (float *) (q + rows * k);

#ifdef MMS_QGEMM_X86
	/* every SIMD path needs AVX2; the choice is made once */
	if (mms_qpath_best() != MMS_QPATH_C)
	{
		quantize_rows_avx2(x, rows * k / MMS_QK, q, d, offset);
		return;
	}
#endif
	for (int64_t i = 0; i < rows * k; i += MMS_QK)
		quantize_block_c(x + i, q + i, d + i / MMS_QK, offset);
}

void
mms_quantize_act(const float *x, int64_t rows, int64_t k, void *scratch)
{
	quantize_rows(x, rows, k, scratch, 0);
}

void
mms_quantize_act_u8(const float *x, int64_t rows, int64_t k, void *scratch)
{
	quantize_rows(x, rows, k, scratch, 128);
}

/* ---------------------------------------------------------------- portable path */

/* Block b of a weight row as 32 int8 values and its scale. */
static inline float
wblock_c(const uint8_t *blk, int wtype, int8_t *v)
{
	if (wtype == MMS_T_Q8_0)
		memcpy(v, blk + 2, MMS_QK);
	else
		for (int j = 0; j < MMS_QK / 2; j++)
		{
			v[j] = (int8_t) ((blk[2 + j] & 0x0f) - 8);
			v[j + MMS_QK / 2] = (int8_t) ((blk[2 + j] >> 4) - 8);
		}
	return mms_half_to_float(mms_load_u16(blk));
}

static void
qgemm_c(float *y, int64_t ldy, const int8_t *xq, const float *xd, const uint8_t *w, int wtype,
		int64_t rows, int64_t k, int64_t o0, int64_t o1, int accumulate)
{
	const int64_t nb = k / MMS_QK;
	const int64_t bb = (int64_t) mms_qblock_bytes(wtype);

	for (int64_t o = o0; o < o1; o++)
		for (int64_t m = 0; m < rows; m++)
		{
			float		acc = 0.0f;

			for (int64_t b = 0; b < nb; b++)
			{
				int8_t		wv[MMS_QK];
				const int8_t *xv = xq + m * k + b * MMS_QK;
				float		dw = wblock_c(w + (o * nb + b) * bb, wtype, wv);
				int32_t		s = 0;

				for (int j = 0; j < MMS_QK; j++)
					s += (int32_t) wv[j] * xv[j];
				acc += (float) s * (dw * xd[m * nb + b]);
			}
			y[m * ldy + o] = accumulate ? y[m * ldy + o] + acc : acc;
		}
}

/* ---------------------------------------------------------------- SIMD paths */

#ifdef MMS_QGEMM_X86

#define QNAME qgemm_avx2
#define QTARGET __attribute__((target("avx2,fma,f16c")))
#define QDOT(u, s) _mm256_madd_epi16(_mm256_maddubs_epi16((u), (s)), _mm256_set1_epi16(1))
#include "qgemm_256.h"
#undef QNAME
#undef QTARGET
#undef QDOT

#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
#define MMS_QGEMM_AVXVNNI 1
#define QNAME qgemm_avx_vnni
#define QTARGET __attribute__((target("avx2,fma,f16c,avxvnni")))
#define QDOT(u, s) _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), (u), (s))
#include "qgemm_256.h"
#undef QNAME
#undef QTARGET
#undef QDOT
#endif

#define QNAME qgemm_avx512bw
#define QTARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
#define QDOT(u, s) _mm512_madd_epi16(_mm512_maddubs_epi16((u), (s)), _mm512_set1_epi16(1))
#include "qgemm_512.h"
#undef QNAME
#undef QTARGET
#undef QDOT

#define QNAME qgemm_avx512_vnni
#define QTARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")))
#define QU8 1
#include "qgemm_512.h"
#undef QNAME
#undef QTARGET
#undef QU8

#endif

/* ---------------------------------------------------------------- choice */

typedef void (*QgemmFn) (float *y, int64_t ldy, const int8_t *xq, const float *xd, const uint8_t *w,
						 int wtype, int64_t rows, int64_t k, int64_t o0, int64_t o1, int accumulate);

static QgemmFn
path_fn(MmsQPath path)
{
	switch (path)
	{
		case MMS_QPATH_C:
			return qgemm_c;
#ifdef MMS_QGEMM_X86
		case MMS_QPATH_AVX2:
			return qgemm_avx2;
#ifdef MMS_QGEMM_AVXVNNI
		case MMS_QPATH_AVX_VNNI:
			return qgemm_avx_vnni;
#endif
		case MMS_QPATH_AVX512BW:
			return qgemm_avx512bw;
		case MMS_QPATH_AVX512_VNNI:
			return qgemm_avx512_vnni;
#endif
		default:
			return NULL;
	}
}

const char *
mms_qpath_name(MmsQPath path)
{
	static const char *const names[MMS_QPATH_N] = {"c", "avx2", "avx_vnni", "avx512bw", "avx512_vnni"};

	return path >= 0 && path < MMS_QPATH_N ? names[path] : "unknown";
}

int
mms_qpath_available(MmsQPath path)
{
	if (path_fn(path) == NULL)
		return 0;
	if (path == MMS_QPATH_C)
		return 1;
#ifdef MMS_QGEMM_X86
	__builtin_cpu_init();
	if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma") || !CPU_F16C())
		return 0;
	switch (path)
	{
		case MMS_QPATH_AVX2:
			return 1;
		case MMS_QPATH_AVX_VNNI:
#ifdef MMS_QGEMM_AVXVNNI
			return __builtin_cpu_supports("avxvnni");
#else
			return 0;
#endif
		case MMS_QPATH_AVX512BW:
		case MMS_QPATH_AVX512_VNNI:
			/* valgrind has no AVX-512: MMS_NO_AVX512 keeps the 512-bit paths out */
			if (getenv("MMS_NO_AVX512") != NULL || !__builtin_cpu_supports("avx512f") ||
				!__builtin_cpu_supports("avx512bw") || !__builtin_cpu_supports("avx512vl") ||
				!__builtin_cpu_supports("avx512dq"))
				return 0;
			return path == MMS_QPATH_AVX512BW || __builtin_cpu_supports("avx512vnni");
		default:
			return 0;
	}
#else
	return 0;
#endif
}

MmsQPath
mms_qpath_best(void)
{
	/* worker threads may ask first, at once: they all compute the same answer */
	static _Atomic int best = -1;

	if (atomic_load_explicit(&best, memory_order_relaxed) < 0)
	{
		/* fastest first: VNNI fuses the u8 x s8 products and their sum */
		static const MmsQPath order[] = {MMS_QPATH_AVX512_VNNI, MMS_QPATH_AVX_VNNI,
		MMS_QPATH_AVX512BW, MMS_QPATH_AVX2};
		int			b = MMS_QPATH_C;

		for (size_t i = 0; i < sizeof(order) / sizeof(order[0]); i++)
			if (mms_qpath_available(order[i]))
			{
				b = order[i];
				break;
			}
		atomic_store_explicit(&best, b, memory_order_relaxed);
	}
	return (MmsQPath) atomic_load_explicit(&best, memory_order_relaxed);
}

void
mms_qgemm_path(MmsQPath path, float *y, int64_t ldy, const void *act, const uint8_t *w, int wtype,
			   int64_t rows, int64_t k, int64_t o0, int64_t o1, int accumulate)
{
	const int8_t *xq = act;
	const float *xd = (const float *) (xq + rows * k);

	path_fn(path) (y, ldy, xq, xd, w, wtype, rows, k, o0, o1, accumulate);
}

void
mms_qgemm(float *y, int64_t ldy, const void *act, const uint8_t *w, int wtype, int64_t rows,
		  int64_t k, int64_t o0, int64_t o1, int accumulate)
{
	mms_qgemm_path(mms_qpath_best(), y, ldy, act, w, wtype, rows, k, o0, o1, accumulate);
}
