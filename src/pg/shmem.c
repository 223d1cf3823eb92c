/*
 * shmem.c — the main shared-memory struct of inference (serve.h): sized in
 * the request hook, created in the startup hook, and small helpers over it
 * (slots, model keys, statistics, waking processes). What the fields mean and
 * who may change them: serve.h. Weights are not here but in DSM segments.
 */
#include "postgres.h"

#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "utils/timestamp.h"

#include "serve.h"

MmsShared  *mms_shared = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static Size
slot_stride(void)
{
	/* a slot holds the input and room for the longest output or target */
	Size		tokens = (Size) mms_max_input_tokens + MMS_GEN_MAX_NEW_TOKENS + 1;

	return MAXALIGN(add_size(offsetof(MmsSlot, tokens), mul_size(tokens, sizeof(int32))));
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
	RequestNamedLWLockTranche("mms", 1);
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
		/* also after a crash restart: the old workers and segments are gone */
		memset(mms_shared, 0, shared_size());
		mms_shared->lock = &(GetNamedLWLockTranche("mms"))->lock;
		ConditionVariableInit(&mms_shared->cv);
		mms_shared->launcher_procno = -1;
		mms_shared->n_slots = mms_max_requests;
		mms_shared->slot_tokens = mms_max_input_tokens + MMS_GEN_MAX_NEW_TOKENS + 1;
		mms_shared->slot_stride = slot_stride();
		mms_shared->slots_off = MAXALIGN(sizeof(MmsShared));
		mms_shared->stats_reset = GetCurrentTimestamp();
		for (int i = 0; i < MMS_MAX_WORKERS; i++)
			mms_shared->workers[i].procno = -1;
	}
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

MmsSlot *
mms_slot(int i)
{
	return (MmsSlot *) ((char *) mms_shared + mms_shared->slots_off + (Size) i * mms_shared->slot_stride);
}

void
mms_key_from_model(MmsModelKey *k, const MmsModel *m)
{
	memset(k, 0, sizeof(*k));
	k->dboid = MyDatabaseId;
	k->model_id = m->id;
	k->weights = m->weights;
	k->size_bytes = m->size_bytes;
	k->version = m->version;
	strlcpy(k->name, m->name, sizeof(k->name));
	strlcpy(k->sha256, m->sha256, sizeof(k->sha256));
}

/* Row ids are never reused, but a restored database may bring other bytes. */
bool
mms_key_equal(const MmsModelKey *a, const MmsModelKey *b)
{
	return a->dboid == b->dboid && a->model_id == b->model_id &&
		strcmp(a->sha256, b->sha256) == 0;
}

MmsStat *
mms_stat_for(const MmsModelKey *k)
{
	MmsStat    *free_entry = NULL;

	for (int i = 0; i < MMS_MAX_STATS; i++)
	{
		MmsStat    *s = &mms_shared->stats[i];

		if (s->used && s->dboid == k->dboid && s->model_id == k->model_id)
			return s;
		if (!s->used && free_entry == NULL)
			free_entry = s;
	}
	if (free_entry)
	{
		memset(free_entry, 0, sizeof(*free_entry));
		free_entry->used = true;
		free_entry->dboid = k->dboid;
		free_entry->model_id = k->model_id;
		free_entry->version = k->version;
		strlcpy(free_entry->name, k->name, sizeof(free_entry->name));
	}
	return free_entry;
}

dsm_handle
mms_cache_evict_locked(int i)
{
	MmsCacheEntry *e = &mms_shared->cache[i];
	dsm_handle	h = e->handle;

	e->state = MMS_C_EMPTY;
	e->handle = 0;
	e->seg_bytes = 0;
	e->doomed = false;
	return h;
}

void
mms_wake_procno(int procno)
{
	if (procno >= 0)
		SetLatch(&GetPGProcByNumber(procno)->procLatch);
}

int
mms_worker_queued(int w)
{
	int			n = 0;

	for (int i = 0; i < mms_shared->n_slots; i++)
	{
		MmsSlot    *s = mms_slot(i);

		if (s->worker == w && (s->state == MMS_SLOT_QUEUED || s->state == MMS_SLOT_RUNNING ||
							   s->state == MMS_SLOT_ABANDONED))
			n++;
	}
	return n;
}

void
mms_slot_fail(MmsSlot *s, int sqlstate, const char *msg, const char *hint)
{
	s->err.sqlstate = sqlstate;
	strlcpy(s->err.msg, msg, sizeof(s->err.msg));
	strlcpy(s->err.hint, hint ? hint : "", sizeof(s->err.hint));
	s->n_output = 0;
	s->state = MMS_SLOT_DONE;
	mms_wake_procno(s->owner_procno);
}

void
mms_worker_orphan_slots(int w, const char *why)
{
	bool		freed = false;

	for (int i = 0; i < mms_shared->n_slots; i++)
	{
		MmsSlot    *s = mms_slot(i);

		if (s->worker != w)
			continue;
		if (s->state == MMS_SLOT_RUNNING)
			mms_slot_fail(s, ERRCODE_OPERATOR_INTERVENTION, why,
						  "The request was in flight; it can be retried.");
		else if (s->state == MMS_SLOT_ABANDONED)
		{
			s->state = MMS_SLOT_FREE;
			freed = true;
		}
	}
	if (freed)
		ConditionVariableBroadcast(&mms_shared->cv);
}
