/*
 * worker.c — the inference worker (mms_worker.so, the only library that links
 * OpenBLAS; loaded by worker processes alone, never by the postmaster). A
 * worker belongs to the pool of one served model and connects to no
 * database: it maps the model's weights from their DSM segment, then loops:
 * take requests from the model's queue into the engine's continuous-batching
 * scheduler, run one decoder step, hand finished requests back, cancel the
 * ones their callers abandoned. It leaves when drained, when its model is no
 * longer registered, or when idle past mms.worker_idle_timeout with more
 * workers in the pool than min_workers (workers.c decides that atomically).
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
static int	my_served = -1;
static bool attached = false;
static bool serving = false;	/* reached READY */

/* names of the registrations whose requests this worker ran (batch histograms) */
static MmsModelRef hist_refs[MMS_MAX_USERS];
static int	n_hist_refs = 0;

/* engine request of each slot this worker runs; NULL when none */
static MmsGenRequest **by_slot = NULL;
static bool *cancelled = NULL;

/*
 * Memory budget (mms.worker_memory): what the requests this worker holds may
 * take, so that no mix of requests drives the machine into the OOM killer
 * (whose kill of a worker restarts the whole cluster). Each request is
 * charged when taken and refunded when collected; one that does not fit now
 * goes back to the head of the queue until others finish; one that can never
 * fit fails.
 */
#define MMS_ENCODE_TOKENS_PER_STEP 8192

static Size *charged = NULL;	/* per slot */
static int	take_cap = 0;		/* entries of the intake array (mms.max_batch at start) */
static Size budget_used = 0;
static bool intake_blocked = false; /* a request waits for memory */

/* before_shmem_exit: nothing this worker held may stay stuck. */
static void
worker_exit(int code, Datum arg)
{
	MmsSlotError err;
	bool		clean = true;

	if (by_slot != NULL)
	{
		/* terminated (pg_terminate_backend, shutdown) or failed */
		mms_set_error(&err, ShutdownRequestPending ? ERRCODE_OPERATOR_INTERVENTION : ERRCODE_SYSTEM_ERROR,
					  "the inference worker exited while running this request",
					  "The request was in flight; it can be retried.");
		snprintf(err.detail, sizeof(err.detail), "The worker was process %d%s.", MyProcPid,
				 ShutdownRequestPending ? ", terminated" : "");
		for (int i = 0; i < mms_shared->n_slots; i++)
			if (by_slot[i] != NULL)
			{
				mms_queue_finish(i, NULL, 0, 0, &err);
				by_slot[i] = NULL;
				clean = false;
			}
	}
	if (!serving && code != 0 && my_served >= 0)
	{
		/* could not start: what waits would only start another that fails the same way */
		mms_set_error(&err, ERRCODE_SYSTEM_ERROR, "the inference worker could not start",
					  "The server log shows why.");
		mms_queue_fail_all(my_served, &err);
	}
	if (attached)
		mms_served_detach(my_served);
	attached = false;
	/* a worker that left by itself was marked EXITED when it decided to */
	mms_workers_exited(my_index, my_generation, clean && code == 0);
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

static void
fail_taken(int i, int sqlstate, const char *msg, const char *hint)
{
	MmsSlotError err;

	mms_set_error(&err, sqlstate, msg, hint);
	mms_queue_finish(i, NULL, 0, 0, &err);
}

/*
 * Creates and submits the engine request of a slot just taken (RUNNING).
 * false when it must wait for memory (the caller returns it to the queue).
 * The options are final: the caller resolved and validated them.
 */
static bool
start_request(MmsSched *sched, const MmsT5 *model, int i, Size budget)
{
	MmsSlot    *s = mms_slot(i);
	MmsGenRequest *r = NULL;
	MmsError	err;
	MmsStatus	st;
	Size		need;

	if (s->kind == MMS_REQ_SCORE)
		st = mms_gen_score_request_create(model, s->tokens, s->n_input, s->tokens + s->n_input,
										  s->n_target, &r, &err);
	else
		st = mms_gen_request_create(model, s->tokens, s->n_input, &s->opts, &r, &err);
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
				 s->n_input, s->kind == MMS_REQ_SCORE ? 1 : s->opts.num_beams,
				 s->kind == MMS_REQ_SCORE ? s->n_target : s->opts.max_new_tokens);
		fail_taken(i, ERRCODE_PROGRAM_LIMIT_EXCEEDED, msg,
				   "Lower num_beams or max_new_tokens, or ask a superuser to raise mms.worker_memory.");
		return true;
	}
	if (budget_used + need > budget)
	{
		/* others hold the memory: wait for them (they always finish) */
		mms_gen_request_free(r);
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

/* Writes a collected request back into its slot. */
static void
finish_request(MmsGenRequest *r)
{
	int			i;
	const MmsGenResult *res = mms_gen_request_result(r);
	MmsError	err;
	MmsSlotError serr;

	for (i = 0; i < mms_shared->n_slots; i++)
		if (by_slot[i] == r)
			break;
	if (i == mms_shared->n_slots)
	{
		mms_gen_request_free(r);
		return;
	}
	if (res == NULL)
	{
		MmsStatus	st = mms_gen_request_error(r, &err);

		mms_set_error(&serr, mms_engine_sqlstate(st), err.msg, NULL);
		mms_queue_finish(i, NULL, 0, 0, &serr);
	}
	else
		mms_queue_finish(i, res->ids, res->n_ids, res->logprob, NULL);
	by_slot[i] = NULL;
	budget_used -= charged[i];
	charged[i] = 0;
	intake_blocked = false;
	mms_gen_request_free(r);
}

/* The name and version of registration (dboid, model_id) among the served model's users; false if unknown. */
static bool
hist_label(Oid dboid, int64 model_id, MmsModelRef *out)
{
	MmsServed	s;

	for (int pass = 0; pass < 2; pass++)
	{
		for (int k = 0; k < n_hist_refs; k++)
			if (hist_refs[k].dboid == dboid && hist_refs[k].model_id == model_id)
			{
				*out = hist_refs[k];
				return true;
			}
		/* not seen yet: the served model lists the registrations that use it */
		if (pass > 0 || !mms_served_get(my_served, 0, &s))
			break;
		n_hist_refs = Min(s.n_users, MMS_MAX_USERS);
		memcpy(hist_refs, s.users, sizeof(MmsModelRef) * n_hist_refs);
	}
	return false;
}

/*
 * After a decoder step, before finished requests are collected, one pass over
 * the held requests: each one's tokens so far into its slot (the first sets
 * its first-token time), and, with rows > 0, the step's rows into the
 * batch-size histogram of every registration with a request in it: weights
 * shared by several databases or names are decoded together, and each sees
 * the batches its requests got.
 */
static void
after_step(double rows)
{
	MmsModelRef seen[MMS_MAX_USERS];
	int			n_seen = 0;
	double		obs[MMS_H_N] = {-1, -1, -1, -1, -1};

	for (int i = 0; i < mms_shared->n_slots; i++)
	{
		MmsSlot    *sl;
		int			j;

		if (by_slot[i] == NULL)
			continue;
		if (!cancelled[i])
		{
			const int32_t *ids = NULL;
			int32_t		n = mms_gen_request_prefix(by_slot[i], &ids);

			if (ids != NULL)
				mms_queue_progress(i, n, ids);
			else
				mms_queue_progress(i, mms_gen_request_generated(by_slot[i]), NULL);
		}
		if (rows <= 0 || n_seen == MMS_MAX_USERS)
			continue;
		sl = mms_slot(i);
		for (j = 0; j < n_seen; j++)
			if (seen[j].dboid == sl->dboid && seen[j].model_id == sl->model_id)
				break;
		if (j == n_seen && hist_label(sl->dboid, sl->model_id, &seen[n_seen]))
			n_seen++;
	}
	obs[MMS_H_BATCH] = rows;
	for (int j = 0; j < n_seen; j++)
		mms_hist_record(seen[j].dboid, seen[j].model_id, seen[j].name, seen[j].version, obs);
}

/* Cancels held requests whose callers left. */
static void
cancel_abandoned(MmsSched *sched)
{
	for (int i = 0; i < mms_shared->n_slots; i++)
		if (by_slot[i] != NULL && !cancelled[i] && mms_queue_is_abandoned(i))
		{
			mms_sched_cancel(sched, by_slot[i]);
			cancelled[i] = true;
		}
}

static int
by_arrival(const void *a, const void *b)
{
	TimestampTz x = mms_slot(*(const int *) a)->t_queued;
	TimestampTz y = mms_slot(*(const int *) b)->t_queued;

	return x < y ? -1 : x > y;
}

/*
 * Preempted to make room for another model: the requests this worker runs
 * go back to the head of the queue, in arrival order, for the pool's other
 * workers; they restart from their input (the engine's results do not depend
 * on where or with what a request ran). Then the worker leaves.
 */
static void
give_back_and_exit(void)
{
	int		   *held = palloc(sizeof(int) * mms_shared->n_slots);
	int			n = 0;

	for (int i = 0; i < mms_shared->n_slots; i++)
		if (by_slot[i] != NULL)
		{
			held[n++] = i;
			by_slot[i] = NULL;	/* no longer ours: the exit must not fail them */
		}
	qsort(held, n, sizeof(int), by_arrival);
	mms_queue_return(my_served, held, n);
	mms_workers_wake(my_served);
	proc_exit(0);
}

/* Takes what the scheduler has room for; returns the number started. */
static int
intake(MmsSched *sched, const MmsT5 *model, int n_held, int *take)
{
	/* the scheduler and the intake array were sized by mms.max_batch at start; a reload cannot grow them */
	int			room = Min(mms_max_batch, take_cap) - n_held;
	int			n_take;
	int			started = 0;
	Size		budget = mms_worker_memory_bytes();
	MmsServed	s;

	/* no more than it can run now: the rest stays for the pool's other workers */
	if (room <= 0 || intake_blocked)
		return 0;
	/*
	 * While the pool may grow, a worker holds at most mms.pool_target_requests
	 * (Ray Serve's target_ongoing_requests): the rest waits in the queue, which
	 * is what makes the launcher add a worker to take it. A pool at its bound
	 * batches as much as it can.
	 */
	if (mms_served_get(my_served, 0, &s) && mms_workers_can_grow(my_served, s.pool.max_workers))
		room = Min(room, mms_pool_target_requests - n_held);
	if (room <= 0)
		return 0;
	n_take = mms_queue_take(my_served, my_index, room, take);
	for (int j = 0; j < n_take; j++)
	{
		if (!start_request(sched, model, take[j], budget))
		{
			/* first come, first served: it and those after it keep their place */
			mms_queue_return(my_served, take + j, n_take - j);
			break;
		}
		started++;
	}
	return started;
}

void
mms_worker_main(Datum arg)
{
	MmsWorker	me;
	MmsLoaded	loaded;
	MmsSched   *sched;
	MmsSchedConfig cfg;
	MmsError	err;
	int			n_held = 0;
	int		   *take;
	uint64		seen_steps = 0;
	uint64		seen_rows = 0;

	my_index = DatumGetInt32(arg);
	memcpy(&my_generation, MyBgworkerEntry->bgw_extra, sizeof(my_generation));
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	BackgroundWorkerUnblockSignals();
	if (mms_shared == NULL || !mms_workers_begin(my_index, my_generation, &me))
		proc_exit(0);			/* the entry moved on while we started */
	my_served = me.served;
	before_shmem_exit(worker_exit, 0);
	/*
	 * Connected to no database (so it holds up no CREATE/ALTER/DROP DATABASE),
	 * but a backend all the same: pg_stat_activity shows it and
	 * pg_terminate_backend reaches it. The loop absorbs procsignal barriers.
	 */
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);

	by_slot = MemoryContextAllocZero(TopMemoryContext, sizeof(MmsGenRequest *) * mms_shared->n_slots);
	cancelled = MemoryContextAllocZero(TopMemoryContext, sizeof(bool) * mms_shared->n_slots);
	charged = MemoryContextAllocZero(TopMemoryContext, sizeof(Size) * mms_shared->n_slots);
	take_cap = Max(1, mms_max_batch);
	take = MemoryContextAlloc(TopMemoryContext, sizeof(int) * take_cap);

	set_ps_display("attaching");
	if (!mms_worker_attach(me.served, me.served_gen, &loaded, &attached))
		proc_exit(0);			/* evicted or unregistered meanwhile: the launcher decides again */

	memset(&cfg, 0, sizeof(cfg));
	cfg.max_running = mms_max_batch;
	cfg.threads = mms_threads_per_worker;
	/*
	 * No byte bound in the engine: this file charges each request against
	 * mms.worker_memory as it is now (a reload may change it).
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
	mms_workers_set_state(my_index, my_generation, MMS_W_READY);
	serving = true;
	set_ps_display("idle");

	for (;;)
	{
		int			n_new;
		bool		preempted;
		MmsSchedStats ss;
		MmsGenRequest *r;
		uint64		finished = 0;

		CHECK_FOR_INTERRUPTS();
		if (ShutdownRequestPending)
			proc_exit(1);
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		cancel_abandoned(sched);
		if (mms_workers_is_draining(my_index, my_generation, &preempted))
		{
			if (preempted)
				give_back_and_exit();
			n_new = 0;
		}
		else
			n_new = intake(sched, loaded.model, n_held, take);

		if (n_held == 0 && n_new == 0)
		{
			MmsServed	s;
			int			queued,
						running;
			bool		doomed;
			bool		drained;

			mms_workers_report(my_index, my_generation, 0, 0, 0, false);
			if (!mms_served_get(my_served, me.served_gen, &s))
				memset(&s, 0, sizeof(s));	/* gone: leave */
			doomed = s.sha256[0] == '\0' || s.doomed;
			mms_queue_depth(my_served, &queued, &running, NULL);
			drained = mms_workers_is_draining(my_index, my_generation, NULL);

			/*
			 * A model no longer registered still serves what was queued
			 * before; a drained worker leaves the queue to the pool's others.
			 */
			if (queued == 0 || drained)
			{
				if (mms_workers_may_leave(my_index, my_generation, s.pool.min_workers, doomed))
				{
					/* a drain was announced by whoever asked for it */
					if (doomed)
						mms_event("worker_exit", &s, "worker %d left: the model is no longer registered", MyProcPid);
					else if (!drained)
						mms_event("scale_down", &s, "worker %d left after %d ms idle", MyProcPid,
								  mms_worker_idle_timeout_ms);
					proc_exit(0);
				}
			}
			set_ps_display("idle");
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 Min(mms_worker_idle_timeout_ms, 1000L) + 10, PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
			continue;
		}

		set_ps_display("running");
		ResetLatch(MyLatch);
		if (mms_sched_step(sched, &n_held, &err) != MMS_OK)
			ereport(ERROR,
					(errcode(mms_engine_sqlstate(err.code)),
					 errmsg("inference step failed: %s", err.msg)));
		mms_sched_stats(sched, &ss);
		/* one step per call; were there more, their mean */
		after_step(ss.steps > seen_steps && mms_track_latency ?
				   (double) (ss.rows - seen_rows) / (ss.steps - seen_steps) : 0);
		while ((r = mms_sched_collect(sched)) != NULL)
		{
			finish_request(r);
			finished++;
		}
		mms_sched_stats(sched, &ss);
		mms_workers_report(my_index, my_generation, n_held, ss.last_batch, finished, true);
		mms_served_add_steps(my_served, ss.steps - seen_steps, ss.rows - seen_rows, ss.last_batch);
		seen_steps = ss.steps;
		seen_rows = ss.rows;
	}
}
