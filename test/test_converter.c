/*
 * test_converter.c — files made by llama.cpp's own convert_hf_to_gguf.py from
 * transformers checkpoints (tools/make_converter_fixtures.py, in
 * test/fixtures/converter/): t5 v1.0 (tied, ReLU; also with lm_head.weight
 * stored), flan / v1.1 (gated GELU, untied; F32, F16, BF16, Q8_0), mT5
 * (n_head·d_kv ≠ d_model), UMT5 (relative bias in every block) and
 * encoder-only. Each must read as the converter wrote it and give what
 * transformers gives: encoder output and first-step logits within 1e-4,
 * identical greedy and beam ids (alone and batched), equal scores.
 */
#include "test_util.h"

#include <math.h>

#include "generate.h"
#include "golden.h"
#include "gguf.h"
#include "scheduler.h"
#include "t5.h"
#include "t5_meta.h"

#define TOL 1e-4
#define CONV_DIR MMS_FIXTURE_DIR "converter/"

/* What a fixture is, as the converter should have written it. */
typedef struct ConvFixture
{
	const char *name;			/* NAME.gguf */
	const char *golden;			/* GOLDEN.golden (a twin may share one) */
	const char *arch;
	int64_t		n_enc,
				n_dec,
				n_head,
				d_kv,
				vocab;
	int			gated;
	int			tied;			/* the engine must scale the head by d_model^-0.5 */
	int			has_output;		/* output.weight in the file */
	int			rel_b_every;	/* attn_rel_b in every block, not block 0 only */
	MmsTensorType matrix_type;	/* every 2-D weight but attn_rel_b */
	MmsTensorType rel_b_type;
} ConvFixture;

static const ConvFixture fixtures[] = {
	{"cvt_t5", "cvt_t5", "t5", 2, 2, 4, 8, 1000, 0, 1, 0, 0, MMS_T_F32, MMS_T_F32},
	{"cvt_t5_head", "cvt_t5", "t5", 2, 2, 4, 8, 1000, 0, 1, 1, 0, MMS_T_F32, MMS_T_F32},
	{"cvt_flan", "cvt_flan", "t5", 2, 2, 4, 8, 1008, 1, 0, 1, 0, MMS_T_F32, MMS_T_F32},
	{"cvt_flan_f16", "cvt_flan_f16", "t5", 2, 2, 4, 8, 1008, 1, 0, 1, 0, MMS_T_F16, MMS_T_F16},
	{"cvt_flan_bf16", "cvt_flan_bf16", "t5", 2, 2, 4, 8, 1008, 1, 0, 1, 0, MMS_T_BF16, MMS_T_BF16},
	/* n_head = 4 is no multiple of Q8_0's block of 32: the converter falls back to F16 */
	{"cvt_flan_q8_0", "cvt_flan_q8_0", "t5", 2, 2, 4, 8, 1008, 1, 0, 1, 0, MMS_T_Q8_0, MMS_T_F16},
	{"cvt_mt5", "cvt_mt5", "t5", 3, 2, 6, 8, 1004, 1, 0, 1, 0, MMS_T_F32, MMS_T_F32},
	{"cvt_umt5", "cvt_umt5", "t5", 2, 2, 4, 8, 1000, 1, 0, 1, 1, MMS_T_F32, MMS_T_F32},
	{"cvt_t5encoder", "cvt_t5encoder", "t5encoder", 2, 0, 4, 8, 1000, 1, 0, 0, 0, MMS_T_F32, MMS_T_F32},
};

#define N_FIXTURES ((int) (sizeof(fixtures) / sizeof(fixtures[0])))

typedef struct Loaded
{
	uint8_t    *buf;
	size_t		size;
	MmsGguf		g;
	MmsT5Info	info;
	MmsT5	   *m;
	MmsT5Work  *w;
} Loaded;

static void
fixture_path(char *out, size_t len, const char *name, const char *ext)
{
	snprintf(out, len, CONV_DIR "%s.%s", name, ext);
}

/* Loads buf (taken over) as a model. */
static void
load_buffer(const char *what, uint8_t *buf, size_t size, Loaded *l)
{
	MmsError	err;

	l->buf = buf;
	l->size = size;
	if (mms_gguf_parse(l->buf, l->size, &l->g, &err) != MMS_OK)
		fail_msg("%s: %s", what, err.msg);
	if (mms_t5_validate(&l->g, &l->info, &err) != MMS_OK)
		fail_msg("%s: validate: %s", what, err.msg);
	if (mms_t5_load(&l->g, &l->m, &err) != MMS_OK)
		fail_msg("%s: load: %s", what, err.msg);
	l->w = mms_t5_work_create();
}

static void
load_fixture(const char *name, Loaded *l)
{
	char		path[512];
	size_t		size;
	uint8_t    *buf;

	fixture_path(path, sizeof(path), name, "gguf");
	buf = mms_test_read_file(path, &size);
	load_buffer(path, buf, size, l);
}

static void
unload(Loaded *l)
{
	mms_t5_work_free(l->w);
	mms_t5_free(l->m);
	mms_gguf_free(&l->g);
	free(l->buf);
}

static Golden *
load_golden(const char *name)
{
	char		path[512];
	Golden	   *g = calloc(1, sizeof(Golden));

	assert_non_null(g);
	fixture_path(path, sizeof(path), name, "golden");
	if (golden_load(path, g) != 0)
		fail_msg("cannot read %s", path);
	assert_true(g->n_cases > 0);
	return g;
}

static void
free_golden(Golden *g)
{
	golden_free(g);
	free(g);
}

/* ---------------------------------------------------------------------------
 * What the converter wrote
 * ------------------------------------------------------------------------- */

static void
expect_type(const ConvFixture *f, const MmsGguf *g, const char *name, MmsTensorType want)
{
	const MmsGgufTensor *t = mms_gguf_find_tensor(g, name);

	if (t == NULL)
		fail_msg("%s: no tensor %s", f->name, name);
	if (t->type != want)
		fail_msg("%s: %s has type %s, expected %s", f->name, name, mms_tensor_type_name(t->type),
				 mms_tensor_type_name(want));
}

static void
check_layout(const ConvFixture *f, const Loaded *l)
{
	const MmsT5Config *c = &l->info.cfg;
	char		name[64];

	assert_string_equal(l->info.arch, f->arch);
	assert_int_equal(c->encoder_only, strcmp(f->arch, "t5encoder") == 0);
	assert_int_equal(c->d_model, 32);
	assert_int_equal(c->n_enc_layer, f->n_enc);
	assert_int_equal(c->n_dec_layer, f->n_dec);
	assert_int_equal(c->n_head, f->n_head);
	assert_int_equal(c->d_kv, f->d_kv);
	assert_int_equal(c->inner, f->n_head * f->d_kv);
	assert_int_equal(c->vocab, f->vocab);
	assert_int_equal(c->gated, f->gated);
	assert_int_equal(c->n_buckets, 32);
	assert_int_equal(c->decoder_start_id, 0);
	assert_int_equal(c->eos_id, 1);
	if (!c->encoder_only)
		assert_int_equal(c->tied, f->tied);
	assert_int_equal(mms_gguf_find_tensor(&l->g, "output.weight") != NULL, f->has_output);

	expect_type(f, &l->g, "token_embd.weight", f->matrix_type);
	expect_type(f, &l->g, "enc.output_norm.weight", MMS_T_F32);
	for (int part = 0; part < 2; part++)
	{
		const char *p = part ? "dec" : "enc";
		int64_t		n = part ? f->n_dec : f->n_enc;

		for (int64_t b = 0; b < n; b++)
		{
			snprintf(name, sizeof(name), "%s.blk.%d.attn_q.weight", p, (int) b);
			expect_type(f, &l->g, name, f->matrix_type);
			snprintf(name, sizeof(name), "%s.blk.%d.ffn_down.weight", p, (int) b);
			expect_type(f, &l->g, name, f->matrix_type);
			snprintf(name, sizeof(name), "%s.blk.%d.attn_norm.weight", p, (int) b);
			expect_type(f, &l->g, name, MMS_T_F32);
			snprintf(name, sizeof(name), "%s.blk.%d.attn_rel_b.weight", p, (int) b);
			if (b == 0 || f->rel_b_every)
				expect_type(f, &l->g, name, f->rel_b_type);
			else if (mms_gguf_find_tensor(&l->g, name) != NULL)
				fail_msg("%s: unexpected %s", f->name, name);
			/* T5 has no relative bias in cross-attention; HF 5.x checkpoints carry none */
			snprintf(name, sizeof(name), "%s.blk.%d.cross_attn_rel_b.weight", p, (int) b);
			assert_null(mms_gguf_find_tensor(&l->g, name));
		}
	}
	if (f->has_output)
		expect_type(f, &l->g, "output.weight", f->matrix_type);
}

/* ---------------------------------------------------------------------------
 * Against transformers
 * ------------------------------------------------------------------------- */


static void
check_score(const char *what, const char *model, int k, double got, double want)
{
	if (!(fabs(got - want) <= TOL * fmax(1.0, fabs(want))))
		fail_msg("%s %s case %d: %.9g, transformers %.9g", model, what, k, got, want);
}

/* Encoder states of case c (caller frees). */
static float *
encode_case(const char *model, const Loaded *l, const GoldenCase *c)
{
	const MmsT5Config *cfg = mms_t5_config(l->m);
	float	   *enc = malloc((size_t) c->n_input * (size_t) cfg->d_model * sizeof(float));
	const int32_t *ids = c->input;
	int32_t		len = c->n_input;
	MmsError	err;

	assert_non_null(enc);
	assert_int_equal(c->enc_rows, c->n_input);
	assert_int_equal(c->enc_cols, cfg->d_model);
	if (mms_t5_encode(l->m, l->w, 1, &ids, &len, enc, &err) != MMS_OK)
		fail_msg("%s: encode: %s", model, err.msg);
	mms_test_check_close("encoder output", model, 0, enc, c->enc, (int64_t) c->n_input * cfg->d_model,
						 mms_t5_weight_type(l->m) != MMS_T_F32, TOL);
	return enc;
}

/* Logits of the first decoder step (decoder start token) for case c (caller frees). */
static float *
first_logits(const char *model, const Loaded *l, const GoldenCase *c)
{
	const MmsT5Config *cfg = mms_t5_config(l->m);
	float	   *enc = encode_case(model, l, c);
	float	   *logits = malloc((size_t) cfg->vocab * sizeof(float));
	int32_t		len = c->n_input;
	int32_t		start = cfg->decoder_start_id;
	MmsT5Cross *cross;
	MmsT5State	st,
			   *stp = &st;
	MmsError	err;

	assert_non_null(logits);
	assert_int_equal(mms_t5_cross_create(l->m, l->w, 1, enc, &len, &cross, &err), MMS_OK);
	assert_int_equal(mms_t5_state_init(l->m, &st, cross, 4, &err), MMS_OK);
	mms_t5_cross_release(cross);
	if (mms_t5_decode_step(l->m, l->w, 1, &stp, &start, logits, &err) != MMS_OK)
		fail_msg("%s: decode: %s", model, err.msg);
	mms_t5_state_free(&st);
	free(enc);
	return logits;
}

static void
check_generation(const char *model, const Loaded *l, const Golden *g)
{
	MmsError	err;
	int			quant = mms_t5_weight_type(l->m) != MMS_T_F32;

	for (int k = 0; k < g->n_cases; k++)
	{
		const GoldenCase *c = &g->cases[k];
		float	   *logits = first_logits(model, l, c);

		assert_int_equal(c->n_logits, mms_t5_config(l->m)->vocab);
		mms_test_check_close("first-step logits", model, k, logits, c->logits, c->n_logits, quant, TOL);
		free(logits);
		/* int8 compute: ids and scores are not transformers' (see test_t5.c) */
		if (quant)
			continue;

		for (int i = 0; i < c->n_greedy + c->n_beam; i++)
		{
			const GoldenGen *r = i < c->n_greedy ? &c->greedy[i] : &c->beam[i - c->n_greedy];
			MmsGenRequest *req = golden_request(l->m, c, r);
			const MmsGenResult *res;

			if (mms_gen_run(l->m, l->w, 1, &req, &err) != MMS_OK)
				fail_msg("%s: run: %s", model, err.msg);
			res = mms_gen_request_result(req);
			golden_check_ids(r->num_beams > 1 ? "beam" : "greedy", model, k, r, res);
			if (r->num_beams > 1)
				check_score("beam score", model, k, res->score, r->score);
			mms_gen_request_free(req);
		}
		if (c->n_target > 0)
		{
			MmsGenRequest *req;
			const MmsGenResult *res;

			assert_int_equal(mms_gen_score_request_create(l->m, c->input, c->n_input, c->target,
														  c->n_target, &req, &err), MMS_OK);
			assert_int_equal(mms_gen_run(l->m, l->w, 1, &req, &err), MMS_OK);
			res = mms_gen_request_result(req);
			assert_non_null(res);
			check_score("target log-prob", model, k, res->logprob, c->target_logprob);
			mms_gen_request_free(req);
		}
	}
}

/* Every golden request of the model in one batch: the same ids as alone. */
static void
check_batched(const char *model, const Loaded *l, const Golden *g)
{
	MmsGenRequest *reqs[GOLDEN_MAX_CASES * 2 * GOLDEN_MAX_RUNS];
	const GoldenGen *want[GOLDEN_MAX_CASES * 2 * GOLDEN_MAX_RUNS];
	int			wcase[GOLDEN_MAX_CASES * 2 * GOLDEN_MAX_RUNS];
	int			n = 0;
	MmsError	err;

	/* int8 compute has no transformers ids to meet; its batch invariance: test_t5.c */
	if (mms_t5_weight_type(l->m) != MMS_T_F32)
		return;
	for (int k = 0; k < g->n_cases; k++)
	{
		const GoldenCase *c = &g->cases[k];

		for (int i = 0; i < c->n_greedy + c->n_beam; i++, n++)
		{
			want[n] = i < c->n_greedy ? &c->greedy[i] : &c->beam[i - c->n_greedy];
			wcase[n] = k;
			reqs[n] = golden_request(l->m, c, want[n]);
		}
	}
	assert_true(n > 8);
	if (mms_gen_run(l->m, l->w, n, reqs, &err) != MMS_OK)
		fail_msg("%s: batched run: %s", model, err.msg);
	for (int i = 0; i < n; i++)
	{
		golden_check_ids("batched", model, wcase[i], want[i], mms_gen_request_result(reqs[i]));
		mms_gen_request_free(reqs[i]);
	}
}

static void
check_encoder_only(const char *model, const Loaded *l, const Golden *g)
{
	MmsGenOptions o;
	MmsGenRequest *req = NULL;
	MmsError	err;

	for (int k = 0; k < g->n_cases; k++)
	{
		assert_int_equal(g->cases[k].n_logits, 0);
		free(encode_case(model, l, &g->cases[k]));
	}
	mms_gen_options_default(&o);
	assert_int_equal(mms_gen_request_create(l->m, g->cases[0].input, g->cases[0].n_input, &o, &req, &err),
					 MMS_ERR_UNSUPPORTED);
	assert_null(req);
}

static void
test_fixture(void **state)
{
	const ConvFixture *f = *state;
	Golden	   *g = load_golden(f->golden);
	Loaded		l;

	load_fixture(f->name, &l);
	check_layout(f, &l);
	if (l.info.cfg.encoder_only)
		check_encoder_only(f->name, &l, g);
	else
	{
		check_generation(f->name, &l, g);
		check_batched(f->name, &l, g);
	}
	unload(&l);
	free_golden(g);
}

/* ---------------------------------------------------------------------------
 * The tied head stored as output.weight
 * ------------------------------------------------------------------------- */

/*
 * cvt_t5_head holds cvt_t5's weights plus output.weight, a copy of the
 * embedding: the engine must recognise the tie and rescale, so both files give
 * bit-identical logits. With one bit of the copy flipped the head is a different
 * matrix: not rescaled, and far from transformers.
 */
static void
test_tied_head_rescaled(void **state)
{
	Golden	   *g = load_golden("cvt_t5");
	Loaded		twin,
				head,
				broken;
	size_t		size;
	uint8_t    *buf = mms_test_read_file(CONV_DIR "cvt_t5_head.gguf", &size);
	const MmsGgufTensor *out;

	load_fixture("cvt_t5", &twin);
	load_fixture("cvt_t5_head", &head);
	assert_null(mms_gguf_find_tensor(&twin.g, "output.weight"));
	out = mms_gguf_find_tensor(&head.g, "output.weight");
	assert_non_null(out);
	assert_true(mms_t5_config(twin.m)->tied);
	assert_true(mms_t5_config(head.m)->tied);

	buf[(size_t) (out->data - head.buf) + 4] ^= 0x01;	/* lowest mantissa bit of element 1 */
	load_buffer("cvt_t5_head (flipped bit)", buf, size, &broken);
	assert_false(mms_t5_config(broken.m)->tied);

	for (int k = 0; k < g->n_cases; k++)
	{
		float	   *a = first_logits("cvt_t5", &twin, &g->cases[k]);
		float	   *b = first_logits("cvt_t5_head", &head, &g->cases[k]);
		float	   *c = first_logits("cvt_t5_head (flipped bit)", &broken, &g->cases[k]);
		int64_t		n = mms_t5_config(twin.m)->vocab;

		assert_true(mms_test_max_abs_diff(a, b, n) == 0.0);
		assert_true(mms_test_max_abs_diff(b, g->cases[k].logits, n) <= TOL);
		assert_true(mms_test_max_abs_diff(c, g->cases[k].logits, n) > 1.0);
		free(a);
		free(b);
		free(c);
	}
	unload(&broken);
	unload(&head);
	unload(&twin);
	free_golden(g);
}

int
main(void)
{
	struct CMUnitTest tests[N_FIXTURES + 1];
	char		names[N_FIXTURES][64];

	for (int i = 0; i < N_FIXTURES; i++)
	{
		snprintf(names[i], sizeof(names[i]), "converter %s", fixtures[i].name);
		tests[i] = (struct CMUnitTest) {
			names[i], test_fixture, NULL, NULL, (void *) &fixtures[i]
		};
	}
	tests[N_FIXTURES] = (struct CMUnitTest) {
		"tied head stored as output.weight", test_tied_head_rescaled, NULL, NULL, NULL
	};
	return cmocka_run_group_tests_name("converter", tests, NULL, NULL);
}
