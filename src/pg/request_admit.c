/*
 * request_admit.c — the role's quota, enforced in the calling backend as
 * the caller, before any request is queued (the request API's other half,
 * request.c, submits). Requests are admitted against the role's buckets
 * (quota.c) all those added so far at once: an array call is admitted whole
 * or refused whole, and the batching node admits each row's call alone. A
 * refusal is 53400 naming the role, the model and the limit, counted as
 * rejections in usage. max_concurrent is entered per request as it is
 * submitted; what a request was charged and did not use is refunded by
 * request.c when it ends.
 */
#include "postgres.h"

#include <math.h>

#include "miscadmin.h"

#include "request_set.h"

/* What a request is charged for its output: all it may produce. */
static int32
output_allowance(const Req *r)
{
	return r->kind == MMS_REQ_SCORE ? r->n_target : r->opts->max_new_tokens;
}

static char *
quota_role_name(MmsRequestSet *rs)
{
	return GetUserNameFromId(rs->roleid, false);
}

/*
 * Refusals: the error of n requests over quota, counted as rejections in
 * usage (flushed by the cleanup an ERROR runs, or when the set ends).
 */

/* The shared table of buckets is full of buckets in use: say so, not a limit. */
static void
refusal_no_bucket(MmsRequestSet *rs, int n, MmsDeferredError *e)
{
	rs->counts.rejections += n;
	e->sqlstate = ERRCODE_CONFIGURATION_LIMIT_EXCEEDED;
	e->msg = psprintf("too many roles are rate-limited at once to admit a call of role \"%s\" on model \"%s\"",
					  quota_role_name(rs), rs->model.name);
	e->detail = pstrdup("Retry in 1 s.");
	e->hint = NULL;
}

/* Over quota: 53400 naming the role, the model and the limit, with when to retry. */
static void
refusal(MmsRequestSet *rs, int n, const MmsQuotaRefusal *why, MmsDeferredError *e)
{
	if (why->no_bucket)
	{
		refusal_no_bucket(rs, n, e);
		return;
	}
	rs->counts.rejections += n;
	e->sqlstate = ERRCODE_CONFIGURATION_LIMIT_EXCEEDED;
	e->msg = psprintf("role \"%s\" is over its quota on model \"%s\": %s is " INT64_FORMAT,
					  quota_role_name(rs), rs->model.name, why->limit, why->limit_value);
	e->detail = psprintf("Retry in %d s.", (int) Max(1, ceil(why->retry_seconds)));
	e->hint = pstrdup("mms_quota_status() shows what remains.");
}

/* A call that no state of the buckets could admit. */
static void
refusal_never(MmsRequestSet *rs, int n, int64 tokens, const char *limit, int64 value, MmsDeferredError *e)
{
	rs->counts.rejections += n;
	e->sqlstate = ERRCODE_CONFIGURATION_LIMIT_EXCEEDED;
	e->msg = psprintf("a call of %d %s and " INT64_FORMAT " tokens can never fit the quota of role \"%s\" on model \"%s\": %s is " INT64_FORMAT,
					  n, n == 1 ? "request" : "requests", tokens, quota_role_name(rs), rs->model.name,
					  limit, value);
	e->detail = pstrdup("Each request is charged its input tokens plus max_new_tokens (the target's tokens when scoring) up front.");
	e->hint = pstrdup("Split the call into smaller ones, or lower max_new_tokens.");
}

/*
 * Charges every request added since the last admission against the role's
 * buckets, all or nothing: an array call is admitted whole or refused whole.
 * Refused: false, with the error in *refused and nothing charged.
 */
bool
mms_req_admit(MmsRequestSet *rs, MmsDeferredError *refused)
{
	const MmsQuotaLimits *l = &rs->limits;
	int			n = rs->n - rs->next_unadmitted;
	int64		tokens = 0;
	int64		out = 0;
	MmsQuotaRefusal why;

	if (n <= 0)
		return true;
	for (int i = rs->next_unadmitted; i < rs->n; i++)
	{
		Req		   *r = &rs->reqs[i];

		if (r->res.done)
		{
			n--;				/* cancelled before it was admitted */
			continue;
		}
		r->charge = rs->exempt ? 0 : output_allowance(r);
		tokens += r->n_input + output_allowance(r);
		out += r->charge;
	}
	if (n <= 0)
	{
		rs->next_unadmitted = rs->n;
		return true;
	}
	if (!rs->exempt)
	{
		bool		ok = false;

		if (l->requests_per_minute > 0 && n > l->requests_per_minute)
			refusal_never(rs, n, tokens, "requests_per_minute", l->requests_per_minute, refused);
		else if (l->tokens_per_minute > 0 && tokens > l->tokens_per_minute)
			refusal_never(rs, n, tokens, "tokens_per_minute", l->tokens_per_minute, refused);
		else if (l->tokens_per_day > 0 && tokens > l->tokens_per_day)
			refusal_never(rs, n, tokens, "tokens_per_day", l->tokens_per_day, refused);
		else if (!mms_quota_charge(&rs->qkey, l, n, tokens, &why))
			refusal(rs, n, &why, refused);
		else
			ok = true;
		if (!ok)
		{
			for (int i = rs->next_unadmitted; i < rs->n; i++)
				rs->reqs[i].charge = 0;
			return false;
		}
		/* only tokens limits are refunded; without them there is nothing to give back */
		if (l->tokens_per_minute > 0 || l->tokens_per_day > 0)
			rs->charged_waiting += out;
		else
			for (int i = rs->next_unadmitted; i < rs->n; i++)
				rs->reqs[i].charge = 0;
	}
	rs->next_unadmitted = rs->n;
	return true;
}

/*
 * Gives back the whole charge of the admitted requests that have no slot:
 * the call is refused before they ran.
 */
static void
uncharge_waiting(MmsRequestSet *rs)
{
	int			n = 0;
	int64		tokens = 0;

	for (int i = rs->next_unsubmitted; i < rs->next_unadmitted; i++)
	{
		Req		   *r = &rs->reqs[i];

		if (r->slot != -1)
			continue;
		n++;
		tokens += r->n_input + output_allowance(r);
	}
	if (rs->limits.tokens_per_minute == 0 && rs->limits.tokens_per_day == 0)
		tokens = 0;
	mms_quota_uncharge(&rs->qkey, n, tokens);
	rs->charged_waiting = 0;
}

/*
 * The role is at its max_concurrent: wait for this backend's own requests,
 * or, with none in flight, refuse (another session holds them all).
 */
bool
mms_req_enter_concurrency(MmsRequestSet *rs)
{
	int32		in_flight;
	int			r;

	if (rs->exempt || rs->limits.max_concurrent == 0)
		return false;
	if ((r = mms_quota_enter(&rs->qkey, &rs->limits, &in_flight)) > 0)
		return true;
	if (r == 0 && mms_req_backend_inflight() > 0)
		return false;
	uncharge_waiting(rs);
	if (r < 0)
	{
		MmsDeferredError e;

		refusal_no_bucket(rs, 1, &e);
		mms_raise_deferred(&e);
	}
	rs->counts.rejections++;
	ereport(ERROR,
			(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
			 errmsg("role \"%s\" is over its quota on model \"%s\": max_concurrent is %d",
					quota_role_name(rs), rs->model.name, rs->limits.max_concurrent),
			 errdetail("The role has %d requests in flight; retry in 1 s, or when one of them finishes.",
					   in_flight),
			 errhint("mms_quota_status() shows what remains.")));
	return false;				/* keep compiler quiet */
}

bool
mms_req_rate_limited(const MmsRequestSet *rs)
{
	return !rs->exempt && (rs->limits.requests_per_minute > 0 || rs->limits.tokens_per_minute > 0 ||
						   rs->limits.tokens_per_day > 0);
}

bool
mms_requests_admit(MmsRequestSet *rs, MmsDeferredError *refused)
{
	if (!mms_req_rate_limited(rs) || mms_req_admit(rs, refused))
		return true;
	/* the refused requests end without running */
	for (int i = rs->next_unadmitted; i < rs->n; i++)
	{
		Req		   *r = &rs->reqs[i];

		if (r->res.done)
			continue;
		r->slot = -2;
		r->res.done = true;
		rs->n_open--;
		mms_progress_done(false, 0);
	}
	/* submit skips them (slot -2) */
	rs->next_unadmitted = rs->n;
	return false;
}
