/*
 * qgemm.h — linear layers over Q8_0 / Q4_0 weights used where they lie (in
 * the file's bytes, in a shared segment): activations are quantized per row
 * in blocks of 32 like Q8_0 (scale = max|x| / 127), and every block's int8 x
 * int8 dot product is exact in int32, then scaled by both blocks' scales and
 * summed in float — llama.cpp's Q8_0 arithmetic.
 *
 * Several code paths compute the same thing with the instructions a CPU has;
 * the best one is chosen once at run time, and each can be called by name so
 * that tests check every path the machine has against the portable one.
 * A row's result never depends on which other rows share the call.
 */
#ifndef MMS_QGEMM_H
#define MMS_QGEMM_H

#include <stddef.h>
#include <stdint.h>

#include "gguf.h"

#define MMS_QK 32				/* values per block (weights and activations) */

typedef enum MmsQPath
{
	MMS_QPATH_C,				/* portable C: the reference */
	MMS_QPATH_AVX2,				/* 256-bit, maddubs + madd */
	MMS_QPATH_AVX_VNNI,			/* 256-bit, VEX vpdpbusd (Alder Lake, Zen 5, ...) */
	MMS_QPATH_AVX512BW,			/* 512-bit, two blocks per vector, maddubs + madd */
	MMS_QPATH_AVX512_VNNI,		/* 512-bit, EVEX vpdpbusd */
	MMS_QPATH_N
} MmsQPath;

/* Bytes of one block of a weight type (34 for Q8_0, 18 for Q4_0; 0 otherwise). */
size_t		mms_qblock_bytes(int wtype);

/* Scratch bytes for the quantized activations of rows x k (k a multiple of 32). */
size_t		mms_qact_bytes(int64_t rows, int64_t k);

/*
 * Quantizes x[rows][k] into scratch (mms_qact_bytes): int8 values q[rows][k]
 * followed by float scales d[rows][k / 32]. A block holding a NaN or an
 * infinity gets q = 0 and scale NaN, so the products it feeds are NaN, as
 * in float arithmetic.
 */
void		mms_quantize_act(const float *x, int64_t rows, int64_t k, void *scratch);

/* The same with every value stored + 128 as uint8 (the layout mms_qtile_gemm reads). */
void		mms_quantize_act_u8(const float *x, int64_t rows, int64_t k, void *scratch);

/*
 * y[m, o] (+)= sum over blocks b of dw[o,b] * dx[m,b] * (wq[o,b] . xq[m,b])
 * for m < rows, o in [o0, o1); w holds n_out rows of k / 32 blocks of wtype;
 * act is mms_quantize_act's scratch for the same rows and k.
 */
void		mms_qgemm(float *y, int64_t ldy, const void *act, const uint8_t *w, int wtype,
					  int64_t rows, int64_t k, int64_t o0, int64_t o1, int accumulate);

/* The same with a given path (tests); the path must be available. */
void		mms_qgemm_path(MmsQPath path, float *y, int64_t ldy, const void *act, const uint8_t *w,
						   int wtype, int64_t rows, int64_t k, int64_t o0, int64_t o1, int accumulate);

const char *mms_qpath_name(MmsQPath path);
/* The CPU (and the compiler) can run it; MMS_NO_AVX512 in the environment rules out 512-bit paths. */
int			mms_qpath_available(MmsQPath path);
/* The path mms_qgemm uses. */
MmsQPath	mms_qpath_best(void);

/*
 * Wide layers (the encoder's many rows): the same arithmetic with the
 * outputs across vector lanes. Each task repacks 16 weight rows at a time
 * into a tile (per-thread scratch of mms_qtile_bytes(k)): four-value groups
 * of 16 outputs side by side, their block scales, and -128 x their block
 * sums (the inputs are stored + 128, as vpdpbusd needs unsigned values).
 * Then one vpdpbusd does 64 products for 16 outputs, and a block's scales
 * cost three instructions per 512 products. AVX-512 VNNI only
 * (mms_qtile_available); act from mms_quantize_act_u8.
 * A row's result is the same whatever rows share the call, as above.
 */
int			mms_qtile_available(void);
size_t		mms_qtile_bytes(int64_t k);
void		mms_qtile_gemm(float *y, int64_t ldy, const void *act, const uint8_t *w, int wtype,
						   int64_t rows, int64_t k, int64_t o0, int64_t o1, int accumulate, void *tile);

#endif
