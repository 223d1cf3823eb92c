/*
 * api.c — runs an API endpoint: key → role, node choice, the SQL call as the
 * key's role (pgcall.c), the answer or the error with its status. A request
 * whose node fails before anything reached the client is tried once more on
 * another node (or a fresh connection) unless it writes; a write that meets a
 * standby (25006) goes to the primary. 429s carry Retry-After and the
 * x-ratelimit-* headers from mms_quota_status, asked as the role afterwards.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "gateway.h"

/* how long past statement_timeout the gateway waits for the server's own 57014 */
#define DEADLINE_GRACE_MS 2000

typedef enum Outcome
{
	OUTCOME_ANSWERED,			/* a response is queued */
	OUTCOME_STREAMED,			/* the stream owns the connection and the node count */
	OUTCOME_OPS,				/* the key is good; the gateway answers (/v1/nodes) */
	OUTCOME_CONTINUE,			/* the key is good: go on with the call */
	OUTCOME_RETRY,				/* the node failed before any byte was sent */
	OUTCOME_CLOSE				/* the client is gone: drop the connection */
} Outcome;

static const char *
bearer_key(GwRequest *req)
{
	const char *h = MHD_lookup_connection_value(req->mhd, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);

	if (h == NULL || strncasecmp(h, "Bearer ", 7) != 0)
		return NULL;
	h += 7;
	while (*h == ' ')
		h++;
	return *h ? h : NULL;
}

static enum MHD_Result
respond_unauthorized(GwRequest *req, bool key_given)
{
	gw_add_header(req, "WWW-Authenticate", key_given ? "Bearer realm=\"mms\", error=\"invalid_token\"" : "Bearer realm=\"mms\"");
	return gw_respond_error(req, 401, "authentication_error", key_given ? "invalid_api_key" : "missing_api_key",
							key_given ? "the API key is not valid (unknown, revoked or expired)"
							: "an API key is required: Authorization: Bearer <key>");
}

static enum MHD_Result
respond_forbidden(GwRequest *req)
{
	return gw_respond_error(req, 403, "permission_error", NULL,
							"this endpoint needs the key of a member of mms_admin");
}

static int64_t
request_deadline(GwRequest *req)
{
	return req->start_us / 1000 + (int64_t) gw_config.request_timeout_s * 1000 + DEADLINE_GRACE_MS;
}

/* "model" of the body, or the path's {ref}: for the log and the quota headers */
static void
note_model(GwRequest *req)
{
	const char *v;
	size_t		n;

	if (req->route->json_body && req->body.len > 0 &&
		req->endpoint != GW_EP_SET_ALIAS &&
		gw_json_member(req->body.data, req->body.len, "model", &v, &n) &&
		gw_json_string(v, n, req->model, sizeof(req->model)))
		return;
	if (req->p1[0])
		snprintf(req->model, sizeof(req->model), "%s", req->p1);
}

static bool
wants_stream(GwRequest *req)
{
	const char *v;
	size_t		n;

	return req->route->streamable && req->body.len > 0 &&
		gw_json_member(req->body.data, req->body.len, "stream", &v, &n) &&
		gw_json_is_true(v, n);
}

/*
 * The role behind a key not in the cache, asked on conn. OUTCOME_ANSWERED
 * with a response queued when the key is bad or the check failed for good.
 */
static Outcome
authenticate(GwRequest *req, GwConn *conn, const char *key, bool *reusable, GwPgError *err,
			 enum MHD_Result *ret)
{
	GwAuthResult a = gw_auth_lookup(conn, key, &req->id, gw_client_fd(req),
									request_deadline(req), err, reusable);

	if (a == GW_AUTH_OK)
	{
		req->authenticated = true;
		return OUTCOME_CONTINUE;
	}
	if (a == GW_AUTH_INVALID)
	{
		*ret = respond_unauthorized(req, true);
		return OUTCOME_ANSWERED;
	}
	if (a == GW_AUTH_CLIENT_GONE)
		return OUTCOME_CLOSE;
	if (gw_sqlstate_node_failure(err->sqlstate))
		return OUTCOME_RETRY;
	*ret = gw_respond_pg_error(req, err);
	return OUTCOME_ANSWERED;
}

/* x-ratelimit-* of the role on the model, asked in a transaction of its own */
static void
add_quota_headers(GwRequest *req, GwConn *conn, bool *reusable)
{
	char		timeout[16];
	GwStep		steps[2];
	GwBuf		out = {.limit = 4096};
	GwPgError	err;
	char	   *save = NULL;
	long long	best[2][3] = {{-1, -1, -1}, {-1, -1, -1}};	/* requests, tokens: limit, remaining, reset */

	gw_setup_params(&steps[0], req->id.role, timeout, sizeof(timeout));
	steps[1] = (GwStep) {.stmt = GW_STMT_QUOTA, .n_params = 1, .params = {req->model[0] ? req->model : NULL}};
	if (gw_call_run(conn, steps, 2, 1, -1, gw_now_ms() + 2000, &out, &err, reusable) != GW_CALL_DONE ||
		out.len == 0)
	{
		gw_buf_free(&out);
		return;
	}
	/* rows "name=limit/remaining/reset_seconds", comma-separated; the tightest of each kind wins */
	for (char *item = strtok_r(out.data, ",", &save); item; item = strtok_r(NULL, ",", &save))
	{
		char	   *eq = strchr(item, '=');
		long long	lim;
		long long	rem;
		long long	reset;
		int			kind;

		if (eq == NULL || sscanf(eq + 1, "%lld/%lld/%lld", &lim, &rem, &reset) != 3 || lim < 0)
			continue;
		*eq = '\0';
		if (strcmp(item, "requests_per_minute") == 0)
			kind = 0;
		else if (strcmp(item, "tokens_per_minute") == 0 || strcmp(item, "tokens_per_day") == 0)
			kind = 1;
		else
			continue;
		if (best[kind][0] < 0 || rem < best[kind][1])
		{
			best[kind][0] = lim;
			best[kind][1] = rem;
			best[kind][2] = reset;
		}
	}
	gw_buf_free(&out);
	for (int kind = 0; kind < 2; kind++)
	{
		const char *what = kind == 0 ? "requests" : "tokens";
		char		name[48];
		char		val[32];

		if (best[kind][0] < 0)
			continue;
		snprintf(name, sizeof(name), "x-ratelimit-limit-%s", what);
		snprintf(val, sizeof(val), "%lld", best[kind][0]);
		gw_add_header(req, name, val);
		snprintf(name, sizeof(name), "x-ratelimit-remaining-%s", what);
		snprintf(val, sizeof(val), "%lld", best[kind][1] > 0 ? best[kind][1] : 0);
		gw_add_header(req, name, val);
		snprintf(name, sizeof(name), "x-ratelimit-reset-%s", what);
		snprintf(val, sizeof(val), "%llds", best[kind][2] > 0 ? best[kind][2] : 0);
		gw_add_header(req, name, val);
	}
}

/* An SQL error of the call: retry elsewhere, or answer with its status. */
static Outcome
call_failed(GwRequest *req, GwNode *node, GwConn *conn, const GwPgError *err,
			bool *reusable, enum MHD_Result *ret)
{
	if (gw_sqlstate_node_failure(err->sqlstate) && !req->route->write)
		return OUTCOME_RETRY;
	if (strcmp(err->sqlstate, "25006") == 0 && req->route->write)
	{
		/* nothing was written on a read-only node: the primary is elsewhere */
		gw_health_note_recovery(node);
		return OUTCOME_RETRY;
	}
	if (strcmp(err->sqlstate, "53400") == 0)
	{
		char		secs[16];

		snprintf(secs, sizeof(secs), "%d", gw_retry_after_s(err));
		gw_add_header(req, "Retry-After", secs);
		if (*reusable)
			add_quota_headers(req, conn, reusable);
	}
	*ret = gw_respond_pg_error(req, err);
	return OUTCOME_ANSWERED;
}

static int
call_params(GwRequest *req, GwStep *call)
{
	const char *body = req->body.len > 0 ? req->body.data : "";

	call->stmt = (GwStmt) req->route->stmt;
	call->n_params = 0;
	if (req->route->endpoint == GW_EP_COMPLETIONS || req->route->endpoint == GW_EP_CHAT)
		call->params[call->n_params++] = body;
	else if (req->route->endpoint != GW_EP_MODELS)
	{
		call->params[call->n_params++] = req->p1;
		if (req->route->endpoint == GW_EP_SET_ALIAS || req->route->endpoint == GW_EP_DROP_ALIAS)
			call->params[call->n_params++] = req->p2;
		if (req->route->json_body)
			call->params[call->n_params++] = body;
	}
	return call->n_params;
}

/* One try of the request on one node's connection. Releases conn. */
static Outcome
attempt(GwRequest *req, GwNode *node, GwConn *conn, const char *key, GwPgError *err,
		enum MHD_Result *ret)
{
	bool		reusable = true;
	char		timeout[16];
	GwStep		steps[2];
	Outcome		o;
	GwCallResult r;
	GwBuf		out = {0};

	if (!req->authenticated)
	{
		o = authenticate(req, conn, key, &reusable, err, ret);
		if (o != OUTCOME_CONTINUE)
		{
			gw_pool_release(conn, reusable);
			return o;
		}
	}
	if (req->route->admin && !req->id.is_admin)
	{
		gw_pool_release(conn, reusable);
		*ret = respond_forbidden(req);
		return OUTCOME_ANSWERED;
	}
	if (req->route->stmt < 0)
	{
		gw_pool_release(conn, reusable);
		return OUTCOME_OPS;
	}
	gw_setup_params(&steps[0], req->id.role, timeout, sizeof(timeout));
	call_params(req, &steps[1]);

	if (wants_stream(req))
	{
		GwCall	   *call = malloc(sizeof(GwCall));
		const char *row = NULL;
		int			len = 0;

		if (call == NULL)
		{
			gw_pool_release(conn, true);
			*ret = gw_respond_error(req, 503, "unavailable_error", NULL, "out of memory");
			return OUTCOME_ANSWERED;
		}
		if (!gw_call_send(call, conn, steps, 2, 1, true, gw_client_fd(req), request_deadline(req)))
			r = GW_CALL_BROKEN;
		else
			r = gw_call_next(call, &row, &len);
		if (r == GW_CALL_ROW || r == GW_CALL_DONE)
		{
			/* the stream owns the call, the connection and the node's count from here */
			*ret = gw_stream_respond(req, call, conn, node, r == GW_CALL_ROW ? row : NULL, len);
			return OUTCOME_STREAMED;
		}
		*err = call->err;
		if (r == GW_CALL_HANGUP || r == GW_CALL_TIMEOUT)
			reusable = gw_call_abandon(call);
		else
			reusable = r == GW_CALL_FAILED;
		gw_call_clear(call);
		free(call);
	}
	else
	{
		r = gw_call_run(conn, steps, 2, 1, gw_client_fd(req), request_deadline(req), &out, err, &reusable);
		if (r == GW_CALL_DONE)
		{
			gw_pool_release(conn, reusable);
			if (out.len == 0)
			{
				gw_buf_free(&out);
				*ret = gw_respond_error(req, 500, "api_error", NULL, "the API function returned no value");
				return OUTCOME_ANSWERED;
			}
			req->tokens = gw_json_total_tokens(out.data, out.len);
			*ret = gw_respond_buf(req, 200, "application/json", &out);
			return OUTCOME_ANSWERED;
		}
		gw_buf_free(&out);
	}

	switch (r)
	{
		case GW_CALL_FAILED:
			o = call_failed(req, node, conn, err, &reusable, ret);
			gw_pool_release(conn, reusable);
			return o;
		case GW_CALL_HANGUP:
			gw_pool_release(conn, reusable);
			return OUTCOME_CLOSE;
		case GW_CALL_TIMEOUT:
			gw_pool_release(conn, reusable);
			*ret = gw_respond_error(req, 504, "timeout_error", NULL, "the database did not answer in time");
			return OUTCOME_ANSWERED;
		default:
			/* broken connection: a write may or may not have committed, so no retry */
			gw_pool_release(conn, false);
			if (!req->route->write)
				return OUTCOME_RETRY;
			*ret = gw_respond_pg_error(req, err);
			return OUTCOME_ANSWERED;
	}
}

/* gw_pool_acquire waited in vain: the gateway's refusal, not the database's */
enum MHD_Result
gw_respond_pool_timeout(GwRequest *req, const GwPgError *err)
{
	gw_metrics_add(GW_COUNT_POOL_TIMEOUTS, 1);
	gw_add_header(req, "Retry-After", "1");
	return gw_respond_error(req, 503, "unavailable_error", "pool_timeout", err->message);
}

enum MHD_Result
gw_api_dispatch(GwRequest *req)
{
	const char *key = bearer_key(req);
	GwNode	   *failed = NULL;
	GwPgError	err;

	if (key == NULL)
		return respond_unauthorized(req, false);
	switch (gw_auth_cached(key, &req->id))
	{
		case GW_AUTH_OK:
			gw_metrics_add(GW_COUNT_AUTH_HITS, 1);
			req->authenticated = true;
			if (req->route->admin && !req->id.is_admin)
				return respond_forbidden(req);
			if (req->route->stmt < 0)
				return gw_ops_respond(req);
			break;
		case GW_AUTH_INVALID:
			return respond_unauthorized(req, true);
		default:
			gw_metrics_add(GW_COUNT_AUTH_MISSES, 1);
	}
	note_model(req);
	gw_error_set(&err, "", "no healthy database node%s", req->route->write ? " is a primary" : "");

	for (int try = 0; try < 2; try++)
	{
		GwNode	   *node = gw_pool_choose(req->route->write, failed);
		GwConn	   *conn;
		enum MHD_Result ret = MHD_YES;
		Outcome		o;

		/* a lone node gets its second chance on a fresh connection */
		if (node == NULL && failed)
			node = gw_pool_choose(req->route->write, NULL);
		if (node == NULL)
			break;
		conn = gw_pool_acquire(node, gw_now_ms() + (int64_t) gw_config.pool_timeout_s * 1000, &err);
		if (conn == NULL)
		{
			gw_pool_done(node);
			if (err.sqlstate[0] != '\0')
				return gw_respond_pool_timeout(req, &err);
			o = OUTCOME_RETRY;
		}
		else
		{
			o = attempt(req, node, conn, key, &err, &ret);
			if (o == OUTCOME_STREAMED)
				return ret;
			gw_pool_done(node);
			if (o == OUTCOME_OPS)
				return gw_ops_respond(req);
		}
		if (o == OUTCOME_ANSWERED)
			return ret;
		if (o == OUTCOME_CLOSE)
			return gw_respond_gone(req);
		failed = node;
		if (try == 0)
			gw_metrics_add(GW_COUNT_RETRIES, 1);
	}
	return gw_respond_pg_error(req, &err);
}
