/*
 * dispatch.c — inference from the calling backend: mms_generate (one input or
 * an array), mms_score. The backend resolves the model and checks the grant
 * as the caller, tokenizes, places the requests in shared-memory slots for
 * the model's worker, waits on its latch (statement_timeout and
 * pg_cancel_backend work; the slots are always given back), then
 * detokenizes. No BLAS here: the worker runs the model (worker.c).
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

#include "serve.h"

/*
 * One request of a call, from tokens in to tokens (or a log-probability) out.
 * Kept small: an array call holds one per element, so the output and the error
 * are allocated when they arrive, at their size.
 */
typedef struct MmsCall
{
	MmsReqKind	kind;
	int32	   *input;
	int32		n_input;
	int32	   *target;			/* score only */
	int32		n_target;
	int32	   *out;			/* palloc'd when collected */
	int32		n_out;
	double		logprob;
	int			slot;			/* -1 not yet queued; -2 finished */
	MmsSlotError *err;			/* NULL = succeeded (once collected) */
} MmsCall;

static bool exit_callback_registered = false;

/* Lock held: gives back this backend's slots, telling workers to drop running ones. */
static int
release_slots_locked(MmsCall *calls, int n)
{
	int			abandoned = 0;
	bool		freed = false;

	for (int i = 0; i < mms_shared->n_slots; i++)
	{
		MmsSlot    *s = mms_slot(i);

		if (s->owner_pid != MyProcPid || s->state == MMS_SLOT_FREE || s->state == MMS_SLOT_ABANDONED)
			continue;
		if (s->state == MMS_SLOT_RUNNING)
		{
			s->state = MMS_SLOT_ABANDONED;
			mms_wake_procno(mms_shared->workers[s->worker].procno);
			abandoned++;
		}
		else
		{
			if (s->state == MMS_SLOT_QUEUED)
				abandoned++;
			s->state = MMS_SLOT_FREE;
			freed = true;
		}
	}
	for (int i = 0; i < n; i++)
		if (calls[i].slot >= 0)
			calls[i].slot = -2;
	if (freed)
		ConditionVariableBroadcast(&mms_shared->cv);
	return abandoned;
}

/* before_shmem_exit: a backend that exits mid-call (FATAL) leaves no slot behind. */
static void
backend_exit(int code, Datum arg)
{
	if (mms_shared == NULL)
		return;
	if (LWLockHeldByMe(mms_shared->lock))
		LWLockRelease(mms_shared->lock);
	LWLockAcquire(mms_shared->lock, LW_EXCLUSIVE);
	(void) release_slots_locked(NULL, 0);
	LWLockRelease(mms_shared->lock);
}

/*
 * Lock held: copies a DONE slot into its call and frees the slot. palloc may
 * ERROR here; the caller's PG_FINALLY releases the lock and the slots.
 */
static void
collect(MmsCall *c, MmsSlot *s, MmsStat *st, TimestampTz t0, TimestampTz now)
{
	if (s->err.sqlstate != 0)
	{
		c->err = palloc(sizeof(MmsSlotError));
		*c->err = s->err;
	}
	else
	{
		c->n_out = Min(s->n_output, mms_shared->slot_tokens);
		c->out = palloc(sizeof(int32) * Max(c->n_out, 1));
		memcpy(c->out, s->tokens, sizeof(int32) * c->n_out);
		c->logprob = s->logprob;
	}
	if (st)
	{
		st->calls++;
		st->input_tokens += c->n_input;
		if (s->err.sqlstate == 0)
			st->output_tokens += c->kind == MMS_REQ_SCORE ? c->n_target : c->n_out;
		else if (s->err.sqlstate == ERRCODE_QUERY_CANCELED)
			st->cancels++;
		else
			st->errors++;
		st->total_ms += (double) (now - t0) / 1000.0;
		if (s->t_started > s->t_queued)
			st->queue_ms += (double) (s->t_started - s->t_queued) / 1000.0;
	}
	s->state = MMS_SLOT_FREE;
	c->slot = -2;
}

/* Runs calls[0..n) on model m as one batch; each call ends with a result or c->err. */
static void
run_calls(const MmsModel *m, const MmsOptionSet *opts, MmsCall *calls, int n)
{
	MmsModelKey key;
	TimestampTz t0 = GetCurrentTimestamp();
	int			next = 0;
	int			n_done = 0;

	mms_key_from_model(&key, m);
	if (!exit_callback_registered)
	{
		before_shmem_exit(backend_exit, 0);
		exit_callback_registered = true;
	}
	for (int i = 0; i < n; i++)
		calls[i].slot = -1;

	PG_TRY();
	{
		while (n_done < n)
		{
			int			wake = -1;
			bool		wake_launcher = false;
			bool		freed = false;
			TimestampTz now = GetCurrentTimestamp();
			MmsStat    *st;

			LWLockAcquire(mms_shared->lock, LW_EXCLUSIVE);
			st = mms_stat_for(&key);
			if (next < n)
			{
				int			w = mms_want_worker(&key);

				for (int i = 0; w >= 0 && next < n && i < mms_shared->n_slots; i++)
				{
					MmsSlot    *s = mms_slot(i);
					MmsCall    *c = &calls[next];

					if (s->state != MMS_SLOT_FREE)
						continue;
					s->owner_procno = MyProc->pgprocno;
					s->owner_pid = MyProcPid;
					s->worker = w;
					s->kind = c->kind;
					s->opts = *opts;
					s->n_input = c->n_input;
					memcpy(s->tokens, c->input, sizeof(int32) * c->n_input);
					s->n_target = c->kind == MMS_REQ_SCORE ? c->n_target : 0;
					if (s->n_target > 0)
						memcpy(s->tokens + c->n_input, c->target, sizeof(int32) * c->n_target);
					s->n_output = 0;
					memset(&s->err, 0, sizeof(s->err));
					s->t_queued = now;
					s->t_started = 0;
					s->state = MMS_SLOT_QUEUED;
					c->slot = i;
					next++;
					if (mms_shared->workers[w].state == MMS_W_READY)
						wake = mms_shared->workers[w].procno;
					else
						wake_launcher = true;
				}
			}
			for (int j = 0; j < n; j++)
			{
				MmsCall    *c = &calls[j];
				MmsSlot    *s;

				if (c->slot < 0)
					continue;
				s = mms_slot(c->slot);
				if (s->state == MMS_SLOT_DONE)
				{
					collect(c, s, st, t0, now);
					n_done++;
					freed = true;
				}
				else if (s->state == MMS_SLOT_QUEUED &&
						 mms_shared->workers[s->worker].state == MMS_W_FREE)
				{
					/* the entry was given up without running it: should not happen */
					mms_slot_fail(s, ERRCODE_INTERNAL_ERROR, "the inference worker went away", NULL);
				}
			}
			if (freed)
				ConditionVariableBroadcast(&mms_shared->cv);
			LWLockRelease(mms_shared->lock);

			if (wake_launcher)
				mms_wake_launcher();
			mms_wake_procno(wake);
			if (n_done == n)
				break;
			/* short waits while some inputs still wait for a free slot */
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 next < n ? 50L : 1000L, PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
			CHECK_FOR_INTERRUPTS();
		}
	}
	PG_FINALLY();
	{
		if (LWLockHeldByMe(mms_shared->lock))
			LWLockRelease(mms_shared->lock);
		if (n_done < n)
		{
			int			dropped;
			MmsStat    *st;

			LWLockAcquire(mms_shared->lock, LW_EXCLUSIVE);
			dropped = release_slots_locked(calls, n);
			st = mms_stat_for(&key);
			if (st && dropped > 0)
			{
				st->calls += dropped;
				st->cancels += dropped;
			}
			LWLockRelease(mms_shared->lock);
		}
	}
	PG_END_TRY();
}

static void
raise_call_error(const MmsModel *m, const MmsSlotError *e)
{
	if (e == NULL)
		return;
	ereport(ERROR,
			(errcode(e->sqlstate),
			 errmsg("inference with model \"%s:%d\" failed: %s", m->name, m->version, e->msg),
			 e->hint[0] ? errhint("%s", e->hint) : 0));
}

static const MmsTokenBound *
input_bound(void)
{
	static MmsTokenBound b = {0, "input", "mms.max_input_tokens"};

	b.max_tokens = mms_max_input_tokens;
	return &b;
}

static void
prepare_generate(MmsCall *c, MmsTokenizer *tok, text *input)
{
	memset(c, 0, sizeof(*c));
	c->kind = MMS_REQ_GENERATE;
	c->input = mms_encode_text(tok, input, input_bound(), &c->n_input);
}

/* Refused in the backend: a worker would load the weights only to say so. */
static void
require_decoder(const MmsModel *m)
{
	if (strcmp(m->arch, "t5encoder") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("model \"%s:%d\" is encoder-only and cannot generate or score", m->name, m->version)));
}

static text *
model_arg(FunctionCallInfo fcinfo)
{
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("model reference must not be null")));
	return PG_GETARG_TEXT_PP(0);
}

PG_FUNCTION_INFO_V1(mms_generate);

/* mms_generate(model text, input text, options jsonb) RETURNS text */
Datum
mms_generate(PG_FUNCTION_ARGS)
{
	const MmsModel *m;
	MmsTokenizer *tok;
	MmsOptionSet opts;
	MmsCall		call;

	mms_require_serving();
	tok = mms_tokenizer_for_call(fcinfo, model_arg(fcinfo), &m);
	require_decoder(m);
	mms_parse_options(PG_ARGISNULL(2) ? NULL : PG_GETARG_JSONB_P(2), &opts);
	if (PG_ARGISNULL(1))
		PG_RETURN_NULL();
	prepare_generate(&call, tok, PG_GETARG_TEXT_PP(1));
	run_calls(m, &opts, &call, 1);
	raise_call_error(m, call.err);
	PG_RETURN_TEXT_P(mms_decode_ids(tok, call.out, call.n_out));
}

PG_FUNCTION_INFO_V1(mms_generate_array);

/*
 * mms_generate(model text, inputs text[], options jsonb) RETURNS text[]: one
 * batch, results in input order and shape, NULL in -> NULL out.
 */
Datum
mms_generate_array(PG_FUNCTION_ARGS)
{
	const MmsModel *m;
	MmsTokenizer *tok;
	MmsOptionSet opts;
	ArrayType  *arr;
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	int			n_calls = 0;
	MmsCall    *calls;
	int		   *call_of;
	Datum	   *out;

	mms_require_serving();
	tok = mms_tokenizer_for_call(fcinfo, model_arg(fcinfo), &m);
	require_decoder(m);
	mms_parse_options(PG_ARGISNULL(2) ? NULL : PG_GETARG_JSONB_P(2), &opts);
	if (PG_ARGISNULL(1))
		PG_RETURN_NULL();
	arr = PG_GETARG_ARRAYTYPE_P(1);
	deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
	calls = palloc0(sizeof(MmsCall) * Max(n, 1));
	call_of = palloc(sizeof(int) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		CHECK_FOR_INTERRUPTS();
		call_of[i] = -1;
		if (nulls[i])
			continue;
		prepare_generate(&calls[n_calls], tok, DatumGetTextPP(elems[i]));
		call_of[i] = n_calls++;
	}
	if (n_calls > 0)
		run_calls(m, &opts, calls, n_calls);
	for (int j = 0; j < n_calls; j++)
		raise_call_error(m, calls[j].err);

	out = palloc(sizeof(Datum) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		CHECK_FOR_INTERRUPTS();
		out[i] = nulls[i] ? (Datum) 0 :
			PointerGetDatum(mms_decode_ids(tok, calls[call_of[i]].out, calls[call_of[i]].n_out));
	}
	PG_RETURN_ARRAYTYPE_P(construct_md_array(out, nulls, ARR_NDIM(arr), ARR_DIMS(arr), ARR_LBOUND(arr),
											 TEXTOID, -1, false, TYPALIGN_INT));
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
	MmsOptionSet opts;
	MmsCall		call;
	MmsTokenBound target_bound = {0, "target", "mms.max_new_tokens"};

	mms_require_serving();
	tok = mms_tokenizer_for_call(fcinfo, PG_GETARG_TEXT_PP(0), &m);
	require_decoder(m);
	memset(&opts, 0, sizeof(opts));	/* scoring has no options */
	memset(&call, 0, sizeof(call));
	call.kind = MMS_REQ_SCORE;
	call.input = mms_encode_text(tok, PG_GETARG_TEXT_PP(1), input_bound(), &call.n_input);
	target_bound.max_tokens = mms_max_new_tokens;
	call.target = mms_encode_text(tok, PG_GETARG_TEXT_PP(2), &target_bound, &call.n_target);
	run_calls(m, &opts, &call, 1);
	raise_call_error(m, call.err);
	PG_RETURN_FLOAT8(call.logprob);
}
