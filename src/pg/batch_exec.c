/*
 * batch_exec.c — the MmsBatch executor node (batch.h). It reads up to
 * mms.batch_rows rows from its child, tokenizes each row's calls and submits
 * them all through the asynchronous request API (request.c), then emits the
 * rows in their order, each with its results, decoding a row's result only
 * when the row goes out. While it emits one batch, the next is already
 * submitted, so the workers never wait for this backend between batches.
 *
 * Semantics are those of one call per row: the same results (sampling with
 * a seed is batch-independent), NULL where the call returns NULL, and each
 * row's own errors — a too-long input, a failed request — raised when that
 * row goes out, after the rows before it. The model is resolved and the
 * options parsed, as the caller, at the first row that needs them; a quota
 * that counts requests or tokens admits each row's call alone. Under a LIMIT
 * the node reads no further ahead than the LIMIT can return; an ERROR,
 * cancel or timeout abandons what is in flight (request.c's cleanup).
 */
#include "postgres.h"

#include "catalog/objectaccess.h"
#include "catalog/pg_type.h"
#include "executor/executor.h"
#include "executor/tuptable.h"
#include "commands/explain.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

#include "batch.h"
#include "serve.h"

/* A batched call of the node's target list, and what it was resolved to. */
typedef struct Call
{
	MmsBatchKind kind;
	AttrNumber	in_att;			/* child column with the input */
	AttrNumber	tgt_att;		/* ... with the target (scoring) */
	ExprState  *model_es;
	ExprState  *opts_es;
	bool		resolved;
	bool		null_model;		/* scoring is STRICT: every result NULL */
	char	   *ref;			/* resolved reference, as the caller wrote it */
	Oid			userid;			/* ... for this role */
	uint64		generation;		/* ... and this registry generation */
	MmsModel	model;
	MmsGenOptions opts;
} Call;

/* A batch of rows and their requests; everything in cxt, reset when it is emitted. */
typedef struct Batch
{
	MemoryContext cxt;
	int			n;				/* rows read */
	int			next;			/* next row to emit */
	MinimalTuple *rows;
	int32	   *req;			/* [row * n_calls + call]: request, or -1 (NULL result) */
	MmsDeferredError **errs;	/* same shape: the row's error, raised when it goes out */
	MmsRequestSet **sets;		/* per call, begun at its first request */
	MmsModel   *models;			/* per call, as resolved when the batch was read */
	MmsGenOptions *opts;		/* per call */
} Batch;

typedef struct BatchState
{
	CustomScanState css;
	int			n_calls;
	Call	   *calls;
	int			n_child;		/* the child's columns; the results follow in the scan tuple */
	int			batch_rows;
	int			next_rows;		/* rows of the next batch: 1, 2, 4 ... up to batch_rows */
	bool		read_ahead;		/* submit the next batch while this one is emitted */
	ExprState  *offset_es;		/* a LIMIT above: its offset and count, or NULL */
	ExprState  *count_es;
	int64		bound;			/* rows the LIMIT can take (-1: no bound) */
	int64		read;			/* rows read from the child */
	int64		emitted;		/* rows returned */
	bool		started;
	bool		child_done;
	Batch		b[2];
	int			head;			/* the batch being emitted */
	TupleTableSlot *row_slot;	/* a stored row, deformed */
	/* EXPLAIN ANALYZE */
	int64		n_batches;
	int64		n_requests;
} BatchState;

static void begin_batch(CustomScanState *node, EState *estate, int eflags);
static TupleTableSlot *exec_batch(CustomScanState *node);
static void end_batch(CustomScanState *node);
static void rescan_batch(CustomScanState *node);
static void explain_batch(CustomScanState *node, List *ancestors, ExplainState *es);

static const CustomExecMethods exec_methods = {
	.CustomName = MMS_BATCH_NAME,
	.BeginCustomScan = begin_batch,
	.ExecCustomScan = exec_batch,
	.EndCustomScan = end_batch,
	.ReScanCustomScan = rescan_batch,
	.ExplainCustomScan = explain_batch,
};

static Node *
create_state(CustomScan *cs)
{
	BatchState *st = palloc0(sizeof(BatchState));

	NodeSetTag(st, T_CustomScanState);
	st->css.methods = &exec_methods;
	return (Node *) st;
}

const CustomScanMethods mms_batch_scan_methods = {
	.CustomName = MMS_BATCH_NAME,
	.CreateCustomScanState = create_state,
};

void
mms_batch_register_methods(void)
{
	RegisterCustomScanMethods(&mms_batch_scan_methods);
}

static void
begin_batch(CustomScanState *node, EState *estate, int eflags)
{
	BatchState *st = (BatchState *) node;
	CustomScan *cs = (CustomScan *) node->ss.ps.plan;
	List	   *priv = cs->custom_private;
	ListCell   *e = list_head(cs->custom_exprs);

	/* the planner puts a Material over a scrollable cursor and keeps merge joins' inner sides */
	if (eflags & (EXEC_FLAG_BACKWARD | EXEC_FLAG_MARK))
		elog(ERROR, "MmsBatch cannot scan backward or mark a position");
	outerPlanState(st) = ExecInitNode(outerPlan(cs), estate, eflags);
	st->n_child = list_length(outerPlan(cs)->targetlist);
	st->n_calls = linitial_int(priv);
	st->calls = palloc0(sizeof(Call) * st->n_calls);
	for (int k = 0; k < st->n_calls; k++)
	{
		Call	   *c = &st->calls[k];

		Oid			funcid = (Oid) list_nth_int(priv, 5 + 4 * k);
		AclResult	acl;

		c->kind = list_nth_int(priv, 2 + 4 * k);
		c->in_att = list_nth_int(priv, 3 + 4 * k);
		c->tgt_att = list_nth_int(priv, 4 + 4 * k);
		/* as ExecInitFunc checks a function it will call */
		acl = pg_proc_aclcheck(funcid, GetUserId(), ACL_EXECUTE);
		if (acl != ACLCHECK_OK)
			aclcheck_error(acl, OBJECT_FUNCTION, get_func_name(funcid));
		InvokeFunctionExecuteHook(funcid);
		c->model_es = ExecInitExpr(lfirst(e), &node->ss.ps);
		e = lnext(cs->custom_exprs, e);
		c->opts_es = ExecInitExpr(lfirst(e), &node->ss.ps);
		e = lnext(cs->custom_exprs, e);
	}
	if (lsecond_int(priv))
	{
		st->offset_es = ExecInitExpr(lfirst(e), &node->ss.ps);
		e = lnext(cs->custom_exprs, e);
		st->count_es = ExecInitExpr(lfirst(e), &node->ss.ps);
	}
	/* off when the plan runs (a cached plan): one row at a time, as without the node */
	st->batch_rows = mms_transparent_batching ? mms_batch_rows : 1;
	st->read_ahead = mms_transparent_batching;
	st->row_slot = ExecInitExtraTupleSlot(estate, ExecGetResultType(outerPlanState(st)),
										  &TTSOpsMinimalTuple);
	for (int i = 0; i < 2; i++)
		st->b[i].cxt = AllocSetContextCreate(estate->es_query_cxt, "mms batch", ALLOCSET_DEFAULT_SIZES);
}

/* Ends a batch's requests (those still in flight are abandoned) and frees its rows. */
static void
release(BatchState *st, Batch *b)
{
	if (b->sets != NULL)
		for (int k = 0; k < st->n_calls; k++)
			if (b->sets[k] != NULL)
				mms_requests_end(b->sets[k]);
	MemoryContextReset(b->cxt);
	b->sets = NULL;
	b->n = b->next = 0;
}

/* The LIMIT's bound, evaluated once its parameters are set (at the first row). */
static void
start(BatchState *st)
{
	ExprContext *econtext = st->css.ss.ps.ps_ExprContext;

	st->next_rows = 1;
	st->bound = -1;
	if (st->count_es != NULL)
	{
		bool		isnull;
		Datum		count = ExecEvalExprSwitchContext(st->count_es, econtext, &isnull);

		if (!isnull)
		{
			Datum		offset = ExecEvalExprSwitchContext(st->offset_es, econtext, &isnull);
			int64		o = isnull ? 0 : Max(DatumGetInt64(offset), 0);
			int64		c = Max(DatumGetInt64(count), 0);

			st->bound = o > PG_INT64_MAX - c ? -1 : o + c;
		}
	}
	st->started = true;
}

static bool
resolved_for_now(const Call *c)
{
	return c->resolved && c->userid == GetUserId() && c->generation == mms_registry_generation;
}

/* As the SQL function does per call: resolve and check the model as the caller, parse the options. */
static void
resolve(BatchState *st, Call *c)
{
	ExprContext *econtext = st->css.ss.ps.ps_ExprContext;
	MemoryContext query_cxt = st->css.ss.ps.state->es_query_cxt;
	bool		isnull;
	Datum		d;
	char	   *ref;

	if (resolved_for_now(c))
		return;
	d = ExecEvalExprSwitchContext(c->model_es, econtext, &isnull);
	if (isnull)
	{
		if (c->kind == MMS_BATCH_GENERATE)
			mms_null_model_error();
		c->null_model = true;
		c->resolved = true;
		c->userid = GetUserId();
		c->generation = mms_registry_generation;
		return;
	}
	mms_require_serving();
	ref = TextDatumGetCString(d);
	if (c->ref == NULL || strcmp(c->ref, ref) != 0 || c->userid != GetUserId() ||
		c->generation != mms_registry_generation)
	{
		if (c->ref)
			pfree(c->ref);
		c->ref = NULL;
		mms_resolve_model(ref, true, &c->model);
		c->ref = MemoryContextStrdup(query_cxt, ref);
		c->userid = GetUserId();
		c->generation = mms_registry_generation;
	}
	(void) mms_tokenizer_of(&c->model);
	mms_require_decoder(&c->model);
	c->null_model = false;
	if (c->kind == MMS_BATCH_GENERATE)
	{
		d = ExecEvalExprSwitchContext(c->opts_es, econtext, &isnull);
		mms_parse_options(isnull ? NULL : DatumGetJsonbP(d), &c->opts);
	}
	else
		mms_gen_options_default(&c->opts);	/* scoring has no options */
	c->resolved = true;
}

/* Row i's call k fails: its error is raised when the row goes out. */
static void
keep_error(Batch *b, int idx, const MmsDeferredError *e)
{
	b->errs[idx] = palloc(sizeof(MmsDeferredError));
	*b->errs[idx] = *e;
}

#define REQ_NULL (-1)			/* the call returns NULL (or failed: errs) */
#define REQ_AT_EMIT (-2)		/* prepared when its row goes out */

/*
 * Row i's call k: its request, a NULL, or its error for later. In b->cxt.
 * ahead: rows before this one are still to go out.
 */
static void
prepare_call(BatchState *st, Batch *b, int i, int k, TupleTableSlot *slot, bool ahead)
{
	Call	   *c = &st->calls[k];
	int			idx = i * st->n_calls + k;
	bool		in_null;
	bool		tgt_null = false;
	Datum		in = slot_getattr(slot, c->in_att, &in_null);
	Datum		tgt = c->tgt_att ? slot_getattr(slot, c->tgt_att, &tgt_null) : (Datum) 0;
	MmsTokenizer *tok;
	MmsDeferredError e;
	int32	   *in_ids;
	int32	   *tgt_ids = NULL;
	int32		n_in;
	int32		n_tgt = 0;

	b->req[idx] = REQ_NULL;
	b->errs[idx] = NULL;
	if (c->kind == MMS_BATCH_GENERATE)
	{
		/* the model is resolved (and may fail) even for a NULL input */
		resolve(st, c);
		if (in_null)
			return;
	}
	else
	{
		/* STRICT: a NULL argument is a NULL, and nothing is resolved */
		if (in_null || tgt_null)
			return;
		/*
		 * The first non-NULL row resolves the model, which may fail (an
		 * unknown model, no grant): a row read ahead waits for its turn, so
		 * that the rows before it come out first, as they would alone.
		 */
		if (ahead && !resolved_for_now(c))
		{
			b->req[idx] = REQ_AT_EMIT;
			return;
		}
		resolve(st, c);
		if (c->null_model)
			return;
	}
	if (b->sets[k] == NULL)
	{
		b->models[k] = c->model;
		b->opts[k] = c->opts;
		b->sets[k] = mms_requests_begin(&b->models[k]);
	}
	tok = mms_tokenizer_of(&b->models[k]);
	in_ids = mms_try_encode_text(tok, DatumGetTextPP(in), mms_input_bound(), &n_in, &e);
	if (in_ids != NULL && c->kind == MMS_BATCH_SCORE)
		tgt_ids = mms_try_encode_text(tok, DatumGetTextPP(tgt), mms_target_bound(), &n_tgt, &e);
	if (in_ids == NULL || (c->kind == MMS_BATCH_SCORE && tgt_ids == NULL) ||
		!mms_requests_fit(n_in + n_tgt, &e))
	{
		keep_error(b, idx, &e);
		return;
	}
	b->req[idx] = mms_requests_add(b->sets[k],
								   c->kind == MMS_BATCH_SCORE ? MMS_REQ_SCORE : MMS_REQ_GENERATE,
								   &b->opts[k], in_ids, n_in, tgt_ids, n_tgt);
	st->n_requests++;
	/* over quota: refused at its row, as its own call would be */
	if (!mms_requests_admit(b->sets[k], &e))
	{
		b->req[idx] = REQ_NULL;
		keep_error(b, idx, &e);
	}
}

/* Submits what b's calls can (free slots, the backend's share), collects what finished. */
static void
submit_all(BatchState *st, Batch *b)
{
	for (int k = 0; k < st->n_calls; k++)
		if (b->sets[k] != NULL)
			(void) mms_requests_poll(b->sets[k]);
}

/* Reads the next rows into b and submits their calls. */
static void
fill(BatchState *st, Batch *b)
{
	int			want = st->next_rows;
	MemoryContext old;

	/*
	 * Batches start at one row and double: a reader that stops early (a
	 * cursor, EXISTS, a LIMIT above a filter) has made at most about three
	 * times the calls it used, and a long statement reaches full batches
	 * within a few rows.
	 */
	st->next_rows = Min(st->next_rows * 2, st->batch_rows);

	/* under a LIMIT, no further than it can take (then a row at a time, to be safe) */
	if (st->bound >= 0)
		want = (int) Min((int64) want, Max(st->bound - st->read, 1));
	old = MemoryContextSwitchTo(b->cxt);
	b->rows = palloc(sizeof(MinimalTuple) * want);
	b->req = palloc(sizeof(int32) * want * st->n_calls);
	b->errs = palloc(sizeof(MmsDeferredError *) * want * st->n_calls);
	b->sets = palloc0(sizeof(MmsRequestSet *) * st->n_calls);
	b->models = palloc(sizeof(MmsModel) * st->n_calls);
	b->opts = palloc(sizeof(MmsGenOptions) * st->n_calls);
	MemoryContextSwitchTo(old);

	while (b->n < want)
	{
		/* the child runs in the query's context, as it would without this node */
		TupleTableSlot *slot = ExecProcNode(outerPlanState(st));

		if (TupIsNull(slot))
		{
			st->child_done = true;
			break;
		}
		old = MemoryContextSwitchTo(b->cxt);
		b->rows[b->n] = ExecCopySlotMinimalTuple(slot);
		for (int k = 0; k < st->n_calls; k++)
			prepare_call(st, b, b->n, k, slot, st->read > st->emitted);
		st->read++;
		MemoryContextSwitchTo(old);
		/* a slow child: the first rows' calls start while the rest are read */
		if ((++b->n & 15) == 0)
			submit_all(st, b);
	}
	submit_all(st, b);
	if (b->n > 0)
		st->n_batches++;
}

/* Waits for request r of batch b's call k, keeping the other batch's requests going in. */
static const MmsResult *
wait_for(BatchState *st, Batch *b, int k, int r)
{
	MmsRequestSet *rs = b->sets[k];

	while (!mms_requests_result(rs, r)->done)
	{
		for (int i = 0; i < 2; i++)
			if (st->b[i].sets != NULL)
				submit_all(st, &st->b[i]);
		if (mms_requests_result(rs, r)->done)
			break;
		mms_requests_wait_any(rs);
	}
	return mms_requests_result(rs, r);
}

/* Row i of b with its results, projected. */
static TupleTableSlot *
emit(BatchState *st, Batch *b, int i)
{
	ExprContext *econtext = st->css.ss.ps.ps_ExprContext;
	TupleTableSlot *scan = st->css.ss.ss_ScanTupleSlot;
	MemoryContext old;

	ResetExprContext(econtext);
	ExecClearTuple(scan);
	ExecStoreMinimalTuple(b->rows[i], st->row_slot, false);
	slot_getallattrs(st->row_slot);
	memcpy(scan->tts_values, st->row_slot->tts_values, sizeof(Datum) * st->n_child);
	memcpy(scan->tts_isnull, st->row_slot->tts_isnull, sizeof(bool) * st->n_child);
	old = MemoryContextSwitchTo(econtext->ecxt_per_tuple_memory);
	for (int k = 0; k < st->n_calls; k++)
	{
		int			idx = i * st->n_calls + k;
		int			col = st->n_child + k;
		const MmsResult *res;

		if (b->req[idx] == REQ_AT_EMIT)
		{
			MemoryContext cur = MemoryContextSwitchTo(b->cxt);

			prepare_call(st, b, i, k, st->row_slot, false);
			submit_all(st, b);
			MemoryContextSwitchTo(cur);
		}
		if (b->errs[idx] != NULL)
			mms_raise_deferred(b->errs[idx]);
		scan->tts_isnull[col] = b->req[idx] < 0;
		scan->tts_values[col] = (Datum) 0;
		if (b->req[idx] < 0)
			continue;
		res = wait_for(st, b, k, b->req[idx]);
		mms_raise_call_error(&b->models[k], res->err);
		if (st->calls[k].kind == MMS_BATCH_SCORE)
			scan->tts_values[col] = Float8GetDatum(res->logprob);
		else
			scan->tts_values[col] = PointerGetDatum(mms_decode_ids(mms_tokenizer_of(&b->models[k]),
																   res->ids, res->n_ids));
	}
	MemoryContextSwitchTo(old);
	ExecStoreVirtualTuple(scan);
	econtext->ecxt_scantuple = scan;
	st->emitted++;
	return ExecProject(st->css.ss.ps.ps_ProjInfo);
}

static TupleTableSlot *
exec_batch(CustomScanState *node)
{
	BatchState *st = (BatchState *) node;

	if (!st->started)
		start(st);
	for (;;)
	{
		Batch	   *cur = &st->b[st->head];
		Batch	   *other = &st->b[1 - st->head];

		if (cur->next < cur->n)
		{
			/* the next batch goes in before this one is waited for */
			if (st->read_ahead && other->n == 0 && !st->child_done &&
				(st->bound < 0 || st->read < st->bound))
				fill(st, other);
			return emit(st, cur, cur->next++);
		}
		release(st, cur);
		if (other->n > 0)
		{
			st->head = 1 - st->head;
			continue;
		}
		if (st->child_done)
			return ExecClearTuple(node->ss.ps.ps_ResultTupleSlot);
		fill(st, cur);
		if (cur->n == 0)
			return ExecClearTuple(node->ss.ps.ps_ResultTupleSlot);
	}
}

static void
end_batch(CustomScanState *node)
{
	BatchState *st = (BatchState *) node;

	release(st, &st->b[0]);
	release(st, &st->b[1]);
	ExecEndNode(outerPlanState(node));
}

static void
rescan_batch(CustomScanState *node)
{
	BatchState *st = (BatchState *) node;
	PlanState  *child = outerPlanState(node);

	release(st, &st->b[0]);
	release(st, &st->b[1]);
	st->head = 0;
	st->read = 0;
	st->emitted = 0;
	st->started = false;
	st->child_done = false;
	/* parameters may have changed: the model and options are evaluated again */
	for (int k = 0; k < st->n_calls; k++)
		st->calls[k].resolved = false;
	/* a child whose parameters changed is rescanned by its next ExecProcNode */
	if (child->chgParam == NULL)
		ExecReScan(child);
}

static void
explain_batch(CustomScanState *node, List *ancestors, ExplainState *es)
{
	BatchState *st = (BatchState *) node;
	StringInfoData calls;

	initStringInfo(&calls);
	for (int k = 0; k < st->n_calls; k++)
		appendStringInfo(&calls, "%s%s", k ? ", " : "",
						 st->calls[k].kind == MMS_BATCH_SCORE ? "mms_score" : "mms_generate");
	ExplainPropertyInteger("Batch Rows", NULL, st->batch_rows, es);
	ExplainPropertyText("Batched Calls", calls.data, es);
	if (es->analyze)
	{
		ExplainPropertyInteger("Batches", NULL, st->n_batches, es);
		ExplainPropertyInteger("Requests", NULL, st->n_requests, es);
	}
}
