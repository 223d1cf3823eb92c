/*
 * histograms.c — latency and batch-size histograms in a shared hash keyed by
 * (database, model version), behind mms.stat_latency and mms_metrics(). Owns
 * the hash, its lock and the bucket bounds; request counters are stats.c's.
 *
 * Buckets are fixed and Prometheus-style (an observation v counts in the first
 * bucket whose upper bound is >= v, the last bucket is +Inf), so that the
 * exposition can print cumulative buckets as they are and quantiles can be
 * estimated the way histogram_quantile() does. Counts per bucket are kept
 * non-cumulative: recording is one increment per metric.
 *
 * Who records: the calling backend, when it collects a finished request
 * (request.c), records queue wait, time to first token, total time and time
 * per output token in one call; an inference worker records the rows of each
 * decoder step under every registration with a request in it, so every row
 * of mms.stat_latency names one registration. Each record takes the lock once and allocates nothing; when
 * the table is full the entry with the fewest observations is evicted (a
 * scan, no allocation), as stats.c does with its least used entries.
 */
#include "postgres.h"

#include <math.h>

#include "storage/shmem.h"
#include "utils/hsearch.h"
#include "utils/timestamp.h"

#include "serve.h"

#define MMS_HIST_ENTRIES 1024	/* (database, model version) pairs kept */

typedef struct MmsHistHeader
{
	LWLock	   *lock;
	uint64		dealloc;		/* entries evicted to make room */
} MmsHistHeader;

static HTAB *hist_hash = NULL;
static MmsHistHeader *hist_header = NULL;

/*
 * Seconds, roughly log-spaced from 1 ms to a minute: the union of vLLM's
 * time-to-first-token, per-output-token and end-to-end bounds.
 */
static const double time_bounds[MMS_HIST_BUCKETS] = {
	0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075,
	0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5,
	2.5, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0
};

/* Rows of a decoder step: powers of two up to mms.max_batch's bound. */
static const double batch_bounds[] = {
	1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096
};

StaticAssertDecl(lengthof(batch_bounds) <= MMS_HIST_BUCKETS, "batch buckets fit a histogram");

static const char *const metric_names[MMS_H_N] = {
	"queue_wait", "ttft", "total", "tpot", "batch_size"
};

const double *
mms_hist_bounds(MmsHistMetric m, int *n)
{
	if (m == MMS_H_BATCH)
	{
		*n = lengthof(batch_bounds);
		return batch_bounds;
	}
	*n = MMS_HIST_BUCKETS;
	return time_bounds;
}

const char *
mms_hist_metric_name(MmsHistMetric m)
{
	return metric_names[m];
}

void
mms_hist_shmem_request(void)
{
	RequestAddinShmemSpace(add_size(MAXALIGN(sizeof(MmsHistHeader)),
									hash_estimate_size(MMS_HIST_ENTRIES, sizeof(MmsHistEntry))));
	RequestNamedLWLockTranche("mms histograms", 1);
}

/* Under AddinShmemInitLock (shmem.c). */
void
mms_hist_shmem_init(void)
{
	HASHCTL		info;
	bool		found;

	hist_header = ShmemInitStruct("mms histograms", sizeof(MmsHistHeader), &found);
	if (!found)
	{
		hist_header->lock = &(GetNamedLWLockTranche("mms histograms"))->lock;
		hist_header->dealloc = 0;
	}
	memset(&info, 0, sizeof(info));
	info.keysize = sizeof(MmsHistKey);
	info.entrysize = sizeof(MmsHistEntry);
	hist_hash = ShmemInitHash("mms histograms hash", MMS_HIST_ENTRIES, MMS_HIST_ENTRIES, &info,
							  HASH_ELEM | HASH_BLOBS);
}

/* Adds one observation to h (no lock: h is the caller's, or the lock is held). */
static void
observe(MmsHistogram *h, MmsHistMetric m, double v)
{
	int			n;
	const double *b = mms_hist_bounds(m, &n);
	int			k = 0;

	while (k < n && v > b[k])
		k++;
	h->counts[k < n ? k : MMS_HIST_BUCKETS]++;
	h->count++;
	h->sum += v;
}

/* hist lock held exclusively: the table is full, drop the entry with the fewest observations. */
static void
evict_one(void)
{
	HASH_SEQ_STATUS seq;
	MmsHistEntry *e;
	MmsHistEntry *victim = NULL;
	uint64		least = PG_UINT64_MAX;

	hash_seq_init(&seq, hist_hash);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		uint64		used = e->h[MMS_H_TOTAL].count + e->h[MMS_H_BATCH].count;

		if (used < least)
		{
			least = used;
			victim = e;
		}
	}
	if (victim == NULL)
		return;
	hash_search(hist_hash, &victim->key, HASH_REMOVE, NULL);
	hist_header->dealloc++;
}

void
mms_hist_record(Oid dboid, int64 model_id, const char *name, int32 version,
				const double obs[MMS_H_N])
{
	MmsHistKey	key;
	MmsHistEntry *e;
	bool		found;

	if (!mms_track_latency || hist_hash == NULL)
		return;
	memset(&key, 0, sizeof(key));	/* hashed as bytes: no padding garbage */
	key.dboid = dboid;
	key.model_id = model_id;
	LWLockAcquire(hist_header->lock, LW_EXCLUSIVE);
	e = hash_search(hist_hash, &key, HASH_FIND, NULL);
	if (e == NULL)
	{
		if (hash_get_num_entries(hist_hash) >= MMS_HIST_ENTRIES)
			evict_one();
		e = hash_search(hist_hash, &key, HASH_ENTER_NULL, &found);
		if (e == NULL)
		{
			LWLockRelease(hist_header->lock);
			return;
		}
		memset(e->h, 0, sizeof(e->h));
		strlcpy(e->name, name, sizeof(e->name));
		e->version = version;
	}
	for (int m = 0; m < MMS_H_N; m++)
		if (obs[m] >= 0)
			observe(&e->h[m], (MmsHistMetric) m, obs[m]);
	LWLockRelease(hist_header->lock);
}

MmsHistEntry *
mms_hist_snapshot(int *n)
{
	HASH_SEQ_STATUS seq;
	MmsHistEntry *out;
	MmsHistEntry *e;

	*n = 0;
	if (hist_hash == NULL)
		return palloc(sizeof(MmsHistEntry));
	/* palloc before the lock: an ERROR must not leave it held */
	out = palloc(sizeof(MmsHistEntry) * MMS_HIST_ENTRIES);
	LWLockAcquire(hist_header->lock, LW_SHARED);
	hash_seq_init(&seq, hist_hash);
	while ((e = hash_seq_search(&seq)) != NULL)
		out[(*n)++] = *e;
	LWLockRelease(hist_header->lock);
	return out;
}

uint64
mms_hist_evicted(void)
{
	uint64		d;

	if (hist_header == NULL)
		return 0;
	LWLockAcquire(hist_header->lock, LW_SHARED);
	d = hist_header->dealloc;
	LWLockRelease(hist_header->lock);
	return d;
}

static void
remove_matching(Oid dboid, int64 model_id, bool all)
{
	HASH_SEQ_STATUS seq;
	MmsHistEntry *e;

	if (hist_hash == NULL)
		return;
	LWLockAcquire(hist_header->lock, LW_EXCLUSIVE);
	hash_seq_init(&seq, hist_hash);
	while ((e = hash_seq_search(&seq)) != NULL)
		if (all || (e->key.dboid == dboid && (model_id == 0 || e->key.model_id == model_id)))
			hash_search(hist_hash, &e->key, HASH_REMOVE, NULL);
	if (all)
		hist_header->dealloc = 0;
	LWLockRelease(hist_header->lock);
}

void
mms_hist_reset(void)
{
	remove_matching(InvalidOid, 0, true);
}

void
mms_hist_forget(Oid dboid, int64 model_id)
{
	remove_matching(dboid, model_id, false);
}

/*
 * The q-quantile (0..1) estimated as Prometheus' histogram_quantile() does:
 * find the bucket holding the rank, interpolate linearly inside it (the first
 * bucket starts at 0); a rank in the +Inf bucket gives the largest finite
 * bound. NaN when h is empty.
 */
double
mms_hist_quantile(const MmsHistogram *h, MmsHistMetric m, double q)
{
	int			n;
	const double *b = mms_hist_bounds(m, &n);
	double		rank;
	uint64		below = 0;

	if (h->count == 0)
		return NAN;
	rank = q * (double) h->count;
	for (int k = 0; k < n; k++)
	{
		uint64		in = h->counts[k];

		if ((double) (below + in) >= rank && in > 0)
		{
			double		lo = k == 0 ? 0 : b[k - 1];

			return lo + (b[k] - lo) * (rank - (double) below) / (double) in;
		}
		below += in;
	}
	return b[n - 1];
}
