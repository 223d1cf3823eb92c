/*
 * quota.c — the token buckets behind role quotas, in a shared hash keyed by
 * (database, role, the quota row's model scope). Owns the hash; calling
 * backends charge and refund it at submit and collect (request.c), so no
 * catalog is written per call. Which row applies is quota_rules.c's business.
 *
 * Each limit per minute or per day is a bucket that refills continuously at
 * limit / period and holds at most the limit: a role that was idle starts
 * with the whole limit, and one that keeps to its rate is never refused. A
 * request is charged its input tokens plus the output it may produce
 * (max_new_tokens, or the target when scoring) up front; what it did not
 * produce goes back when it ends. Charging a whole call happens under one
 * lock, so sessions of one role together never exceed a bucket.
 *
 * A bucket that is full with nothing in flight is the same as no bucket: it
 * is what gets evicted when the hash is full.
 */
#include "postgres.h"

#include "storage/shmem.h"
#include "utils/hsearch.h"
#include "utils/timestamp.h"

#include "serve.h"

#define MMS_QUOTA_BUCKETS 4096

typedef struct QuotaBucket
{
	MmsQuotaKey key;			/* hash key: first */
	/* the limits it was last refilled with (0 = unlimited) */
	int32		rpm;
	int32		tpm;
	int64		tpd;
	/* what is left now */
	double		requests;
	double		tokens;
	double		day_tokens;
	TimestampTz refilled_at;
	int32		in_flight;		/* requests running or queued (max_concurrent) */
} QuotaBucket;

static HTAB *buckets = NULL;

Size
mms_quota_shmem_size(void)
{
	return hash_estimate_size(MMS_QUOTA_BUCKETS, sizeof(QuotaBucket));
}

void
mms_quota_shmem_init(void)
{
	HASHCTL		info;

	memset(&info, 0, sizeof(info));
	info.keysize = sizeof(MmsQuotaKey);
	info.entrysize = sizeof(QuotaBucket);
	buckets = ShmemInitHash("mms quota buckets", MMS_QUOTA_BUCKETS, MMS_QUOTA_BUCKETS, &info,
							HASH_ELEM | HASH_BLOBS);
}

/* A limit changed: raising it gives the difference at once, lowering it clamps. */
static double
rescale(double level, int64 old_limit, int64 new_limit)
{
	if (new_limit == 0)
		return 0;
	if (old_limit == 0)
		return (double) new_limit;
	return Min((double) new_limit, level + Max(0, new_limit - old_limit));
}

static double
refill_one(double level, int64 limit, double seconds, double period)
{
	return limit == 0 ? 0 : Min((double) limit, level + seconds * (double) limit / period);
}

/* quota_lock held: brings a bucket up to now under limits l. */
static void
refill(QuotaBucket *b, const MmsQuotaLimits *l, TimestampTz now)
{
	double		s = now > b->refilled_at ? (double) (now - b->refilled_at) / 1e6 : 0;

	b->requests = rescale(b->requests, b->rpm, l->requests_per_minute);
	b->tokens = rescale(b->tokens, b->tpm, l->tokens_per_minute);
	b->day_tokens = rescale(b->day_tokens, b->tpd, l->tokens_per_day);
	b->rpm = l->requests_per_minute;
	b->tpm = l->tokens_per_minute;
	b->tpd = l->tokens_per_day;
	b->requests = refill_one(b->requests, b->rpm, s, 60.0);
	b->tokens = refill_one(b->tokens, b->tpm, s, 60.0);
	b->day_tokens = refill_one(b->day_tokens, b->tpd, s, 86400.0);
	b->refilled_at = now;
}

static bool
is_idle_full(const QuotaBucket *b, TimestampTz now)
{
	QuotaBucket c = *b;
	MmsQuotaLimits l = {0};

	if (b->in_flight > 0)
		return false;
	l.requests_per_minute = b->rpm;
	l.tokens_per_minute = b->tpm;
	l.tokens_per_day = b->tpd;
	refill(&c, &l, now);
	return c.requests >= c.rpm && c.tokens >= c.tpm && c.day_tokens >= c.tpd;
}

/* quota_lock held exclusively: the bucket of k, created full; NULL if the hash is full of live buckets. */
static QuotaBucket *
bucket_for(const MmsQuotaKey *k, const MmsQuotaLimits *l, TimestampTz now)
{
	QuotaBucket *b;
	bool		found;

	b = hash_search(buckets, k, HASH_FIND, NULL);
	if (b == NULL && hash_get_num_entries(buckets) >= MMS_QUOTA_BUCKETS)
	{
		HASH_SEQ_STATUS seq;
		QuotaBucket *e;

		/* full buckets with nothing in flight say nothing a new one would not */
		hash_seq_init(&seq, buckets);
		while ((e = hash_seq_search(&seq)) != NULL)
			if (is_idle_full(e, now))
				hash_search(buckets, &e->key, HASH_REMOVE, NULL);
	}
	if (b == NULL)
	{
		b = hash_search(buckets, k, HASH_ENTER_NULL, &found);
		if (b == NULL)
			return NULL;
		b->rpm = b->tpm = 0;
		b->tpd = 0;
		b->requests = b->tokens = b->day_tokens = 0;
		b->in_flight = 0;
		b->refilled_at = now;
		/* rescale from "unlimited" fills every limited bucket */
	}
	refill(b, l, now);
	return b;
}

static bool
short_of(double level, int64 limit, double need, double period, const char *name,
		 MmsQuotaRefusal *why)
{
	double		wait;

	if (limit == 0 || level + 1e-6 >= need)
		return false;
	wait = (need - level) * period / (double) limit;
	if (why->limit == NULL || wait > why->retry_seconds)
	{
		why->limit = name;
		why->limit_value = limit;
		why->retry_seconds = wait;
	}
	return true;
}

bool
mms_quota_charge(const MmsQuotaKey *k, const MmsQuotaLimits *l, int n, int64 tokens,
				 MmsQuotaRefusal *why)
{
	TimestampTz now = GetCurrentTimestamp();
	QuotaBucket *b;
	bool		short_any = false;

	memset(why, 0, sizeof(*why));
	if (l->requests_per_minute == 0 && l->tokens_per_minute == 0 && l->tokens_per_day == 0)
		return true;
	LWLockAcquire(mms_shared->quota_lock, LW_EXCLUSIVE);
	b = bucket_for(k, l, now);
	if (b == NULL)
	{
		LWLockRelease(mms_shared->quota_lock);
		why->no_bucket = true;
		why->retry_seconds = 1;
		return false;
	}
	short_any |= short_of(b->requests, b->rpm, n, 60.0, "requests_per_minute", why);
	short_any |= short_of(b->tokens, b->tpm, (double) tokens, 60.0, "tokens_per_minute", why);
	short_any |= short_of(b->day_tokens, b->tpd, (double) tokens, 86400.0, "tokens_per_day", why);
	if (!short_any)
	{
		if (b->rpm)
			b->requests -= n;
		if (b->tpm)
			b->tokens -= (double) tokens;
		if (b->tpd)
			b->day_tokens -= (double) tokens;
	}
	LWLockRelease(mms_shared->quota_lock);
	return !short_any;
}

void
mms_quota_uncharge(const MmsQuotaKey *k, int n, int64 tokens)
{
	QuotaBucket *b;

	if (n <= 0 && tokens <= 0)
		return;
	LWLockAcquire(mms_shared->quota_lock, LW_EXCLUSIVE);
	b = hash_search(buckets, k, HASH_FIND, NULL);
	if (b != NULL)
	{
		if (b->rpm)
			b->requests = Min((double) b->rpm, b->requests + n);
		if (b->tpm)
			b->tokens = Min((double) b->tpm, b->tokens + (double) tokens);
		if (b->tpd)
			b->day_tokens = Min((double) b->tpd, b->day_tokens + (double) tokens);
	}
	LWLockRelease(mms_shared->quota_lock);
}

void
mms_quota_refund(const MmsQuotaKey *k, int64 tokens)
{
	QuotaBucket *b;

	if (tokens <= 0)
		return;
	LWLockAcquire(mms_shared->quota_lock, LW_EXCLUSIVE);
	b = hash_search(buckets, k, HASH_FIND, NULL);
	if (b != NULL)
	{
		if (b->tpm)
			b->tokens = Min((double) b->tpm, b->tokens + (double) tokens);
		if (b->tpd)
			b->day_tokens = Min((double) b->tpd, b->day_tokens + (double) tokens);
	}
	LWLockRelease(mms_shared->quota_lock);
}

int
mms_quota_enter(const MmsQuotaKey *k, const MmsQuotaLimits *l, int32 *in_flight)
{
	QuotaBucket *b;
	int			r;

	*in_flight = 0;
	if (l->max_concurrent == 0)
		return 1;
	LWLockAcquire(mms_shared->quota_lock, LW_EXCLUSIVE);
	b = bucket_for(k, l, GetCurrentTimestamp());
	if (b == NULL)
		r = -1;
	else if (b->in_flight < l->max_concurrent)
	{
		b->in_flight++;
		r = 1;
	}
	else
		r = 0;
	*in_flight = b ? b->in_flight : 0;
	LWLockRelease(mms_shared->quota_lock);
	return r;
}

void
mms_quota_leave(const MmsQuotaKey *k)
{
	QuotaBucket *b;

	LWLockAcquire(mms_shared->quota_lock, LW_EXCLUSIVE);
	b = hash_search(buckets, k, HASH_FIND, NULL);
	if (b != NULL && b->in_flight > 0)
		b->in_flight--;
	LWLockRelease(mms_shared->quota_lock);
}

void
mms_quota_remaining(const MmsQuotaKey *k, const MmsQuotaLimits *l, MmsQuotaRemaining *out)
{
	TimestampTz now = GetCurrentTimestamp();
	QuotaBucket *b;
	QuotaBucket c;

	LWLockAcquire(mms_shared->quota_lock, LW_SHARED);
	b = hash_search(buckets, k, HASH_FIND, NULL);
	if (b != NULL)
		c = *b;
	LWLockRelease(mms_shared->quota_lock);
	if (b == NULL)
	{
		memset(&c, 0, sizeof(c));
		c.refilled_at = now;
	}
	/* a copy, refilled to now: what a charge would see */
	refill(&c, l, now);
	out->requests = c.requests;
	out->tokens = c.tokens;
	out->day_tokens = c.day_tokens;
	out->in_flight = c.in_flight;
	out->requests_full_in = c.rpm ? (c.rpm - c.requests) * 60.0 / c.rpm : 0;
	out->tokens_full_in = c.tpm ? (c.tpm - c.tokens) * 60.0 / c.tpm : 0;
	out->day_tokens_full_in = c.tpd ? (c.tpd - c.day_tokens) * 86400.0 / c.tpd : 0;
}
