/*
 * tokenize.c — mms_tokenize / mms_detokenize and the per-backend tokenizer
 * cache. The tokenizer is the engine's (SentencePiece unigram); this file only
 * finds the model, checks the caller may use it and keeps the tokenizer loaded.
 *
 * Cache: up to mms.tokenizer_cache_size tokenizers, least recently used out,
 * keyed by the model's row id and sha256. Row ids are never reused (unregister
 * then register gives a new id), so a changed model can never hit a stale
 * entry. The bytes are checked against the sha256 by the worker that serves them.
 * Within one query the resolution of a reference is remembered in fn_extra,
 * keyed by the user, transaction, statement and this backend's registry
 * generation, so per-row calls skip the catalog.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/proc.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "mms.h"
#include "serve.h"
#include "tokenizer.h"

#define MAX_CACHED_TOKENIZERS 64
/* first read of a model's header; a 32k-piece vocabulary takes about 1 MB */
#define TOKENIZER_FIRST_READ (2 * 1024 * 1024)

typedef struct TokCacheEntry
{
	int64		model_id;		/* 0 = free slot */
	char		sha256[65];
	MmsTokenizer *tok;			/* engine-owned (malloc) */
	uint64		last_used;
} TokCacheEntry;

static TokCacheEntry tok_cache[MAX_CACHED_TOKENIZERS];
static int	tok_cache_used = 0;	/* entries [0, tok_cache_used) may be live */
static uint64 tok_clock = 0;

/* What one query remembers about the reference it was called with. */
typedef struct QueryCache
{
	char	   *ref;			/* in fn_mcxt */
	Oid			userid;
	LocalTransactionId lxid;
	TimestampTz stmt_start;
	uint64		generation;
	MmsModel	model;
} QueryCache;

static void
evict(TokCacheEntry *e)
{
	if (e->tok)
		mms_tok_free(e->tok);
	e->tok = NULL;
	e->model_id = 0;
}

static MmsTokenizer *
load_tokenizer(const MmsModel *m)
{
	TokCacheEntry *slot = NULL;
	MemoryContext cxt;
	MemoryContext old;
	MmsTokenizer *tok = NULL;
	MmsError	err;
	MmsStatus	st;
	MmsGguf    *g;
	Size		size;
	char	   *buf;

	/* a lowered mms.tokenizer_cache_size takes effect at once */
	for (int i = mms_tokenizer_cache_size; i < MAX_CACHED_TOKENIZERS && tok_cache_used > mms_tokenizer_cache_size; i++)
		evict(&tok_cache[i]);
	tok_cache_used = Min(tok_cache_used, mms_tokenizer_cache_size);

	for (int i = 0; i < tok_cache_used; i++)
	{
		TokCacheEntry *e = &tok_cache[i];

		if (e->model_id == m->id && strcmp(e->sha256, m->sha256) == 0)
		{
			e->last_used = ++tok_clock;
			return e->tok;
		}
	}

	/*
	 * Only the header holds the tokenizer: read a prefix that grows until the
	 * header fits, never the weights (gigabytes for big models, in every
	 * session). The bytes are not checked against the sha256 here; the
	 * loader checks the whole file before any worker serves it.
	 */
	cxt = AllocSetContextCreate(CurrentMemoryContext, "mms tokenizer load", ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(cxt);
	for (Size want = TOKENIZER_FIRST_READ;; want *= 4)
	{
		buf = mms_read_weights_prefix(m, want, &size);
		g = mms_gguf_parse_prefix_pg(buf, size, (uint64) m->size_bytes, &err);
		if (g != NULL || err.code != MMS_ERR_LIMIT || size >= (Size) m->size_bytes)
			break;
		pfree(buf);
	}
	st = g ? mms_tok_load_gguf(g, &tok, &err) : err.code;
	if (st != MMS_OK)
		ereport(ERROR,
				(errcode(mms_engine_sqlstate(st)),
				 errmsg("could not load the tokenizer of model \"%s:%d\": %s",
						m->name, m->version, err.msg)));
	MemoryContextSwitchTo(old);
	MemoryContextDelete(cxt);

	/* nothing from here to the slot assignment may ERROR, or tok leaks */
	if (tok_cache_used < mms_tokenizer_cache_size)
		slot = &tok_cache[tok_cache_used++];
	else
	{
		for (int i = 0; i < tok_cache_used; i++)
			if (slot == NULL || tok_cache[i].last_used < slot->last_used)
				slot = &tok_cache[i];
	}
	evict(slot);
	slot->model_id = m->id;
	strlcpy(slot->sha256, m->sha256, sizeof(slot->sha256));
	slot->tok = tok;
	slot->last_used = ++tok_clock;
	return tok;
}

/*
 * Resolves the model argument once per query and checks use rights; returns
 * the model's tokenizer, and the model itself in *model (valid for the query)
 * when model is not NULL. Inference (dispatch.c) shares it.
 */
MmsTokenizer *
mms_tokenizer_for_call(FunctionCallInfo fcinfo, text *ref_text, const MmsModel **model)
{
	QueryCache *qc = (QueryCache *) fcinfo->flinfo->fn_extra;
	char	   *ref = text_to_cstring(ref_text);

	if (qc == NULL)
	{
		qc = MemoryContextAllocZero(fcinfo->flinfo->fn_mcxt, sizeof(QueryCache));
		fcinfo->flinfo->fn_extra = qc;
	}
	if (qc->ref == NULL || strcmp(qc->ref, ref) != 0 ||
		qc->userid != GetUserId() ||
		qc->lxid != MyProc->lxid ||
		qc->stmt_start != GetCurrentStatementStartTimestamp() ||
		qc->generation != mms_registry_generation)
	{
		if (qc->ref)
			pfree(qc->ref);
		qc->ref = NULL;
		mms_resolve_model(ref, true, &qc->model);
		qc->ref = MemoryContextStrdup(fcinfo->flinfo->fn_mcxt, ref);
		qc->userid = GetUserId();
		qc->lxid = MyProc->lxid;
		qc->stmt_start = GetCurrentStatementStartTimestamp();
		qc->generation = mms_registry_generation;
	}
	pfree(ref);
	if (model)
		*model = &qc->model;
	return load_tokenizer(&qc->model);
}

/* The tokenizer of a resolved model (the backend's cache; valid until another load). */
MmsTokenizer *
mms_tokenizer_of(const MmsModel *m)
{
	return load_tokenizer(m);
}

/*
 * The engine polls this in its loops over input: true when the backend has an
 * interrupt to act on (cancel, statement_timeout, termination). The engine
 * then frees what it built and returns MMS_ERR_CANCELLED, and the caller runs
 * CHECK_FOR_INTERRUPTS() outside the engine, where longjmp leaks nothing.
 */
static int
interrupt_pending(void *arg)
{
	return INTERRUPTS_PENDING_CONDITION() && INTERRUPTS_CAN_BE_PROCESSED();
}

void
mms_raise_deferred(const MmsDeferredError *e)
{
	ereport(ERROR,
			(errcode(e->sqlstate),
			 errmsg_internal("%s", e->msg),
			 e->detail ? errdetail_internal("%s", e->detail) : 0,
			 e->hint ? errhint("%s", e->hint) : 0));
}

int32 *
mms_encode_text(MmsTokenizer *tok, text *t, const MmsTokenBound *bound, int32 *n)
{
	MmsDeferredError e;
	int32	   *ids = mms_try_encode_text(tok, t, bound, n, &e);

	if (ids == NULL)
		mms_raise_deferred(&e);
	return ids;
}

int32 *
mms_try_encode_text(MmsTokenizer *tok, text *t, const MmsTokenBound *bound, int32 *n,
					MmsDeferredError *too_long)
{
	int			len = VARSIZE_ANY_EXHDR(t);
	Size		max_bytes = bound ? (Size) bound->max_tokens * MMS_MAX_BYTES_PER_TOKEN : MMS_TOKENIZE_MAX_BYTES;
	char	   *utf8;
	int32_t    *ids = NULL;
	size_t		n_ids = 0;
	int32	   *out;
	MmsError	err;
	MmsStatus	st;
	MmsTokLimits lim;

	memset(too_long, 0, sizeof(*too_long));
	too_long->sqlstate = ERRCODE_PROGRAM_LIMIT_EXCEEDED;
	/* bounded before any work: the engine's memory grows with the input */
	if ((Size) len > max_bytes)
	{
		if (bound)
		{
			too_long->msg = psprintf("%s of %d bytes is longer than %s allows", bound->what, len, bound->guc);
			too_long->detail = psprintf("The %s may have at most %d tokens and %d bytes per allowed token (%zu bytes).",
										bound->what, bound->max_tokens, MMS_MAX_BYTES_PER_TOKEN, max_bytes);
			too_long->hint = psprintf("Shorten the text, or ask a superuser to raise %s.", bound->guc);
		}
		else
		{
			too_long->msg = psprintf("text of %d bytes is too long to tokenize", len);
			too_long->detail = psprintf("mms_tokenize accepts at most %d bytes.", MMS_TOKENIZE_MAX_BYTES);
		}
		return NULL;
	}
	utf8 = pg_server_to_any(VARDATA_ANY(t), len, PG_UTF8);
	if (utf8 != VARDATA_ANY(t))
		len = strlen(utf8);

	memset(&lim, 0, sizeof(lim));
	lim.max_tokens = bound ? (size_t) bound->max_tokens : 0;
	lim.cancel = interrupt_pending;
	for (;;)
	{
		st = mms_tok_encode_limited(tok, utf8, (size_t) len, 1, &lim, &ids, &n_ids, &err);
		if (st != MMS_ERR_CANCELLED)
			break;
		CHECK_FOR_INTERRUPTS();
		/* an interrupt that did not end the query (e.g. a barrier): start over */
	}
	if (st == MMS_ERR_LIMIT && bound)
	{
		too_long->msg = psprintf("%s has more than %d tokens, the limit of %s", bound->what,
								 bound->max_tokens, bound->guc);
		too_long->hint = psprintf("Shorten the text, or ask a superuser to raise %s.", bound->guc);
		return NULL;
	}
	if (st != MMS_OK)
		ereport(ERROR,
				(errcode(mms_engine_sqlstate(st)),
				 errmsg("could not tokenize: %s", err.msg)));
	/* copy out of the engine's malloc before anything can ERROR */
	out = palloc_extended(Max(n_ids, 1) * sizeof(int32), MCXT_ALLOC_HUGE | MCXT_ALLOC_NO_OOM);
	if (out != NULL)
		memcpy(out, ids, n_ids * sizeof(int32));
	free(ids);
	if (out == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory"),
				 errdetail("Failed to allocate %zu token ids.", n_ids)));
	*n = (int32) n_ids;
	return out;
}

text *
mms_decode_ids(MmsTokenizer *tok, const int32 *ids, int32 n)
{
	char	   *out = NULL;
	size_t		out_len = 0;
	MmsError	err;
	MmsStatus	st;
	MmsTokLimits lim;
	text	   *result;
	char	   *server;

	/* a text value holds less than 1 GB: refuse before building more */
	memset(&lim, 0, sizeof(lim));
	lim.max_bytes = MaxAllocSize - VARHDRSZ;
	lim.cancel = interrupt_pending;
	for (;;)
	{
		st = mms_tok_decode_limited(tok, ids, (size_t) n, &lim, &out, &out_len, &err);
		if (st != MMS_ERR_CANCELLED)
			break;
		CHECK_FOR_INTERRUPTS();
	}
	if (st == MMS_ERR_LIMIT)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("detokenized text would exceed the maximum text size of 1 GB"),
				 errdetail("%d token ids were given.", n)));
	if (st != MMS_OK)
		ereport(ERROR,
				(errcode(mms_engine_sqlstate(st)),
				 errmsg("could not detokenize: %s", err.msg)));

	/* copy out of the engine's malloc before anything can ERROR */
	result = palloc_extended(VARHDRSZ + out_len, MCXT_ALLOC_NO_OOM);
	if (result != NULL)
	{
		SET_VARSIZE(result, VARHDRSZ + out_len);
		memcpy(VARDATA(result), out, out_len);
	}
	free(out);
	if (result == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory"),
				 errdetail("Failed to allocate %zu bytes of detokenized text.", out_len)));
	/* the engine writes UTF-8; convert (and verify) for this database */
	server = pg_any_to_server(VARDATA(result), (int) out_len, PG_UTF8);
	if (server != VARDATA(result))
	{
		text	   *converted = cstring_to_text(server);

		pfree(result);
		return converted;
	}
	return result;
}

PG_FUNCTION_INFO_V1(mms_tokenize);

/* mms_tokenize(model text, input text) RETURNS int[]: ids with the final eos. */
Datum
mms_tokenize(PG_FUNCTION_ARGS)
{
	MmsTokenizer *tok = mms_tokenizer_for_call(fcinfo, PG_GETARG_TEXT_PP(0), NULL);
	int32		n;
	int32	   *ids = mms_encode_text(tok, PG_GETARG_TEXT_PP(1), NULL, &n);
	Datum	   *elems = palloc_extended(Max(n, 1) * sizeof(Datum), MCXT_ALLOC_HUGE);

	for (int32 i = 0; i < n; i++)
		elems[i] = Int32GetDatum(ids[i]);
	PG_RETURN_ARRAYTYPE_P(construct_array(elems, (int) n, INT4OID, sizeof(int32), true,
										  TYPALIGN_INT));
}

PG_FUNCTION_INFO_V1(mms_detokenize);

/* mms_detokenize(model text, ids int[]) RETURNS text */
Datum
mms_detokenize(PG_FUNCTION_ARGS)
{
	MmsTokenizer *tok = mms_tokenizer_for_call(fcinfo, PG_GETARG_TEXT_PP(0), NULL);
	ArrayType  *arr = PG_GETARG_ARRAYTYPE_P(1);
	int			n = ArrayGetNItems(ARR_NDIM(arr), ARR_DIMS(arr));

	if (ARR_NDIM(arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("token ids must be a one-dimensional array")));
	if (array_contains_nulls(arr))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("token ids must not be null")));
	PG_RETURN_TEXT_P(mms_decode_ids(tok, (const int32 *) ARR_DATA_PTR(arr), n));
}
