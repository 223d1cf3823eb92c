/*
 * stats.c — request statistics in a shared hash keyed by (database, role,
 * model version), behind mms.stat_models. Owns the hash and its header. When
 * the table is full the least used entries are evicted (as
 * pg_stat_statements does) and the eviction is counted, so statistics never
 * silently stop counting. Decoder counters belong to served models (served.c).
 */
#include "postgres.h"

#include "storage/shmem.h"
#include "utils/hsearch.h"
#include "utils/timestamp.h"

#include "serve.h"

typedef struct MmsStatsHeader
{
	uint64		dealloc;		/* entries evicted to make room */
	TimestampTz reset;
} MmsStatsHeader;

static HTAB *stats_hash = NULL;
static MmsStatsHeader *stats_header = NULL;

Size
mms_stats_shmem_size(void)
{
	return add_size(MAXALIGN(sizeof(MmsStatsHeader)),
					hash_estimate_size(mms_max_stats, sizeof(MmsStatEntry)));
}

void
mms_stats_shmem_init(void)
{
	HASHCTL		info;
	bool		found;

	stats_header = ShmemInitStruct("mms stats", sizeof(MmsStatsHeader), &found);
	if (!found)
	{
		stats_header->dealloc = 0;
		stats_header->reset = GetCurrentTimestamp();
	}
	memset(&info, 0, sizeof(info));
	info.keysize = sizeof(MmsStatKey);
	info.entrysize = sizeof(MmsStatEntry);
	stats_hash = ShmemInitHash("mms stats hash", mms_max_stats, mms_max_stats, &info,
							   HASH_ELEM | HASH_BLOBS);
}

static int
by_calls(const void *a, const void *b)
{
	uint64		x = (*(MmsStatEntry *const *) a)->c.calls;
	uint64		y = (*(MmsStatEntry *const *) b)->c.calls;

	return x < y ? -1 : x > y;
}

/* stats_lock held exclusively: drops the least used 5% (at least one). */
static void
evict_least_used(void)
{
	HASH_SEQ_STATUS seq;
	MmsStatEntry **all = palloc(sizeof(MmsStatEntry *) * hash_get_num_entries(stats_hash));
	MmsStatEntry *e;
	int			n = 0;
	int			drop;

	hash_seq_init(&seq, stats_hash);
	while ((e = hash_seq_search(&seq)) != NULL)
		all[n++] = e;
	qsort(all, n, sizeof(MmsStatEntry *), by_calls);
	drop = Max(1, n / 20);
	for (int i = 0; i < drop && i < n; i++)
		hash_search(stats_hash, &all[i]->key, HASH_REMOVE, NULL);
	stats_header->dealloc += drop;
	pfree(all);
}

void
mms_stats_add(const MmsStatKey *k, const char *name, int32 version, const char *sha256,
			  const MmsStatCounts *add)
{
	MmsStatEntry *e;
	bool		found;
	MmsStatKey	key;

	memset(&key, 0, sizeof(key));	/* hashed as bytes: no padding garbage */
	key.dboid = k->dboid;
	key.roleid = k->roleid;
	key.model_id = k->model_id;
	LWLockAcquire(mms_shared->stats_lock, LW_EXCLUSIVE);
	e = hash_search(stats_hash, &key, HASH_FIND, NULL);
	if (e == NULL)
	{
		if (hash_get_num_entries(stats_hash) >= mms_max_stats)
			evict_least_used();
		e = hash_search(stats_hash, &key, HASH_ENTER_NULL, &found);
		if (e == NULL)
		{
			LWLockRelease(mms_shared->stats_lock);
			return;
		}
		memset(&e->c, 0, sizeof(e->c));
		strlcpy(e->name, name, sizeof(e->name));
		e->version = version;
		strlcpy(e->sha256, sha256, sizeof(e->sha256));
	}
	e->c.calls += add->calls;
	e->c.input_tokens += add->input_tokens;
	e->c.output_tokens += add->output_tokens;
	e->c.errors += add->errors;
	e->c.cancels += add->cancels;
	e->c.total_ms += add->total_ms;
	e->c.queue_ms += add->queue_ms;
	e->c.rejections += add->rejections;
	LWLockRelease(mms_shared->stats_lock);
}

MmsStatEntry *
mms_stats_snapshot(int *n, uint64 *dealloc, TimestampTz *reset)
{
	HASH_SEQ_STATUS seq;
	MmsStatEntry *out;
	MmsStatEntry *e;

	LWLockAcquire(mms_shared->stats_lock, LW_SHARED);
	out = palloc(sizeof(MmsStatEntry) * Max(1, hash_get_num_entries(stats_hash)));
	*n = 0;
	hash_seq_init(&seq, stats_hash);
	while ((e = hash_seq_search(&seq)) != NULL)
		out[(*n)++] = *e;
	*dealloc = stats_header->dealloc;
	*reset = stats_header->reset;
	LWLockRelease(mms_shared->stats_lock);
	return out;
}

static void
remove_matching(Oid dboid, int64 model_id, bool all)
{
	HASH_SEQ_STATUS seq;
	MmsStatEntry *e;

	LWLockAcquire(mms_shared->stats_lock, LW_EXCLUSIVE);
	hash_seq_init(&seq, stats_hash);
	while ((e = hash_seq_search(&seq)) != NULL)
		if (all || (e->key.dboid == dboid && (model_id == 0 || e->key.model_id == model_id)))
			hash_search(stats_hash, &e->key, HASH_REMOVE, NULL);
	if (all)
	{
		stats_header->dealloc = 0;
		stats_header->reset = GetCurrentTimestamp();
	}
	LWLockRelease(mms_shared->stats_lock);
}

void
mms_stats_reset(void)
{
	remove_matching(InvalidOid, 0, true);
}

void
mms_stats_forget(Oid dboid, int64 model_id)
{
	remove_matching(dboid, model_id, false);
}
