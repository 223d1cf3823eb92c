/*
 * pgcall.c — one request's SQL on a pooled session, as a single pipeline:
 *
 *   [Parse] Bind/Execute  set_config('role', $role, true), set_config('statement_timeout', ...)
 *   [Parse] Bind/Execute  the API call, its body a $n parameter
 *   Sync
 *
 * One round trip. Without an explicit BEGIN, the statements before a Sync run
 * in one implicit transaction that the Sync commits, or rolls back when one
 * failed (protocol "Pipelining"), so the transaction-local settings hold for
 * the call and vanish with it, and a failed call needs no ROLLBACK. Statements
 * are prepared on first use per session (the Parse rides in the same
 * pipeline). While waiting, the client's socket is polled for hangup: a
 * client that leaves gets its query cancelled (gw_call_abandon).
 *
 * Not here: choosing the node (pool.c), HTTP (http.c, api.c, stream.c).
 */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>

#include "gateway.h"

/* "%s" is the schema of mms on the node, quoted */
static const char *const stmt_sql[GW_N_STMTS] = {
	[GW_STMT_SETUP] = "SELECT pg_catalog.set_config('role', $1, true), pg_catalog.set_config('statement_timeout', $2, true)",
	[GW_STMT_COMMIT] = "COMMIT",
	[GW_STMT_ROLLBACK] = "ROLLBACK",
	[GW_STMT_AUTH] = "SELECT key_id::text || CASE WHEN is_admin THEN ',t,' ELSE ',f,' END || role FROM mms.api_authenticate($1)",
	/* one text value "name=limit/remaining/reset_s,...": the gateway reads a single column */
	[GW_STMT_QUOTA] = ("SELECT pg_catalog.string_agg(limit_name || '=' || coalesce(\"limit\", -1) || '/' || coalesce(remaining, -1)"
					   " || '/' || coalesce(ceil(reset_seconds)::bigint, 0), ',') FROM %s.mms_quota_status($1)"),
	[GW_STMT_METRICS] = "SELECT %s.mms_metrics()",
	/* set-returning calls stay in the target list: a FROM-clause call would materialize every row first */
	[GW_STMT_COMPLETIONS] = "SELECT %s.mms_api_completions($1::jsonb)::text",
	[GW_STMT_CHAT] = "SELECT %s.mms_api_chat_completions($1::jsonb)::text",
	[GW_STMT_MODELS] = "SELECT %s.mms_api_models()::text",
	[GW_STMT_MODEL] = "SELECT %s.mms_api_model($1)::text",
	[GW_STMT_GENERATE] = "SELECT %s.mms_api_generate($1, $2::jsonb)::text",
	[GW_STMT_SCORE] = "SELECT %s.mms_api_score($1, $2::jsonb)::text",
	[GW_STMT_TOKENIZE] = "SELECT %s.mms_api_tokenize($1, $2::jsonb)::text",
	[GW_STMT_REGISTER] = "SELECT %s.mms_api_register($1, $2::oid, $3, $4, $5)::text",
	[GW_STMT_UNREGISTER] = "SELECT %s.mms_api_unregister($1)::text",
	[GW_STMT_SET_ALIAS] = "SELECT %s.mms_api_set_alias($1, $2, $3::jsonb)::text",
	[GW_STMT_DROP_ALIAS] = "SELECT %s.mms_api_drop_alias($1, $2)::text",
};

const char *
gw_stmt_sql(GwStmt stmt)
{
	return stmt_sql[stmt];
}

void
gw_setup_params(GwStep *step, const char *role, char *timeout_buf, size_t size)
{
	snprintf(timeout_buf, size, "%d", gw_config.request_timeout_s * 1000);
	step->stmt = GW_STMT_SETUP;
	step->n_params = 2;
	step->params[0] = role;
	step->params[1] = timeout_buf;
}

static bool
send_step(GwCall *call, const GwStep *st, int index)
{
	GwConn	   *c = call->conn;
	char		name[16];

	snprintf(name, sizeof(name), "gw%d", (int) st->stmt);
	if (!(c->prepared & (1u << st->stmt)))
	{
		char		sql[512];

		snprintf(sql, sizeof(sql), stmt_sql[st->stmt], c->schema);
		if (!PQsendPrepare(c->pg, name, sql, 0, NULL))
			return false;
		call->expect[call->n_expect].stmt = st->stmt;
		call->expect[call->n_expect].prepare = true;
		call->expect[call->n_expect++].step = index;
	}
	if (!PQsendQueryPrepared(c->pg, name, st->n_params, st->params, NULL, NULL, 0))
		return false;
	call->expect[call->n_expect].stmt = st->stmt;
	call->expect[call->n_expect].prepare = false;
	call->expect[call->n_expect++].step = index;
	return true;
}

static bool
expect_main_rows(const GwCall *call)
{
	return call->cur_expect < call->n_expect &&
		call->expect[call->cur_expect].step == call->main_step &&
		!call->expect[call->cur_expect].prepare;
}

bool
gw_call_send(GwCall *call, GwConn *conn, const GwStep *steps, int n_steps,
			 int main_step, bool single_row, int client_fd, int64_t deadline_ms)
{
	memset(call, 0, sizeof(*call));
	call->conn = conn;
	call->client_fd = client_fd;
	call->deadline_ms = deadline_ms;
	call->single_row = single_row;
	call->main_step = main_step;
	for (int i = 0; i < n_steps && i < GW_CALL_MAX_STEPS; i++)
		if (!send_step(call, &steps[i], i))
			goto broken;
	if (!PQpipelineSync(conn->pg))
		goto broken;
	if (single_row && expect_main_rows(call))
		PQsetSingleRowMode(conn->pg);
	return true;

broken:
	gw_error_from_result(&call->err, NULL, conn->pg);
	call->err.sqlstate[0] = '\0';
	return false;
}

/* Until a result can be read without blocking, the client leaves, or time is up. */
static GwCallResult
wait_input(GwCall *call)
{
	PGconn	   *pg = call->conn->pg;

	while (PQisBusy(pg))
	{
		struct pollfd fds[2] = {
			{.fd = PQsocket(pg), .events = POLLIN},
			{.fd = call->client_fd, .events = POLLRDHUP},
		};
		int64_t		left = call->deadline_ms - gw_now_ms();
		int			n;

		if (left <= 0)
			return GW_CALL_TIMEOUT;
		n = poll(fds, call->client_fd >= 0 ? 2 : 1, left > 1000 ? 1000 : (int) left);
		if (n < 0 && errno != EINTR)
		{
			gw_error_set(&call->err, "", "poll failed: %s", strerror(errno));
			return GW_CALL_BROKEN;
		}
		if (call->client_fd >= 0 && (fds[1].revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)))
			return GW_CALL_HANGUP;
		if (fds[0].revents && !PQconsumeInput(pg))
		{
			gw_error_from_result(&call->err, NULL, pg);
			call->err.sqlstate[0] = '\0';
			return GW_CALL_BROKEN;
		}
	}
	return GW_CALL_ROW;
}

GwCallResult
gw_call_next(GwCall *call, const char **row, int *len)
{
	PGconn	   *pg = call->conn->pg;

	for (;;)
	{
		PGresult   *res;
		GwCallResult w;

		if (call->rows)
		{
			if (call->next_row < PQntuples(call->rows))
			{
				*row = PQgetvalue(call->rows, call->next_row, 0);
				*len = PQgetlength(call->rows, call->next_row, 0);
				call->next_row++;
				return GW_CALL_ROW;
			}
			PQclear(call->rows);
			call->rows = NULL;
		}
		if (call->finished)
			return call->failed ? GW_CALL_FAILED : GW_CALL_DONE;
		w = wait_input(call);
		if (w != GW_CALL_ROW)
			return w;
		res = PQgetResult(pg);
		if (res == NULL)
		{
			/* the end of one statement's results; single-row mode is per statement */
			call->cur_expect++;
			if (call->single_row && expect_main_rows(call))
				PQsetSingleRowMode(pg);
			continue;
		}
		switch (PQresultStatus(res))
		{
			case PGRES_PIPELINE_SYNC:
				call->finished = true;
				/*
				 * Nothing is queued after our Sync. Some libpq versions end
				 * a sync with a NULL like any result: read it now, so that
				 * the next pipeline on this session starts clean.
				 */
				if (!PQisBusy(pg))
				{
					PGresult   *stray = PQgetResult(pg);

					if (stray)
					{
						PQclear(stray);
						PQclear(res);
						gw_error_set(&call->err, "", "unexpected result after the end of a pipeline");
						return GW_CALL_BROKEN;
					}
				}
				break;
			case PGRES_PIPELINE_ABORTED:
				break;
			case PGRES_FATAL_ERROR:
				if (!call->failed)
					gw_error_from_result(&call->err, res, pg);
				call->failed = true;
				if (PQstatus(pg) != CONNECTION_OK)
				{
					PQclear(res);
					call->err.sqlstate[0] = '\0';
					return GW_CALL_BROKEN;
				}
				break;
			case PGRES_COMMAND_OK:
			case PGRES_TUPLES_OK:
			case PGRES_SINGLE_TUPLE:
				if (call->cur_expect >= call->n_expect)
					break;
				if (call->expect[call->cur_expect].prepare)
					call->conn->prepared |= 1u << call->expect[call->cur_expect].stmt;
				else if (expect_main_rows(call) && !call->failed)
				{
					call->rows = res;
					call->next_row = 0;
					continue;
				}
				break;
			default:
				/* nothing the gateway sends answers with COPY or anything else */
				gw_error_set(&call->err, "", "unexpected result from the database: %s",
							 PQresStatus(PQresultStatus(res)));
				PQclear(res);
				return GW_CALL_BROKEN;
		}
		PQclear(res);
	}
}

void
gw_call_clear(GwCall *call)
{
	PQclear(call->rows);
	call->rows = NULL;
}

/*
 * The client left or time ran out: cancel the query (the worker drops the
 * request) and read the pipeline to its Sync, whose implicit transaction then
 * rolls back. True when the session can serve again.
 */
bool
gw_call_abandon(GwCall *call)
{
	char		errbuf[256];
	const char *row;
	int			len;
	GwCallResult r;

	gw_call_clear(call);
	if (call->finished)
		return true;
	if (!PQcancel(call->conn->cancel, errbuf, sizeof(errbuf)))
		return false;
	gw_metrics_add(GW_COUNT_CANCELS, 1);
	call->client_fd = -1;
	call->deadline_ms = gw_now_ms() + 5000;
	do
		r = gw_call_next(call, &row, &len);
	while (r == GW_CALL_ROW);
	gw_call_clear(call);
	return r == GW_CALL_DONE || r == GW_CALL_FAILED;
}

GwCallResult
gw_call_run(GwConn *conn, const GwStep *steps, int n_steps, int main_step,
			int client_fd, int64_t deadline_ms, GwBuf *out, GwPgError *err,
			bool *reusable)
{
	GwCall		call;
	GwCallResult r;
	const char *row;
	int			len;
	bool		got_row = false;

	*reusable = false;
	if (!gw_call_send(&call, conn, steps, n_steps, main_step, false, client_fd, deadline_ms))
	{
		*err = call.err;
		return GW_CALL_BROKEN;
	}
	while ((r = gw_call_next(&call, &row, &len)) == GW_CALL_ROW)
	{
		/* one value expected; further rows are read and dropped */
		if (!got_row && out)
			gw_buf_append(out, row, (size_t) len);
		got_row = true;
	}
	if (r == GW_CALL_HANGUP || r == GW_CALL_TIMEOUT)
		*reusable = gw_call_abandon(&call);
	else
		*reusable = r == GW_CALL_DONE || r == GW_CALL_FAILED;
	gw_call_clear(&call);
	*err = call.err;
	if (r == GW_CALL_DONE && out && out->failed)
	{
		gw_error_set(err, "54000", "the response is too large");
		return GW_CALL_FAILED;
	}
	return r;
}
