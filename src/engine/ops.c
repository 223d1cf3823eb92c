/*
 * ops.c — numeric kernels (see ops.h). fp32 throughout, matching HF T5's
 * fp32 path; reductions accumulate in double where it costs nothing.
 */
#include "ops.h"

#include "gemm_small.h"
#include "pool.h"

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

typedef struct NormJob
{
	float	   *out;
	const float *x,
			   *w;
	int64_t		rows,
				n,
				chunk;
	float		eps;
} NormJob;

static void
norm_task(void *arg, int task, int thread)
{
	const NormJob *j = arg;
	int64_t		r1 = (task + 1) * j->chunk < j->rows ? (task + 1) * j->chunk : j->rows;

	for (int64_t r = task * j->chunk; r < r1; r++)
		mms_rmsnorm(j->out + r * j->n, j->x + r * j->n, j->w, j->n, j->eps);
}

void
mms_rmsnorm_rows(float *out, const float *x, const float *w, int64_t rows, int64_t n, float eps)
{
	NormJob		j = {out, x, w, rows, n, 64, eps};

	mms_parallel((int) ((rows + j.chunk - 1) / j.chunk), norm_task, &j);
}

float
mms_gelu_new(float x)
{
	const float k = 0.7978845608028654f;	/* sqrt(2/pi) */

	return 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x)));
}

typedef struct GeluJob
{
	float	   *gate;
	const float *up;
	int64_t		n,
				chunk;
} GeluJob;

static void
gelu_task(void *arg, int task, int thread)
{
	const GeluJob *j = arg;
	int64_t		i0 = task * j->chunk;
	int64_t		i1 = i0 + j->chunk < j->n ? i0 + j->chunk : j->n;

	for (int64_t i = i0; i < i1; i++)
		j->gate[i] = mms_gelu_new(j->gate[i]) * j->up[i];
}

void
mms_gelu_mul(float *gate, const float *up, int64_t n)
{
	GeluJob		j = {gate, up, n, 16384};

	mms_parallel((int) ((n + j.chunk - 1) / j.chunk), gelu_task, &j);
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

/* Rows at or below this use the weight-streaming kernel; above, OpenBLAS sgemm. */
#define MMS_SMALL_ROWS 32

typedef struct LinearJob
{
	float	   *y;
	const float *x;
	const float *w;
	int64_t		rows,
				n_in,
				n_out,
				chunk;
	int			accumulate;
} LinearJob;

static void
linear_task(void *arg, int task, int thread)
{
	const LinearJob *j = arg;
	int64_t		o0 = (int64_t) task * j->chunk;
	int64_t		o1 = o0 + j->chunk < j->n_out ? o0 + j->chunk : j->n_out;

	if (j->rows <= MMS_SMALL_ROWS)
		mms_small_gemm(j->y, j->n_out, j->x, j->w, j->rows, j->n_in, o0, o1, j->accumulate);
	else
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int) j->rows, (int) (o1 - o0), (int) j->n_in,
					1.0f, j->x, (int) j->n_in, j->w + o0 * j->n_in, (int) j->n_in,
					j->accumulate ? 1.0f : 0.0f, j->y + o0, (int) j->n_out);
}

void
mms_linear(float *y, const float *x, const float *w, int64_t rows, int64_t n_in, int64_t n_out,
		   int accumulate)
{
	LinearJob	j = {y, x, w, rows, n_in, n_out, 0, accumulate};
	int			threads = mms_threads();

	/*
	 * Split the output columns: every task reads its own slice of W once.
	 * Small batches use many small slices (they balance); big ones one slice
	 * per thread (sgemm is most efficient on wide slices).
	 */
	if (rows <= MMS_SMALL_ROWS)
		j.chunk = 64;
	else
		j.chunk = ((n_out + threads - 1) / threads + 15) / 16 * 16;
	if (j.chunk < 1)
		j.chunk = 1;
	mms_parallel((int) ((n_out + j.chunk - 1) / j.chunk), linear_task, &j);
}

void
mms_blas_set_threads(int n)
{
	mms_set_threads(n);
}

int
mms_blas_get_threads(void)
{
	return mms_threads();
}
