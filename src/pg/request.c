/*
 * request.c — the asynchronous request API of a backend (serve.h): a set of
 * requests on one model is submitted into free slots of the model's queue
 * and collected as workers finish them, without blocking unless asked to.
 * Every SQL inference function is built on it, and so are the batching
 * executor node (batch_exec.c) and the HTTP API's functions (stream.c).
 *
 * Nothing is left behind: the slots a set holds are listed in
 * TopMemoryContext, and a resource-owner callback (ERROR, cancel, timeout)
 * or the backend's exit callback abandons them — queued requests are freed,
 * running ones are cancelled by their worker. Results live in the memory
 * context that was current when the set began.
 *
 * Tenancy is enforced in the calling backend, as the caller: requests are
 * admitted against the role's quota before any is queued (request_admit.c);
 * a backend holds at most mms.backend_request_share of the slots and a role
 * at most its max_concurrent, the rest waiting in the backend for its own
 * requests to finish; what a request was charged and did not use is
 * refunded when it ends.
 */
#include "postgres.h"

#include "lib/ilist.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/timestamp.h"

#include "request_set.h"

static dlist_head open_sets = DLIST_STATIC_INIT(open_sets);
static bool callbacks_registered = false;

static void flush_stats(MmsRequestSet *rs);

/* A request no longer holds its slot: its role's concurrency and its unused charge go back. */
static void
untrack(MmsRequestSet *rs, const Track *t, int32 used)
{
	if (t->entered)
		mms_quota_leave(&rs->qkey);
	if (t->charge > used)
		mms_quota_refund(&rs->qkey, t->charge - used);
}

/*
 * Gives up a request holding a slot. One that ran (or finished) is charged
 * what it may have generated: only a request that never started gets its
 * output allowance back.
 */
static MmsSlotState
abandon(MmsRequestSet *rs, const Track *t)
{
	MmsSlotState found = mms_queue_abandon(t->slot);

	untrack(rs, t, found == MMS_SLOT_RUNNING || found == MMS_SLOT_DONE ? t->charge : 0);
	return found;
}

/* Abandons every slot the set holds and forgets the set (no palloc: may run in abort). */
static void
release_set(MmsRequestSet *rs)
{
	for (int j = 0; j < rs->n_inflight; j++)
	{
		MmsSlotState found = abandon(rs, &rs->inflight[j]);

		if (found == MMS_SLOT_QUEUED || found == MMS_SLOT_RUNNING)
			rs->counts.cancels++, rs->counts.calls++;
	}
	rs->n_inflight = 0;
	mms_quota_refund(&rs->qkey, rs->charged_waiting);
	mms_progress_end(rs->n_open);
	flush_stats(rs);
	dlist_delete(&rs->node);
	pfree(rs->inflight);
	pfree(rs);
}

static void
release_at_resowner(ResourceReleasePhase phase, bool isCommit, bool isTopLevel, void *arg)
{
	dlist_mutable_iter it;

	if (phase != RESOURCE_RELEASE_BEFORE_LOCKS)
		return;
	dlist_foreach_modify(it, &open_sets)
	{
		MmsRequestSet *rs = dlist_container(MmsRequestSet, node, it.cur);

		if (rs->owner == CurrentResourceOwner)
			release_set(rs);
	}
}

/* before_shmem_exit: a backend that exits mid-call (FATAL) leaves no slot behind. */
static void
release_at_exit(int code, Datum arg)
{
	dlist_mutable_iter it;

	if (mms_shared == NULL)
		return;
	dlist_foreach_modify(it, &open_sets)
		release_set(dlist_container(MmsRequestSet, node, it.cur));
}

MmsRequestSet *
mms_requests_begin(const MmsModel *m)
{
	MmsRequestSet *rs;

	mms_require_serving();
	if (!callbacks_registered)
	{
		RegisterResourceReleaseCallback(release_at_resowner, NULL);
		before_shmem_exit(release_at_exit, 0);
		callbacks_registered = true;
	}
	rs = MemoryContextAllocZero(TopMemoryContext, sizeof(MmsRequestSet));
	rs->inflight_cap = 16;
	rs->inflight = MemoryContextAlloc(TopMemoryContext, sizeof(Track) * rs->inflight_cap);
	rs->owner = CurrentResourceOwner;
	rs->cxt = CurrentMemoryContext;
	rs->model = *m;
	rs->t0 = GetCurrentTimestamp();
	dlist_push_tail(&open_sets, &rs->node);
	mms_progress_begin(m, GetUserId());
	/* the model's served entry, shared by every database with the same bytes */
	rs->served = mms_served_acquire(m, MyDatabaseId, &rs->served_gen);
	/* the caller's quota: looked up once per set (cached by the backend) */
	rs->roleid = GetUserId();
	rs->exempt = superuser_arg(rs->roleid);
	mms_quota_limits(rs->roleid, m->name, &rs->limits);
	mms_quota_key(&rs->limits, rs->roleid, &rs->qkey);
	return rs;
}

bool
mms_requests_fit(int32 n_tokens, MmsDeferredError *too_big)
{
	if (n_tokens <= mms_slot_tokens())
		return true;
	memset(too_big, 0, sizeof(*too_big));
	too_big->sqlstate = ERRCODE_PROGRAM_LIMIT_EXCEEDED;
	too_big->msg = psprintf("request of %d tokens is larger than a request slot (%d tokens)",
							n_tokens, mms_slot_tokens());
	return false;
}

int
mms_requests_add(MmsRequestSet *rs, MmsReqKind kind, const MmsGenOptions *opts,
				 const int32 *input, int32 n_input, const int32 *target, int32 n_target)
{
	Req		   *r;

	MmsDeferredError too_big;

	if (!mms_requests_fit(n_input + n_target, &too_big))
		mms_raise_deferred(&too_big);
	if (rs->n == rs->cap)
	{
		int			cap = Max(8, rs->cap * 2);

		rs->reqs = rs->reqs ? repalloc(rs->reqs, sizeof(Req) * cap) :
			MemoryContextAlloc(rs->cxt, sizeof(Req) * cap);
		rs->cap = cap;
	}
	r = &rs->reqs[rs->n];
	memset(r, 0, sizeof(*r));
	r->kind = kind;
	r->opts = opts;
	r->input = input;
	r->n_input = n_input;
	r->target = target;
	r->n_target = kind == MMS_REQ_SCORE ? n_target : 0;
	r->slot = -1;
	rs->n_open++;
	mms_progress_added();
	return rs->n++;
}

/* Room for one more in-flight entry (allocating now, so that recording it cannot fail). */
static void
reserve_track(MmsRequestSet *rs)
{
	if (rs->n_inflight == rs->inflight_cap)
	{
		rs->inflight_cap *= 2;
		rs->inflight = repalloc(rs->inflight, sizeof(Track) * rs->inflight_cap);
	}
}

/* A request that cannot be queued: its model was unregistered while it waited for a slot. */
static void
fail_unqueued(MmsRequestSet *rs, Req *r)
{
	r->slot = -2;
	r->res.done = true;
	r->res.err = MemoryContextAllocZero(rs->cxt, sizeof(MmsSlotError));
	mms_set_error(r->res.err, ERRCODE_UNDEFINED_OBJECT, "the model was unregistered while the call ran", NULL);
	rs->n_open--;
	rs->counts.calls++;
	rs->counts.errors++;
	mms_progress_done(false, 0);
}

int
mms_req_backend_inflight(void)
{
	dlist_iter	it;
	int			n = 0;

	dlist_foreach(it, &open_sets)
		n += dlist_container(MmsRequestSet, node, it.cur)->n_inflight;
	return n;
}

static int
backend_share(void)
{
	return Max(1, (int) (mms_backend_request_share * mms_shared->n_slots));
}

/*
 * Puts waiting requests into free slots; true if any went. With admit_new,
 * the requests added since the last admission are admitted first; else only
 * those already admitted go.
 */
static bool
submit(MmsRequestSet *rs, bool admit_new)
{
	int			queued = 0;
	int			ready;
	int			n = 0;
	int			share = backend_share();
	int			held = mms_req_backend_inflight();

	MmsDeferredError refused;

	if (admit_new && !mms_req_admit(rs, &refused))
		mms_raise_deferred(&refused);
	while (rs->next_unsubmitted < rs->next_unadmitted)
	{
		Req		   *r = &rs->reqs[rs->next_unsubmitted];
		int			i;
		MmsSlot    *s;
		Track	   *t;
		bool		entered;

		if (r->slot != -1)
		{
			rs->next_unsubmitted++;
			continue;
		}
		/* the rest waits in this backend for its own requests to finish */
		if (held >= share)
			break;
		reserve_track(rs);
		entered = mms_req_enter_concurrency(rs);
		if (!entered && !rs->exempt && rs->limits.max_concurrent > 0)
			break;
		if ((i = mms_queue_alloc(held == 0)) < 0)
		{
			if (entered)
				mms_quota_leave(&rs->qkey);
			break;
		}
		s = mms_slot(i);
		s->roleid = rs->roleid;
		s->dboid = MyDatabaseId;
		s->model_id = rs->model.id;
		s->weight = rs->limits.weight;
		s->kind = r->kind;
		s->opts = *r->opts;
		s->stream = r->stream;
		s->n_input = r->n_input;
		memcpy(s->tokens, r->input, sizeof(int32) * r->n_input);
		s->n_target = r->n_target;
		if (r->n_target > 0)
			memcpy(s->tokens + r->n_input, r->target, sizeof(int32) * r->n_target);
		/* tracked before it is queued, so that no exit path can lose it */
		t = &rs->inflight[rs->n_inflight++];
		t->req = rs->next_unsubmitted;
		t->slot = i;
		t->charge = r->charge;
		t->entered = entered;
		rs->charged_waiting -= r->charge;
		r->slot = i;
		rs->next_unsubmitted++;
		held++;
		if ((queued = mms_served_submit(rs->served, rs->served_gen, i)) < 0)
		{
			rs->n_inflight--;
			mms_queue_free_unqueued(i);
			untrack(rs, t, 0);
			held--;
			fail_unqueued(rs, r);
			continue;
		}
		n++;
	}
	if (n == 0)
		return false;
	mms_served_want(rs->served, rs->served_gen);
	mms_workers_wake(rs->served);
	/* the launcher starts or grows the pool; it need not hear of every request */
	(void) mms_workers_count(rs->served, &ready);
	if (ready == 0 || queued > mms_pool_target_requests * ready)
		mms_wake_launcher();
	return true;
}

static void
copy_result(const MmsSlot *s, void *arg)
{
	Req		   *r = arg;

	/* read now that it is DONE: the worker wrote its last progress before */
	r->t_queued = s->t_queued;
	r->t_started = s->t_started;
	r->t_first = s->t_first;
	r->t_done = s->t_done;
	r->n_generated = s->n_generated;
	if (s->err.sqlstate != 0)
	{
		r->res.err = palloc(sizeof(MmsSlotError));
		*r->res.err = s->err;
	}
	else
	{
		r->res.n_ids = s->n_output;
		r->res.ids = palloc(sizeof(int32) * Max(1, s->n_output));
		memcpy(r->res.ids, s->tokens, sizeof(int32) * s->n_output);
		r->res.logprob = s->logprob;
	}
}

/*
 * Counts a collected request; its latency goes into the model's histograms
 * (one lock), measured per request from when it was queued: queue wait,
 * total (to when its worker ended it), and for generation the time to the
 * first token and per output token after the first (n >= 2).
 */
static void
account(MmsRequestSet *rs, Req *r)
{
	MmsStatCounts *c = &rs->counts;
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz queued = r->t_queued;
	TimestampTz started = r->t_started;
	TimestampTz first = r->kind == MMS_REQ_GENERATE ? r->t_first : 0;
	TimestampTz done = r->t_done > 0 ? r->t_done : now;
	double		obs[MMS_H_N];

	if (mms_track_latency)
	{
		obs[MMS_H_QUEUE_WAIT] = started > 0 && started >= queued ? (double) (started - queued) / 1e6 : -1;
		obs[MMS_H_TTFT] = first > 0 ? (double) Max(first - queued, 0) / 1e6 : -1;
		obs[MMS_H_TOTAL] = (double) Max(done - queued, 0) / 1e6;
		obs[MMS_H_TPOT] = first > 0 && r->n_generated >= 2 && r->res.err == NULL ?
			(double) Max(done - first, 0) / 1e6 / (r->n_generated - 1) : -1;
		obs[MMS_H_BATCH] = -1;
		mms_hist_record(MyDatabaseId, rs->model.id, rs->model.name, rs->model.version, obs);
	}

	c->calls++;
	c->input_tokens += r->n_input;
	if (r->res.err == NULL)
		c->output_tokens += r->kind == MMS_REQ_SCORE ? r->n_target : r->res.n_ids;
	else if (r->res.err->sqlstate == ERRCODE_QUERY_CANCELED)
		c->cancels++;
	else
		c->errors++;
	c->total_ms += (double) (now - rs->t0) / 1000.0;
	if (started > queued)
		c->queue_ms += (double) (started - queued) / 1000.0;
	if (started > 0 && now > started)
		c->compute_ms += (double) (now - started) / 1000.0;
}

/*
 * Collects finished requests. The in-flight list stays exact after each one
 * (an ERROR in the copy must not leave freed slots listed for the cleanup).
 */
static void
collect(MmsRequestSet *rs)
{
	MemoryContext old = MemoryContextSwitchTo(rs->cxt);

	for (int j = 0; j < rs->n_inflight;)
	{
		Req		   *r = &rs->reqs[rs->inflight[j].req];
		int			slot = rs->inflight[j].slot;
		Track		t = rs->inflight[j];

		if (!mms_queue_collect(slot, copy_result, r))
		{
			j++;
			continue;
		}
		rs->n_inflight--;
		rs->inflight[j] = rs->inflight[rs->n_inflight];
		untrack(rs, &t, r->res.err ? 0 : r->kind == MMS_REQ_SCORE ? r->n_target : r->res.n_ids);
		r->slot = -2;
		r->res.done = true;
		rs->n_open--;
		mms_progress_done(r->res.err == NULL,
						  r->res.err == NULL && r->kind == MMS_REQ_GENERATE ? r->res.n_ids : 0);
		account(rs, r);
	}
	MemoryContextSwitchTo(old);
}

/*
 * Polling while requests are still being added submits them early, so the
 * workers start before the last input is tokenized; but a rate-limited call
 * is admitted whole, so its requests wait for mms_requests_wait.
 */
int
mms_requests_poll(MmsRequestSet *rs)
{
	collect(rs);
	(void) submit(rs, !mms_req_rate_limited(rs));
	return rs->n_open;
}

/*
 * Collects for every open set of the backend: a set waiting for its share of
 * slots waits for the backend's requests, which may be another set's.
 */
static void
collect_all(void)
{
	dlist_iter	it;

	dlist_foreach(it, &open_sets)
		collect(dlist_container(MmsRequestSet, node, it.cur));
}

void
mms_requests_wait(MmsRequestSet *rs, int i)
{
	for (;;)
	{
		collect_all();
		(void) submit(rs, true);
		if (i >= 0 ? rs->reqs[i].res.done : rs->n_open == 0)
			return;
		/* short waits while some requests still wait for a free slot */
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 rs->next_unsubmitted < rs->n ? 20L : 1000L, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}

/* A streamed request ended: its result (or the caller's stop) replaces what was read. */
static void
forget_partial(Req *r)
{
	if (r->partial != NULL)
		pfree(r->partial);
	r->partial = NULL;
	r->partial_cap = 0;
}

void
mms_requests_stream(MmsRequestSet *rs, int i)
{
	Req		   *r = &rs->reqs[i];

	Assert(r->slot == -1 && r->kind == MMS_REQ_GENERATE);
	/* no room yet: a call may stream many inputs, most of them waiting */
	r->stream = true;
}

int32
mms_requests_partial(MmsRequestSet *rs, int i, const int32 **ids)
{
	Req		   *r = &rs->reqs[i];
	MmsSlot    *s;
	int32		n;

	if (r->res.done)
	{
		forget_partial(r);
		*ids = r->res.ids;
		return r->res.err ? 0 : r->res.n_ids;
	}
	*ids = r->partial;
	if (r->slot < 0 || !r->stream)
		return r->n_partial;

	/*
	 * The slot stays ours until collected. Its worker writes the ids, then
	 * the count (mms_queue_progress); when the request ends, it clears
	 * stream before writing the result over the ids (end_locked): a copy
	 * that finds stream cleared after it may be torn, and is dropped, the
	 * result coming with the collection. A request given back to the queue
	 * counts from 0 again and republishes the same ids: those copied stay.
	 */
	s = mms_slot(r->slot);
	if (!s->stream)
		return r->n_partial;
	n = s->n_generated;
	pg_read_barrier();
	n = Min(n, Min(r->opts->max_new_tokens, mms_slot_tokens() - r->n_input));
	if (n <= r->n_partial)
		return r->n_partial;
	if (n > r->partial_cap)
	{
		int32		cap = Max(64, r->partial_cap);

		while (cap < n)
			cap *= 2;
		cap = Min(cap, Max(n, r->opts->max_new_tokens));
		r->partial = r->partial ?
			repalloc(r->partial, sizeof(int32) * cap) :
			MemoryContextAlloc(rs->cxt, sizeof(int32) * cap);
		r->partial_cap = cap;
	}
	memcpy(r->partial + r->n_partial, s->tokens + r->n_input + r->n_partial,
		   sizeof(int32) * (n - r->n_partial));
	pg_read_barrier();
	*ids = r->partial;
	if (!s->stream)
		return r->n_partial;
	r->n_partial = n;
	return n;
}

void
mms_requests_wait_any(MmsRequestSet *rs)
{
	collect_all();
	(void) submit(rs, true);
	if (rs->n_open == 0)
		return;
	(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					 rs->next_unsubmitted < rs->n ? 20L : 1000L, PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
	CHECK_FOR_INTERRUPTS();
	collect_all();
}

const MmsResult *
mms_requests_result(MmsRequestSet *rs, int i)
{
	return &rs->reqs[i].res;
}

/*
 * Takes request i out of flight: cancelled (used < 0: counted as a cancel, a
 * running request keeps its charge), or stopped by its caller after used
 * output tokens (counted as a call that produced them; the rest is refunded).
 */
static void
drop(MmsRequestSet *rs, int i, int32 used)
{
	Req		   *r = &rs->reqs[i];

	if (r->res.done)
		return;
	if (r->slot == -1)
	{
		/* admitted, not submitted: its charge goes back */
		mms_quota_refund(&rs->qkey, r->charge);
		rs->charged_waiting -= r->charge;
	}
	for (int j = 0; j < rs->n_inflight; j++)
		if (rs->inflight[j].req == i)
		{
			Track		t = rs->inflight[j];
			MmsSlotState found;

			rs->inflight[j] = rs->inflight[rs->n_inflight - 1];
			rs->n_inflight--;
			if (used < 0)
				(void) abandon(rs, &t);
			else
			{
				found = mms_queue_abandon(t.slot);
				untrack(rs, &t, found == MMS_SLOT_RUNNING || found == MMS_SLOT_DONE ? used : 0);
			}
			break;
		}
	r->slot = -2;
	r->res.done = true;
	forget_partial(r);
	rs->n_open--;
	rs->counts.calls++;
	if (used >= 0)
	{
		/* its result is what the caller took: no ids here */
		rs->counts.input_tokens += r->n_input;
		rs->counts.output_tokens += used;
		mms_progress_done(true, used);
		return;
	}
	r->res.err = MemoryContextAllocZero(rs->cxt, sizeof(MmsSlotError));
	mms_set_error(r->res.err, ERRCODE_QUERY_CANCELED, "request cancelled", NULL);
	rs->counts.cancels++;
	mms_progress_done(false, 0);
}

void
mms_requests_cancel(MmsRequestSet *rs, int i)
{
	drop(rs, i, -1);
}

void
mms_requests_stop(MmsRequestSet *rs, int i, int32 used)
{
	drop(rs, i, Max(used, 0));
}

static void
flush_stats(MmsRequestSet *rs)
{
	MmsStatKey	k;

	if (rs->counts.calls == 0 && rs->counts.rejections == 0)
		return;
	k.dboid = MyDatabaseId;
	k.roleid = rs->roleid;
	k.model_id = rs->model.id;
	if (rs->counts.calls > 0 || rs->counts.rejections > 0)
		mms_stats_add(&k, rs->model.name, rs->model.version, rs->model.sha256, &rs->counts);
	mms_usage_add(k.dboid, k.roleid, &rs->model, &rs->counts);
	memset(&rs->counts, 0, sizeof(rs->counts));
}

void
mms_requests_end(MmsRequestSet *rs)
{
	release_set(rs);
}
