/*
 * dispatch.c — the SQL inference functions: mms_generate (one input),
 * mms_generate_batch (an array), mms_score and mms_score_batch. Each
 * resolves the model and checks the grant as the caller, tokenizes,
 * validates the options, hands the requests to the asynchronous API
 * (request.c) and detokenizes what comes back. No BLAS here: the workers
 * run the model (worker.c).
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"

#include "serve.h"

void
mms_raise_call_error(const MmsModel *m, const MmsSlotError *e)
{
	if (e == NULL)
		return;
	ereport(ERROR,
			(errcode(e->sqlstate),
			 errmsg("inference with model \"%s:%d\" failed: %s", m->name, m->version, e->msg),
			 e->detail[0] ? errdetail("%s", e->detail) : 0,
			 e->hint[0] ? errhint("%s", e->hint) : 0));
}

const MmsTokenBound *
mms_input_bound(void)
{
	static MmsTokenBound b = {0, "input", "mms.max_input_tokens"};

	b.max_tokens = mms_max_input_tokens;
	return &b;
}

const MmsTokenBound *
mms_target_bound(void)
{
	static MmsTokenBound b = {0, "target", "mms.max_new_tokens"};

	b.max_tokens = mms_max_new_tokens;
	return &b;
}

/* Refused in the backend: a worker would load the weights only to say so. */
void
mms_require_decoder(const MmsModel *m)
{
	if (strcmp(m->arch, "t5encoder") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("model \"%s:%d\" is encoder-only and cannot generate or score", m->name, m->version)));
}

void
mms_null_model_error(void)
{
	ereport(ERROR,
			(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
			 errmsg("model reference must not be null")));
}

static text *
model_arg(FunctionCallInfo fcinfo)
{
	if (PG_ARGISNULL(0))
		mms_null_model_error();
	return PG_GETARG_TEXT_PP(0);
}

/* The model, its tokenizer and the final options of a generate call. */
static MmsTokenizer *
begin_generate(FunctionCallInfo fcinfo, const MmsModel **m, MmsGenOptions *opts)
{
	MmsTokenizer *tok;

	mms_require_serving();
	tok = mms_tokenizer_for_call(fcinfo, model_arg(fcinfo), m);
	mms_require_decoder(*m);
	mms_parse_options(PG_ARGISNULL(2) ? NULL : PG_GETARG_JSONB_P(2), opts);
	return tok;
}

/* Elements of a text[] argument (NULL elements flagged). */
static void
text_elements(FunctionCallInfo fcinfo, int arg, Datum **elems, bool **nulls, int *n)
{
	deconstruct_array(PG_GETARG_ARRAYTYPE_P(arg), TEXTOID, -1, false, TYPALIGN_INT, elems, nulls, n);
}

PG_FUNCTION_INFO_V1(mms_generate);

/* mms_generate(model text, input text, options jsonb) RETURNS text */
Datum
mms_generate(PG_FUNCTION_ARGS)
{
	const MmsModel *m;
	MmsTokenizer *tok;
	MmsGenOptions opts;
	MmsRequestSet *rs;
	int32	   *ids;
	int32		n;
	const MmsResult *res;

	tok = begin_generate(fcinfo, &m, &opts);
	if (PG_ARGISNULL(1))
		PG_RETURN_NULL();
	ids = mms_encode_text(tok, PG_GETARG_TEXT_PP(1), mms_input_bound(), &n);
	rs = mms_requests_begin(m);
	(void) mms_requests_add(rs, MMS_REQ_GENERATE, &opts, ids, n, NULL, 0);
	mms_requests_wait(rs, -1);
	res = mms_requests_result(rs, 0);
	mms_requests_end(rs);
	mms_raise_call_error(m, res->err);
	PG_RETURN_TEXT_P(mms_decode_ids(tok, res->ids, res->n_ids));
}

PG_FUNCTION_INFO_V1(mms_generate_array);

/*
 * mms_generate_batch(model text, inputs text[], options jsonb) RETURNS
 * text[]: one batch, results in input order and shape, NULL in -> NULL out.
 */
Datum
mms_generate_array(PG_FUNCTION_ARGS)
{
	const MmsModel *m;
	MmsTokenizer *tok;
	MmsGenOptions opts;
	ArrayType  *arr;
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	int		   *req_of;
	MmsRequestSet *rs;
	Datum	   *out;

	tok = begin_generate(fcinfo, &m, &opts);
	if (PG_ARGISNULL(1))
		PG_RETURN_NULL();
	arr = PG_GETARG_ARRAYTYPE_P(1);
	text_elements(fcinfo, 1, &elems, &nulls, &n);
	req_of = palloc(sizeof(int) * Max(n, 1));
	rs = mms_requests_begin(m);
	for (int i = 0; i < n; i++)
	{
		int32	   *ids;
		int32		n_ids;

		CHECK_FOR_INTERRUPTS();
		req_of[i] = -1;
		if (nulls[i])
			continue;
		ids = mms_encode_text(tok, DatumGetTextPP(elems[i]), mms_input_bound(), &n_ids);
		req_of[i] = mms_requests_add(rs, MMS_REQ_GENERATE, &opts, ids, n_ids, NULL, 0);
		/* the first requests start while the rest are tokenized */
		if ((i & 63) == 63)
			(void) mms_requests_poll(rs);
	}
	mms_requests_wait(rs, -1);
	for (int i = 0; i < n; i++)
		if (req_of[i] >= 0)
			mms_raise_call_error(m, mms_requests_result(rs, req_of[i])->err);

	out = palloc(sizeof(Datum) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		const MmsResult *res;

		CHECK_FOR_INTERRUPTS();
		if (nulls[i])
			continue;
		res = mms_requests_result(rs, req_of[i]);
		out[i] = PointerGetDatum(mms_decode_ids(tok, res->ids, res->n_ids));
	}
	mms_requests_end(rs);
	PG_RETURN_ARRAYTYPE_P(construct_md_array(out, nulls, ARR_NDIM(arr), ARR_DIMS(arr), ARR_LBOUND(arr),
											 TEXTOID, -1, false, TYPALIGN_INT));
}

static MmsTokenizer *
begin_score(FunctionCallInfo fcinfo, const MmsModel **m, MmsGenOptions *opts)
{
	MmsTokenizer *tok;

	mms_require_serving();
	tok = mms_tokenizer_for_call(fcinfo, model_arg(fcinfo), m);
	mms_require_decoder(*m);
	mms_gen_options_default(opts);	/* scoring has no options */
	return tok;
}

PG_FUNCTION_INFO_V1(mms_score);

/*
 * mms_score(model text, input text, target text) RETURNS float8: log P(target
 * | input) by teacher forcing, over target's tokens and its eos.
 */
Datum
mms_score(PG_FUNCTION_ARGS)
{
	const MmsModel *m;
	MmsTokenizer *tok;
	MmsGenOptions opts;
	MmsRequestSet *rs;
	int32	   *in;
	int32	   *tgt;
	int32		n_in;
	int32		n_tgt;
	const MmsResult *res;

	tok = begin_score(fcinfo, &m, &opts);
	in = mms_encode_text(tok, PG_GETARG_TEXT_PP(1), mms_input_bound(), &n_in);
	tgt = mms_encode_text(tok, PG_GETARG_TEXT_PP(2), mms_target_bound(), &n_tgt);
	rs = mms_requests_begin(m);
	(void) mms_requests_add(rs, MMS_REQ_SCORE, &opts, in, n_in, tgt, n_tgt);
	mms_requests_wait(rs, -1);
	res = mms_requests_result(rs, 0);
	mms_requests_end(rs);
	mms_raise_call_error(m, res->err);
	PG_RETURN_FLOAT8(res->logprob);
}

PG_FUNCTION_INFO_V1(mms_score_array);

/*
 * mms_score_batch(model text, inputs text[], targets text[]) RETURNS
 * float8[]: one batch of pairs (same shapes), NULL where either is NULL.
 */
Datum
mms_score_array(PG_FUNCTION_ARGS)
{
	const MmsModel *m;
	MmsTokenizer *tok;
	MmsGenOptions opts;
	ArrayType  *arr;
	Datum	   *in_e,
			   *tg_e;
	bool	   *in_n,
			   *tg_n;
	int			n,
				n_tg;
	int		   *req_of;
	bool	   *nulls;
	Datum	   *out;
	MmsRequestSet *rs;

	tok = begin_score(fcinfo, &m, &opts);
	arr = PG_GETARG_ARRAYTYPE_P(1);
	text_elements(fcinfo, 1, &in_e, &in_n, &n);
	text_elements(fcinfo, 2, &tg_e, &tg_n, &n_tg);
	if (n != n_tg || ARR_NDIM(arr) != ARR_NDIM(PG_GETARG_ARRAYTYPE_P(2)))
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("inputs and targets must have the same shape (%d and %d elements)", n, n_tg)));
	req_of = palloc(sizeof(int) * Max(n, 1));
	nulls = palloc(sizeof(bool) * Max(n, 1));
	rs = mms_requests_begin(m);
	for (int i = 0; i < n; i++)
	{
		int32	   *in;
		int32	   *tgt;
		int32		n_in;
		int32		n_tgt;

		CHECK_FOR_INTERRUPTS();
		req_of[i] = -1;
		nulls[i] = in_n[i] || tg_n[i];
		if (nulls[i])
			continue;
		in = mms_encode_text(tok, DatumGetTextPP(in_e[i]), mms_input_bound(), &n_in);
		tgt = mms_encode_text(tok, DatumGetTextPP(tg_e[i]), mms_target_bound(), &n_tgt);
		req_of[i] = mms_requests_add(rs, MMS_REQ_SCORE, &opts, in, n_in, tgt, n_tgt);
		if ((i & 63) == 63)
			(void) mms_requests_poll(rs);
	}
	mms_requests_wait(rs, -1);
	out = palloc(sizeof(Datum) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		const MmsResult *res;

		if (nulls[i])
			continue;
		res = mms_requests_result(rs, req_of[i]);
		mms_raise_call_error(m, res->err);
		out[i] = Float8GetDatum(res->logprob);
	}
	mms_requests_end(rs);
	PG_RETURN_ARRAYTYPE_P(construct_md_array(out, nulls, ARR_NDIM(arr), ARR_DIMS(arr), ARR_LBOUND(arr),
											 FLOAT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
}
