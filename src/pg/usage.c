/*
 * usage.c — usage metering: a shared hash of counters per (hour, database,
 * role, model version), added to by the calling backends and emptied into
 * each database's mms.usage by a flush process (usage_flush.c) that the
 * launcher starts every mms.usage_flush_interval. Owns the hash and its
 * header; the file that carries the rows across a clean shutdown is
 * usage_file.c's.
 *
 * Protocol (usage_lock, the last lock in the order; held briefly, nothing
 * waits or ERRORs while holding it):
 *  - mms_usage_add runs in callers, also during abort: no palloc, no ERROR.
 *    A full hash never refuses or blocks a call: at three quarters full the
 *    launcher is asked to flush sooner, and at the limit the oldest row is
 *    dropped and counted (mms_usage_dropped), which a hot standby (it never
 *    flushes) or a database whose flush keeps failing eventually needs.
 *  - A flush copies the rows of its database (mms_usage_snapshot), writes
 *    them in one transaction, and only after the commit subtracts exactly
 *    what it copied (mms_usage_written): what was counted meanwhile stays.
 *    Counts are integers (times in microseconds), so the difference is
 *    exact; a row left with nothing is removed. born_seq tells a row from
 *    one dropped and created again under the same key meanwhile.
 *  - Every add is numbered (add_seq); since_seq says that a row's oldest
 *    unwritten count came after that add, so mms_usage_flush() waits for
 *    what was counted before it was called, and for nothing later.
 *  - mms_usage_defer marks a database's rows before a flush and a successful
 *    one clears the mark: rows whose flush failed wait (doubling, up to an
 *    hour) before the next try, so a database that cannot be written is
 *    retried rarely rather than every interval.
 */
#include "postgres.h"

#include <math.h>

#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/shmem.h"
#include "utils/hsearch.h"
#include "utils/timestamp.h"

#include "serve.h"

#define MAX_BACKOFF_MS (3600 * 1000)

typedef struct UsageHeader
{
	uint64		add_seq;		/* adds so far */
	uint64		dropped;		/* rows dropped to make room */
	bool		flush_soon;		/* three quarters full: flush what is due now */
	bool		flush_force;	/* mms_usage_flush(): flush every database now */
} UsageHeader;

static HTAB *usage_hash = NULL;
static UsageHeader *usage_header = NULL;

Size
mms_usage_shmem_size(void)
{
	return add_size(MAXALIGN(sizeof(UsageHeader)),
					hash_estimate_size(mms_max_usage_entries, sizeof(MmsUsageEntry)));
}

void
mms_usage_shmem_init(void)
{
	HASHCTL		info;
	bool		found;

	usage_header = ShmemInitStruct("mms usage", sizeof(UsageHeader), &found);
	if (!found)
		memset(usage_header, 0, sizeof(UsageHeader));
	memset(&info, 0, sizeof(info));
	info.keysize = sizeof(MmsUsageKey);
	info.entrysize = sizeof(MmsUsageEntry);
	usage_hash = ShmemInitHash("mms usage hash", mms_max_usage_entries, mms_max_usage_entries,
							   &info, HASH_ELEM | HASH_BLOBS);
	/*
	 * The postmaster carries the rows across a clean shutdown, as
	 * pg_stat_statements does: it reads them back at creation (not after a
	 * crash restart: the file was consumed at start and a crash writes none)
	 * and writes them at its exit.
	 */
	if (!IsUnderPostmaster)
	{
		if (!found)
			mms_usage_file_read();
		on_shmem_exit(mms_usage_file_write, (Datum) 0);
	}
}

static bool
is_empty(const MmsUsageCounts *c)
{
	return c->calls == 0 && c->input_tokens == 0 && c->output_tokens == 0 && c->errors == 0 &&
		c->cancels == 0 && c->rejections == 0 && c->compute_us == 0 && c->queue_us == 0;
}

static uint64
ms_to_us(double ms)
{
	return ms > 0 && ms < 1e15 ? (uint64) rint(ms * 1000.0) : 0;
}

static void
add_counts(MmsUsageCounts *to, const MmsUsageCounts *c)
{
	to->calls += c->calls;
	to->input_tokens += c->input_tokens;
	to->output_tokens += c->output_tokens;
	to->errors += c->errors;
	to->cancels += c->cancels;
	to->rejections += c->rejections;
	to->compute_us += c->compute_us;
	to->queue_us += c->queue_us;
}

/* to -= c, never below zero (a row can only lose what it had) */
static void
sub_counts(MmsUsageCounts *to, const MmsUsageCounts *c)
{
#define SUB(f) to->f -= Min(to->f, c->f)
	SUB(calls);
	SUB(input_tokens);
	SUB(output_tokens);
	SUB(errors);
	SUB(cancels);
	SUB(rejections);
	SUB(compute_us);
	SUB(queue_us);
#undef SUB
}

/* usage_lock held exclusively: drops the row of the oldest hour (the least called of it). */
static void
drop_oldest(void)
{
	HASH_SEQ_STATUS seq;
	MmsUsageEntry *e;
	MmsUsageEntry *victim = NULL;

	hash_seq_init(&seq, usage_hash);
	while ((e = hash_seq_search(&seq)) != NULL)
		if (victim == NULL || e->key.hour < victim->key.hour ||
			(e->key.hour == victim->key.hour && e->c.calls < victim->c.calls))
			victim = e;
	if (victim == NULL)
		return;
	hash_search(usage_hash, &victim->key, HASH_REMOVE, NULL);
	usage_header->dropped++;
}

/*
 * usage_lock held exclusively: the row of key, created (with name and
 * version) if need be; NULL only when no memory is left for it.
 */
static MmsUsageEntry *
find_or_create(const MmsUsageKey *key, const char *name, int32 version, bool *wake)
{
	MmsUsageEntry *e = hash_search(usage_hash, key, HASH_FIND, NULL);
	long		n;
	bool		found;

	if (e != NULL)
		return e;
	n = hash_get_num_entries(usage_hash);
	if (n >= mms_max_usage_entries)
		drop_oldest();
	if (n + 1 >= (long) mms_max_usage_entries * 3 / 4 && !usage_header->flush_soon)
	{
		usage_header->flush_soon = true;
		*wake = true;
	}
	e = hash_search(usage_hash, key, HASH_ENTER_NULL, &found);
	if (e == NULL)
		return NULL;
	strlcpy(e->name, name, sizeof(e->name));
	e->version = version;
	e->fails = 0;
	e->retry_at = 0;
	e->born_seq = usage_header->add_seq + 1;
	e->since_seq = usage_header->add_seq;
	memset(&e->c, 0, sizeof(e->c));
	return e;
}

void
mms_usage_add(Oid dboid, Oid roleid, const MmsModel *m, const MmsStatCounts *add)
{
	MmsUsageKey key;
	MmsUsageCounts c;
	MmsUsageEntry *e;
	TimestampTz now = GetCurrentTimestamp();
	bool		wake = false;

	if (mms_shared == NULL || usage_hash == NULL)
		return;
	memset(&key, 0, sizeof(key));	/* hashed as bytes: no padding garbage */
	key.hour = now - now % USECS_PER_HOUR;
	key.dboid = dboid;
	key.roleid = roleid;
	key.model_id = m->id;
	c.calls = add->calls;
	c.input_tokens = add->input_tokens;
	c.output_tokens = add->output_tokens;
	c.errors = add->errors;
	c.cancels = add->cancels;
	c.rejections = add->rejections;
	c.compute_us = ms_to_us(add->compute_ms);
	c.queue_us = ms_to_us(add->queue_ms);
	if (is_empty(&c))
		return;
	LWLockAcquire(mms_shared->usage_lock, LW_EXCLUSIVE);
	e = find_or_create(&key, m->name, m->version, &wake);
	if (e != NULL)
	{
		usage_header->add_seq++;
		add_counts(&e->c, &c);
	}
	else
		usage_header->dropped++;
	LWLockRelease(mms_shared->usage_lock);
	/* usage rows lose what a flush wrote: the alerts keep totals of their own */
	mms_alerts_count(dboid, m->name, c.calls, c.errors, c.rejections);
	if (wake)
		mms_wake_launcher();
}

void
mms_usage_restore(const MmsUsageEntry *r)
{
	MmsUsageEntry *e;
	MmsUsageKey key;
	bool		wake = false;

	memset(&key, 0, sizeof(key));
	key.hour = r->key.hour;
	key.dboid = r->key.dboid;
	key.roleid = r->key.roleid;
	key.model_id = r->key.model_id;
	LWLockAcquire(mms_shared->usage_lock, LW_EXCLUSIVE);
	e = find_or_create(&key, r->name, r->version, &wake);
	if (e != NULL)
	{
		usage_header->add_seq++;
		add_counts(&e->c, &r->c);
	}
	else
		usage_header->dropped++;
	LWLockRelease(mms_shared->usage_lock);
}

MmsUsageEntry *
mms_usage_snapshot(Oid dboid, int *n, uint64 *seq)
{
	HASH_SEQ_STATUS hs;
	MmsUsageEntry *out;
	MmsUsageEntry *e;

	*n = 0;
	*seq = 0;
	if (mms_shared == NULL || usage_hash == NULL)
		return NULL;
	LWLockAcquire(mms_shared->usage_lock, LW_SHARED);
	out = palloc(sizeof(MmsUsageEntry) * Max(1, hash_get_num_entries(usage_hash)));
	hash_seq_init(&hs, usage_hash);
	while ((e = hash_seq_search(&hs)) != NULL)
		if ((!OidIsValid(dboid) || e->key.dboid == dboid) && !is_empty(&e->c))
			out[(*n)++] = *e;
	*seq = usage_header->add_seq;
	LWLockRelease(mms_shared->usage_lock);
	return out;
}

void
mms_usage_written(const MmsUsageEntry *rows, int n, uint64 seq)
{
	LWLockAcquire(mms_shared->usage_lock, LW_EXCLUSIVE);
	for (int i = 0; i < n; i++)
	{
		MmsUsageEntry *e = hash_search(usage_hash, &rows[i].key, HASH_FIND, NULL);

		if (e == NULL || e->born_seq != rows[i].born_seq)
			continue;			/* dropped to make room: what it held was lost already */
		sub_counts(&e->c, &rows[i].c);
		if (is_empty(&e->c))
		{
			hash_search(usage_hash, &rows[i].key, HASH_REMOVE, NULL);
			continue;
		}
		/* what is left was counted after the copy */
		e->since_seq = Max(e->since_seq, seq);
		e->fails = 0;
		e->retry_at = 0;
	}
	LWLockRelease(mms_shared->usage_lock);
}

void
mms_usage_defer(Oid dboid)
{
	HASH_SEQ_STATUS hs;
	MmsUsageEntry *e;
	TimestampTz now = GetCurrentTimestamp();

	LWLockAcquire(mms_shared->usage_lock, LW_EXCLUSIVE);
	hash_seq_init(&hs, usage_hash);
	while ((e = hash_seq_search(&hs)) != NULL)
	{
		int64		wait_ms;

		if (e->key.dboid != dboid)
			continue;
		e->fails = Min(e->fails + 1, 30);
		wait_ms = Min((int64) mms_usage_flush_interval_ms << Min(e->fails - 1, 10), MAX_BACKOFF_MS);
		e->retry_at = TimestampTzPlusMilliseconds(now, wait_ms);
	}
	LWLockRelease(mms_shared->usage_lock);
}

List *
mms_usage_due_databases(bool force)
{
	HASH_SEQ_STATUS hs;
	MmsUsageEntry *e;
	List	   *dbs = NIL;
	TimestampTz now = GetCurrentTimestamp();

	LWLockAcquire(mms_shared->usage_lock, LW_SHARED);
	hash_seq_init(&hs, usage_hash);
	while ((e = hash_seq_search(&hs)) != NULL)
		if (!is_empty(&e->c) && (force || e->retry_at <= now))
			dbs = list_append_unique_oid(dbs, e->key.dboid);
	LWLockRelease(mms_shared->usage_lock);
	return dbs;
}

uint64
mms_usage_seq(void)
{
	uint64		seq;

	LWLockAcquire(mms_shared->usage_lock, LW_SHARED);
	seq = usage_header->add_seq;
	LWLockRelease(mms_shared->usage_lock);
	return seq;
}

bool
mms_usage_pending_before(Oid dboid, uint64 seq)
{
	HASH_SEQ_STATUS hs;
	MmsUsageEntry *e;
	bool		pending = false;

	LWLockAcquire(mms_shared->usage_lock, LW_SHARED);
	hash_seq_init(&hs, usage_hash);
	while ((e = hash_seq_search(&hs)) != NULL)
		if (e->key.dboid == dboid && !is_empty(&e->c) && e->since_seq < seq)
		{
			pending = true;
			hash_seq_term(&hs);
			break;
		}
	LWLockRelease(mms_shared->usage_lock);
	return pending;
}

void
mms_usage_request_flush(void)
{
	LWLockAcquire(mms_shared->usage_lock, LW_EXCLUSIVE);
	usage_header->flush_force = true;
	LWLockRelease(mms_shared->usage_lock);
	mms_wake_launcher();
}

bool
mms_usage_take_flush_request(bool *force)
{
	bool		any;

	LWLockAcquire(mms_shared->usage_lock, LW_EXCLUSIVE);
	*force = usage_header->flush_force;
	any = usage_header->flush_force || usage_header->flush_soon;
	usage_header->flush_force = false;
	usage_header->flush_soon = false;
	LWLockRelease(mms_shared->usage_lock);
	return any;
}

uint64
mms_usage_dropped(void)
{
	uint64		n;

	LWLockAcquire(mms_shared->usage_lock, LW_SHARED);
	n = usage_header->dropped;
	LWLockRelease(mms_shared->usage_lock);
	return n;
}

void
mms_usage_forget_database(Oid dboid)
{
	HASH_SEQ_STATUS hs;
	MmsUsageEntry *e;

	LWLockAcquire(mms_shared->usage_lock, LW_EXCLUSIVE);
	hash_seq_init(&hs, usage_hash);
	while ((e = hash_seq_search(&hs)) != NULL)
		if (e->key.dboid == dboid)
			hash_search(usage_hash, &e->key, HASH_REMOVE, NULL);
	LWLockRelease(mms_shared->usage_lock);
}
