/*
 * ops.c — numeric kernels (see ops.h). fp32 throughout, matching HF T5's
 * fp32 path; reductions accumulate in double where it costs nothing.
 */
#include "ops.h"

#include <cblas.h>
#include <math.h>

void
mms_rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps)
{
	double		ss = 0.0;
	float		scale;

	for (int64_t i = 0; i < n; i++)
		ss += (double) x[i] * x[i];
	/* HF: x * rsqrt(mean(x^2) + eps), variance in fp32 */
	scale = 1.0f / sqrtf((float) (ss / (double) n) + eps);
	for (int64_t i = 0; i < n; i++)
		out[i] = w[i] * (x[i] * scale);
}

void
mms_rmsnorm_rows(float *out, const float *x, const float *w, int64_t rows, int64_t n, float eps)
{
	for (int64_t r = 0; r < rows; r++)
		mms_rmsnorm(out + r * n, x + r * n, w, n, eps);
}

float
mms_gelu_new(float x)
{
	const float k = 0.7978845608028654f;	/* sqrt(2/pi) */

	return 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x)));
}

void
mms_gelu_mul(float *gate, const float *up, int64_t n)
{
	for (int64_t i = 0; i < n; i++)
		gate[i] = mms_gelu_new(gate[i]) * up[i];
}

void
mms_relu(float *x, int64_t n)
{
	for (int64_t i = 0; i < n; i++)
		x[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

void
mms_softmax(float *x, int64_t n)
{
	float		mx = -INFINITY;
	double		sum = 0.0;
	float		inv;

	for (int64_t i = 0; i < n; i++)
		mx = x[i] > mx ? x[i] : mx;
	for (int64_t i = 0; i < n; i++)
	{
		x[i] = expf(x[i] - mx);
		sum += x[i];
	}
	inv = (float) (1.0 / sum);
	for (int64_t i = 0; i < n; i++)
		x[i] *= inv;
}

double
mms_logsumexp(const float *x, int64_t n)
{
	float		mx = -INFINITY;
	double		sum = 0.0;

	for (int64_t i = 0; i < n; i++)
		mx = x[i] > mx ? x[i] : mx;
	if (mx == -INFINITY)
		return -INFINITY;
	for (int64_t i = 0; i < n; i++)
		sum += exp((double) x[i] - mx);
	return (double) mx + log(sum);
}

int
mms_t5_rel_bucket(int64_t rel, int bidirectional, int n_buckets, int max_distance)
{
	int			bucket = 0;
	int64_t		n;
	int			max_exact;
	int			large;

	if (bidirectional)
	{
		n_buckets /= 2;
		if (rel > 0)
			bucket += n_buckets;
		n = rel < 0 ? -rel : rel;
	}
	else
		n = rel < 0 ? -rel : 0;
	max_exact = n_buckets / 2;
	if (n < max_exact)
		return bucket + (int) n;
	/* float32, in HF's order: log(n / max_exact) / log(max_distance / max_exact) * (nb - max_exact) */
	{
		float		ratio = (float) n / (float) max_exact;
		float		denom = (float) log((double) max_distance / (double) max_exact);
		float		v = logf(ratio) / denom * (float) (n_buckets - max_exact);

		/* a degenerate max_distance <= max_exact gives inf/NaN: clamp, never cast it */
		large = (v >= 0.0f && v < (float) n_buckets) ? max_exact + (int) v : n_buckets - 1;
	}
	if (large > n_buckets - 1)
		large = n_buckets - 1;
	return bucket + large;
}

void
mms_linear(float *y, const float *x, const float *w, int64_t rows, int64_t n_in, int64_t n_out,
		   int accumulate)
{
	if (rows == 1)
		cblas_sgemv(CblasRowMajor, CblasNoTrans, (int) n_out, (int) n_in, 1.0f, w, (int) n_in,
					x, 1, accumulate ? 1.0f : 0.0f, y, 1);
	else
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int) rows, (int) n_out, (int) n_in,
					1.0f, x, (int) n_in, w, (int) n_in, accumulate ? 1.0f : 0.0f, y, (int) n_out);
}

void
mms_blas_set_threads(int n)
{
	openblas_set_num_threads(n);
}

int
mms_blas_get_threads(void)
{
	return openblas_get_num_threads();
}
