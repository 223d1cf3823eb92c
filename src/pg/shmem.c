/*
 * shmem.c — sizes and creates the shared state of inference (serve.h) in the
 * postmaster's request and startup hooks, and small helpers every process
 * uses. It writes the structures only once, at creation; afterwards each
 * belongs to its owner module (serve.h lists them). Weights are not here but
 * in DSM segments.
 */
#include "postgres.h"

#include "miscadmin.h"
#include "pgstat.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "utils/timestamp.h"

#include "serve.h"

#define MMS_FIXED_LOCKS 7

MmsShared  *mms_shared = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static int
slot_tokens(void)
{
	/* a slot holds the input and room for the longest output or target */
	return mms_max_input_tokens + MMS_GEN_MAX_NEW_TOKENS + 1;
}

static Size
slot_stride(void)
{
	return MAXALIGN(add_size(offsetof(MmsSlot, tokens), mul_size(slot_tokens(), sizeof(int32))));
}

static Size
shared_size(void)
{
	return add_size(MAXALIGN(sizeof(MmsShared)), mul_size(slot_stride(), mms_max_requests));
}

static void
mms_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(shared_size());
	RequestAddinShmemSpace(mms_stats_shmem_size());
	RequestAddinShmemSpace(mms_quota_shmem_size());
	RequestAddinShmemSpace(mms_usage_shmem_size());
	mms_alerts_shmem_request();
	mms_hist_shmem_request();
	RequestAddinShmemSpace(mms_progress_shmem_size());
	RequestNamedLWLockTranche("mms", MMS_FIXED_LOCKS + MMS_MAX_SERVED);
}

static void
mms_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	mms_shared = ShmemInitStruct("mms", shared_size(), &found);
	if (!found)
	{
		LWLockPadded *locks = GetNamedLWLockTranche("mms");

		/* also after a crash restart: the old workers and segments are gone */
		memset(mms_shared, 0, shared_size());
		mms_shared->dir_lock = &locks[0].lock;
		mms_shared->workers_lock = &locks[1].lock;
		mms_shared->slots_lock = &locks[2].lock;
		mms_shared->events_lock = &locks[3].lock;
		mms_shared->stats_lock = &locks[4].lock;
		mms_shared->quota_lock = &locks[5].lock;
		mms_shared->usage_lock = &locks[6].lock;
		mms_shared->queue_locks = &locks[MMS_FIXED_LOCKS].lock;
		ConditionVariableInit(&mms_shared->cv);
		mms_shared->launcher_procno = -1;
		mms_shared->n_slots = mms_max_requests;
		mms_shared->slot_tokens = slot_tokens();
		mms_shared->slot_stride = slot_stride();
		mms_shared->slots_off = MAXALIGN(sizeof(MmsShared));
		for (int i = 0; i < mms_max_requests; i++)
			mms_slot(i)->next = i + 1 < mms_max_requests ? i + 1 : -1;
		mms_shared->free_head = mms_max_requests > 0 ? 0 : -1;
		mms_shared->n_free = mms_max_requests;
		for (int i = 0; i < MMS_MAX_SERVED; i++)
			mms_shared->q_head[i] = mms_shared->q_tail[i] = -1;
		for (int i = 0; i < MMS_WORKER_SLOTS; i++)
			mms_shared->workers[i].procno = -1;
	}
	mms_stats_shmem_init();
	mms_quota_shmem_init();
	mms_usage_shmem_init();
	mms_alerts_shmem_init();
	mms_hist_shmem_init();
	mms_progress_shmem_init();
	LWLockRelease(AddinShmemInitLock);
}

void
mms_shmem_install_hooks(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = mms_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = mms_shmem_startup;
}

void
mms_require_serving(void)
{
	if (mms_shared == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("mms inference is not available: the mms library was not preloaded"),
				 errhint("Add mms to shared_preload_libraries in postgresql.conf and restart the server.")));
}

void
mms_wake_procno(int procno)
{
	if (procno >= 0)
		SetLatch(&GetPGProcByNumber(procno)->procLatch);
}

void
mms_wait_shared(long ms)
{
	/* without the prepare, the first timed sleep only prepares and returns at once */
	ConditionVariablePrepareToSleep(&mms_shared->cv);
	(void) ConditionVariableTimedSleep(&mms_shared->cv, ms, PG_WAIT_EXTENSION);
	ConditionVariableCancelSleep();
	CHECK_FOR_INTERRUPTS();
}

void
mms_set_error(MmsSlotError *e, int sqlstate, const char *msg, const char *hint)
{
	e->sqlstate = sqlstate;
	strlcpy(e->msg, msg, sizeof(e->msg));
	e->detail[0] = '\0';
	strlcpy(e->hint, hint ? hint : "", sizeof(e->hint));
}
