/*
 * queue.c — request slots and the queue of each served model. Owns the slots
 * and the queue heads in MmsShared; nothing else writes them.
 *
 * A backend takes a free slot (FILLING, the slots lock), writes the request,
 * and queues it at the tail of its model's queue (QUEUED). Any worker of that
 * model takes requests from the head (RUNNING), and ends them (DONE) with a
 * result or an error, setting the owner's latch; the owner copies the result
 * and frees the slot. An owner that leaves frees what has not started and
 * marks running requests ABANDONED; the worker cancels them and frees the
 * slot. Each queue has its own lock, so models do not contend.
 *
 * The order of service is weighted fair queueing between roles, by tokens: a
 * request's cost is its input plus the output it may produce, and its
 * virtual finish time is the later of the queue's virtual time and its role's
 * last queued request's finish, plus cost / weight. The queue is kept sorted
 * by it, so a worker takes from the head: roles are served in proportion to
 * their weights, FIFO within a role, and a role with nothing queued starts at
 * the queue's virtual time (no credit saved up while idle). Workers still
 * take many requests per step, whoever they belong to: fairness decides the
 * order, not the batch.
 */
#include "postgres.h"

#include "miscadmin.h"
#include "storage/proc.h"
#include "utils/timestamp.h"

#include "serve.h"

MmsSlot *
mms_slot(int i)
{
	return (MmsSlot *) ((char *) mms_shared + mms_shared->slots_off + (Size) i * mms_shared->slot_stride);
}

int
mms_slot_tokens(void)
{
	return mms_shared->slot_tokens;
}

static LWLock *
qlock(int served)
{
	return &((LWLockPadded *) mms_shared->queue_locks)[served].lock;
}

int
mms_queue_alloc(bool first)
{
	int			i;
	int			reserve = first ? 0 : mms_shared->n_slots / 16;

	LWLockAcquire(mms_shared->slots_lock, LW_EXCLUSIVE);
	i = mms_shared->n_free > reserve ? mms_shared->free_head : -1;
	if (i >= 0)
	{
		MmsSlot    *s = mms_slot(i);

		mms_shared->n_free--;
		mms_shared->free_head = s->next;
		s->state = MMS_SLOT_FILLING;
		s->prev = s->next = -1;
		s->owner_procno = MyProc->pgprocno;
		s->owner_pid = MyProcPid;
	}
	LWLockRelease(mms_shared->slots_lock);
	return i;
}

/* Returns a slot to the free list (its queue lock, if any, already released). */
static void
free_slot(int i)
{
	MmsSlot    *s = mms_slot(i);

	LWLockAcquire(mms_shared->slots_lock, LW_EXCLUSIVE);
	s->state = MMS_SLOT_FREE;
	s->owner_pid = 0;
	s->owner_procno = -1;
	s->next = mms_shared->free_head;
	mms_shared->free_head = i;
	mms_shared->n_free++;
	LWLockRelease(mms_shared->slots_lock);
}

void
mms_queue_free_unqueued(int slot)
{
	free_slot(slot);
}

/* Queue lock held: unlinks a QUEUED slot. */
static void
unlink_slot(int served, int i)
{
	MmsSlot    *s = mms_slot(i);

	if (s->prev >= 0)
		mms_slot(s->prev)->next = s->next;
	else
		mms_shared->q_head[served] = s->next;
	if (s->next >= 0)
		mms_slot(s->next)->prev = s->prev;
	else
		mms_shared->q_tail[served] = s->prev;
	s->prev = s->next = -1;
	mms_shared->q_queued[served]--;
}

/* Queue lock held: inserts slot i after prev (-1: at the head). */
static void
link_after(int served, int prev, int i)
{
	MmsSlot    *s = mms_slot(i);

	s->prev = prev;
	s->next = prev >= 0 ? mms_slot(prev)->next : mms_shared->q_head[served];
	if (prev >= 0)
		mms_slot(prev)->next = i;
	else
		mms_shared->q_head[served] = i;
	if (s->next >= 0)
		mms_slot(s->next)->prev = i;
	else
		mms_shared->q_tail[served] = i;
	mms_shared->q_queued[served]++;
}

/*
 * Queue lock held: the slot's virtual finish time, and the queued slot it goes
 * after (-1: the head). Both walk from the tail, where a backlogged role's
 * requests are, so the usual insert is short.
 */
static int
fair_position(int served, MmsSlot *s)
{
	double		start = mms_shared->q_vtime[served];
	double		cost = s->n_input + (s->kind == MMS_REQ_SCORE ? s->n_target : s->opts.max_new_tokens);
	int			j;

	if (!mms_fair_queueing)
	{
		/* first come, first served: no earlier than anything queued, so at the tail */
		j = mms_shared->q_tail[served];
		s->vfinish = j >= 0 ? Max(start, mms_slot(j)->vfinish) : start;
		return j;
	}
	for (j = mms_shared->q_tail[served]; j >= 0; j = mms_slot(j)->prev)
		if (mms_slot(j)->roleid == s->roleid)
		{
			start = Max(start, mms_slot(j)->vfinish);
			break;
		}
	s->vfinish = start + Max(1.0, cost) / Max(1, s->weight);
	/* after every request that finishes no later: FIFO among equals */
	for (j = mms_shared->q_tail[served]; j >= 0; j = mms_slot(j)->prev)
		if (mms_slot(j)->vfinish <= s->vfinish)
			break;
	return j;
}

int
mms_queue_submit(int slot, int served, uint32 served_gen)
{
	MmsSlot    *s = mms_slot(slot);
	int			n;

	s->served = served;
	s->served_gen = served_gen;
	s->runner = -1;
	s->n_output = 0;
	memset(&s->err, 0, sizeof(s->err));
	s->t_started = 0;
	s->t_first = 0;
	s->n_generated = 0;
	s->t_done = 0;
	LWLockAcquire(qlock(served), LW_EXCLUSIVE);
	s->t_queued = GetCurrentTimestamp();
	link_after(served, fair_position(served, s), slot);
	n = mms_shared->q_queued[served];
	s->state = MMS_SLOT_QUEUED;
	LWLockRelease(qlock(served));
	return n;
}

bool
mms_queue_collect(int slot, MmsCollectFn fn, void *arg)
{
	MmsSlot    *s = mms_slot(slot);
	int			served = s->served;
	bool		done;

	LWLockAcquire(qlock(served), LW_SHARED);
	done = s->state == MMS_SLOT_DONE;
	LWLockRelease(qlock(served));
	if (!done)
		return false;
	/* DONE belongs to the owner alone: nobody else touches the slot now */
	fn(s, arg);
	free_slot(slot);
	return true;
}

MmsSlotState
mms_queue_abandon(int slot)
{
	MmsSlot    *s = mms_slot(slot);
	int			served = s->served;
	MmsSlotState found = s->state;
	bool		free_it = false;

	if (found == MMS_SLOT_FILLING)
	{
		free_slot(slot);
		return found;
	}
	LWLockAcquire(qlock(served), LW_EXCLUSIVE);
	found = s->state;
	switch (found)
	{
		case MMS_SLOT_QUEUED:
			unlink_slot(served, slot);
			free_it = true;
			break;
		case MMS_SLOT_RUNNING:
			s->state = MMS_SLOT_ABANDONED;
			break;
		case MMS_SLOT_DONE:
			free_it = true;
			break;
		default:
			break;
	}
	LWLockRelease(qlock(served));
	if (free_it)
		free_slot(slot);
	if (found == MMS_SLOT_RUNNING)
		mms_workers_wake(served);
	return found;
}

int
mms_queue_take(int served, int worker, int max, int *out)
{
	int			n = 0;
	TimestampTz now = GetCurrentTimestamp();

	LWLockAcquire(qlock(served), LW_EXCLUSIVE);
	while (n < max && mms_shared->q_head[served] >= 0)
	{
		int			i = mms_shared->q_head[served];
		MmsSlot    *s = mms_slot(i);

		unlink_slot(served, i);
		/* the queue's virtual time: the finish time of what was served last */
		mms_shared->q_vtime[served] = Max(mms_shared->q_vtime[served], s->vfinish);
		s->state = MMS_SLOT_RUNNING;
		s->runner = worker;
		s->t_started = now;
		mms_shared->q_running[served]++;
		out[n++] = i;
	}
	LWLockRelease(qlock(served));
	return n;
}

void
mms_queue_return(int served, const int *slots, int n)
{
	int		   *to_free = palloc(sizeof(int) * Max(1, n));
	int			n_free = 0;

	LWLockAcquire(qlock(served), LW_EXCLUSIVE);
	for (int j = 0; j < n; j++)
	{
		int			i = slots[j];
		MmsSlot    *s = mms_slot(i);
		int			prev = -1;

		mms_shared->q_running[served]--;
		if (s->state == MMS_SLOT_ABANDONED)
		{
			/* its caller left: freed below, outside the queue lock */
			to_free[n_free++] = i;
			continue;
		}
		s->state = MMS_SLOT_QUEUED;
		s->runner = -1;
		s->t_first = 0;			/* it starts again */
		s->n_generated = 0;
		/* its old virtual finish time puts it back where it was, near the head */
		for (int k = mms_shared->q_head[served]; k >= 0 && mms_slot(k)->vfinish <= s->vfinish;
			 k = mms_slot(k)->next)
			prev = k;
		link_after(served, prev, i);
	}
	LWLockRelease(qlock(served));
	for (int j = 0; j < n_free; j++)
		free_slot(to_free[j]);
	pfree(to_free);
}

void
mms_queue_progress(int slot, int32 n_generated, const int32 *ids)
{
	MmsSlot    *s = mms_slot(slot);
	int32		had = s->n_generated;

	/* one writer (the worker running it); readers take what they see */
	if (s->t_first == 0 && n_generated > 0)
		s->t_first = GetCurrentTimestamp();
	if (s->stream && n_generated > had)
	{
		if (ids != NULL && s->n_input + n_generated <= mms_shared->slot_tokens)
		{
			/* the ids before the count, so that a reader never sees unwritten ones */
			memcpy(s->tokens + s->n_input + had, ids + had, sizeof(int32) * (n_generated - had));
			pg_write_barrier();
			s->n_generated = n_generated;
			mms_wake_procno(s->owner_procno);
			return;
		}

		/*
		 * No ids (the generation ended in this step): publishing stops before
		 * the count moves past the ids written, or the owner would read
		 * tokens left in the slot by an earlier request. The result comes
		 * with the end.
		 */
		s->stream = false;
		pg_write_barrier();
	}
	s->n_generated = n_generated;
}

bool
mms_queue_is_abandoned(int slot)
{
	MmsSlot    *s = mms_slot(slot);
	bool		r;

	LWLockAcquire(qlock(s->served), LW_SHARED);
	r = s->state == MMS_SLOT_ABANDONED;
	LWLockRelease(qlock(s->served));
	return r;
}

/* Queue lock held: a RUNNING or ABANDONED request ends; true if the slot must be freed. */
static bool
end_locked(MmsSlot *s, const int32 *ids, int n_ids, double logprob, const MmsSlotError *err)
{
	mms_shared->q_running[s->served]--;
	if (s->state == MMS_SLOT_ABANDONED)
		return true;
	if (err != NULL && err->sqlstate != 0)
	{
		s->err = *err;
		s->n_output = 0;
	}
	else if (n_ids > mms_shared->slot_tokens)
	{
		mms_set_error(&s->err, ERRCODE_PROGRAM_LIMIT_EXCEEDED, "result longer than a request slot", NULL);
		s->n_output = 0;
	}
	else
	{
		/*
		 * The result goes over the tokens a streamed request published, which
		 * its owner may be copying (mms_requests_partial, without the lock):
		 * publishing stops first, and the owner discards a copy it finds ended.
		 */
		if (s->stream)
		{
			s->stream = false;
			pg_write_barrier();
		}
		memcpy(s->tokens, ids, sizeof(int32) * n_ids);
		s->n_output = n_ids;
		s->logprob = logprob;
		s->err.sqlstate = 0;
	}
	s->runner = -1;
	s->t_done = GetCurrentTimestamp();
	s->state = MMS_SLOT_DONE;
	mms_wake_procno(s->owner_procno);
	return false;
}

void
mms_queue_finish(int slot, const int32 *ids, int n_ids, double logprob, const MmsSlotError *err)
{
	MmsSlot    *s = mms_slot(slot);
	bool		free_it;

	LWLockAcquire(qlock(s->served), LW_EXCLUSIVE);
	free_it = end_locked(s, ids, n_ids, logprob, err);
	LWLockRelease(qlock(s->served));
	if (free_it)
		free_slot(slot);
}

void
mms_queue_fail_all(int served, const MmsSlotError *err)
{
	LWLockAcquire(qlock(served), LW_EXCLUSIVE);
	while (mms_shared->q_head[served] >= 0)
	{
		int			i = mms_shared->q_head[served];
		MmsSlot    *s = mms_slot(i);

		unlink_slot(served, i);
		s->err = *err;
		s->n_output = 0;
		s->t_done = GetCurrentTimestamp();
		s->state = MMS_SLOT_DONE;
		mms_wake_procno(s->owner_procno);
	}
	LWLockRelease(qlock(served));
}

void
mms_queue_orphan(int worker, const char *why)
{
	MmsSlotError err;

	mms_set_error(&err, ERRCODE_SYSTEM_ERROR, why, "The request was in flight; it can be retried.");
	snprintf(err.detail, sizeof(err.detail), "The worker was process %d.", mms_shared->workers[worker].pid);
	for (int i = 0; i < mms_shared->n_slots; i++)
	{
		MmsSlot    *s = mms_slot(i);
		int			served = s->served;
		bool		free_it = false;

		/* unlocked peek, confirmed under the lock */
		if (s->runner != worker || (s->state != MMS_SLOT_RUNNING && s->state != MMS_SLOT_ABANDONED))
			continue;
		LWLockAcquire(qlock(served), LW_EXCLUSIVE);
		if (s->runner == worker && s->served == served &&
			(s->state == MMS_SLOT_RUNNING || s->state == MMS_SLOT_ABANDONED))
			free_it = end_locked(s, NULL, 0, 0, &err);
		LWLockRelease(qlock(served));
		if (free_it)
			free_slot(i);
	}
}

void
mms_queue_depth(int served, int *queued, int *running, TimestampTz *oldest)
{
	LWLockAcquire(qlock(served), LW_SHARED);
	*queued = mms_shared->q_queued[served];
	*running = mms_shared->q_running[served];
	if (oldest)
	{
		/* fair order is not arrival order: the oldest may be anywhere */
		*oldest = 0;
		for (int j = mms_shared->q_head[served]; j >= 0; j = mms_slot(j)->next)
			if (*oldest == 0 || mms_slot(j)->t_queued < *oldest)
				*oldest = mms_slot(j)->t_queued;
	}
	LWLockRelease(qlock(served));
}
