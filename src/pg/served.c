/*
 * served.c — served models: one entry per distinct weights (keyed by sha256),
 * whatever databases or names registered them. Owns MmsShared.served under
 * dir_lock: the entry's state, its DSM segment (the cache), the registrations
 * that use it, its pool settings and its decoder counters. Loaders fill
 * entries, workers attach to them, the launcher reads them to decide; all
 * through these verbs.
 */
#include "postgres.h"

#include "miscadmin.h"
#include "utils/timestamp.h"

#include "serve.h"

#define S(i) (&mms_shared->served[i])

static void
lock(void)
{
	LWLockAcquire(mms_shared->dir_lock, LW_EXCLUSIVE);
}

static void
unlock(void)
{
	LWLockRelease(mms_shared->dir_lock);
}

static bool
has_work(int i)
{
	int			q,
				r;

	/* dir_lock then a queue lock: the documented order */
	mms_queue_depth(i, &q, &r, NULL);
	return q > 0 || r > 0;
}

/* dir_lock held: drops the segment (handle returned for unpinning after unlock). */
static dsm_handle
evict_locked(int i)
{
	MmsServed  *s = S(i);
	dsm_handle	h = s->handle;

	s->handle = 0;
	s->seg_bytes = 0;
	s->state = MMS_S_EMPTY;
	if (s->n_users == 0)
	{
		/* nobody uses these bytes any more: the entry goes */
		uint32		gen = s->generation;

		memset(s, 0, sizeof(*s));
		s->generation = gen + 1;
	}
	return h;
}

static void
unpin(dsm_handle h)
{
	if (h != 0)
		dsm_unpin_segment(h);
}

/* dir_lock held: an entry that can take new weights, or -1. */
static int
free_entry(void)
{
	int			best = -1;

	for (int i = 0; i < MMS_MAX_SERVED; i++)
		if (S(i)->state == MMS_S_EMPTY && S(i)->sha256[0] == '\0')
			return i;
	/* else the least recently used unloaded entry with nothing queued */
	for (int i = 0; i < MMS_MAX_SERVED; i++)
	{
		MmsServed  *s = S(i);

		if ((s->state == MMS_S_EMPTY || s->state == MMS_S_FAILED) && s->refcount == 0 &&
			!s->pool.pinned && !has_work(i) && mms_workers_count(i, NULL) == 0 &&
			(best < 0 || s->last_used < S(best)->last_used))
			best = i;
	}
	return best;
}

static bool
same_user(const MmsModelRef *u, Oid dboid, int64 model_id)
{
	return u->dboid == dboid && u->model_id == model_id;
}

/* dir_lock held */
static int
find_sha(const char *sha256)
{
	for (int i = 0; i < MMS_MAX_SERVED; i++)
		if (S(i)->sha256[0] != '\0' && strcmp(S(i)->sha256, sha256) == 0)
			return i;
	return -1;
}

int
mms_served_lookup(const char *sha256)
{
	int			i;

	LWLockAcquire(mms_shared->dir_lock, LW_SHARED);
	i = find_sha(sha256);
	LWLockRelease(mms_shared->dir_lock);
	return i;
}

int
mms_served_acquire(const MmsModel *m, Oid dboid, uint32 *generation)
{
	int			i = mms_served_try_acquire(m, dboid, generation);

	if (i < 0)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("too many distinct models are served at once (%d)", MMS_MAX_SERVED),
				 errhint("Unload idle models with mms_unload().")));
	return i;
}

int
mms_served_try_acquire(const MmsModel *m, Oid dboid, uint32 *generation)
{
	int			i;
	MmsServed  *s;

	lock();
	i = find_sha(m->sha256);
	if (i < 0)
	{
		uint32		gen;

		i = free_entry();
		if (i < 0)
		{
			unlock();
			return -1;
		}
		s = S(i);
		gen = s->generation + 1;
		memset(s, 0, sizeof(*s));
		s->generation = gen;
		strlcpy(s->sha256, m->sha256, sizeof(s->sha256));
		s->size_bytes = m->size_bytes;
	}
	s = S(i);
	s->doomed = false;			/* the same bytes registered again */
	s->pool = m->pool;
	{
		int			u;

		for (u = 0; u < s->n_users; u++)
			if (same_user(&s->users[u], dboid, m->id))
				break;
		if (u == s->n_users && u < MMS_MAX_USERS)
		{
			MmsModelRef *r = &s->users[s->n_users++];

			r->dboid = dboid;
			r->model_id = m->id;
			r->weights = m->weights;
			r->version = m->version;
			strlcpy(r->name, m->name, sizeof(r->name));
		}
	}
	*generation = s->generation;
	unlock();
	return i;
}

int
mms_served_submit(int i, uint32 generation, int slot)
{
	int			n = -1;

	/*
	 * Under dir_lock (shared), so that the entry cannot be cleared or reused
	 * between the check and the queueing: every eviction takes it
	 * exclusively and requires an empty queue.
	 */
	LWLockAcquire(mms_shared->dir_lock, LW_SHARED);
	if (S(i)->generation == generation && S(i)->sha256[0] != '\0')
		n = mms_queue_submit(slot, i, generation);
	LWLockRelease(mms_shared->dir_lock);
	return n;
}

void
mms_served_settle_unused(int i)
{
	MmsSlotError err;

	lock();
	if (S(i)->sha256[0] != '\0' && S(i)->n_users == 0 &&
		S(i)->state != MMS_S_READY && S(i)->state != MMS_S_LOADING)
	{
		/* unregistered before its weights were loaded: nothing will serve what waits */
		mms_set_error(&err, ERRCODE_UNDEFINED_OBJECT, "the model was unregistered", NULL);
		mms_queue_fail_all(i, &err);
		if (S(i)->refcount == 0)
			(void) evict_locked(i);
	}
	unlock();
}

void
mms_served_want(int i, uint32 generation)
{
	bool		wake = false;

	/* every submit asks: a shared look first, so loaded models cost no exclusive lock */
	LWLockAcquire(mms_shared->dir_lock, LW_SHARED);
	wake = S(i)->generation == generation &&
		(S(i)->state == MMS_S_EMPTY || S(i)->state == MMS_S_FAILED);
	LWLockRelease(mms_shared->dir_lock);
	if (!wake)
		return;
	wake = false;
	lock();
	if (S(i)->generation == generation &&
		(S(i)->state == MMS_S_EMPTY || S(i)->state == MMS_S_FAILED))
	{
		S(i)->state = MMS_S_WANTED;
		S(i)->wanted_at = GetCurrentTimestamp();
		wake = true;
	}
	unlock();
	if (wake)
		mms_wake_launcher();
}

bool
mms_served_get(int i, uint32 generation, MmsServed *out)
{
	bool		ok;

	LWLockAcquire(mms_shared->dir_lock, LW_SHARED);
	ok = (generation == 0 || S(i)->generation == generation) && S(i)->sha256[0] != '\0';
	if (ok)
		*out = *S(i);
	LWLockRelease(mms_shared->dir_lock);
	return ok;
}

void
mms_served_snapshot(MmsServed *out)
{
	LWLockAcquire(mms_shared->dir_lock, LW_SHARED);
	memcpy(out, mms_shared->served, sizeof(mms_shared->served));
	LWLockRelease(mms_shared->dir_lock);
}

bool
mms_served_claim_load(int i, uint32 generation, MmsServed *out)
{
	bool		ok;

	lock();
	ok = S(i)->generation == generation && S(i)->state == MMS_S_WANTED && S(i)->n_users > 0;
	if (ok)
	{
		S(i)->state = MMS_S_LOADING;
		S(i)->loader_pid = MyProcPid;
		memset(&S(i)->load_err, 0, sizeof(S(i)->load_err));
		*out = *S(i);
	}
	unlock();
	return ok;
}

void
mms_served_loaded(int i, dsm_handle h, Size seg_bytes, Size gguf_bytes, Size arena_off,
				  Size arena_floats, double load_ms, long loader_private_kb)
{
	MmsServed	copy;

	lock();
	S(i)->handle = h;
	S(i)->seg_bytes = seg_bytes;
	S(i)->gguf_bytes = gguf_bytes;
	S(i)->arena_off = arena_off;
	S(i)->arena_floats = arena_floats;
	S(i)->loaded_at = GetCurrentTimestamp();
	S(i)->last_used = S(i)->loaded_at;
	S(i)->load_ms = load_ms;
	S(i)->loads++;
	S(i)->loader_pid = 0;
	S(i)->state = MMS_S_READY;
	copy = *S(i);
	unlock();
	ConditionVariableBroadcast(&mms_shared->cv);
	mms_event("load", &copy, "%zu kB in %.1f ms (%.0f MB/s of file), loader peak private memory %ld kB",
			  seg_bytes >> 10, load_ms,
			  load_ms > 0 ? (double) gguf_bytes / (1 << 20) / (load_ms / 1000.0) : 0.0, loader_private_kb);
	mms_wake_launcher();
}

void
mms_served_load_failed(int i, const MmsSlotError *err)
{
	MmsServed	copy;

	lock();
	S(i)->state = MMS_S_FAILED;
	S(i)->load_err = *err;
	S(i)->loader_pid = 0;
	copy = *S(i);
	unlock();
	/* nothing can run what waits: the callers get the reason */
	mms_queue_fail_all(i, err);
	ConditionVariableBroadcast(&mms_shared->cv);
	mms_event("load_failed", &copy, "%s", err->msg);
}

bool
mms_served_attach(int i, uint32 generation, MmsServed *out)
{
	bool		ok;

	lock();
	ok = S(i)->generation == generation && S(i)->state == MMS_S_READY;
	if (ok)
	{
		S(i)->refcount++;
		*out = *S(i);
	}
	unlock();
	return ok;
}

void
mms_served_detach(int i)
{
	dsm_handle	h = 0;
	MmsServed	copy;

	lock();
	if (S(i)->refcount > 0)
		S(i)->refcount--;
	copy = *S(i);
	/* the last process of a model nobody registers any more frees its weights */
	if (S(i)->doomed && S(i)->refcount == 0 && S(i)->state == MMS_S_READY && !has_work(i))
		h = evict_locked(i);
	unlock();
	if (h != 0)
	{
		unpin(h);
		mms_event("evict", &copy, "unregistered; the last worker detached");
	}
}

void
mms_served_add_steps(int i, uint64 steps, uint64 rows, int last_batch)
{
	lock();
	S(i)->steps += steps;
	S(i)->rows += rows;
	S(i)->max_batch = Max(S(i)->max_batch, last_batch);
	S(i)->last_used = GetCurrentTimestamp();
	unlock();
}

static Size
budget(void)
{
	return (Size) mms_cache_size_mb * 1024 * 1024;
}

/* dir_lock held: bytes held or being loaded. */
static Size
used_bytes(void)
{
	Size		used = 0;

	for (int i = 0; i < MMS_MAX_SERVED; i++)
		if (S(i)->state == MMS_S_READY || S(i)->state == MMS_S_LOADING)
			used += S(i)->seg_bytes;
	return used;
}

/* dir_lock held: may entry v give way to a load of entry me? */
static bool
evictable(int v, int me)
{
	MmsServed  *s = S(v);

	return v != me && s->state == MMS_S_READY && s->refcount == 0 && !s->pool.pinned &&
		(me < 0 || s->pool.priority <= S(me)->pool.priority) && !has_work(v);
}

bool
mms_served_make_room(Size need, int me, Size *used_out)
{
	for (;;)
	{
		int			victim = -1;
		dsm_handle	h;
		MmsServed	copy;
		Size		used;

		lock();
		used = used_bytes();
		if (me >= 0 && S(me)->state == MMS_S_LOADING)
			used -= Min(used, S(me)->seg_bytes);	/* its own reservation */
		if (used_out)
			*used_out = used;
		if (used + need <= budget())
		{
			if (me >= 0)
				S(me)->seg_bytes = need;	/* reserved while it loads */
			unlock();
			return true;
		}
		/* lowest priority first, then least recently used */
		for (int i = 0; i < MMS_MAX_SERVED; i++)
			if (evictable(i, me) &&
				(victim < 0 || S(i)->pool.priority < S(victim)->pool.priority ||
				 (S(i)->pool.priority == S(victim)->pool.priority && S(i)->last_used < S(victim)->last_used)))
				victim = i;
		if (victim < 0)
		{
			unlock();
			return false;
		}
		copy = *S(victim);
		h = evict_locked(victim);
		unlock();
		unpin(h);
		mms_event("evict", &copy, "to make room for %zu MB", need >> 20);
	}
}

void
mms_served_forget(Oid dboid, int64 model_id)
{
	dsm_handle	handles[MMS_MAX_SERVED];
	MmsServed	copies[MMS_MAX_SERVED];
	int			n = 0;
	int			doomed[MMS_MAX_SERVED];
	int			n_doomed = 0;

	lock();
	for (int i = 0; i < MMS_MAX_SERVED; i++)
	{
		MmsServed  *s = S(i);
		int			kept = 0;

		if (s->sha256[0] == '\0')
			continue;
		for (int u = 0; u < s->n_users; u++)
		{
			if (s->users[u].dboid == dboid && (model_id == 0 || s->users[u].model_id == model_id))
				continue;
			s->users[kept++] = s->users[u];
		}
		if (kept == s->n_users)
			continue;
		s->n_users = kept;
		if (kept > 0)
			continue;
		/* nobody registers these bytes any more: drain, then free */
		s->doomed = true;
		doomed[n_doomed++] = i;
		/* what was queued before the unregister committed is still served, then it goes */
		if (has_work(i))
			continue;
		if (s->refcount == 0 && s->state == MMS_S_READY)
		{
			copies[n] = *s;
			handles[n++] = evict_locked(i);
		}
		else if (s->state != MMS_S_READY && s->state != MMS_S_LOADING && s->refcount == 0)
			(void) evict_locked(i);
	}
	unlock();
	for (int j = 0; j < n; j++)
	{
		unpin(handles[j]);
		mms_event("evict", &copies[j], "unregistered");
	}
	/* idle workers notice the doom and leave; busy ones finish first */
	for (int j = 0; j < n_doomed; j++)
		mms_workers_wake(doomed[j]);
	ConditionVariableBroadcast(&mms_shared->cv);
}

bool
mms_served_unload(int i, bool doomed_only, const char *why)
{
	dsm_handle	h = 0;
	MmsServed	copy;

	lock();
	copy = *S(i);
	if (S(i)->state == MMS_S_READY && S(i)->refcount == 0 && !has_work(i) &&
		(!doomed_only || S(i)->doomed))
		h = evict_locked(i);
	unlock();
	if (h == 0)
		return false;
	unpin(h);
	mms_event("evict", &copy, "%s", why);
	return true;
}

void
mms_served_set_pool(Oid dboid, const char *name, const MmsPoolConfig *pool)
{
	bool		wake = false;

	lock();
	for (int i = 0; i < MMS_MAX_SERVED; i++)
	{
		MmsServed  *s = S(i);

		for (int u = 0; u < s->n_users; u++)
			if (s->users[u].dboid == dboid && strcmp(s->users[u].name, name) == 0)
			{
				s->pool = *pool;
				if (pool->pinned && (s->state == MMS_S_EMPTY || s->state == MMS_S_FAILED))
				{
					s->state = MMS_S_WANTED;
					s->wanted_at = GetCurrentTimestamp();
				}
				wake = true;
				break;
			}
	}
	unlock();
	if (wake)
		mms_wake_launcher();
}

void
mms_served_reset_stats(void)
{
	lock();
	for (int i = 0; i < MMS_MAX_SERVED; i++)
	{
		S(i)->steps = S(i)->rows = 0;
		S(i)->max_batch = 0;
		S(i)->loads = 0;
	}
	unlock();
}
