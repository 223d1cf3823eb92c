/*
 * tokenize.c — mms_tokenize / mms_detokenize and the per-backend tokenizer
 * cache. The tokenizer is the engine's (SentencePiece unigram); this file only
 * finds the model, checks the caller may use it and keeps the tokenizer loaded.
 *
 * Cache: up to mms.tokenizer_cache_size tokenizers, least recently used out,
 * keyed by the model's row id and sha256. Row ids are never reused (unregister
 * then register gives a new id), so a changed model can never hit a stale
 * entry; the sha256 is checked against the bytes when an entry is loaded.
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

	/* the file and its parse live only until the tokenizer is built */
	cxt = AllocSetContextCreate(CurrentMemoryContext, "mms tokenizer load", ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(cxt);
	buf = mms_read_weights(m, &size);
	g = mms_gguf_parse_pg(buf, size, &err);
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

int32 *
mms_encode_text(MmsTokenizer *tok, text *t, int32 *n)
{
	int			len = VARSIZE_ANY_EXHDR(t);
	char	   *utf8 = pg_server_to_any(VARDATA_ANY(t), len, PG_UTF8);
	int32_t    *ids = NULL;
	size_t		n_ids = 0;
	int32	   *out;
	MmsError	err;
	MmsStatus	st;

	if (utf8 != VARDATA_ANY(t))
		len = strlen(utf8);
	st = mms_tok_encode(tok, utf8, (size_t) len, 1, &ids, &n_ids, &err);
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

PG_FUNCTION_INFO_V1(mms_tokenize);

/* mms_tokenize(model text, input text) RETURNS int[]: ids with the final eos. */
Datum
mms_tokenize(PG_FUNCTION_ARGS)
{
	MmsTokenizer *tok = mms_tokenizer_for_call(fcinfo, PG_GETARG_TEXT_PP(0), NULL);
	int32		n;
	int32	   *ids = mms_encode_text(tok, PG_GETARG_TEXT_PP(1), &n);
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
	int32_t    *ids;
	char	   *out = NULL;
	size_t		out_len = 0;
	MmsError	err;
	MmsStatus	st;
	char	   *server;
	text	   *result;

	if (ARR_NDIM(arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("token ids must be a one-dimensional array")));
	if (array_contains_nulls(arr))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("token ids must not be null")));
	ids = (int32_t *) ARR_DATA_PTR(arr);
	st = mms_tok_decode(tok, ids, (size_t) n, &out, &out_len, &err);
	if (st != MMS_OK)
		ereport(ERROR,
				(errcode(mms_engine_sqlstate(st)),
				 errmsg("could not detokenize: %s", err.msg)));

	/* copy out of the engine's malloc before anything can ERROR */
	result = palloc_extended(VARHDRSZ + out_len, MCXT_ALLOC_HUGE | MCXT_ALLOC_NO_OOM);
	if (result != NULL)
	{
		SET_VARSIZE(result, VARHDRSZ + out_len);
		memcpy(VARDATA(result), out, out_len);
	}
	free(out);
	if (result == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory")));
	/* the engine writes UTF-8; convert (and verify) for this database */
	server = pg_any_to_server(VARDATA(result), (int) out_len, PG_UTF8);
	if (server != VARDATA(result))
		PG_RETURN_TEXT_P(cstring_to_text(server));
	PG_RETURN_TEXT_P(result);
}
