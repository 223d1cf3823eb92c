/*
 * test_t5.c — the T5 forward pass and generation against transformers
 * (goldens from tools/make_fixtures.py): encoder output and first-step logits
 * within 1e-4, identical greedy and beam ids, equal beam and target scores;
 * plus batching invariance and same-seed sampling reproducibility.
 */
#include "test_util.h"

#include <glob.h>
#include <math.h>

#include "generate.h"
#include "scheduler.h"
#include "golden.h"
#include "gguf.h"
#include "t5.h"
#include "t5_meta.h"

#define TOL 1e-4

typedef struct Loaded
{
	uint8_t    *buf;
	size_t		size;
	MmsGguf		g;
	MmsT5	   *m;
	MmsT5Work  *w;
} Loaded;

static void
load_model(const char *path, Loaded *l)
{
	MmsError	err;

	l->buf = mms_test_read_file(path, &l->size);
	if (mms_gguf_parse(l->buf, l->size, &l->g, &err) != MMS_OK)
		fail_msg("%s: %s", path, err.msg);
	if (mms_t5_validate(&l->g, NULL, &err) != MMS_OK)
		fail_msg("%s: validate: %s", path, err.msg);
	if (mms_t5_load(&l->g, &l->m, &err) != MMS_OK)
		fail_msg("%s: load: %s", path, err.msg);
	l->w = mms_t5_work_create();
}

static void
unload_model(Loaded *l)
{
	mms_t5_work_free(l->w);
	mms_t5_free(l->m);
	mms_gguf_free(&l->g);
	free(l->buf);
}


/* Runs one request alone and returns it finished. */
static MmsGenRequest *
run_alone(Loaded *l, const GoldenCase *c, const GoldenGen *r)
{
	MmsGenRequest *req = golden_request(l->m, c, r);
	MmsError	err;

	if (mms_gen_run(l->m, l->w, 1, &req, &err) != MMS_OK)
		fail_msg("run: %s", err.msg);
	return req;
}

static void
check_fixture(const char *golden_path)
{
	char		model_path[512];
	Golden	   *g = calloc(1, sizeof(Golden));
	Loaded		l;
	MmsError	err;
	int			quant;

	assert_non_null(g);
	assert_int_equal(golden_load(golden_path, g), 0);
	snprintf(model_path, sizeof(model_path), "%.*s.gguf", (int) (strlen(golden_path) - 7), golden_path);
	load_model(model_path, &l);
	assert_true(g->n_cases > 0);
	quant = mms_test_quantized_type(g->type);

	for (int k = 0; k < g->n_cases; k++)
	{
		GoldenCase *c = &g->cases[k];
		const MmsT5Config *cfg = mms_t5_config(l.m);
		float	   *enc = malloc((size_t) c->n_input * (size_t) cfg->d_model * sizeof(float));
		float	   *logits = malloc((size_t) cfg->vocab * sizeof(float));
		const int32_t *ids = c->input;
		int32_t		len = c->n_input;
		MmsT5Cross *cross;
		MmsT5State	st,
				   *stp = &st;
		int32_t		start = cfg->decoder_start_id;

		/* encoder output */
		assert_int_equal(c->enc_rows, c->n_input);
		assert_int_equal(c->enc_cols, cfg->d_model);
		if (mms_t5_encode(l.m, l.w, 1, &ids, &len, enc, &err) != MMS_OK)
			fail_msg("encode: %s", err.msg);
		mms_test_check_close("encoder output", g->name, k, enc, c->enc, c->n_input * (int64_t) cfg->d_model,
							 quant, TOL);

		/* first decoder step */
		assert_int_equal(mms_t5_cross_create(l.m, l.w, 1, enc, &len, &cross, &err), MMS_OK);
		assert_int_equal(mms_t5_state_init(l.m, &st, cross, 4, &err), MMS_OK);
		mms_t5_cross_release(cross);
		assert_int_equal(c->n_logits, cfg->vocab);
		if (mms_t5_decode_step(l.m, l.w, 1, &stp, &start, logits, &err) != MMS_OK)
			fail_msg("decode: %s", err.msg);
		mms_test_check_close("first-step logits", g->name, k, logits, c->logits, cfg->vocab, quant, TOL);
		mms_t5_state_free(&st);
		free(enc);
		free(logits);

		/*
		 * int8 activations move near-ties, and SIMD paths sum in different
		 * orders: a quantized model's ids are not transformers' (its quality
		 * is held by the demo's held-out exact match, test/pg/t_quantized.sh).
		 */
		if (quant)
			continue;
		for (int i = 0; i < c->n_greedy; i++)
		{
			MmsGenRequest *req = run_alone(&l, c, &c->greedy[i]);

			golden_check_ids("greedy", g->name, k, &c->greedy[i], mms_gen_request_result(req));
			mms_gen_request_free(req);
		}
		for (int i = 0; i < c->n_beam; i++)
		{
			MmsGenRequest *req = run_alone(&l, c, &c->beam[i]);
			const MmsGenResult *res = mms_gen_request_result(req);

			golden_check_ids("beam", g->name, k, &c->beam[i], res);
			if (fabs(res->score - c->beam[i].score) > TOL * fmax(1.0, fabs(c->beam[i].score)))
				fail_msg("%s case %d beam %d: score %.9g, transformers %.9g", g->name, k, i,
						 res->score, c->beam[i].score);
			mms_gen_request_free(req);
		}
		if (c->n_target > 0)
		{
			MmsGenRequest *req;
			const MmsGenResult *res;

			assert_int_equal(mms_gen_score_request_create(l.m, c->input, c->n_input, c->target,
														  c->n_target, &req, &err), MMS_OK);
			assert_int_equal(mms_gen_run(l.m, l.w, 1, &req, &err), MMS_OK);
			res = mms_gen_request_result(req);
			assert_non_null(res);
			if (fabs(res->logprob - c->target_logprob) > TOL * fmax(1.0, fabs(c->target_logprob)))
				fail_msg("%s case %d: score %.9g, transformers %.9g", g->name, k, res->logprob,
						 c->target_logprob);
			mms_gen_request_free(req);
		}
	}
	unload_model(&l);
	golden_free(g);
	free(g);
}

static void
test_goldens(void **state)
{
	glob_t		gl;
	int			n = 0;

	if (glob(MMS_FIXTURE_DIR "*.golden", 0, NULL, &gl) != 0)
		fail_msg("no golden files in " MMS_FIXTURE_DIR);
	for (size_t i = 0; i < gl.gl_pathc; i++)
	{
		print_message("golden %s\n", gl.gl_pathv[i]);
		check_fixture(gl.gl_pathv[i]);
		n++;
	}
	globfree(&gl);
	assert_true(n >= 8);
}

/*
 * Every golden request of a fixture at once, in one batch: transformers' ids
 * (f32), or for int8 compute exactly the ids each request gets alone.
 */
static void
check_batch_invariance(const char *name)
{
	Golden	   *g = calloc(1, sizeof(Golden));
	Loaded		l;
	MmsGenRequest *reqs[256];
	const GoldenGen *want[256];
	int			wcase[256];
	int			n = 0;
	MmsError	err;
	char		path[256];
	int			quant;

	snprintf(path, sizeof(path), MMS_FIXTURE_DIR "%s.golden", name);
	assert_int_equal(golden_load(path, g), 0);
	snprintf(path, sizeof(path), MMS_FIXTURE_DIR "%s.gguf", name);
	load_model(path, &l);
	quant = mms_test_quantized_type(g->type);
	for (int k = 0; k < g->n_cases; k++)
	{
		for (int i = 0; i < g->cases[k].n_greedy; i++, n++)
		{
			want[n] = &g->cases[k].greedy[i];
			wcase[n] = k;
			reqs[n] = golden_request(l.m, &g->cases[k], want[n]);
		}
		for (int i = 0; i < g->cases[k].n_beam; i++, n++)
		{
			want[n] = &g->cases[k].beam[i];
			wcase[n] = k;
			reqs[n] = golden_request(l.m, &g->cases[k], want[n]);
		}
	}
	assert_true(n > 8);
	assert_int_equal(mms_gen_run(l.m, l.w, n, reqs, &err), MMS_OK);
	for (int i = 0; i < n; i++)
	{
		const MmsGenResult *got = mms_gen_request_result(reqs[i]);

		if (quant)
		{
			MmsGenRequest *alone = run_alone(&l, &g->cases[wcase[i]], want[i]);
			const MmsGenResult *ra = mms_gen_request_result(alone);

			if (ra->n_ids != got->n_ids || memcmp(ra->ids, got->ids, (size_t) ra->n_ids * sizeof(int32_t)) != 0)
				fail_msg("%s case %d request %d: ids in a batch of %d differ from alone", name, wcase[i], i, n);
			mms_gen_request_free(alone);
		}
		else
			golden_check_ids("batched", g->name, wcase[i], want[i], got);
		mms_gen_request_free(reqs[i]);
	}
	unload_model(&l);
	golden_free(g);
	free(g);
}

static void
test_batch_invariance(void **state)
{
	check_batch_invariance("flan_gated");
	check_batch_invariance("flan_gated_q8_0");
	check_batch_invariance("flan_gated_q4_0");
}

static MmsGenRequest *
sample_request(Loaded *l, const int32_t *ids, int n, uint64_t seed)
{
	MmsGenOptions o;
	MmsGenRequest *req;
	MmsError	err;

	mms_gen_options_default(&o);
	o.do_sample = 1;
	o.temperature = 1.5f;
	o.top_k = 40;
	o.top_p = 0.95f;
	o.seed = seed;
	o.max_new_tokens = 24;
	assert_int_equal(mms_gen_request_create(l->m, ids, n, &o, &req, &err), MMS_OK);
	return req;
}

static void
check_sampling_reproducible(const char *path)
{
	Loaded		l;
	const int32_t ids[] = {17, 42, 99, 5, 1};
	MmsGenRequest *a,
			   *b,
			   *batch[4];
	MmsError	err;
	int			differ = 0;

	load_model(path, &l);
	a = sample_request(&l, ids, 5, 1234);
	assert_int_equal(mms_gen_run(l.m, l.w, 1, &a, &err), MMS_OK);
	/* same seed in a batch with other requests: identical draws */
	batch[0] = sample_request(&l, ids, 3, 7);
	batch[1] = sample_request(&l, ids, 5, 1234);
	batch[2] = sample_request(&l, ids + 1, 4, 1234);
	batch[3] = sample_request(&l, ids, 5, 99);
	assert_int_equal(mms_gen_run(l.m, l.w, 4, batch, &err), MMS_OK);
	{
		const MmsGenResult *ra = mms_gen_request_result(a);
		const MmsGenResult *rb = mms_gen_request_result(batch[1]);

		assert_non_null(ra);
		assert_non_null(rb);
		assert_int_equal(ra->n_ids, rb->n_ids);
		assert_memory_equal(ra->ids, rb->ids, (size_t) ra->n_ids * sizeof(int32_t));
	}
	/* different seeds give different samples (over several seeds, at least once) */
	for (uint64_t s = 1; s <= 6; s++)
	{
		const MmsGenResult *ra = mms_gen_request_result(a);
		const MmsGenResult *rc;

		b = sample_request(&l, ids, 5, s);
		assert_int_equal(mms_gen_run(l.m, l.w, 1, &b, &err), MMS_OK);
		rc = mms_gen_request_result(b);
		if (rc->n_ids != ra->n_ids || memcmp(rc->ids, ra->ids, (size_t) ra->n_ids * sizeof(int32_t)) != 0)
			differ++;
		mms_gen_request_free(b);
	}
	assert_true(differ > 0);
	mms_gen_request_free(a);
	for (int i = 0; i < 4; i++)
		mms_gen_request_free(batch[i]);
	unload_model(&l);
}

static void
test_sampling_reproducible(void **state)
{
	check_sampling_reproducible(MMS_FIXTURE_DIR "flan_gated.gguf");
	check_sampling_reproducible(MMS_FIXTURE_DIR "flan_gated_q8_0.gguf");
}

/* A file with one tensor renamed is refused with a message naming the tensor. */
static void
test_missing_tensor(void **state)
{
	size_t		size;
	uint8_t    *buf = mms_test_read_file(MMS_FIXTURE_DIR "flan_gated.gguf", &size);
	const char *needle = "dec.blk.1.cross_attn_k.weight";
	MmsGguf		g;
	MmsError	err;
	MmsT5	   *m;
	uint8_t    *p = memmem(buf, size, needle, strlen(needle));

	assert_non_null(p);
	memcpy(p, "dec.blk.1.cross_attn_x.weight", strlen(needle));
	assert_int_equal(mms_gguf_parse(buf, size, &g, &err), MMS_OK);
	assert_int_equal(mms_t5_validate(&g, NULL, &err), MMS_ERR_MODEL);
	assert_non_null(strstr(err.msg, "missing tensor \"dec.blk.1.cross_attn_k.weight\""));
	assert_int_equal(mms_t5_load(&g, &m, &err), MMS_ERR_MODEL);
	assert_null(m);
	mms_gguf_free(&g);
	free(buf);
}

/* Bad options and ids are refused with messages naming them. */
static void
test_bad_requests(void **state)
{
	Loaded		l;
	MmsGenOptions o;
	MmsGenRequest *req = NULL;
	MmsError	err;
	const int32_t bad_ids[] = {5, 1000000};

	load_model(MMS_FIXTURE_DIR "flan_gated.gguf", &l);
	mms_gen_options_default(&o);
	o.max_new_tokens = 0;
	assert_int_equal(mms_gen_request_create(l.m, bad_ids, 1, &o, &req, &err), MMS_ERR_ARG);
	assert_non_null(strstr(err.msg, "max_new_tokens"));
	mms_gen_options_default(&o);
	o.top_p = 1.5f;
	assert_int_equal(mms_gen_request_create(l.m, bad_ids, 1, &o, &req, &err), MMS_ERR_ARG);
	assert_non_null(strstr(err.msg, "top_p"));
	mms_gen_options_default(&o);
	o.do_sample = 1;
	o.num_beams = 3;
	assert_int_equal(mms_gen_request_create(l.m, bad_ids, 1, &o, &req, &err), MMS_ERR_ARG);
	mms_gen_options_default(&o);
	assert_int_equal(mms_gen_request_create(l.m, bad_ids, 2, &o, &req, &err), MMS_ERR_ARG);
	assert_non_null(strstr(err.msg, "outside the vocabulary"));
	assert_int_equal(mms_gen_request_create(l.m, bad_ids, 0, &o, &req, &err), MMS_ERR_ARG);
	assert_null(req);
	unload_model(&l);
}

/*
 * Weights in a caller's arena (how workers share one copy): one process fills
 * it, another only points into it; both give the golden logits.
 */
static void
test_shared_arena(void **state)
{
	size_t		size,
				n_floats;
	uint8_t    *buf = mms_test_read_file(MMS_FIXTURE_DIR "flan_gated_f16.gguf", &size);
	Golden	   *gold = calloc(1, sizeof(Golden));
	MmsGguf		g;
	MmsError	err;
	MmsT5	   *a,
			   *b;
	float	   *arena;

	assert_int_equal(golden_load(MMS_FIXTURE_DIR "flan_gated_f16.golden", gold), 0);
	assert_int_equal(mms_gguf_parse(buf, size, &g, &err), MMS_OK);
	assert_int_equal(mms_t5_arena_floats(&g, &n_floats, &err), MMS_OK);
	assert_true(n_floats > 0);	/* f16 tensors need converting */
	arena = malloc(n_floats * sizeof(float));
	assert_int_equal(mms_t5_load_with_arena(&g, arena, n_floats - 1, 1, &a, &err), MMS_ERR_ARG);
	assert_int_equal(mms_t5_load_with_arena(&g, arena, n_floats, 1, &a, &err), MMS_OK);
	assert_int_equal(mms_t5_load_with_arena(&g, arena, n_floats, 0, &b, &err), MMS_OK);
	assert_int_equal(mms_t5_owned_bytes(a), 0);
	for (int which = 0; which < 2; which++)
	{
		MmsT5	   *m = which ? b : a;
		MmsT5Work  *w = mms_t5_work_create();
		GoldenCase *c = &gold->cases[1];
		const int32_t *ids = c->input;
		int32_t		len = c->n_input;
		const MmsT5Config *cfg = mms_t5_config(m);
		float	   *enc = malloc((size_t) len * (size_t) cfg->d_model * sizeof(float));
		float	   *logits = malloc((size_t) cfg->vocab * sizeof(float));
		MmsT5Cross *cross;
		MmsT5State	st,
				   *stp = &st;
		int32_t		start = 0;

		assert_int_equal(mms_t5_encode(m, w, 1, &ids, &len, enc, &err), MMS_OK);
		assert_int_equal(mms_t5_cross_create(m, w, 1, enc, &len, &cross, &err), MMS_OK);
		assert_int_equal(mms_t5_state_init(m, &st, cross, 2, &err), MMS_OK);
		mms_t5_cross_release(cross);
		assert_int_equal(mms_t5_decode_step(m, w, 1, &stp, &start, logits, &err), MMS_OK);
		assert_true(mms_test_max_abs_diff(logits, c->logits, (int) cfg->vocab) < TOL);
		mms_t5_state_free(&st);
		free(enc);
		free(logits);
		mms_t5_work_free(w);
	}
	mms_t5_free(a);
	mms_t5_free(b);
	free(arena);
	mms_gguf_free(&g);
	free(buf);
	golden_free(gold);
	free(gold);
}

/* Metadata from a prefix of the file: tokenizer and validation work, loading weights refuses. */
static void
test_header_prefix(void **state)
{
	size_t		size;
	uint8_t    *buf = mms_test_read_file(MMS_FIXTURE_DIR "flan_gated.gguf", &size);
	MmsGguf		full,
				pre;
	MmsError	err;
	MmsT5	   *m;
	MmsT5Info	info;
	size_t		hdr;

	assert_int_equal(mms_gguf_parse(buf, size, &full, &err), MMS_OK);
	hdr = (size_t) full.data_offset;
	assert_int_equal(mms_gguf_parse_prefix(buf, 100, size, &pre, &err), MMS_ERR_LIMIT);
	assert_int_equal(mms_gguf_parse_prefix(buf, hdr, size, &pre, &err), MMS_OK);
	assert_int_equal(pre.n_tensors, full.n_tensors);
	for (uint64_t i = 0; i < pre.n_tensors; i++)
		assert_null(pre.tensors[i].data);
	assert_int_equal(mms_t5_validate(&pre, &info, &err), MMS_OK);
	{
		MmsT5Info	finfo;

		assert_int_equal(mms_t5_validate(&full, &finfo, &err), MMS_OK);
		assert_memory_equal(&info.cfg, &finfo.cfg, sizeof(MmsT5Config));
		assert_int_equal(info.n_params, finfo.n_params);
	}
	assert_int_equal(mms_t5_load(&pre, &m, &err), MMS_ERR_ARG);
	assert_non_null(strstr(err.msg, "header-only"));
	/* a file whose tensors claim more bytes than the file has is still refused */
	mms_gguf_free(&pre);
	assert_int_equal(mms_gguf_parse_prefix(buf, hdr, hdr + 10, &pre, &err), MMS_ERR_FORMAT);
	mms_gguf_free(&full);
	free(buf);
}

/* An encoder-only file (arch t5encoder) encodes like its source model and refuses to generate. */
static void
test_encoder_only(void **state)
{
	Golden	   *gold = calloc(1, sizeof(Golden));
	size_t		size;
	uint8_t    *buf = mms_test_read_file(MMS_FIXTURE_DIR "t5encoder.gguf", &size);
	MmsGguf		g;
	MmsError	err;
	MmsT5Info	info;
	MmsT5	   *m;
	MmsT5Work  *w = mms_t5_work_create();
	MmsGenOptions o;
	MmsGenRequest *req = NULL;

	assert_int_equal(golden_load(MMS_FIXTURE_DIR "flan_gated.golden", gold), 0);
	assert_int_equal(mms_gguf_parse(buf, size, &g, &err), MMS_OK);
	assert_int_equal(mms_t5_validate(&g, &info, &err), MMS_OK);
	assert_string_equal(info.arch, "t5encoder");
	assert_int_equal(info.cfg.n_dec_layer, 0);
	assert_int_equal(mms_t5_load(&g, &m, &err), MMS_OK);
	for (int k = 0; k < gold->n_cases; k++)
	{
		GoldenCase *c = &gold->cases[k];
		const int32_t *ids = c->input;
		int32_t		len = c->n_input;
		float	   *enc = malloc((size_t) len * 32 * sizeof(float));

		assert_int_equal(mms_t5_encode(m, w, 1, &ids, &len, enc, &err), MMS_OK);
		assert_true(mms_test_max_abs_diff(enc, c->enc, len * 32) < TOL);
		free(enc);
	}
	mms_gen_options_default(&o);
	assert_int_equal(mms_gen_request_create(m, gold->cases[0].input, gold->cases[0].n_input, &o, &req, &err),
					 MMS_ERR_UNSUPPORTED);
	assert_non_null(strstr(err.msg, "encoder-only"));
	mms_t5_work_free(w);
	mms_t5_free(m);
	mms_gguf_free(&g);
	free(buf);
	golden_free(gold);
	free(gold);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_goldens),
		cmocka_unit_test(test_batch_invariance),
		cmocka_unit_test(test_sampling_reproducible),
		cmocka_unit_test(test_missing_tensor),
		cmocka_unit_test(test_bad_requests),
		cmocka_unit_test(test_shared_arena),
		cmocka_unit_test(test_header_prefix),
		cmocka_unit_test(test_encoder_only),
	};

	return cmocka_run_group_tests_name("t5", tests, NULL, NULL);
}
