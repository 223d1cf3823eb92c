/*
 * workers.c — the worker table (inference workers, loaders, the start-up
 * scan, usage flushes): owns MmsShared.workers. The launcher requests entries and starts
 * their processes; each process moves its own entry through its states with
 * these verbs; views read snapshots. Which worker to start or stop is the
 * launcher's decision (launcher.c), not this file's.
 */
#include "postgres.h"

#include "miscadmin.h"
#include "storage/proc.h"
#include "utils/timestamp.h"

#include "serve.h"

#define W(i) (&mms_shared->workers[i])

static bool
mine(int i, uint32 generation)
{
	return i >= 0 && i < MMS_WORKER_SLOTS && W(i)->generation == generation;
}

int
mms_workers_request(MmsWorkerKind kind, int served, uint32 served_gen, Oid dboid, MmsWorker *out)
{
	int			found = -1;

	LWLockAcquire(mms_shared->workers_lock, LW_EXCLUSIVE);
	for (int i = 0; i < MMS_WORKER_SLOTS && found < 0; i++)
	{
		MmsWorker  *w = W(i);
		uint32		gen = w->generation + 1;

		if (w->state != MMS_W_FREE)
			continue;
		memset(w, 0, sizeof(*w));
		w->generation = gen;
		w->kind = kind;
		w->served = served;
		w->served_gen = served_gen;
		w->dboid = dboid;
		w->procno = -1;
		w->state = MMS_W_REQUESTED;
		w->last_active = GetCurrentTimestamp();
		*out = *w;
		found = i;
	}
	LWLockRelease(mms_shared->workers_lock);
	return found;
}

void
mms_workers_snapshot(MmsWorker *out)
{
	LWLockAcquire(mms_shared->workers_lock, LW_SHARED);
	memcpy(out, mms_shared->workers, sizeof(mms_shared->workers));
	LWLockRelease(mms_shared->workers_lock);
}

bool
mms_workers_begin(int i, uint32 generation, MmsWorker *out)
{
	bool		ok;

	LWLockAcquire(mms_shared->workers_lock, LW_EXCLUSIVE);
	ok = mine(i, generation) && (W(i)->state == MMS_W_STARTING || W(i)->state == MMS_W_REQUESTED);
	if (ok)
	{
		W(i)->pid = MyProcPid;
		W(i)->procno = MyProc->pgprocno;
		W(i)->state = MMS_W_ATTACHING;
		W(i)->started_at = GetCurrentTimestamp();
		W(i)->last_active = W(i)->started_at;
		*out = *W(i);
	}
	LWLockRelease(mms_shared->workers_lock);
	return ok;
}

void
mms_workers_set_state(int i, uint32 generation, MmsWorkerState st)
{
	LWLockAcquire(mms_shared->workers_lock, LW_EXCLUSIVE);
	if (mine(i, generation) && W(i)->state != MMS_W_EXITED &&
		!(W(i)->state == MMS_W_DRAINING && st == MMS_W_READY))
	{
		W(i)->state = st;
		W(i)->last_active = GetCurrentTimestamp();
	}
	LWLockRelease(mms_shared->workers_lock);
	ConditionVariableBroadcast(&mms_shared->cv);
}

void
mms_workers_report(int i, uint32 generation, int held, int batch, uint64 finished, bool active)
{
	LWLockAcquire(mms_shared->workers_lock, LW_EXCLUSIVE);
	if (mine(i, generation))
	{
		W(i)->held = held;
		W(i)->batch = batch;
		W(i)->requests_served += finished;
		if (active)
			W(i)->last_active = GetCurrentTimestamp();
	}
	LWLockRelease(mms_shared->workers_lock);
}

/* workers_lock held: inference workers of served that are up or coming. */
static int
pool_size(int served, uint32 served_gen, int *ready)
{
	int			n = 0;

	if (ready)
		*ready = 0;
	for (int i = 0; i < MMS_WORKER_SLOTS; i++)
	{
		MmsWorker  *w = W(i);

		if (w->kind != MMS_WK_INFERENCE || w->served != served ||
			(served_gen != 0 && w->served_gen != served_gen))
			continue;
		if (w->state == MMS_W_REQUESTED || w->state == MMS_W_STARTING ||
			w->state == MMS_W_ATTACHING || w->state == MMS_W_READY)
		{
			n++;
			if (ready && w->state == MMS_W_READY)
				(*ready)++;
		}
	}
	return n;
}

bool
mms_workers_may_leave(int i, uint32 generation, int min_workers, bool doomed)
{
	bool		leave = false;

	LWLockAcquire(mms_shared->workers_lock, LW_EXCLUSIVE);
	if (mine(i, generation))
	{
		MmsWorker  *w = W(i);
		long		idle_ms = (long) ((GetCurrentTimestamp() - w->last_active) / 1000);

		if (w->state == MMS_W_DRAINING || doomed)
			leave = true;
		else if (idle_ms >= mms_worker_idle_timeout_ms &&
				 pool_size(w->served, w->served_gen, NULL) > min_workers)
			leave = true;
		/* decided under the lock: two idle workers cannot both take the pool below its minimum */
		if (leave)
		{
			w->state = MMS_W_EXITED;
			w->clean_exit = true;
		}
	}
	LWLockRelease(mms_shared->workers_lock);
	return leave;
}

bool
mms_workers_is_draining(int i, uint32 generation, bool *preempt)
{
	bool		r;

	LWLockAcquire(mms_shared->workers_lock, LW_SHARED);
	r = !mine(i, generation) || W(i)->state == MMS_W_DRAINING || W(i)->state == MMS_W_EXITED;
	if (preempt)
		*preempt = r && mine(i, generation) && W(i)->preempt;
	LWLockRelease(mms_shared->workers_lock);
	return r;
}

void
mms_workers_exited(int i, uint32 generation, bool clean)
{
	LWLockAcquire(mms_shared->workers_lock, LW_EXCLUSIVE);
	if (mine(i, generation))
	{
		if (W(i)->state != MMS_W_EXITED)
			W(i)->clean_exit = clean;
		W(i)->state = MMS_W_EXITED;
		W(i)->pid = 0;
		W(i)->procno = -1;
		W(i)->held = 0;
		W(i)->batch = 0;
	}
	LWLockRelease(mms_shared->workers_lock);
	ConditionVariableBroadcast(&mms_shared->cv);
}

void
mms_workers_wake(int served)
{
	int			procnos[MMS_WORKER_SLOTS];
	int			n = 0;

	LWLockAcquire(mms_shared->workers_lock, LW_SHARED);
	for (int i = 0; i < MMS_WORKER_SLOTS; i++)
	{
		MmsWorker  *w = W(i);

		if (w->kind == MMS_WK_INFERENCE && w->served == served && w->procno >= 0 &&
			(w->state == MMS_W_READY || w->state == MMS_W_DRAINING))
			procnos[n++] = w->procno;
	}
	LWLockRelease(mms_shared->workers_lock);
	for (int j = 0; j < n; j++)
		mms_wake_procno(procnos[j]);
}

bool
mms_workers_can_grow(int served, int max_workers)
{
	int			total = 0;
	int			ready;
	int			n;
	bool		r;

	LWLockAcquire(mms_shared->workers_lock, LW_SHARED);
	for (int i = 0; i < MMS_WORKER_SLOTS; i++)
		if (W(i)->kind == MMS_WK_INFERENCE && W(i)->state != MMS_W_FREE)
			total++;			/* an EXITED one's process is still leaving (the launcher frees it after) */
	n = pool_size(served, 0, &ready);
	/* a worker on its way counts as growth: what waits is for it */
	r = (total < mms_max_workers && n < max_workers) || ready < n;
	LWLockRelease(mms_shared->workers_lock);
	return r;
}

int
mms_workers_count(int served, int *ready)
{
	int			n;

	LWLockAcquire(mms_shared->workers_lock, LW_SHARED);
	n = pool_size(served, 0, ready);
	LWLockRelease(mms_shared->workers_lock);
	return n;
}

void
mms_workers_drain(int i, bool preempt)
{
	int			procno = -1;

	LWLockAcquire(mms_shared->workers_lock, LW_EXCLUSIVE);
	if (W(i)->state == MMS_W_READY || W(i)->state == MMS_W_ATTACHING || W(i)->state == MMS_W_STARTING)
	{
		W(i)->state = MMS_W_DRAINING;
		W(i)->preempt = preempt;
		procno = W(i)->procno;
	}
	else if (W(i)->state == MMS_W_REQUESTED)
		W(i)->state = MMS_W_FREE;	/* never started */
	LWLockRelease(mms_shared->workers_lock);
	mms_wake_procno(procno);
}

void
mms_workers_drain_served(int served)
{
	for (int i = 0; i < MMS_WORKER_SLOTS; i++)
		if (W(i)->kind == MMS_WK_INFERENCE && W(i)->served == served)
			mms_workers_drain(i, false);
}

void
mms_workers_launched(int i, uint32 generation, bool ok)
{
	LWLockAcquire(mms_shared->workers_lock, LW_EXCLUSIVE);
	if (mine(i, generation) && W(i)->state == MMS_W_REQUESTED)
		W(i)->state = ok ? MMS_W_STARTING : MMS_W_FREE;
	LWLockRelease(mms_shared->workers_lock);
}

void
mms_workers_free(int i)
{
	LWLockAcquire(mms_shared->workers_lock, LW_EXCLUSIVE);
	if (W(i)->state == MMS_W_EXITED)
		W(i)->state = MMS_W_FREE;
	LWLockRelease(mms_shared->workers_lock);
	ConditionVariableBroadcast(&mms_shared->cv);
}

void
mms_workers_vanished(int i)
{
	LWLockAcquire(mms_shared->workers_lock, LW_EXCLUSIVE);
	if (W(i)->state != MMS_W_FREE && W(i)->state != MMS_W_EXITED && W(i)->state != MMS_W_REQUESTED)
	{
		W(i)->state = MMS_W_EXITED;
		W(i)->clean_exit = false;
		W(i)->pid = 0;
		W(i)->procno = -1;
	}
	LWLockRelease(mms_shared->workers_lock);
}
