/*
 * worker.c — the inference worker (mms_worker.so, the only library that links
 * OpenBLAS; loaded by worker processes alone, never by the postmaster). One
 * worker serves one model of one database: it attaches the shared weights,
 * then loops: take QUEUED slots into the engine's continuous-batching
 * scheduler, run one decoder step, hand finished requests back, drop the
 * requests their callers abandoned. Exits when idle for
 * mms.worker_idle_timeout, when asked to stop, or on SIGTERM.
 */
#include "postgres.h"

#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "libpq/pqsignal.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/memutils.h"
#include "utils/ps_status.h"
#include "utils/guc.h"
#include "utils/timestamp.h"

#include "generate.h"
#include "pool.h"
#include "scheduler.h"
#include "worker.h"

PG_MODULE_MAGIC;

static int	my_index = -1;
static uint32 my_generation = 0;

/* engine request of each slot this worker runs; NULL when none */
static MmsGenRequest **by_slot = NULL;
static bool *cancelled = NULL;

/*
 * Memory budget (mms.worker_memory): what the requests this worker holds may
 * take, so that no mix of requests drives the machine into the OOM killer
 * (whose kill of a worker restarts the whole cluster). Each request is
 * charged when taken and refunded when collected; one that does not fit now
 * stays queued until others finish; one that can never fit fails.
 */
#define MMS_ENCODE_TOKENS_PER_STEP 8192

static Size *charged = NULL;	/* per slot */
static Size budget_used = 0;
static bool intake_blocked = false; /* a request waits for memory */

static MmsWorker *
me(void)
{
	return &mms_shared->workers[my_index];
}

static bool
still_mine(void)
{
	return me()->generation == my_generation;
}

/* before_shmem_exit: nothing this worker held may stay stuck. */
static void
worker_exit(int code, Datum arg)
{
	char		why[MMS_ERRMSG];
	dsm_handle	unpin;

	if (LWLockHeldByMe(mms_shared->lock))
		LWLockRelease(mms_shared->lock);
	LWLockAcquire(mms_shared->lock, LW_EXCLUSIVE);
	unpin = mms_worker_cache_release();
	if (still_mine())
	{
		MmsWorker  *w = me();

		snprintf(why, sizeof(why), "inference worker (pid %d) for model \"%s:%d\" exited while running this request",
				 MyProcPid, w->model.name, w->model.version);
		mms_worker_orphan_slots(my_index, why);
		if (w->state != MMS_W_EXITED)
		{
			if (w->exit_reason == MMS_EXIT_NONE)
				w->exit_reason = MMS_EXIT_OTHER;
			if (w->state != MMS_W_READY && w->exit_reason == MMS_EXIT_OTHER)
				w->failed_starts++;
			w->state = MMS_W_EXITED;
		}
		if (w->exit_reason == MMS_EXIT_LOAD_FAILED)
		{
			for (int i = 0; i < mms_shared->n_slots; i++)
			{
				MmsSlot    *s = mms_slot(i);

				if (s->worker == my_index && s->state == MMS_SLOT_QUEUED)
					mms_slot_fail(s, w->err.sqlstate, w->err.msg, w->err.hint);
			}
		}
		w->pid = 0;
		w->procno = -1;
		w->held = 0;
		w->batch = 0;
	}
	ConditionVariableBroadcast(&mms_shared->cv);
	LWLockRelease(mms_shared->lock);
	if (unpin != 0)
		dsm_unpin_segment(unpin);
	mms_wake_launcher();
}

static void
noop_task(void *arg, int task, int thread)
{
}

/*
 * Starts the engine's pool threads with every signal blocked, so that they
 * inherit a blocked mask: PostgreSQL's handlers (SIGTERM, SIGHUP, latch
 * wakeups) must run on this, the main, thread. The pool starts its threads
 * lazily, on the first parallel call.
 */
static void
start_engine_threads(void)
{
	PG_SETMASK(&BlockSig);
	mms_parallel(1, noop_task, NULL);
	PG_SETMASK(&UnBlockSig);
}

/* Loads or attaches the model; a failure is kept for the callers, then rethrown. */
static void
load_model(const MmsModelKey *k, MmsLoaded *loaded)
{
	MemoryContext cxt = CurrentMemoryContext;

	PG_TRY();
	{
		mms_worker_cache_get(k, loaded);
	}
	PG_CATCH();
	{
		ErrorData  *ed;

		MemoryContextSwitchTo(cxt);
		ed = CopyErrorData();
		LWLockAcquire(mms_shared->lock, LW_EXCLUSIVE);
		if (still_mine())
		{
			MmsWorker  *w = me();

			w->exit_reason = MMS_EXIT_LOAD_FAILED;
			w->err.sqlstate = ed->sqlerrcode;
			strlcpy(w->err.msg, ed->message ? ed->message : "could not load the model", sizeof(w->err.msg));
			strlcpy(w->err.hint, ed->hint ? ed->hint : "", sizeof(w->err.hint));
		}
		LWLockRelease(mms_shared->lock);
		PG_RE_THROW();
	}
	PG_END_TRY();
}

/* The caller's options over the engine's defaults. */
static void
resolve_options(const MmsOptionSet *set, MmsGenOptions *o)
{
	mms_gen_options_default(o);
	if (!(set->given & MMS_OPT_MAX_NEW_TOKENS) && set->max_new_cap > 0)
		o->max_new_tokens = Min(o->max_new_tokens, set->max_new_cap);
#define TAKE(bit, field) if (set->given & (bit)) o->field = set->v.field
	TAKE(MMS_OPT_MAX_NEW_TOKENS, max_new_tokens);
	TAKE(MMS_OPT_MIN_NEW_TOKENS, min_new_tokens);
	TAKE(MMS_OPT_NUM_BEAMS, num_beams);
	TAKE(MMS_OPT_LENGTH_PENALTY, length_penalty);
	TAKE(MMS_OPT_EARLY_STOPPING, early_stopping);
	TAKE(MMS_OPT_DO_SAMPLE, do_sample);
	TAKE(MMS_OPT_TEMPERATURE, temperature);
	TAKE(MMS_OPT_TOP_K, top_k);
	TAKE(MMS_OPT_TOP_P, top_p);
	TAKE(MMS_OPT_SEED, seed);
	TAKE(MMS_OPT_REPETITION_PENALTY, repetition_penalty);
#undef TAKE
}

/*
 * Bytes a request may take in this worker: the decoder caches the engine
 * accounts (self-attention per beam or sequence, cross-attention K/V) plus,
 * per row it decodes, the logits and the per-step scratch over the
 * vocabulary (two rows of floats).
 */
static Size
request_bytes(const MmsT5 *model, const MmsGenRequest *r)
{
	Size		rows = (Size) mms_gen_request_max_rows(r);

	return add_size(mms_gen_request_bytes(r),
					mul_size(mul_size(rows, (Size) mms_t5_config(model)->vocab), 2 * sizeof(float)));
}

static int
arrival_cmp(const void *a, const void *b)
{
	const MmsSlot *x = mms_slot(*(const int *) a);
	const MmsSlot *y = mms_slot(*(const int *) b);

	if (x->t_queued != y->t_queued)
		return x->t_queued < y->t_queued ? -1 : 1;
	return *(const int *) a - *(const int *) b;
}

/* Lock held: orders slot indexes by the time their requests were queued. */
static void
sort_by_arrival(int *slots, int n)
{
	if (n > 1)
		qsort(slots, n, sizeof(int), arrival_cmp);
}

/* Lock not held: gives a taken slot back to the queue (or frees it if abandoned). */
static void
requeue(int i)
{
	MmsSlot    *s = mms_slot(i);

	LWLockAcquire(mms_shared->lock, LW_EXCLUSIVE);
	if (s->state == MMS_SLOT_ABANDONED)
	{
		s->state = MMS_SLOT_FREE;
		ConditionVariableBroadcast(&mms_shared->cv);
	}
	else if (s->state == MMS_SLOT_RUNNING)
		s->state = MMS_SLOT_QUEUED;
	LWLockRelease(mms_shared->lock);
}

/* Lock not held: ends a taken slot with an error (or frees it if abandoned). */
static void
fail_taken(int i, int sqlstate, const char *msg, const char *hint)
{
	MmsSlot    *s = mms_slot(i);

	LWLockAcquire(mms_shared->lock, LW_EXCLUSIVE);
	if (s->state == MMS_SLOT_ABANDONED)
	{
		s->state = MMS_SLOT_FREE;
		ConditionVariableBroadcast(&mms_shared->cv);
	}
	else
		mms_slot_fail(s, sqlstate, msg, hint);
	LWLockRelease(mms_shared->lock);
}

/*
 * Creates and submits the engine request of a slot just taken (RUNNING).
 * false when it must wait for memory: the slot is queued again.
 */
static bool
start_request(MmsSched *sched, const MmsT5 *model, int i, Size budget)
{
	MmsSlot    *s = mms_slot(i);
	MmsGenRequest *r = NULL;
	MmsError	err;
	MmsStatus	st;
	MmsGenOptions o;
	Size		need;

	resolve_options(&s->opts, &o);
	if (s->kind == MMS_REQ_SCORE)
		st = mms_gen_score_request_create(model, s->tokens, s->n_input, s->tokens + s->n_input,
										  s->n_target, &r, &err);
	else if ((st = mms_gen_options_validate(&o, &err)) == MMS_OK)
		st = mms_gen_request_create(model, s->tokens, s->n_input, &o, &r, &err);
	if (st != MMS_OK)
	{
		fail_taken(i, mms_engine_sqlstate(st), err.msg, NULL);
		return true;
	}

	need = request_bytes(model, r);
	if (need > budget)
	{
		char		msg[MMS_ERRMSG];

		mms_gen_request_free(r);
		snprintf(msg, sizeof(msg),
				 "the request needs %zu kB of worker memory, more than mms.worker_memory (%zu kB): "
				 "%d input tokens, num_beams %d, max_new_tokens %d",
				 need / 1024 + 1, budget / 1024,
				 s->n_input, s->kind == MMS_REQ_SCORE ? 1 : o.num_beams,
				 s->kind == MMS_REQ_SCORE ? s->n_target : o.max_new_tokens);
		fail_taken(i, ERRCODE_PROGRAM_LIMIT_EXCEEDED, msg,
				   "Lower num_beams or max_new_tokens, or ask a superuser to raise mms.worker_memory.");
		return true;
	}
	if (budget_used + need > budget)
	{
		/* others hold the memory: wait for them (they always finish) */
		mms_gen_request_free(r);
		requeue(i);
		intake_blocked = true;
		return false;
	}
	if ((st = mms_sched_submit(sched, r, &err)) != MMS_OK)
	{
		mms_gen_request_free(r);
		fail_taken(i, mms_engine_sqlstate(st), err.msg, NULL);
		return true;
	}
	by_slot[i] = r;
	cancelled[i] = false;
	charged[i] = need;
	budget_used += need;
	return true;
}

/* Writes a collected request back into its slot (or frees an abandoned slot). */
static void
finish_request(MmsGenRequest *r)
{
	int			i;
	MmsSlot    *s;
	const MmsGenResult *res = mms_gen_request_result(r);
	MmsError	err;

	for (i = 0; i < mms_shared->n_slots; i++)
		if (by_slot[i] == r)
			break;
	if (i == mms_shared->n_slots)
	{
		mms_gen_request_free(r);
		return;
	}
	s = mms_slot(i);
	LWLockAcquire(mms_shared->lock, LW_EXCLUSIVE);
	if (s->state == MMS_SLOT_ABANDONED)
	{
		s->state = MMS_SLOT_FREE;
		ConditionVariableBroadcast(&mms_shared->cv);
	}
	else if (s->state == MMS_SLOT_RUNNING)
	{
		if (res == NULL)
		{
			MmsStatus	st = mms_gen_request_error(r, &err);

			mms_slot_fail(s, mms_engine_sqlstate(st), err.msg, NULL);
		}
		else if (res->n_ids > mms_shared->slot_tokens)
			mms_slot_fail(s, ERRCODE_PROGRAM_LIMIT_EXCEEDED, "result longer than a request slot", NULL);
		else
		{
			memcpy(s->tokens, res->ids, sizeof(int32) * res->n_ids);
			s->n_output = res->n_ids;
			s->logprob = res->logprob;
			s->score = res->score;
			s->err.sqlstate = 0;
			s->state = MMS_SLOT_DONE;
			mms_wake_procno(s->owner_procno);
		}
		me()->served++;
	}
	LWLockRelease(mms_shared->lock);
	by_slot[i] = NULL;
	budget_used -= charged[i];
	charged[i] = 0;
	intake_blocked = false;
	mms_gen_request_free(r);
}

void
mms_worker_main(Datum arg)
{
	MmsModelKey key;
	MmsLoaded	loaded;
	MmsSched   *sched;
	MmsSchedConfig cfg;
	MmsError	err;
	int			n_held = 0;
	int			n_slots;
	int		   *take;
	uint64		seen_steps = 0;
	uint64		seen_rows = 0;
	bool		ok;

	my_index = DatumGetInt32(arg);
	memcpy(&my_generation, MyBgworkerEntry->bgw_extra, sizeof(my_generation));
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	BackgroundWorkerUnblockSignals();
	if (mms_shared == NULL || my_index < 0 || my_index >= MMS_MAX_WORKERS)
		proc_exit(0);

	LWLockAcquire(mms_shared->lock, LW_EXCLUSIVE);
	ok = still_mine() && me()->state == MMS_W_STARTING;
	if (ok)
	{
		me()->pid = MyProcPid;
		me()->procno = MyProc->pgprocno;
		me()->state = MMS_W_LOADING;
		me()->started_at = GetCurrentTimestamp();
		key = me()->model;
	}
	LWLockRelease(mms_shared->lock);
	if (!ok)
		proc_exit(0);			/* the entry moved on while we started */
	before_shmem_exit(worker_exit, 0);

	n_slots = mms_shared->n_slots;
	by_slot = MemoryContextAllocZero(TopMemoryContext, sizeof(MmsGenRequest *) * n_slots);
	cancelled = MemoryContextAllocZero(TopMemoryContext, sizeof(bool) * n_slots);
	take = MemoryContextAlloc(TopMemoryContext, sizeof(int) * n_slots);
	charged = MemoryContextAllocZero(TopMemoryContext, sizeof(Size) * n_slots);

	/* as the bootstrap superuser; the caller's rights were checked by the caller */
	BackgroundWorkerInitializeConnectionByOid(key.dboid, InvalidOid, 0);
	set_ps_display("loading");
	load_model(&key, &loaded);

	memset(&cfg, 0, sizeof(cfg));
	cfg.max_running = mms_max_batch;
	cfg.threads = mms_threads_per_worker;
	/*
	 * No byte bound in the engine: this file charges each request against
	 * mms.worker_memory as it is now (a reload may change it), and a request
	 * that does not fit waits instead of failing.
	 */
	cfg.max_bytes = 0;
	/*
	 * The encoder's scratch grows with the tokens encoded in one step: 256
	 * queued inputs of 1024 tokens would take gigabytes at once. A step
	 * encodes at most this many (a longer single input still goes alone).
	 */
	cfg.max_encode_tokens = MMS_ENCODE_TOKENS_PER_STEP;
	if (mms_sched_create(loaded.model, &cfg, &sched, &err) != MMS_OK)
		ereport(ERROR,
				(errcode(mms_engine_sqlstate(err.code)),
				 errmsg("could not start the scheduler: %s", err.msg)));
	start_engine_threads();

	LWLockAcquire(mms_shared->lock, LW_EXCLUSIVE);
	me()->state = MMS_W_READY;
	me()->failed_starts = 0;
	me()->last_active = GetCurrentTimestamp();
	ConditionVariableBroadcast(&mms_shared->cv);
	LWLockRelease(mms_shared->lock);
	set_ps_display("idle");

	for (;;)
	{
		int			n_take = 0;
		bool		leave = false;
		TimestampTz now;
		long		idle_left_ms = 0;

		CHECK_FOR_INTERRUPTS();
		if (ShutdownRequestPending)
			proc_exit(1);
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		/* intake and cancellations */
		now = GetCurrentTimestamp();
		LWLockAcquire(mms_shared->lock, LW_EXCLUSIVE);
		for (int i = 0; i < n_slots; i++)
		{
			MmsSlot    *s = mms_slot(i);

			if (s->worker != my_index)
				continue;
			if (s->state == MMS_SLOT_QUEUED && !intake_blocked)
			{
				s->state = MMS_SLOT_RUNNING;
				s->t_started = now;
				take[n_take++] = i;
			}
			else if (s->state == MMS_SLOT_ABANDONED && by_slot[i] && !cancelled[i])
			{
				mms_sched_cancel(sched, by_slot[i]);
				cancelled[i] = true;
			}
		}
		/*
		 * First come, first served: a request waiting for memory goes back to
		 * the queue with its place, so later (smaller) ones cannot overtake it
		 * forever.
		 */
		sort_by_arrival(take, n_take);
		if (n_take > 0 || n_held > 0)
			me()->last_active = now;
		me()->held = n_held + n_take;
		if (n_held == 0 && n_take == 0 && mms_worker_queued(my_index) == 0)
		{
			long		idle_ms = (long) ((now - me()->last_active) / 1000);

			if (me()->stop_requested || idle_ms >= mms_worker_idle_timeout_ms)
			{
				/* leave in the same critical section: nobody queues to EXITED */
				me()->exit_reason = me()->stop_requested ? MMS_EXIT_STOP : MMS_EXIT_IDLE;
				me()->state = MMS_W_EXITED;
				leave = true;
			}
			idle_left_ms = mms_worker_idle_timeout_ms - idle_ms;
		}
		LWLockRelease(mms_shared->lock);
		if (leave)
			proc_exit(0);

		{
			Size		budget = mms_worker_memory_bytes();
			int			j = 0;

			for (; j < n_take; j++)
				if (!start_request(sched, loaded.model, take[j], budget))
					break;
			/* the rest keep their place in the queue */
			for (j++; j < n_take; j++)
				requeue(take[j]);
		}

		if (n_take == 0 && n_held == 0)
		{
			set_ps_display("idle");
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 Max(Min(idle_left_ms, 1000L), 10L), PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
			continue;
		}

		set_ps_display("running");
		ResetLatch(MyLatch);
		if (mms_sched_step(sched, &n_held, &err) != MMS_OK)
			ereport(ERROR,
					(errcode(mms_engine_sqlstate(err.code)),
					 errmsg("inference step failed: %s", err.msg)));
		{
			MmsGenRequest *r;
			MmsSchedStats ss;

			while ((r = mms_sched_collect(sched)) != NULL)
				finish_request(r);
			mms_sched_stats(sched, &ss);
			LWLockAcquire(mms_shared->lock, LW_EXCLUSIVE);
			me()->batch = ss.last_batch;
			me()->held = n_held;
			{
				MmsStat    *st = mms_stat_for(&key);

				if (st)
				{
					st->steps += ss.steps - seen_steps;
					st->rows += ss.rows - seen_rows;
					st->max_batch = Max(st->max_batch, ss.last_batch);
				}
			}
			LWLockRelease(mms_shared->lock);
			seen_steps = ss.steps;
			seen_rows = ss.rows;
		}
	}
}
