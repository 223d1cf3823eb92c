/*
 * test_sched.c — continuous batching: a request's result (ids, scores) is the
 * same whether it runs alone or shares decoder steps with 1, 7 or 31 others
 * of different lengths and options that join at different steps; a request
 * cancelled mid-way leaves the others unchanged; a flood beyond the memory
 * bound is refused cleanly.
 */
#include "test_util.h"

#include <math.h>

#include "generate.h"
#include "gguf.h"
#include "pool.h"
#include "scheduler.h"
#include "t5.h"

static uint8_t *buf;
static MmsGguf gg;
static MmsT5 *model;

static int
setup(void **state)
{
	size_t		size;
	MmsError	err;

	/* two engine threads: the pool and single-threaded BLAS inside it are exercised here */
	mms_set_threads(2);
	buf = mms_test_read_file(MMS_FIXTURE_DIR "flan_gated.gguf", &size);
	if (mms_gguf_parse(buf, size, &gg, &err) != MMS_OK || mms_t5_load(&gg, &model, &err) != MMS_OK)
		fail_msg("load: %s", err.msg);
	return 0;
}

static int
teardown(void **state)
{
	mms_t5_free(model);
	mms_gguf_free(&gg);
	free(buf);
	return 0;
}

/* Request k of a deterministic mix: lengths 1..40, greedy / beams / sampling / scoring. */
static MmsGenRequest *
make_req(int k)
{
	int32_t		ids[48];
	int			n = 1 + (k * 7) % 40;
	MmsGenOptions o;
	MmsGenRequest *r;
	MmsError	err;

	for (int i = 0; i < n - 1; i++)
		ids[i] = 3 + (k * 131 + i * 29) % 990;
	ids[n - 1] = 1;
	mms_gen_options_default(&o);
	o.max_new_tokens = 4 + k % 13;
	switch (k % 5)
	{
		case 0:
			break;
		case 1:
			o.num_beams = 2 + k % 3;
			o.length_penalty = (k % 2) ? 1.0f : 0.6f;
			o.early_stopping = k % 3 == 0 ? MMS_EARLY_STOP_TRUE : MMS_EARLY_STOP_FALSE;
			break;
		case 2:
			o.do_sample = 1;
			o.temperature = 0.9f;
			o.top_p = 0.9f;
			o.seed = (uint64_t) k;
			break;
		case 3:
			o.repetition_penalty = 1.2f;
			o.min_new_tokens = 2;
			break;
		case 4:
			{
				int32_t		target[4] = {5 + k, 17, 300, 1};

				if (mms_gen_score_request_create(model, ids, n, target, 4, &r, &err) != MMS_OK)
					fail_msg("score request: %s", err.msg);
				return r;
			}
	}
	if (mms_gen_request_create(model, ids, n, &o, &r, &err) != MMS_OK)
		fail_msg("request: %s", err.msg);
	return r;
}

static void
assert_same_result(const MmsGenRequest *a, const MmsGenRequest *b, int k)
{
	const MmsGenResult *x = mms_gen_request_result(a);
	const MmsGenResult *y = mms_gen_request_result(b);

	if (x == NULL || y == NULL)
		fail_msg("request %d did not finish", k);
	if (x->n_ids != y->n_ids || memcmp(x->ids, y->ids, (size_t) x->n_ids * sizeof(int32_t)) != 0)
		fail_msg("request %d: ids differ between alone and batched", k);
	/* the same rows through the same GEMM shapes need not give bit-equal floats */
	if (fabs(x->score - y->score) > 1e-4 * fmax(1.0, fabs(x->score)))
		fail_msg("request %d: score %.9g alone, %.9g batched", k, x->score, y->score);
}

/* Runs requests [0, n) through a scheduler, request i joining at step join[i]. */
static void
run_staggered(MmsGenRequest **reqs, int n, const int *join, MmsGenRequest *cancel_me, int cancel_at)
{
	MmsSched   *s;
	MmsError	err;
	int			step = 0,
				submitted = 0,
				held = 0,
				collected = 0;
	MmsSchedStats st;

	assert_int_equal(mms_sched_create(model, NULL, &s, &err), MMS_OK);
	while (submitted < n || held > 0)
	{
		for (int i = 0; i < n; i++)
			if (join[i] == step)
			{
				assert_int_equal(mms_sched_submit(s, reqs[i], &err), MMS_OK);
				submitted++;
			}
		if (cancel_me && step == cancel_at)
			mms_sched_cancel(s, cancel_me);
		assert_int_equal(mms_sched_step(s, &held, &err), MMS_OK);
		while (mms_sched_collect(s) != NULL)
			collected++;
		step++;
		assert_true(step < 10000);
	}
	assert_int_equal(collected, n);
	mms_sched_stats(s, &st);
	if (n > 1)
		assert_true(st.rows > st.steps);	/* steps were shared */
	mms_sched_free(s);
}

static void
check_batch_of(int n_others)
{
	int			n = n_others + 1;
	MmsGenRequest **alone = calloc((size_t) n, sizeof(*alone));
	MmsGenRequest **batch = calloc((size_t) n, sizeof(*batch));
	int		   *join = calloc((size_t) n, sizeof(int));
	MmsError	err;

	for (int k = 0; k < n; k++)
	{
		alone[k] = make_req(k);
		assert_int_equal(mms_gen_run(model, NULL, 1, &alone[k], &err), MMS_OK);
		batch[k] = make_req(k);
		join[k] = (k * 3) % 7;	/* join at different steps */
	}
	run_staggered(batch, n, join, NULL, 0);
	for (int k = 0; k < n; k++)
	{
		assert_same_result(alone[k], batch[k], k);
		mms_gen_request_free(alone[k]);
		mms_gen_request_free(batch[k]);
	}
	free(alone);
	free(batch);
	free(join);
}

static void
test_alone_vs_1(void **state)
{
	check_batch_of(1);
}

static void
test_alone_vs_7(void **state)
{
	check_batch_of(7);
}

static void
test_alone_vs_31(void **state)
{
	check_batch_of(31);
}

static void
test_cancel_middle(void **state)
{
	enum
	{
		N = 8
	};
	MmsGenRequest *alone[N],
			   *batch[N];
	int			join[N] = {0};
	MmsError	e;

	for (int k = 0; k < N; k++)
	{
		alone[k] = make_req(k * 5);	/* greedy ones: k*5 % 5 == 0 */
		assert_int_equal(mms_gen_run(model, NULL, 1, &alone[k], &e), MMS_OK);
		batch[k] = make_req(k * 5);
	}
	run_staggered(batch, N, join, batch[3], 2);
	assert_null(mms_gen_request_result(batch[3]));
	assert_int_equal(mms_gen_request_error(batch[3], &e), MMS_ERR_CANCELLED);
	for (int k = 0; k < N; k++)
	{
		if (k != 3)
			assert_same_result(alone[k], batch[k], k);
		mms_gen_request_free(alone[k]);
		mms_gen_request_free(batch[k]);
	}
}

static void
test_flood_refused(void **state)
{
	MmsSchedConfig cfg = {0};
	MmsSched   *s;
	MmsGenRequest *reqs[64];
	int			accepted = 0,
				refused = 0,
				held = 0;
	MmsError	err;
	size_t		one;

	reqs[0] = make_req(0);
	one = mms_gen_request_bytes(reqs[0]);
	cfg.max_bytes = one * 10;	/* room for about ten of these */
	assert_int_equal(mms_sched_create(model, &cfg, &s, &err), MMS_OK);
	for (int k = 0; k < 64; k++)
	{
		if (k > 0)
			reqs[k] = make_req(0);
		if (mms_sched_submit(s, reqs[k], &err) == MMS_OK)
			accepted++;
		else
		{
			assert_int_equal(err.code, MMS_ERR_LIMIT);
			assert_non_null(strstr(err.msg, "bytes of decoder cache"));
			assert_true(mms_gen_request_pending(reqs[k]));	/* untouched */
			refused++;
		}
	}
	assert_int_equal(accepted, 10);
	assert_int_equal(refused, 54);
	do
		assert_int_equal(mms_sched_step(s, &held, &err), MMS_OK);
	while (held > 0);
	for (int k = 0; k < accepted; k++)
		assert_non_null(mms_gen_request_result(reqs[k]));
	/* memory is given back: a refused request now fits */
	assert_int_equal(mms_sched_submit(s, reqs[accepted], &err), MMS_OK);
	do
		assert_int_equal(mms_sched_step(s, &held, &err), MMS_OK);
	while (held > 0);
	assert_non_null(mms_gen_request_result(reqs[accepted]));
	mms_sched_free(s);
	for (int k = 0; k < 64; k++)
		mms_gen_request_free(reqs[k]);
}

/* Progress: tokens so far start at 0, grow by one per decoder step, end at the result's length. */
static void
test_generated_progress(void **state)
{
	MmsSched   *s;
	MmsGenRequest *r = make_req(0);
	MmsError	err;
	int			held = 0;
	int32_t		last = 0;

	assert_int_equal(mms_gen_request_generated(r), 0);
	assert_int_equal(mms_sched_create(model, NULL, &s, &err), MMS_OK);
	assert_int_equal(mms_sched_submit(s, r, &err), MMS_OK);
	do
	{
		int32_t		now;

		assert_int_equal(mms_sched_step(s, &held, &err), MMS_OK);
		now = mms_gen_request_generated(r);
		assert_true(now == last || now == last + 1);
		last = now;
	} while (held > 0);
	assert_non_null(mms_gen_request_result(r));
	assert_true(last >= 1);
	assert_int_equal(last, mms_gen_request_result(r)->n_ids);
	mms_sched_free(s);
	mms_gen_request_free(r);
}

/*
 * Streaming: while a greedy or sampling request runs, its prefix grows by the
 * token each step chose and is always a prefix of the final result; beam
 * search and scoring have none (their output is only known at the end).
 */
static void
test_prefix_streams(void **state)
{
	for (int k = 0; k < 5; k++)
	{
		MmsSched   *s;
		MmsGenRequest *r = make_req(k);
		MmsError	err;
		int			held = 0;
		int32_t		seen[600];
		int32_t		n_seen = 0;
		const MmsGenResult *res;

		assert_int_equal(mms_sched_create(model, NULL, &s, &err), MMS_OK);
		assert_int_equal(mms_sched_submit(s, r, &err), MMS_OK);
		do
		{
			const int32_t *ids = NULL;
			int32_t		n;

			assert_int_equal(mms_sched_step(s, &held, &err), MMS_OK);
			n = mms_gen_request_prefix(r, &ids);
			if (k % 5 == 1 || k % 5 == 4)
			{
				assert_int_equal(n, 0);
				continue;
			}
			if (mms_gen_request_done(r))
				continue;		/* the prefix is the running state only */
			assert_true(n == n_seen || n == n_seen + 1);
			assert_true(n <= 600);
			for (int32_t j = 0; j < n_seen; j++)
				assert_int_equal(ids[j], seen[j]);
			memcpy(seen, ids, sizeof(int32_t) * n);
			n_seen = n;
		} while (held > 0);
		res = mms_gen_request_result(r);
		assert_non_null(res);
		if (k % 5 != 1 && k % 5 != 4)
		{
			assert_true(n_seen <= res->n_ids);
			for (int32_t j = 0; j < n_seen; j++)
				assert_int_equal(res->ids[j], seen[j]);
			assert_true(res->n_ids <= 1 || n_seen >= 1);
		}
		mms_sched_free(s);
		mms_gen_request_free(r);
	}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_alone_vs_1),
		cmocka_unit_test(test_alone_vs_7),
		cmocka_unit_test(test_alone_vs_31),
		cmocka_unit_test(test_cancel_middle),
		cmocka_unit_test(test_flood_refused),
		cmocka_unit_test(test_generated_progress),
		cmocka_unit_test(test_prefix_streams),
	};

	return cmocka_run_group_tests_name("scheduler", tests, setup, teardown);
}
