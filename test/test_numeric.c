/*
 * test_numeric.c — numerically hostile models and options. A model whose
 * weights hold NaN or inf fails each affected request with MMS_ERR_NUMERIC
 * (greedy, beam, sampling and scoring alike), leaving the other requests of
 * the same batch untouched; extreme but accepted options (a denormal
 * temperature, repetition and length penalties of 1e30 or 1e-30, a huge
 * top_k) give finite, valid results, and a tiny temperature is greedy.
 * Poisoned models are flan_gated.gguf with a few floats overwritten in memory.
 */
#include "test_util.h"

#include <float.h>
#include <math.h>

#include "generate.h"
#include "gguf.h"
#include "ops.h"
#include "pool.h"
#include "scheduler.h"
#include "t5.h"

/* A model over its own copy of the file's bytes (so it can be poisoned). */
typedef struct Model
{
	uint8_t    *buf;
	MmsGguf		g;
	MmsT5	   *m;
} Model;

static uint8_t *clean_buf;
static size_t clean_size;
static Model healthy;

/* A copy of the fixture's bytes, parsed: poison it, then model_finish() loads it. */
static void
model_copy(Model *md)
{
	MmsError	err;

	md->buf = malloc(clean_size);
	assert_non_null(md->buf);
	memcpy(md->buf, clean_buf, clean_size);
	if (mms_gguf_parse(md->buf, clean_size, &md->g, &err) != MMS_OK)
		fail_msg("parse: %s", err.msg);
	md->m = NULL;
}

/* Sets n floats of tensor `name`, from element elem on, to value. */
static void
model_poison(Model *md, const char *name, int64_t elem, int64_t n, float value)
{
	const MmsGgufTensor *t = mms_gguf_find_tensor(&md->g, name);
	uint8_t    *data;

	assert_non_null(t);
	assert_int_equal(t->type, MMS_T_F32);
	assert_true(elem >= 0 && elem + n <= (int64_t) t->n_elems);
	/* the tensor's bytes lie in our copy of the file */
	data = md->buf + (t->data - md->buf);
	for (int64_t i = 0; i < n; i++)
		memcpy(data + (size_t) (elem + i) * sizeof(float), &value, sizeof(float));
}

static void
model_finish(Model *md)
{
	MmsError	err;

	if (mms_t5_load(&md->g, &md->m, &err) != MMS_OK)
		fail_msg("load: %s", err.msg);
}

/* The fixture with n floats of tensor `name` (if not NULL) from elem on set to value. */
static void
model_load(Model *md, const char *name, int64_t elem, int64_t n, float value)
{
	model_copy(md);
	if (name != NULL)
		model_poison(md, name, elem, n, value);
	model_finish(md);
}

static void
model_free(Model *md)
{
	mms_t5_free(md->m);
	mms_gguf_free(&md->g);
	free(md->buf);
}

static int
setup(void **state)
{
	/* two engine threads: requests of a step are advanced in parallel */
	mms_set_threads(2);
	clean_buf = mms_test_read_file(MMS_FIXTURE_DIR "flan_gated.gguf", &clean_size);
	model_load(&healthy, NULL, 0, 0, 0.0f);
	return 0;
}

static int
teardown(void **state)
{
	model_free(&healthy);
	free(clean_buf);
	return 0;
}

typedef enum Kind
{
	K_GREEDY,
	K_BEAM,
	K_SAMPLE,
	K_SCORE,
	N_KINDS
} Kind;

/* Input of n ids (the last one eos), varied by k. */
static void
make_input(int32_t *ids, int n, int k)
{
	for (int i = 0; i < n - 1; i++)
		ids[i] = 3 + (k * 131 + i * 29) % 990;
	ids[n - 1] = 1;
}

static MmsGenRequest *
make_req(const MmsT5 *m, Kind kind, int n, int k)
{
	int32_t		ids[256];
	MmsGenOptions o;
	MmsGenRequest *r;
	MmsError	err;

	assert_true(n <= 256);
	make_input(ids, n, k);
	mms_gen_options_default(&o);
	o.max_new_tokens = 6 + k % 5;
	switch (kind)
	{
		case K_GREEDY:
			o.repetition_penalty = 1.2f;
			break;
		case K_BEAM:
			o.num_beams = 3;
			break;
		case K_SAMPLE:
			o.do_sample = 1;
			o.temperature = 0.7f;
			o.top_p = 0.9f;
			o.seed = (uint64_t) k;
			break;
		case K_SCORE:
			{
				int32_t		target[4] = {5 + k, 17, 300, 1};

				if (mms_gen_score_request_create(m, ids, n, target, 4, &r, &err) != MMS_OK)
					fail_msg("score request: %s", err.msg);
				return r;
			}
		default:
			fail_msg("bad kind");
	}
	if (mms_gen_request_create(m, ids, n, &o, &r, &err) != MMS_OK)
		fail_msg("request: %s", err.msg);
	return r;
}

/* Runs reqs[0..n) through one scheduler, all in the same batches; returns its stats. */
static MmsSchedStats
run_batch(const MmsT5 *m, MmsGenRequest **reqs, int n)
{
	MmsSched   *s;
	MmsSchedStats st;
	MmsError	err;
	int			held = 0,
				collected = 0,
				steps = 0;

	assert_int_equal(mms_sched_create(m, NULL, &s, &err), MMS_OK);
	for (int i = 0; i < n; i++)
		assert_int_equal(mms_sched_submit(s, reqs[i], &err), MMS_OK);
	do
	{
		/* a failing request is the request's error, never the step's */
		assert_int_equal(mms_sched_step(s, &held, &err), MMS_OK);
		while (mms_sched_collect(s) != NULL)
			collected++;
		assert_true(++steps < 1000);
	} while (held > 0);
	assert_int_equal(collected, n);
	mms_sched_stats(s, &st);
	mms_sched_free(s);
	return st;
}

static void
assert_numeric_failure(const MmsGenRequest *r, const char *what, int step)
{
	MmsError	e;
	char		want[64];

	assert_true(mms_gen_request_done(r));
	assert_null(mms_gen_request_result(r));
	assert_int_equal(mms_gen_request_error(r, &e), MMS_ERR_NUMERIC);
	assert_int_equal(e.code, MMS_ERR_NUMERIC);
	snprintf(want, sizeof(want), "non-finite logits (%s) at step %d", what, step);
	if (strstr(e.msg, want) == NULL)
		fail_msg("message \"%s\" lacks \"%s\"", e.msg, want);
}

static void
assert_valid_result(const MmsGenRequest *r, int64_t vocab)
{
	const MmsGenResult *res = mms_gen_request_result(r);
	MmsError	e;

	if (res == NULL)
	{
		mms_gen_request_error(r, &e);
		fail_msg("request failed: %s", e.msg);
	}
	assert_true(res->n_ids >= 1);
	for (int i = 0; i < res->n_ids; i++)
		assert_true(res->ids[i] >= 0 && res->ids[i] < vocab);
	/* the model's own log-probability never depends on the options: finite */
	assert_true(isfinite(res->logprob));
	assert_false(isnan(res->score));
}

static void
assert_same_result(const MmsGenRequest *a, const MmsGenRequest *b, const char *what)
{
	const MmsGenResult *x = mms_gen_request_result(a);
	const MmsGenResult *y = mms_gen_request_result(b);

	if (x == NULL || y == NULL)
		fail_msg("%s: a request did not finish", what);
	if (x->n_ids != y->n_ids || memcmp(x->ids, y->ids, (size_t) x->n_ids * sizeof(int32_t)) != 0)
		fail_msg("%s: ids differ", what);
	/* other rows in the GEMMs need not give bit-equal floats */
	if (fabs(x->score - y->score) > 1e-4 * fmax(1.0, fabs(x->score)))
		fail_msg("%s: score %.9g vs %.9g", what, x->score, y->score);
}

static void
test_status_name(void **state)
{
	assert_int_equal(MMS_ERR_NUMERIC, 9);
	assert_string_equal(mms_status_name(MMS_ERR_NUMERIC), "model produced non-finite values");
}

/*
 * One poisoned tensor: every kind of request, at input lengths that take the
 * vector and the scalar paths of the kernels, fails at its first step.
 */
static void
check_poisoned(const char *tensor, int64_t elem, int64_t n, float value, const char *what)
{
	enum
	{
		N = 3 * N_KINDS
	};
	static const int lens[3] = {5, 8, 16};
	Model		md;
	MmsGenRequest *reqs[N];
	MmsSchedStats st;

	model_load(&md, tensor, elem, n, value);
	for (int i = 0; i < N; i++)
		reqs[i] = make_req(md.m, (Kind) (i % N_KINDS), lens[i / N_KINDS], i);
	st = run_batch(md.m, reqs, N);
	assert_int_equal(st.failed, N);
	assert_int_equal(st.finished, 0);
	assert_int_equal(st.bytes, 0);	/* caches of failed requests are given back */
	for (int i = 0; i < N; i++)
	{
		assert_numeric_failure(reqs[i], what, 1);
		mms_gen_request_free(reqs[i]);
	}
	model_free(&md);
}

/* NaN in the decoder's feed-forward: every logit is NaN. */
static void
test_nan_decoder_weights(void **state)
{
	check_poisoned("dec.blk.1.ffn_down.weight", 100, 3, NAN, "NaN");
}

/*
 * NaN in the encoder's attention queries and in the cross-attention keys:
 * it reaches the logits only because the softmax lets NaN through (an
 * AVX2 max used to turn NaN scores into zero weights, hiding it).
 */
static void
test_nan_attention_weights(void **state)
{
	check_poisoned("enc.blk.0.attn_q.weight", 7, 1, NAN, "NaN");
	check_poisoned("dec.blk.0.cross_attn_k.weight", 40, 1, NAN, "NaN");
	check_poisoned("enc.blk.0.attn_rel_b.weight", 0, 8, NAN, "NaN");
}

/*
 * NaN into a ReLU feed-forward (t5_relu_tied): ReLU keeps NaN, as torch
 * does, instead of clamping it to 0 and hiding the broken weight.
 */
static void
test_nan_through_relu(void **state)
{
	size_t		size;
	uint8_t    *buf = mms_test_read_file(MMS_FIXTURE_DIR "t5_relu_tied.gguf", &size);
	MmsGguf		g;
	MmsT5	   *m;
	MmsError	err;
	const MmsGgufTensor *t;
	float		nan = NAN;
	MmsGenRequest *reqs[N_KINDS];

	assert_int_equal(mms_gguf_parse(buf, size, &g, &err), MMS_OK);
	t = mms_gguf_find_tensor(&g, "enc.blk.0.ffn_up.weight");
	assert_non_null(t);
	assert_int_equal(t->type, MMS_T_F32);
	memcpy(buf + (t->data - buf), &nan, sizeof(float));
	assert_int_equal(mms_t5_load(&g, &m, &err), MMS_OK);
	assert_false(mms_t5_config(m)->gated);
	for (int i = 0; i < N_KINDS; i++)
		reqs[i] = make_req(m, (Kind) i, 16, i);
	run_batch(m, reqs, N_KINDS);
	for (int i = 0; i < N_KINDS; i++)
	{
		assert_numeric_failure(reqs[i], "NaN", 1);
		mms_gen_request_free(reqs[i]);
	}
	mms_t5_free(m);
	mms_gguf_free(&g);
	free(buf);
}

/* One +inf in a row of the LM head makes that logit +/-inf and no NaN. */
static void
test_inf_logit(void **state)
{
	const MmsT5Config *c = mms_t5_config(healthy.m);
	int64_t		row = 300;
	Model		md;
	MmsGenRequest *r;
	MmsError	e;

	model_load(&md, "output.weight", row * c->d_model + 3, 1, INFINITY);
	r = make_req(md.m, K_GREEDY, 6, 1);
	run_batch(md.m, &r, 1);
	assert_int_equal(mms_gen_request_error(r, &e), MMS_ERR_NUMERIC);
	if (strstr(e.msg, "(+inf) at step 1") == NULL && strstr(e.msg, "(-inf) at step 1") == NULL)
		fail_msg("unexpected message \"%s\"", e.msg);
	mms_gen_request_free(r);
	model_free(&md);
}

/*
 * Failures are per request: NaN in the encoder's relative-position bias of
 * the farthest bucket reaches only inputs long enough to use it. Long and
 * short requests of every kind share the scheduler's batches; the long ones
 * fail, the short ones give exactly what the healthy model gives.
 */
static void
test_failure_is_per_request(void **state)
{
	enum
	{
		LONG = 120,
		SHORT = 16,
		PER = 2 * N_KINDS,
		N = 2 * PER
	};
	const MmsT5Config *c = mms_t5_config(healthy.m);
	int			far_pos = mms_t5_rel_bucket(LONG - 1, 1, (int) c->n_buckets, MMS_T5_MAX_DISTANCE);
	int			far_neg = mms_t5_rel_bucket(-(LONG - 1), 1, (int) c->n_buckets, MMS_T5_MAX_DISTANCE);
	Model		md;
	MmsGenRequest *reqs[N],
			   *alone[N];
	MmsSchedStats st;
	MmsError	err;

	/* short inputs never reach the poisoned buckets */
	for (int rel = -(SHORT - 1); rel <= SHORT - 1; rel++)
	{
		int			b = mms_t5_rel_bucket(rel, 1, (int) c->n_buckets, MMS_T5_MAX_DISTANCE);

		assert_true(b != far_pos && b != far_neg);
	}
	/* rel_b is (n_buckets, n_head): poison every head of both far buckets */
	model_copy(&md);
	model_poison(&md, "enc.blk.0.attn_rel_b.weight", far_pos * c->n_head, c->n_head, NAN);
	model_poison(&md, "enc.blk.0.attn_rel_b.weight", far_neg * c->n_head, c->n_head, NAN);
	model_finish(&md);
	/* interleaved: even requests long (poisoned), odd ones short (healthy) */
	for (int i = 0; i < N; i++)
	{
		Kind		kind = (Kind) ((i / 2) % N_KINDS);
		int			len = i % 2 == 0 ? LONG : 3 + i % (SHORT - 2);

		reqs[i] = make_req(md.m, kind, len, i);
		alone[i] = make_req(healthy.m, kind, len, i);
		if (i % 2 == 1)
			assert_int_equal(mms_gen_run(healthy.m, NULL, 1, &alone[i], &err), MMS_OK);
	}
	st = run_batch(md.m, reqs, N);
	assert_int_equal(st.failed, N / 2);
	assert_int_equal(st.finished, N / 2);
	assert_true(st.rows > st.steps);	/* steps were shared */
	for (int i = 0; i < N; i++)
	{
		if (i % 2 == 0)
			assert_numeric_failure(reqs[i], "NaN", 1);
		else
			assert_same_result(reqs[i], alone[i], "short request beside poisoned ones");
		mms_gen_request_free(reqs[i]);
		mms_gen_request_free(alone[i]);
	}
	model_free(&md);
}

/* Runs one request alone on the healthy model and returns it finished. */
static MmsGenRequest *
run_opts(const int32_t *ids, int n, const MmsGenOptions *o)
{
	MmsGenRequest *r;
	MmsError	err;

	if (mms_gen_request_create(healthy.m, ids, n, o, &r, &err) != MMS_OK)
		fail_msg("request: %s", err.msg);
	assert_int_equal(mms_gen_run(healthy.m, NULL, 1, &r, &err), MMS_OK);
	assert_valid_result(r, mms_t5_config(healthy.m)->vocab);
	return r;
}

/*
 * A temperature that overflows x / T (a denormal one, or 1e-30 against a
 * repetition penalty's huge logits) samples the argmax: the same ids as
 * greedy, whatever the seed, top_k and top_p.
 */
static void
test_tiny_temperature_is_greedy(void **state)
{
	static const float temps[] = {1e-30f, 1e-40f, FLT_TRUE_MIN};
	static const float reps[] = {1.0f, 1.3f, 1e30f, 1e-30f};
	static const int32_t top_ks[] = {0, 50, INT32_MAX};
	static const float top_ps[] = {1.0f, 0.9f, FLT_TRUE_MIN};
	int32_t		ids[16];

	for (int k = 0; k < 4; k++)
	{
		int			n = 4 + 4 * k;

		make_input(ids, n, k);
		for (size_t ri = 0; ri < sizeof(reps) / sizeof(reps[0]); ri++)
		{
			MmsGenOptions o;
			MmsGenRequest *greedy;

			mms_gen_options_default(&o);
			o.max_new_tokens = 12;
			o.min_new_tokens = 2;
			o.repetition_penalty = reps[ri];
			greedy = run_opts(ids, n, &o);
			for (size_t ti = 0; ti < sizeof(temps) / sizeof(temps[0]); ti++)
			{
				MmsGenRequest *r;
				char		what[128];

				o.do_sample = 1;
				o.temperature = temps[ti];
				o.top_k = top_ks[(ti + ri + k) % 3];
				o.top_p = top_ps[(ti + k) % 3];
				o.seed = (uint64_t) (k * 100 + ti);
				r = run_opts(ids, n, &o);
				snprintf(what, sizeof(what), "temperature %g, repetition_penalty %g, top_k %d, top_p %g",
						 o.temperature, o.repetition_penalty, o.top_k, o.top_p);
				assert_same_result(r, greedy, what);
				mms_gen_request_free(r);
			}
			mms_gen_request_free(greedy);
		}
	}
}

/*
 * Penalties at the ends of their accepted ranges, with every decoding kind:
 * finite log-probabilities and no NaN score. A repetition penalty near 0
 * turns repeated positive logits into +inf, which sampling must treat as
 * the only candidates rather than meet inf - inf.
 */
static void
test_extreme_penalties(void **state)
{
	static const float reps[] = {1e30f, 1e-30f, FLT_MAX, FLT_TRUE_MIN};
	static const float lps[] = {1e30f, -1e30f, FLT_MAX, -FLT_MAX};
	static const float temps[] = {1.0f, 0.5f, 1e-40f, 100.0f};
	int32_t		ids[12];

	make_input(ids, 12, 3);
	for (size_t ri = 0; ri < sizeof(reps) / sizeof(reps[0]); ri++)
	{
		MmsGenOptions o;
		MmsGenRequest *r;

		mms_gen_options_default(&o);
		o.max_new_tokens = 16;
		o.repetition_penalty = reps[ri];
		r = run_opts(ids, 12, &o);
		mms_gen_request_free(r);
		for (size_t ti = 0; ti < sizeof(temps) / sizeof(temps[0]); ti++)
		{
			o.do_sample = 1;
			o.temperature = temps[ti];
			o.top_k = ti % 2 ? 0 : 5;
			o.top_p = ti % 2 ? 0.5f : 1.0f;
			o.seed = ti;
			r = run_opts(ids, 12, &o);
			mms_gen_request_free(r);
		}
		mms_gen_options_default(&o);
		o.max_new_tokens = 16;
		o.repetition_penalty = reps[ri];
		o.num_beams = 4;
		for (size_t li = 0; li < sizeof(lps) / sizeof(lps[0]); li++)
		{
			o.length_penalty = lps[li];
			o.early_stopping = (MmsEarlyStopping) (li % 3);
			r = run_opts(ids, 12, &o);
			mms_gen_request_free(r);
		}
	}
}

/*
 * A denormal repetition penalty divides every positive logit of a repeated
 * token to +inf: those tokens are then the only candidates, equally likely.
 * On this fixture one always exists, so after the first token every draw
 * repeats the decoder start (0) or an earlier token; x / T and the softmax
 * used to meet inf - inf there and drew the vocabulary's last id instead.
 */
static void
test_overflowing_penalty_samples_repeats(void **state)
{
	int32_t		ids[12];

	for (int k = 0; k < 4; k++)
		for (uint64_t seed = 1; seed <= 2; seed++)
		{
			MmsGenOptions o;
			MmsGenRequest *r;
			const MmsGenResult *res;

			make_input(ids, 12, k);
			mms_gen_options_default(&o);
			o.do_sample = 1;
			o.top_k = 0;
			o.seed = seed;
			o.max_new_tokens = 12;
			o.repetition_penalty = FLT_TRUE_MIN;
			r = run_opts(ids, 12, &o);
			res = mms_gen_request_result(r);
			for (int i = 1; i < res->n_ids; i++)
			{
				int			seen = res->ids[i] == 0;

				for (int j = 0; j < i && !seen; j++)
					seen = res->ids[j] == res->ids[i];
				if (!seen)
					fail_msg("input %d seed %d: token %d at %d is not a repeat", k, (int) seed,
							 res->ids[i], i);
			}
			mms_gen_request_free(r);
		}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_status_name),
		cmocka_unit_test(test_nan_decoder_weights),
		cmocka_unit_test(test_nan_attention_weights),
		cmocka_unit_test(test_nan_through_relu),
		cmocka_unit_test(test_inf_logit),
		cmocka_unit_test(test_failure_is_per_request),
		cmocka_unit_test(test_tiny_temperature_is_greedy),
		cmocka_unit_test(test_extreme_penalties),
		cmocka_unit_test(test_overflowing_penalty_samples_repeats),
	};

	return cmocka_run_group_tests_name("numeric", tests, setup, teardown);
}
