/*
 * gemm_small.h — y[m, o] (+)= x[m, :] . w[o, :] for o in [o0, o1), for a few
 * rows m: the decoder's matrix products (see gemm_small.c for why); and
 * the dot product of attention scores.
 */
#ifndef MMS_GEMM_SMALL_H
#define MMS_GEMM_SMALL_H

#include <stdint.h>

void		mms_small_gemm(float *y, int64_t ldy, const float *x, const float *w, int64_t rows,
						   int64_t k, int64_t o0, int64_t o1, int accumulate);

/* The CPU has AVX2 and FMA (checked once): every SIMD kernel dispatches on it. */
int			mms_cpu_avx2(void);

/* a . b over n floats (attention scores). */
float		mms_dot(const float *a, const float *b, int64_t n);

#endif
