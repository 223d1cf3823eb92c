/*
 * test_qgemm.c — the int8 kernels over Q8_0 / Q4_0 weights: every SIMD path
 * this CPU has against the portable path and against exact double sums, on
 * shapes with odd tails (rows, outputs, blocks); a row's result independent
 * of the rows sharing the call; activation quantization; hostile weights
 * (-128, infinite and NaN scales); mms_linear on quantized weights against
 * the same layer on their dequantized floats. A path the CPU lacks is
 * reported as skipped by name.
 */
#include "test_util.h"

#include "gguf.h"
#include "ops.h"
#include "qgemm.h"

static uint32_t rng = 12345;

static uint32_t
next_u32(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 17;
	rng ^= rng << 5;
	return rng;
}

static float
next_unit(void)
{
	return (float) (next_u32() % 20001) / 10000.0f - 1.0f;
}

/* n_out rows of k / 32 random blocks; scales are halves in [2^-8, 2^-6) */
static uint8_t *
random_weights(int wtype, int64_t n_out, int64_t k)
{
	size_t		bb = mms_qblock_bytes(wtype);
	int64_t		nblk = n_out * (k / MMS_QK);
	uint8_t    *w = malloc((size_t) nblk * bb);

	assert_non_null(w);
	for (int64_t b = 0; b < nblk; b++)
	{
		uint8_t    *blk = w + b * bb;
		uint16_t	h = (uint16_t) (0x1c00 + next_u32() % 0x800);

		blk[0] = (uint8_t) (h & 0xff);
		blk[1] = (uint8_t) (h >> 8);
		for (size_t j = 2; j < bb; j++)
			blk[j] = (uint8_t) next_u32();
	}
	return w;
}

/* Exact per-block integer sums, scaled and summed in double: what every path approximates. */
static double
exact(const uint8_t *w, int wtype, const void *act, int64_t rows, int64_t k, int64_t m, int64_t o,
	  double *mag)
{
	const int8_t *xq = act;
	const float *xd = (const float *) (xq + rows * k);
	int64_t		nb = k / MMS_QK;
	size_t		bb = mms_qblock_bytes(wtype);
	float		wf[MMS_QK];
	double		s = 0;

	*mag = 0;
	for (int64_t b = 0; b < nb; b++)
	{
		const uint8_t *blk = w + (size_t) (o * nb + b) * bb;
		double		dot = 0;

		assert_int_equal(mms_dequantize(wtype, blk, MMS_QK, wf, NULL), MMS_OK);
		for (int j = 0; j < MMS_QK; j++)
			dot += (double) wf[j] * xq[m * k + b * MMS_QK + j];
		s += dot * xd[m * nb + b];
		*mag += fabs(dot * xd[m * nb + b]);
	}
	return s;
}

static void
check_path(MmsQPath path, int wtype)
{
	static const int64_t shapes[][2] = {{1, 32}, {2, 64}, {3, 96}, {4, 512}, {5, 160},
	{7, 1024}, {33, 96}, {64, 64}, {65, 224}, {70, 32}};

	for (size_t si = 0; si < sizeof(shapes) / sizeof(shapes[0]); si++)
	{
		int64_t		rows = shapes[si][0],
					k = shapes[si][1],
					n_out = 13;
		float	   *x = malloc((size_t) (rows * k) * sizeof(float));
		void	   *act = malloc(mms_qact_bytes(rows, k));
		uint8_t    *w = random_weights(wtype, n_out, k);
		float	   *y = malloc((size_t) (rows * n_out) * sizeof(float));
		float	   *yc = malloc((size_t) (rows * n_out) * sizeof(float));

		for (int64_t i = 0; i < rows * k; i++)
			x[i] = next_unit() * (1.0f + (float) (i % 7));
		mms_quantize_act(x, rows, k, act);
		for (int accumulate = 0; accumulate <= 1; accumulate++)
		{
			for (int64_t i = 0; i < rows * n_out; i++)
				y[i] = yc[i] = 0.5f;
			/* outputs in two uneven ranges, as tasks split them */
			mms_qgemm_path(path, y, n_out, act, w, wtype, rows, k, 0, 5, accumulate);
			mms_qgemm_path(path, y, n_out, act, w, wtype, rows, k, 5, n_out, accumulate);
			mms_qgemm_path(MMS_QPATH_C, yc, n_out, act, w, wtype, rows, k, 0, n_out, accumulate);
			for (int64_t m = 0; m < rows; m++)
				for (int64_t o = 0; o < n_out; o++)
				{
					double		mag;
					double		want = exact(w, wtype, act, rows, k, m, o, &mag) + (accumulate ? 0.5 : 0.0);
					double		tol = 1e-5 * (mag + 1.0);
					float		got = y[m * n_out + o],
								ref = yc[m * n_out + o];

					if (fabs(got - want) > tol || fabs(ref - want) > tol)
						fail_msg("%s %s rows %lld k %lld (m %lld, o %lld, acc %d): path %.9g, C %.9g, exact %.9g",
								 mms_qpath_name(path), mms_tensor_type_name(wtype), (long long) rows,
								 (long long) k, (long long) m, (long long) o, accumulate, got, ref, want);
				}
		}
		free(x);
		free(act);
		free(w);
		free(y);
		free(yc);
	}
}

static void
test_path(void **state)
{
	MmsQPath	path = (MmsQPath) (intptr_t) *state;

	if (!mms_qpath_available(path))
	{
		print_message("qgemm path %s: SKIPPED, this CPU (or MMS_NO_AVX512) does not allow it\n",
					  mms_qpath_name(path));
		skip();
	}
	check_path(path, MMS_T_Q8_0);
	check_path(path, MMS_T_Q4_0);
	print_message("qgemm path %s: checked against the portable path and exact sums%s\n",
				  mms_qpath_name(path), path == mms_qpath_best() ? " (the one in use)" : "");
}

/*
 * The wide kernel (outputs across lanes, weights repacked per call) against
 * exact sums, with output counts that leave partial groups of 16, and a row
 * alone bit-identical to the same row among 37.
 */
static void
test_tile(void **state)
{
	static const int64_t shapes[][3] = {{1, 32, 5}, {3, 96, 16}, {4, 512, 17}, {5, 160, 33},
	{37, 288, 70}, {9, 1024, 64}, {6, 64, 48}};

	if (!mms_qtile_available())
	{
		print_message("qgemm wide tile kernel (AVX-512 VNNI): SKIPPED, this CPU (or MMS_NO_AVX512) does not allow it\n");
		skip();
	}
	for (int ti = 0; ti < 2; ti++)
		for (size_t si = 0; si < sizeof(shapes) / sizeof(shapes[0]); si++)
		{
			int			wtype = ti ? MMS_T_Q4_0 : MMS_T_Q8_0;
			int64_t		rows = shapes[si][0],
						k = shapes[si][1],
						n_out = shapes[si][2];
			float	   *x = malloc((size_t) (rows * k) * sizeof(float));
			void	   *act = malloc(mms_qact_bytes(rows, k));
			void	   *actu = malloc(mms_qact_bytes(rows, k));
			void	   *one = malloc(mms_qact_bytes(1, k));
			void	   *tile = malloc(mms_qtile_bytes(k));
			uint8_t    *w = random_weights(wtype, n_out, k);
			float	   *y = malloc((size_t) (rows * n_out) * sizeof(float));
			float	   *y1 = malloc((size_t) n_out * sizeof(float));

			for (int64_t i = 0; i < rows * k; i++)
				x[i] = next_unit() * (1.0f + (float) (i % 5));
			mms_quantize_act(x, rows, k, act);
			mms_quantize_act_u8(x, rows, k, actu);
			for (int accumulate = 0; accumulate <= 1; accumulate++)
			{
				for (int64_t i = 0; i < rows * n_out; i++)
					y[i] = 0.25f;
				/* two uneven output ranges, as tasks split them */
				mms_qtile_gemm(y, n_out, actu, w, wtype, rows, k, 0, n_out / 3, accumulate, tile);
				mms_qtile_gemm(y, n_out, actu, w, wtype, rows, k, n_out / 3, n_out, accumulate, tile);
				for (int64_t m = 0; m < rows; m++)
					for (int64_t o = 0; o < n_out; o++)
					{
						double		mag;
						double		want = exact(w, wtype, act, rows, k, m, o, &mag) + (accumulate ? 0.25 : 0.0);

						if (fabs(y[m * n_out + o] - want) > 1e-5 * (mag + 1.0))
							fail_msg("tile %s rows %lld k %lld n_out %lld (m %lld, o %lld, acc %d): %.9g, exact %.9g",
									 mms_tensor_type_name(wtype), (long long) rows, (long long) k,
									 (long long) n_out, (long long) m, (long long) o, accumulate,
									 y[m * n_out + o], want);
					}
			}
			for (int64_t m = 0; m < rows; m++)
			{
				mms_quantize_act_u8(x + m * k, 1, k, one);
				mms_qtile_gemm(y1, n_out, one, w, wtype, 1, k, 0, n_out, 0, tile);
				mms_qtile_gemm(y, n_out, actu, w, wtype, rows, k, 0, n_out, 0, tile);
				assert_memory_equal(y1, y + m * n_out, (size_t) n_out * sizeof(float));
			}
			free(x);
			free(act);
			free(actu);
			free(one);
			free(tile);
			free(w);
			free(y);
			free(y1);
		}
}

/* A row's outputs are bit-identical alone and among 37 rows, on the path in use. */
static void
test_batch_independent(void **state)
{
	enum
	{
		ROWS = 37, K = 288, OUT = 9
	};
	float	   *x = malloc(ROWS * K * sizeof(float));
	void	   *act = malloc(mms_qact_bytes(ROWS, K));
	void	   *one = malloc(mms_qact_bytes(1, K));
	uint8_t    *w = random_weights(MMS_T_Q8_0, OUT, K);
	float		y[ROWS * OUT],
				y1[OUT];

	for (int i = 0; i < ROWS * K; i++)
		x[i] = next_unit();
	mms_quantize_act(x, ROWS, K, act);
	mms_qgemm(y, OUT, act, w, MMS_T_Q8_0, ROWS, K, 0, OUT, 0);
	for (int m = 0; m < ROWS; m++)
	{
		mms_quantize_act(x + m * K, 1, K, one);
		mms_qgemm(y1, OUT, one, w, MMS_T_Q8_0, 1, K, 0, OUT, 0);
		assert_memory_equal(y1, y + m * OUT, sizeof(y1));
	}
	free(x);
	free(act);
	free(one);
	free(w);
}

/* Scale max|x| / 127, the extremes at +-127, zeros and non-finite blocks. */
static void
test_quantize_act(void **state)
{
	float		x[128];
	_Alignas(float) uint8_t buf[128 + 4 * sizeof(float)];
	int8_t	   *q = (int8_t *) buf;
	float	   *d = (float *) (buf + 128);

	for (int i = 0; i < 32; i++)
		x[i] = (float) (i - 16) * 0.25f;	/* max |x| = 4 at i = 0 */
	for (int i = 32; i < 64; i++)
		x[i] = 0.0f;
	for (int i = 64; i < 96; i++)
		x[i] = 1.0f;
	x[70] = NAN;
	for (int i = 96; i < 128; i++)
		x[i] = (i % 2 ? 1e-38f : -2e-38f);	/* 1 / scale would overflow */
	mms_quantize_act(x, 1, 128, buf);
	assert_true(fabsf(d[0] - 4.0f / 127.0f) < 1e-9f);
	assert_int_equal(q[0], -127);
	assert_int_equal(q[16], 0);
	assert_int_equal(q[31], (int) roundf(3.75f * 127.0f / 4.0f));
	assert_true(d[1] == 0.0f);
	for (int i = 32; i < 64; i++)
		assert_int_equal(q[i], 0);
	assert_true(isnan(d[2]));
	assert_true(d[3] == 0.0f);
	for (int i = 96; i < 128; i++)
		assert_int_equal(q[i], 0);
}

/* -128 values, infinite and NaN block scales: the paths agree and nothing traps. */
static void
test_hostile_weights(void **state)
{
	enum
	{
		K = 64, OUT = 4
	};
	uint8_t    *w = random_weights(MMS_T_Q8_0, OUT, K);
	float		x[2 * K],
				yc[2 * OUT],
				y[2 * OUT];
	void	   *act = malloc(mms_qact_bytes(2, K));

	for (int j = 0; j < 32; j++)
		w[2 + j] = 0x80;		/* row 0, block 0: all -128 */
	w[34 * 2] = 0x00;
	w[34 * 2 + 1] = 0x7c;		/* row 1, block 0: scale +inf */
	w[34 * 4] = 0x01;
	w[34 * 4 + 1] = 0x7e;		/* row 2, block 0: NaN */
	for (int i = 0; i < 2 * K; i++)
		x[i] = next_unit();
	mms_quantize_act(x, 2, K, act);
	mms_qgemm_path(MMS_QPATH_C, yc, OUT, act, w, MMS_T_Q8_0, 2, K, 0, OUT, 0);
	for (MmsQPath p = 0; p < MMS_QPATH_N; p++)
	{
		if (!mms_qpath_available(p))
			continue;
		mms_qgemm_path(p, y, OUT, act, w, MMS_T_Q8_0, 2, K, 0, OUT, 0);
		for (int m = 0; m < 2; m++)
		{
			double		mag;
			double		want = exact(w, MMS_T_Q8_0, act, 2, K, m, 0, &mag);

			assert_true(fabs(y[m * OUT] - want) <= 1e-5 * (mag + 1));
			assert_true(isinf(y[m * OUT + 1]) || isnan(y[m * OUT + 1]));
			assert_true(isnan(y[m * OUT + 2]));
			assert_true(fabsf(y[m * OUT + 3] - yc[m * OUT + 3]) <= 1e-5f * (fabsf(yc[m * OUT + 3]) + 1));
		}
	}
	free(w);
	free(act);
}

/*
 * mms_linear on Q8_0 / Q4_0 weights against the same layer on their
 * dequantized floats: step mode (int8 activations) within 1% RMS, wide mode
 * (dequantized tiles, f32 activations) to float rounding.
 */
static void
test_linear_quantized(void **state)
{
	enum
	{
		ROWS = 40, K = 256, OUT = 150
	};
	int			types[] = {MMS_T_Q8_0, MMS_T_Q4_0};

	/* two threads: tasks on the pool thread use their own tile */
	mms_blas_set_threads(2);
	for (int ti = 0; ti < 2; ti++)
		for (int wide = 0; wide <= 1; wide++)
		{
			int			wtype = types[ti];
			uint8_t    *w = random_weights(wtype, OUT, K);
			float	   *wf = malloc(OUT * K * sizeof(float));
			float	   *x = malloc(ROWS * K * sizeof(float));
			float		y[ROWS * OUT],
						yf[ROWS * OUT];
			MmsLinearScratch ls = {malloc(mms_linear_scratch_bytes(wtype, wide, ROWS, K)), wide};
			MmsWeight	qw = {w, wtype},
						fw = {wf, MMS_T_F32};

			assert_int_equal(mms_dequantize(wtype, w, OUT * K, wf, NULL), MMS_OK);
			for (int i = 0; i < ROWS * K; i++)
				x[i] = next_unit();
			for (int rows = 1; rows <= ROWS; rows += ROWS - 1)
			{
				double		err2 = 0,
							ref2 = 0,
							lim = wide && !mms_qtile_available() ? 1e-6 : 0.01;

				mms_linear(y, x, qw, rows, K, OUT, 0, &ls);
				mms_linear(yf, x, fw, rows, K, OUT, 0, NULL);
				for (int i = 0; i < rows * OUT; i++)
				{
					err2 += (double) (y[i] - yf[i]) * (y[i] - yf[i]);
					ref2 += (double) yf[i] * yf[i];
				}
				/* int8 activations: a relative error of about 1/127 per value, far less over sums */
				if (sqrt(err2 / ref2) > lim)
					fail_msg("%s %s rows %d: relative RMS error %.3g against f32", mms_tensor_type_name(wtype),
							 wide ? "wide" : "step", rows, sqrt(err2 / ref2));
			}
			free(w);
			free(wf);
			free(x);
			free(ls.buf);
		}
	mms_blas_set_threads(1);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		{"path_c", test_path, NULL, NULL, (void *) (intptr_t) MMS_QPATH_C},
		{"path_avx2", test_path, NULL, NULL, (void *) (intptr_t) MMS_QPATH_AVX2},
		{"path_avx_vnni", test_path, NULL, NULL, (void *) (intptr_t) MMS_QPATH_AVX_VNNI},
		{"path_avx512bw", test_path, NULL, NULL, (void *) (intptr_t) MMS_QPATH_AVX512BW},
		{"path_avx512_vnni", test_path, NULL, NULL, (void *) (intptr_t) MMS_QPATH_AVX512_VNNI},
		cmocka_unit_test(test_tile),
		cmocka_unit_test(test_batch_independent),
		cmocka_unit_test(test_quantize_act),
		cmocka_unit_test(test_hostile_weights),
		cmocka_unit_test(test_linear_quantized),
	};

	return cmocka_run_group_tests_name("qgemm", tests, NULL, NULL);
}
