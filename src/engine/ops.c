/*
 * ops.c — numeric kernels (see ops.h). fp32 throughout, matching HF T5's
 * fp32 path; reductions accumulate in double where it costs nothing.
 */
#include "ops.h"

#include "gemm_small.h"
#include "qgemm.h"
#include "pool.h"

#include <cblas.h>
#include <math.h>
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#if defined(__x86_64__)
static int64_t gelu_mul_avx2(float *gate, const float *up, int64_t n);
#endif


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

	int64_t		done = 0;

#if defined(__x86_64__)
	if (mms_cpu_avx2())
		done = gelu_mul_avx2(j->gate + i0, j->up + i0, i1 - i0);
#endif
	for (int64_t i = i0 + done; i < i1; i++)
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
	/* NaN passes through, as in torch: zeroing it would hide broken weights */
	for (int64_t i = 0; i < n; i++)
		x[i] = x[i] > 0.0f || x[i] != x[i] ? x[i] : 0.0f;
}

#if defined(__x86_64__)
static int64_t softmax_exp_avx2(float *x, int64_t n, float mx, double *sum);
#endif

void
mms_softmax(float *x, int64_t n)
{
	float		mx = -INFINITY;
	double		sum = 0.0;
	float		inv;
	int64_t		i = 0;

	for (int64_t j = 0; j < n; j++)
		mx = x[j] > mx ? x[j] : mx;
#if defined(__x86_64__)
	if (mms_cpu_avx2())
		i = softmax_exp_avx2(x, n, mx, &sum);
#endif
	for (; i < n; i++)
	{
		x[i] = expf(x[i] - mx);
		sum += x[i];
	}
	inv = (float) (1.0 / sum);
	for (int64_t j = 0; j < n; j++)
		x[j] *= inv;
}

/* sum(exp(x[i] - mx)) in plain C, double accumulation */
static double
sum_exp_c(const float *x, int64_t n, float mx)
{
	double		sum = 0.0;

	for (int64_t i = 0; i < n; i++)
		sum += exp((double) x[i] - mx);
	return sum;
}

#if defined(__x86_64__)
/*
 * The same with AVX2: exp by range reduction (x = k ln2 + r) and a degree-6
 * polynomial, about 1 ulp in float; lanes summed in double at the end. The
 * vocabulary-wide log-sum-exp of every decoder row is otherwise a visible
 * share of a batched decode step.
 */
/* exp(v) for v in [-87, 88], about 1 ulp: range reduction v = k ln2 + r, degree-6 polynomial. */
__attribute__((target("avx2,fma")))
static inline __m256
exp256(__m256 v)
{
	const __m256 log2e = _mm256_set1_ps(1.44269504088896341f);
	const __m256 ln2hi = _mm256_set1_ps(0.693359375f);
	const __m256 ln2lo = _mm256_set1_ps(-2.12194440e-4f);
	__m256		k,
				r,
				p;
	__m256i		e;

	k = _mm256_round_ps(_mm256_mul_ps(v, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
	r = _mm256_fnmadd_ps(k, ln2hi, v);
	r = _mm256_fnmadd_ps(k, ln2lo, r);
	p = _mm256_fmadd_ps(_mm256_set1_ps(1.9875691500e-4f), r, _mm256_set1_ps(1.3981999507e-3f));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
	p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
	e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
	return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

__attribute__((target("avx2,fma")))
static double
sum_exp_avx2(const float *x, int64_t n, float mx)
{
	const __m256 vmx = _mm256_set1_ps(mx);
	const __m256 lo = _mm256_set1_ps(-87.0f);
	__m256		acc = _mm256_setzero_ps();
	double		sum = 0.0;
	float		lanes[8];
	int64_t		i = 0;

	for (; i + 8 <= n; i += 8)
	{
		__m256		v = _mm256_sub_ps(_mm256_loadu_ps(x + i), vmx);
		__m256		under = _mm256_cmp_ps(v, lo, _CMP_LT_OQ);

		/* exp(< -87) counts as 0 (and masks -inf) */
		acc = _mm256_add_ps(acc, _mm256_andnot_ps(under, exp256(_mm256_max_ps(v, lo))));
		if (((i >> 3) & 1023) == 1023)
		{
			/* flush to double now and then, so float lanes never sum too much */
			_mm256_storeu_ps(lanes, acc);
			for (int j = 0; j < 8; j++)
				sum += lanes[j];
			acc = _mm256_setzero_ps();
		}
	}
	_mm256_storeu_ps(lanes, acc);
	for (int j = 0; j < 8; j++)
		sum += lanes[j];
	for (; i < n; i++)
		sum += exp((double) x[i] - mx);
	return sum;
}

/* x[i] = exp(x[i] - mx) for whole vectors of 8; adds them to *sum; returns how many. */
__attribute__((target("avx2,fma")))
static int64_t
softmax_exp_avx2(float *x, int64_t n, float mx, double *sum)
{
	const __m256 vmx = _mm256_set1_ps(mx);
	const __m256 lo = _mm256_set1_ps(-87.0f);
	__m256		acc = _mm256_setzero_ps();
	float		lanes[8];
	int64_t		i = 0;

	for (; i + 8 <= n; i += 8)
	{
		__m256		v = _mm256_sub_ps(_mm256_loadu_ps(x + i), vmx);
		__m256		under = _mm256_cmp_ps(v, lo, _CMP_LT_OQ);
		/* max_ps returns its second operand on NaN: v, so NaN propagates as in torch */
		__m256		e = _mm256_andnot_ps(under, exp256(_mm256_max_ps(lo, v)));

		_mm256_storeu_ps(x + i, e);
		acc = _mm256_add_ps(acc, e);
	}
	_mm256_storeu_ps(lanes, acc);
	for (int j = 0; j < 8; j++)
		*sum += lanes[j];
	return i;
}

/* gate = gelu_new(gate) * up, with tanh(u) = 1 - 2 / (exp(2u) + 1). */
__attribute__((target("avx2,fma")))
static int64_t
gelu_mul_avx2(float *gate, const float *up, int64_t n)
{
	const __m256 k0 = _mm256_set1_ps(0.7978845608028654f);
	const __m256 k1 = _mm256_set1_ps(0.044715f);
	const __m256 lim = _mm256_set1_ps(9.0f);	/* tanh(9) == 1 in float */
	const __m256 one = _mm256_set1_ps(1.0f);
	const __m256 two = _mm256_set1_ps(2.0f);
	const __m256 half = _mm256_set1_ps(0.5f);
	int64_t		i = 0;

	for (; i + 8 <= n; i += 8)
	{
		__m256		x = _mm256_loadu_ps(gate + i);
		__m256		u = _mm256_mul_ps(k0, _mm256_fmadd_ps(_mm256_mul_ps(k1, x), _mm256_mul_ps(x, x), x));
		__m256		t;

		u = _mm256_max_ps(_mm256_min_ps(u, lim), _mm256_sub_ps(_mm256_setzero_ps(), lim));
		t = _mm256_sub_ps(one, _mm256_div_ps(two, _mm256_add_ps(exp256(_mm256_mul_ps(two, u)), one)));
		x = _mm256_mul_ps(_mm256_mul_ps(half, x), _mm256_add_ps(one, t));
		_mm256_storeu_ps(gate + i, _mm256_mul_ps(x, _mm256_loadu_ps(up + i)));
	}
	return i;
}
#endif

double
mms_logsumexp(const float *x, int64_t n)
{
	int			nonfinite;

	return mms_logsumexp_checked(x, n, &nonfinite);
}

double
mms_logsumexp_checked(const float *x, int64_t n, int *nonfinite)
{
	float		mx = -INFINITY;
	uint32_t	bad = 0;
	double		sum;

	/*
	 * The max pass reads every element anyway, so it also tests the exponent
	 * bits: all ones (NaN or +/-inf) carries into bit 31 when one is added
	 * to the exponent, and nothing else does. Two integer ops beside the
	 * max chain, whose latency bounds the loop: no measurable cost.
	 */
	for (int64_t i = 0; i < n; i++)
	{
		uint32_t	u;

		memcpy(&u, &x[i], sizeof(u));
		bad |= (u & 0x7f800000u) + 0x00800000u;
		mx = x[i] > mx ? x[i] : mx;
	}
	*nonfinite = (bad >> 31) != 0;
	if (mx == -INFINITY || !isfinite(mx))
		return mx;
#if defined(__x86_64__)
	sum = mms_cpu_avx2() ? sum_exp_avx2(x, n, mx) : sum_exp_c(x, n, mx);
#else
	sum = sum_exp_c(x, n, mx);
#endif
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

/*
 * Most weight rows a wide task dequantizes at a time (sgemm wants wide
 * slices), and at most 1 MB of floats per thread.
 */
#define MMS_WIDE_TILE 1024
#define MMS_WIDE_TILE_FLOATS (256 * 1024)

static int64_t
wide_tile_rows(int64_t n_in)
{
	int64_t		r = MMS_WIDE_TILE_FLOATS / (n_in > 0 ? n_in : 1) / 16 * 16;

	return r < 16 ? 16 : r > MMS_WIDE_TILE ? MMS_WIDE_TILE : r;
}

/* How a layer computes (see MmsLinearScratch), decided once per call. */
typedef enum LinKernel
{
	LIN_F32,					/* f32 weights: weight-streaming kernel or sgemm */
	LIN_INT8_STEP,				/* quantized, decoder step: int8 pair kernel */
	LIN_INT8_TILE,				/* quantized, wide, AVX-512 VNNI: int8 tile kernel */
	LIN_DEQUANT					/* quantized, wide, elsewhere: dequantized tiles, then as f32 */
} LinKernel;

static LinKernel
linear_kernel(int type, int wide)
{
	if (type == MMS_T_F32)
		return LIN_F32;
	if (!wide)
		return LIN_INT8_STEP;
	return mms_qtile_available() ? LIN_INT8_TILE : LIN_DEQUANT;
}

typedef struct LinearJob
{
	float	   *y;
	const float *x;
	MmsWeight	w;
	void	   *scratch;		/* quantized x, and per-thread tiles when wide */
	LinKernel	kernel;
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
	const float *w = j->w.data;

	switch (j->kernel)
	{
		case LIN_INT8_STEP:
			mms_qgemm(j->y, j->n_out, j->scratch, j->w.data, j->w.type, j->rows, j->n_in, o0, o1,
					  j->accumulate);
			return;
		case LIN_INT8_TILE:
			mms_qtile_gemm(j->y, j->n_out, j->scratch, j->w.data, j->w.type, j->rows, j->n_in, o0, o1,
						   j->accumulate, (uint8_t *) j->scratch + mms_qact_bytes(j->rows, j->n_in) +
						   (size_t) thread * mms_qtile_bytes(j->n_in));
			return;
		case LIN_DEQUANT:
			{
				/* the weight rows [o0, o1) as floats, in this thread's tile; valid by construction */
				float	   *tile = (float *) j->scratch + (size_t) thread * (size_t) (wide_tile_rows(j->n_in) * j->n_in);
				size_t		row = mms_tensor_type_bytes(j->w.type, (uint64_t) j->n_in);

				(void) mms_dequantize(j->w.type, (const uint8_t *) j->w.data + (size_t) o0 * row,
									  (uint64_t) ((o1 - o0) * j->n_in), tile, NULL);
				w = tile - o0 * j->n_in;
			}
			break;
		case LIN_F32:
			break;
	}
	if (j->rows <= MMS_SMALL_ROWS)
		mms_small_gemm(j->y, j->n_out, j->x, w, j->rows, j->n_in, o0, o1, j->accumulate);
	else
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int) j->rows, (int) (o1 - o0), (int) j->n_in,
					1.0f, j->x, (int) j->n_in, w + o0 * j->n_in, (int) j->n_in,
					j->accumulate ? 1.0f : 0.0f, j->y + o0, (int) j->n_out);
}

size_t
mms_linear_scratch_bytes(int type, int wide, int64_t rows, int64_t n_in)
{
	switch (linear_kernel(type, wide))
	{
		case LIN_INT8_STEP:
			return mms_qact_bytes(rows, n_in);
		case LIN_INT8_TILE:
			return mms_qact_bytes(rows, n_in) + (size_t) mms_threads() * mms_qtile_bytes(n_in);
		case LIN_DEQUANT:
			return (size_t) mms_threads() * (size_t) (wide_tile_rows(n_in) * n_in) * sizeof(float);
		case LIN_F32:
			break;
	}
	return 0;
}

void
mms_linear(float *y, const float *x, MmsWeight w, int64_t rows, int64_t n_in, int64_t n_out,
		   int accumulate, const MmsLinearScratch *scratch)
{
	LinKernel	kernel = linear_kernel(w.type, scratch && scratch->wide);
	LinearJob	j = {y, x, w, scratch ? scratch->buf : NULL, kernel, rows, n_in, n_out, 0, accumulate};
	int			threads = mms_threads();

	if (kernel == LIN_INT8_STEP)
		mms_quantize_act(x, rows, n_in, j.scratch);
	else if (kernel == LIN_INT8_TILE)
		mms_quantize_act_u8(x, rows, n_in, j.scratch);

	/*
	 * Split the output columns: every task reads its own slice of W once.
	 * Small batches and int8 kernels use many small slices (they balance);
	 * big ones one slice per thread (sgemm is most efficient on wide
	 * slices), at most a tile when dequantized.
	 */
	if (rows <= MMS_SMALL_ROWS || kernel == LIN_INT8_STEP || kernel == LIN_INT8_TILE)
		j.chunk = 64;
	else
		j.chunk = ((n_out + threads - 1) / threads + 15) / 16 * 16;
	if (kernel == LIN_DEQUANT && j.chunk > wide_tile_rows(n_in))
		j.chunk = wide_tile_rows(n_in);
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
