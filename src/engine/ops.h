/*
 * ops.h — the numeric kernels of the forward pass: RMSNorm, activations,
 * softmax, the relative-position bucket, and linear layers as OpenBLAS GEMMs.
 * Pure functions over caller-owned buffers; no allocation.
 */
#ifndef MMS_OPS_H
#define MMS_OPS_H

#include <stdint.h>

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
 * y[rows, n_out] = x[rows, n_in] . W^T (+ y if accumulate), W stored as an HF
 * Linear [n_out, n_in] row-major (GGUF ne = [n_in, n_out]).
 */
void		mms_linear(float *y, const float *x, const float *w, int64_t rows, int64_t n_in,
					   int64_t n_out, int accumulate);

/* Threads of this process's engine (see pool.h); the old name is kept. */
void		mms_blas_set_threads(int n);
int			mms_blas_get_threads(void);

#endif
