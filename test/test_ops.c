/*
 * test_ops.c — the forward pass's kernels against values from transformers
 * (test/fixtures/kernel_ref.txt, from tools/make_kernel_ref.py): relative
 * position buckets at every boundary, gelu_new, RMSNorm; softmax and the
 * linear layer against plain loops.
 */
#include "test_util.h"

#include <math.h>

#include "ops.h"

static char *
next_tok(char **save)
{
	return strtok_r(NULL, " \n", save);
}

static void
test_kernel_ref(void **state)
{
	FILE	   *f = fopen(MMS_FIXTURE_DIR "kernel_ref.txt", "r");
	char	   *line = NULL;
	size_t		cap = 0;
	int			n_bucket = 0,
				n_gelu = 0,
				n_norm = 0;

	assert_non_null(f);
	while (getline(&line, &cap, f) > 0)
	{
		char	   *save = NULL;
		char	   *kw = strtok_r(line, " \n", &save);

		if (kw == NULL || kw[0] == '#')
			continue;
		if (strcmp(kw, "bucket") == 0)
		{
			int			bi = atoi(next_tok(&save));
			int			nb = atoi(next_tok(&save));
			int			md = atoi(next_tok(&save));
			long		rel = atol(next_tok(&save));
			int			want = atoi(next_tok(&save));
			int			got = mms_t5_rel_bucket(rel, bi, nb, md);

			if (got != want)
				fail_msg("bucket(rel=%ld, bidirectional=%d, nb=%d, max=%d) = %d, transformers says %d",
						 rel, bi, nb, md, got, want);
			n_bucket++;
		}
		else if (strcmp(kw, "gelu") == 0)
		{
			float		x = strtof(next_tok(&save), NULL);
			float		want = strtof(next_tok(&save), NULL);
			float		got = mms_gelu_new(x);

			if (fabsf(got - want) > 1e-6f * (1.0f + fabsf(want)))
				fail_msg("gelu_new(%g) = %.9g, transformers says %.9g", x, got, want);
			n_gelu++;
		}
		else if (strcmp(kw, "rmsnorm") == 0)
		{
			float		eps = strtof(next_tok(&save), NULL);
			int			n = atoi(next_tok(&save));
			float	   *x = malloc(3 * (size_t) n * sizeof(float));
			float	   *w = x + n,
					   *want = w + n;
			float	   *got = malloc((size_t) n * sizeof(float));

			for (int i = 0; i < 3 * n; i++)
				x[i] = strtof(next_tok(&save), NULL);
			mms_rmsnorm(got, x, w, n, eps);
			for (int i = 0; i < n; i++)
				if (fabsf(got[i] - want[i]) > 1e-5f * (1.0f + fabsf(want[i])))
					fail_msg("rmsnorm n=%d [%d] = %.9g, transformers says %.9g", n, i, got[i], want[i]);
			/* in place too */
			mms_rmsnorm(x, x, w, n, eps);
			for (int i = 0; i < n; i++)
				assert_true(fabsf(x[i] - got[i]) == 0.0f);
			free(x);
			free(got);
			n_norm++;
		}
	}
	free(line);
	fclose(f);
	assert_true(n_bucket > 5000);
	assert_true(n_gelu > 50);
	assert_true(n_norm == 4);
}

static void
test_bucket_ranges(void **state)
{
	/* every bucket is in range, far distances saturate, and the two halves split by sign */
	for (long rel = -5000; rel <= 5000; rel++)
	{
		int			b = mms_t5_rel_bucket(rel, 1, 32, 128);
		int			c = mms_t5_rel_bucket(rel, 0, 32, 128);

		assert_true(b >= 0 && b < 32);
		assert_true(c >= 0 && c < 32);
		if (rel > 0)
		{
			assert_true(b >= 16);
			assert_int_equal(c, 0);
		}
		else
			assert_true(b < 16);
	}
	assert_int_equal(mms_t5_rel_bucket(-1000000, 1, 32, 128), 15);
	assert_int_equal(mms_t5_rel_bucket(1000000, 1, 32, 128), 31);
	assert_int_equal(mms_t5_rel_bucket(-1000000, 0, 32, 128), 31);
	/* degenerate max_distance must not be undefined behaviour */
	assert_true(mms_t5_rel_bucket(-100, 0, 128, 64) < 128);
}

static void
test_softmax(void **state)
{
	float		x[5] = {1.0f, 2.0f, 3.0f, -INFINITY, 1000.0f};
	float		y[3] = {1.0f, 2.0f, 3.0f};
	double		s = 0;
	double		lse;

	mms_softmax(x, 5);
	assert_true(fabsf(x[4] - 1.0f) < 1e-6f);
	assert_true(x[3] == 0.0f);
	mms_softmax(y, 3);
	for (int i = 0; i < 3; i++)
		s += y[i];
	assert_true(fabs(s - 1.0) < 1e-6);
	assert_true(fabsf(y[2] - 0.66524096f) < 1e-6f);
	lse = mms_logsumexp((float[]) {0.0f, 0.0f}, 2);
	assert_true(fabs(lse - log(2.0)) < 1e-12);
	lse = mms_logsumexp((float[]) {-INFINITY, -INFINITY}, 2);
	assert_true(isinf(lse) && lse < 0);
}

/* The vectorized log-sum-exp against a double-precision loop, over a vocabulary-sized row. */
static void
test_logsumexp_wide(void **state)
{
	int			n = 32131;		/* not a multiple of 8: the tail path too */
	float	   *x = malloc((size_t) n * sizeof(float));
	unsigned	seed = 1;

	for (int t = 0; t < 50; t++)
	{
		double		mx = -INFINITY,
					s = 0,
					ref;

		for (int i = 0; i < n; i++)
		{
			seed = seed * 1103515245u + 12345u;
			x[i] = ((float) (seed >> 8) / 16777216.0f - 0.5f) * (float) (1 + t % 10) * 20.0f;
		}
		if (t % 7 == 0)
			x[t] = -INFINITY;	/* masked tokens */
		for (int i = 0; i < n; i++)
			mx = fmax(mx, x[i]);
		for (int i = 0; i < n; i++)
			s += exp((double) x[i] - mx);
		ref = mx + log(s);
		assert_true(fabs(mms_logsumexp(x, n) - ref) < 1e-5);
	}
	free(x);
}

static void
test_gelu_mul_relu(void **state)
{
	float		g[4] = {-1.0f, 0.0f, 1.0f, 2.0f};
	float		u[4] = {2.0f, 3.0f, 4.0f, 0.5f};
	float		r[3] = {-1.0f, 0.0f, 2.5f};

	mms_gelu_mul(g, u, 4);
	assert_true(fabsf(g[0] - 2.0f * mms_gelu_new(-1.0f)) < 1e-7f);
	assert_true(g[1] == 0.0f);
	assert_true(fabsf(g[3] - 0.5f * mms_gelu_new(2.0f)) < 1e-7f);
	/* the vectorized path (8 at a time) against the scalar one over a wide range */
	{
		float		a[203],
					u[203];

		for (int i = 0; i < 203; i++)
		{
			a[i] = -12.0f + 0.12f * (float) i;
			u[i] = 1.0f + 0.01f * (float) i;
		}
		mms_gelu_mul(a, u, 203);
		for (int i = 0; i < 203; i++)
		{
			float		x = -12.0f + 0.12f * (float) i;
			float		want = mms_gelu_new(x) * u[i];

			if (fabsf(a[i] - want) > 2e-6f * (1.0f + fabsf(want)))
				fail_msg("gelu_mul(%g) = %.9g, scalar %.9g", x, a[i], want);
		}
	}
	mms_relu(r, 3);
	assert_true(r[0] == 0.0f && r[1] == 0.0f && r[2] == 2.5f);
}

/* y = x W^T for 1 row (GEMV path) and many rows (GEMM path), with and without accumulation */
static void
test_linear(void **state)
{
	enum
	{
		ROWS = 5, IN = 7, OUT = 3
	};
	float		x[ROWS * IN],
				w[OUT * IN],
				y[ROWS * OUT],
				ref[ROWS * OUT];

	for (int i = 0; i < ROWS * IN; i++)
		x[i] = (float) ((i * 37) % 11) - 5.0f;
	for (int i = 0; i < OUT * IN; i++)
		w[i] = (float) ((i * 13) % 7) * 0.25f - 0.5f;
	for (int r = 0; r < ROWS; r++)
		for (int o = 0; o < OUT; o++)
		{
			double		s = 0;

			for (int i = 0; i < IN; i++)
				s += (double) x[r * IN + i] * w[o * IN + i];
			ref[r * OUT + o] = (float) s;
		}
	for (int rows = 1; rows <= ROWS; rows += ROWS - 1)
	{
		mms_linear(y, x, (MmsWeight) {w, MMS_T_F32}, rows, IN, OUT, 0, NULL);
		for (int i = 0; i < rows * OUT; i++)
			assert_true(fabsf(y[i] - ref[i]) < 1e-4f);
		mms_linear(y, x, (MmsWeight) {w, MMS_T_F32}, rows, IN, OUT, 1, NULL);
		for (int i = 0; i < rows * OUT; i++)
			assert_true(fabsf(y[i] - 2 * ref[i]) < 1e-4f);
	}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_kernel_ref),
		cmocka_unit_test(test_bucket_ranges),
		cmocka_unit_test(test_softmax),
		cmocka_unit_test(test_logsumexp_wide),
		cmocka_unit_test(test_gelu_mul_relu),
		cmocka_unit_test(test_linear),
	};

	return cmocka_run_group_tests_name("ops", tests, NULL, NULL);
}
