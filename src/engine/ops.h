/*
 * ops.h — the numeric kernels of the forward pass: RMSNorm, activations,
 * softmax, the relative-position bucket, and linear layers as OpenBLAS GEMMs.
 * Pure functions over caller-owned buffers; no allocation.
 */
#ifndef MMS_OPS_H
#define MMS_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "gguf.h"

/* T5 RMSNorm of one row: out = w * x / sqrt(mean(x^2) + eps). out may alias x. */
void		mms_rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps);
/* The same over `rows` rows of n floats each. */
void		mms_rmsnorm_rows(float *out, const float *x, const float *w, int64_t rows, int64_t n, float eps);

/* HF "gelu_new": 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), in fp32. */
float		mms_gelu_new(float x);
/* gate[i] = gelu_new(gate[i]) * up[i] (T5's gated-GELU feed-forward). */
void		mms_gelu_mul(float *gate, const float *up, int64_t n);
void		mms_relu(float *x, int64_t n);

/* In-place softmax, max-subtracted. */
void		mms_softmax(float *x, int64_t n);
/* log(sum(exp(x))), computed stably in double. */
double		mms_logsumexp(const float *x, int64_t n);
/* The same; also sets *nonfinite when any x is NaN or +/-inf (found in the max pass). */
double		mms_logsumexp_checked(const float *x, int64_t n, int *nonfinite);

/*
 * HF T5's relative-position bucket for rel = key_pos - query_pos, computed in
 * float32 in HF's operation order (the log boundary must match torch).
 */
int			mms_t5_rel_bucket(int64_t rel, int bidirectional, int n_buckets, int max_distance);

/*
 * A weight matrix stored as an HF Linear [n_out, n_in] row-major (GGUF
 * ne = [n_in, n_out]): f32 values, or Q8_0 / Q4_0 blocks along n_in used
 * where they lie (n_in a multiple of 32).
 */
typedef struct MmsWeight
{
	const void *data;
	int			type;			/* MMS_T_F32, MMS_T_Q8_0 or MMS_T_Q4_0 */
} MmsWeight;

/*
 * How a layer computes on quantized weights, by call site so that a row's
 * result never depends on how many rows share the call:
 *   step  (decoder steps, a few rows): activations quantized to int8, the int8
 *         kernels on the blocks in place (qgemm.h) — reads 1.06 bytes a weight;
 *   wide  (encoder, cross-attention keys/values, many rows): the work is in
 *         the products, not the bytes: with AVX-512 VNNI the wide int8
 *         kernel on weights repacked per call (mms_qtile_gemm); elsewhere
 *         tiles of weight rows dequantized per call for sgemm on f32
 *         activations (transformers' arithmetic on the dequantized weights).
 * buf holds mms_linear_scratch_bytes; f32 weights need none.
 */
typedef struct MmsLinearScratch
{
	void	   *buf;
	int			wide;
} MmsLinearScratch;

size_t		mms_linear_scratch_bytes(int type, int wide, int64_t rows, int64_t n_in);

/* y[rows, n_out] = x[rows, n_in] . W^T (+ y if accumulate). */
void		mms_linear(float *y, const float *x, MmsWeight w, int64_t rows, int64_t n_in,
					   int64_t n_out, int accumulate, const MmsLinearScratch *scratch);

/* Threads of this process's engine (see pool.h); the old name is kept. */
void		mms_blas_set_threads(int n);
int			mms_blas_get_threads(void);

#endif
