/*
 * launcher.c — the launcher background worker (in mms.so, no BLAS): starts an
 * inference worker (mms_worker.so) for each (database, model) that has
 * requests, replaces workers that die, frees the entries of workers that
 * exited, and keeps the number of running workers within mms.max_workers by
 * asking idle ones to stop. Also the backend-side lookup of a model's worker.
 * The workers themselves: worker.c; the shared state: serve.h.
 */
#include "postgres.h"

#include <signal.h>

#include "access/xact.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "serve.h"

/* a worker that exits this many times in a row before serving is given up */
#define MAX_FAILED_STARTS 3

/* Handles of the workers this launcher registered (launcher-local). */
static BackgroundWorkerHandle *handles[MMS_MAX_WORKERS];

void
mms_launcher_register(void)
{
	BackgroundWorker bgw;

	memset(&bgw, 0, sizeof(bgw));
	bgw.bgw_flags = BGWORKER_SHMEM_ACCESS;
	/* consistent state: also on hot standbys */
	bgw.bgw_start_time = BgWorkerStart_ConsistentState;
	bgw.bgw_restart_time = 5;
	strlcpy(bgw.bgw_library_name, "mms", BGW_MAXLEN);
	strlcpy(bgw.bgw_function_name, "mms_launcher_main", BGW_MAXLEN);
	strlcpy(bgw.bgw_name, "mms launcher", BGW_MAXLEN);
	strlcpy(bgw.bgw_type, "mms launcher", BGW_MAXLEN);
	RegisterBackgroundWorker(&bgw);
}

static bool
serving(const MmsWorker *w)
{
	return w->state == MMS_W_REQUESTED || w->state == MMS_W_STARTING ||
		w->state == MMS_W_LOADING || w->state == MMS_W_READY;
}

int
mms_find_worker(const MmsModelKey *k)
{
	for (int i = 0; i < MMS_MAX_WORKERS; i++)
	{
		MmsWorker  *w = &mms_shared->workers[i];

		if (!mms_key_equal(&w->model, k) || w->stop_requested)
			continue;
		/* an entry whose worker died will be restarted: queue there too */
		if (serving(w) || (w->state == MMS_W_EXITED && w->exit_reason == MMS_EXIT_OTHER))
			return i;
	}
	return -1;
}

int
mms_want_worker(const MmsModelKey *k)
{
	int			i = mms_find_worker(k);

	if (i >= 0)
		return i;
	for (i = 0; i < MMS_MAX_WORKERS; i++)
	{
		MmsWorker  *w = &mms_shared->workers[i];

		if (w->state != MMS_W_FREE)
			continue;
		w->generation++;
		w->model = *k;
		w->state = MMS_W_REQUESTED;
		w->pid = 0;
		w->procno = -1;
		w->stop_requested = false;
		w->exit_reason = MMS_EXIT_NONE;
		w->failed_starts = 0;
		memset(&w->err, 0, sizeof(w->err));
		w->batch = 0;
		w->held = 0;
		w->served = 0;
		w->started_at = 0;
		w->last_active = GetCurrentTimestamp();
		return i;
	}
	return -1;
}

void
mms_wake_launcher(void)
{
	mms_wake_procno(mms_shared->launcher_procno);
}

static void
launcher_exit(int code, Datum arg)
{
	LWLockAcquire(mms_shared->lock, LW_EXCLUSIVE);
	if (mms_shared->launcher_pid == MyProcPid)
	{
		mms_shared->launcher_procno = -1;
		mms_shared->launcher_pid = 0;
	}
	LWLockRelease(mms_shared->lock);
}

/* Lock held: fails the QUEUED slots of entry i (nothing will run them). */
static void
fail_queued(int i, const MmsSlotError *err)
{
	for (int s = 0; s < mms_shared->n_slots; s++)
	{
		MmsSlot    *slot = mms_slot(s);

		if (slot->worker == i && slot->state == MMS_SLOT_QUEUED)
			mms_slot_fail(slot, err->sqlstate, err->msg, err->hint);
	}
}

static void
set_err(MmsSlotError *e, int sqlstate, const char *msg, const char *hint)
{
	e->sqlstate = sqlstate;
	strlcpy(e->msg, msg, sizeof(e->msg));
	strlcpy(e->hint, hint, sizeof(e->hint));
}

/* Lock held: the entry's process is gone; decide what becomes of the entry. */
static void
settle_exited(int i)
{
	MmsWorker  *w = &mms_shared->workers[i];
	int			queued = mms_worker_queued(i);

	if (handles[i])
	{
		pfree(handles[i]);
		handles[i] = NULL;
	}
	if (w->exit_reason == MMS_EXIT_LOAD_FAILED || w->failed_starts >= MAX_FAILED_STARTS)
	{
		if (w->err.sqlstate == 0)
			set_err(&w->err, ERRCODE_SYSTEM_ERROR,
					"the inference worker exited before it could serve",
					"The server log shows why.");
		fail_queued(i, &w->err);
		w->state = MMS_W_FREE;
	}
	else if (queued > 0)
	{
		/*
		 * Replace it: same entry, so queued requests stay where they are. A
		 * worker that died with nothing queued is replaced by the next call
		 * (its database may be going away: DROP DATABASE terminates it).
		 */
		w->generation++;
		w->state = MMS_W_REQUESTED;
		w->exit_reason = MMS_EXIT_NONE;
		w->stop_requested = false;
	}
	else
		w->state = MMS_W_FREE;
	ConditionVariableBroadcast(&mms_shared->cv);
}

static int
running_count(void)
{
	int			n = 0;

	for (int i = 0; i < MMS_MAX_WORKERS; i++)
	{
		MmsWorkerState st = mms_shared->workers[i].state;

		if (st == MMS_W_STARTING || st == MMS_W_LOADING || st == MMS_W_READY)
			n++;
	}
	return n;
}

/* Lock held: asks the longest-idle worker not serving k to stop; true if one was asked. */
static bool
stop_one_idle(const MmsModelKey *k)
{
	int			best = -1;

	for (int i = 0; i < MMS_MAX_WORKERS; i++)
	{
		MmsWorker  *w = &mms_shared->workers[i];

		if (w->state != MMS_W_READY || mms_key_equal(&w->model, k))
			continue;
		if (w->stop_requested)
			return true;		/* one is on its way out */
		if (w->held > 0 || mms_worker_queued(i) > 0)
			continue;
		if (best < 0 || w->last_active < mms_shared->workers[best].last_active)
			best = i;
	}
	if (best < 0)
		return false;
	mms_shared->workers[best].stop_requested = true;
	mms_wake_procno(mms_shared->workers[best].procno);
	return true;
}

static bool
start_worker(int i, uint32 generation, const MmsModelKey *k)
{
	BackgroundWorker bgw;

	memset(&bgw, 0, sizeof(bgw));
	bgw.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	bgw.bgw_start_time = BgWorkerStart_ConsistentState;
	bgw.bgw_restart_time = BGW_NEVER_RESTART;
	/* the only library that links OpenBLAS, loaded by the worker process alone */
	strlcpy(bgw.bgw_library_name, "mms_worker", BGW_MAXLEN);
	strlcpy(bgw.bgw_function_name, "mms_worker_main", BGW_MAXLEN);
	snprintf(bgw.bgw_name, BGW_MAXLEN, "mms worker for %s:%d", k->name, k->version);
	strlcpy(bgw.bgw_type, "mms worker", BGW_MAXLEN);
	bgw.bgw_main_arg = Int32GetDatum(i);
	memcpy(bgw.bgw_extra, &generation, sizeof(generation));
	bgw.bgw_notify_pid = MyProcPid;
	return RegisterDynamicBackgroundWorker(&bgw, &handles[i]);
}

/*
 * Lock held: is the process of entry i still there? A restarted launcher has
 * no handles for workers started before; it goes by their pid.
 */
static bool
alive(int i)
{
	MmsWorker  *w = &mms_shared->workers[i];
	pid_t		pid;

	if (handles[i])
		return GetBackgroundWorkerPid(handles[i], &pid) != BGWH_STOPPED;
	return w->pid > 0 && kill(w->pid, 0) == 0;
}

static void
launcher_pass(void)
{
	int			want[MMS_MAX_WORKERS];
	uint32		want_gen[MMS_MAX_WORKERS];
	MmsModelKey want_key[MMS_MAX_WORKERS];
	int			n_want = 0;

	LWLockAcquire(mms_shared->lock, LW_EXCLUSIVE);
	for (int i = 0; i < MMS_MAX_WORKERS; i++)
	{
		MmsWorker  *w = &mms_shared->workers[i];

		if ((w->state == MMS_W_STARTING || w->state == MMS_W_LOADING || w->state == MMS_W_READY) &&
			!alive(i))
		{
			/* gone without its exit callback (or started by an earlier launcher) */
			mms_worker_orphan_slots(i, "the inference worker exited while running this request");
			if (w->state != MMS_W_READY)
				w->failed_starts++;
			w->state = MMS_W_EXITED;
			w->exit_reason = MMS_EXIT_OTHER;
			w->pid = 0;
			w->procno = -1;
		}
		if (w->state == MMS_W_EXITED)
			settle_exited(i);
		if (w->state == MMS_W_REQUESTED)
		{
			want[n_want] = i;
			want_gen[n_want] = w->generation;
			want_key[n_want] = w->model;
			n_want++;
		}
	}
	LWLockRelease(mms_shared->lock);

	for (int j = 0; j < n_want; j++)
	{
		int			i = want[j];
		MmsWorker  *w = &mms_shared->workers[i];
		bool		room;
		bool		started = false;

		LWLockAcquire(mms_shared->lock, LW_EXCLUSIVE);
		room = running_count() < mms_max_workers;
		if (!room)
			(void) stop_one_idle(&want_key[j]);
		LWLockRelease(mms_shared->lock);
		if (!room)
			continue;			/* retried when the stopped one has exited */

		if (handles[i])
		{
			pfree(handles[i]);
			handles[i] = NULL;
		}
		started = start_worker(i, want_gen[j], &want_key[j]);

		LWLockAcquire(mms_shared->lock, LW_EXCLUSIVE);
		if (w->state == MMS_W_REQUESTED && w->generation == want_gen[j])
		{
			if (started)
				w->state = MMS_W_STARTING;
			else
			{
				MmsSlotError e;

				set_err(&e, ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
						"could not start an inference worker: no background worker slot is free",
						"Raise max_worker_processes (it must exceed mms.max_workers plus other background workers).");
				fail_queued(i, &e);
				w->state = MMS_W_FREE;
				ConditionVariableBroadcast(&mms_shared->cv);
			}
		}
		LWLockRelease(mms_shared->lock);
	}
}

void
mms_launcher_main(Datum arg)
{
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	BackgroundWorkerUnblockSignals();

	LWLockAcquire(mms_shared->lock, LW_EXCLUSIVE);
	mms_shared->launcher_procno = MyProc->pgprocno;
	mms_shared->launcher_pid = MyProcPid;
	LWLockRelease(mms_shared->lock);
	before_shmem_exit(launcher_exit, 0);

	for (;;)
	{
		if (ShutdownRequestPending)
			proc_exit(1);		/* 1: the postmaster restarts us unless it is shutting down */
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		launcher_pass();
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 1000L, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

/*
 * Before DROP DATABASE: the workers connected to it would make the drop fail
 * ("being accessed by other users"). Asks its idle workers to stop, waits a
 * little for them, and drops its unused cached weights. Busy workers serve
 * sessions of that database, which block the drop anyway.
 */
void
mms_release_database(Oid dboid)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 5000);

	if (mms_shared == NULL || !OidIsValid(dboid))
		return;
	for (;;)
	{
		bool		waiting = false;
		dsm_handle	unpin[MMS_MAX_CACHED];
		int			n_unpin = 0;

		LWLockAcquire(mms_shared->lock, LW_EXCLUSIVE);
		for (int i = 0; i < MMS_MAX_WORKERS; i++)
		{
			MmsWorker  *w = &mms_shared->workers[i];

			if (w->model.dboid != dboid || w->state == MMS_W_FREE || w->state == MMS_W_EXITED)
				continue;
			if (w->held == 0 && mms_worker_queued(i) == 0)
			{
				w->stop_requested = true;
				mms_wake_procno(w->procno);
			}
			waiting = true;
		}
		for (int i = 0; i < MMS_MAX_CACHED; i++)
		{
			MmsCacheEntry *e = &mms_shared->cache[i];

			if (e->model.dboid == dboid && e->state == MMS_C_READY && e->refcount == 0)
				unpin[n_unpin++] = mms_cache_evict_locked(i);
		}
		LWLockRelease(mms_shared->lock);
		for (int i = 0; i < n_unpin; i++)
			dsm_unpin_segment(unpin[i]);
		if (!waiting || GetCurrentTimestamp() > deadline)
			break;
		(void) ConditionVariableTimedSleep(&mms_shared->cv, 100, PG_WAIT_EXTENSION);
		ConditionVariableCancelSleep();
		CHECK_FOR_INTERRUPTS();
	}
}

void
mms_forget_models(Oid dboid, int64 model_id)
{
	dsm_handle	unpin[MMS_MAX_CACHED];
	int			n_unpin = 0;

	if (mms_shared == NULL || !OidIsValid(dboid))
		return;
	LWLockAcquire(mms_shared->lock, LW_EXCLUSIVE);
	for (int i = 0; i < MMS_MAX_WORKERS; i++)
	{
		MmsWorker  *w = &mms_shared->workers[i];

		if (w->state == MMS_W_FREE || w->model.dboid != dboid ||
			(model_id != 0 && w->model.model_id != model_id))
			continue;
		/* in-flight requests finish; the worker leaves once idle */
		w->stop_requested = true;
		mms_wake_procno(w->procno);
	}
	for (int i = 0; i < MMS_MAX_CACHED; i++)
	{
		MmsCacheEntry *e = &mms_shared->cache[i];

		if (e->state == MMS_C_EMPTY || e->model.dboid != dboid ||
			(model_id != 0 && e->model.model_id != model_id))
			continue;
		if (e->state == MMS_C_READY && e->refcount == 0)
			unpin[n_unpin++] = mms_cache_evict_locked(i);
		else
			e->doomed = true;
	}
	/* a gone model's statistics would hold a place in the fixed table forever */
	for (int i = 0; i < MMS_MAX_STATS; i++)
	{
		MmsStat    *st = &mms_shared->stats[i];

		if (st->used && st->dboid == dboid && (model_id == 0 || st->model_id == model_id))
			st->used = false;
	}
	ConditionVariableBroadcast(&mms_shared->cv);
	LWLockRelease(mms_shared->lock);
	for (int i = 0; i < n_unpin; i++)
		dsm_unpin_segment(unpin[i]);
}

/*
 * Forgetting before commit would race: a call arriving between the forget and
 * the commit still sees the model, gets a new worker and loads a new cache
 * entry that nothing would ever mark. After commit, a new worker can no longer
 * read the weights (its snapshot sees them deleted); a rollback keeps the cache.
 */
typedef struct PendingForget
{
	Oid			dboid;
	int64		model_id;
	int			nest_level;		/* subtransaction that asked */
} PendingForget;

static List *pending_forget = NIL;	/* in TopTransactionContext */
static bool forget_callbacks_registered = false;

static void
forget_at_end_of_xact(XactEvent event, void *arg)
{
	ListCell   *lc;

	/* a prepared transaction commits in another process: nothing would run */
	if (event == XACT_EVENT_PRE_PREPARE && pending_forget != NIL)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot PREPARE a transaction that unregistered mms models")));
	if (event == XACT_EVENT_COMMIT)
		foreach(lc, pending_forget)
		{
			PendingForget *f = lfirst(lc);

			mms_forget_models(f->dboid, f->model_id);
		}
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT || event == XACT_EVENT_PREPARE ||
		event == XACT_EVENT_PARALLEL_COMMIT || event == XACT_EVENT_PARALLEL_ABORT)
		pending_forget = NIL;
}

/* A rolled-back savepoint takes its unregisters back; a released one hands them up. */
static void
forget_at_end_of_subxact(SubXactEvent event, SubTransactionId mySubid,
						 SubTransactionId parentSubid, void *arg)
{
	int			level = GetCurrentTransactionNestLevel();
	ListCell   *lc;

	if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		foreach(lc, pending_forget)
			if (((PendingForget *) lfirst(lc))->nest_level >= level)
				pending_forget = foreach_delete_current(pending_forget, lc);
	}
	else if (event == SUBXACT_EVENT_COMMIT_SUB)
	{
		foreach(lc, pending_forget)
		{
			PendingForget *f = lfirst(lc);

			if (f->nest_level >= level)
				f->nest_level = level - 1;
		}
	}
}

void
mms_forget_models_at_commit(Oid dboid, int64 model_id)
{
	MemoryContext old;
	PendingForget *f;

	if (mms_shared == NULL)
		return;
	if (!forget_callbacks_registered)
	{
		RegisterXactCallback(forget_at_end_of_xact, NULL);
		RegisterSubXactCallback(forget_at_end_of_subxact, NULL);
		forget_callbacks_registered = true;
	}
	old = MemoryContextSwitchTo(TopTransactionContext);
	f = palloc(sizeof(PendingForget));
	f->dboid = dboid;
	f->model_id = model_id;
	f->nest_level = GetCurrentTransactionNestLevel();
	pending_forget = lappend(pending_forget, f);
	MemoryContextSwitchTo(old);
}
