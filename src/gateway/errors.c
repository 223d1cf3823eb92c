/*
 * errors.c — what an SQLSTATE means over HTTP (the contract's table), which
 * errors say "this node failed" rather than "this request failed", and the
 * JSON error body: {"error": {"message", "type", "code", "sqlstate", ...}}.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway.h"

static bool
class_is(const char *sqlstate, const char *cls)
{
	return strncmp(sqlstate, cls, 2) == 0;
}

GwStatus
gw_status_for_sqlstate(const char *s)
{
	GwStatus	st = {500, "api_error", NULL};

	if (s == NULL || strlen(s) != 5)
		return st;
	/* class 22, and the names a request carries: invalid, too long, reserved */
	if (class_is(s, "22") || strcmp(s, "42602") == 0 || strcmp(s, "42622") == 0 ||
		strcmp(s, "42939") == 0)
		st = (GwStatus) {400, "invalid_request_error", NULL};
	else if (strcmp(s, "42501") == 0)
		st = (GwStatus) {403, "permission_error", NULL};
	else if (strcmp(s, "42704") == 0)
		st = (GwStatus) {404, "not_found_error", "not_found"};
	else if (strcmp(s, "42710") == 0 || strcmp(s, "23505") == 0)
		st = (GwStatus) {409, "conflict_error", "already_exists"};
	else if (class_is(s, "54"))
		st = (GwStatus) {413, "request_too_large", NULL};
	else if (strcmp(s, "53400") == 0)
		st = (GwStatus) {429, "rate_limit_error", "rate_limit_exceeded"};
	else if (strcmp(s, "57014") == 0)
		st = (GwStatus) {504, "timeout_error", NULL};
	else if (class_is(s, "08") || class_is(s, "53") || class_is(s, "40") ||
			 strncmp(s, "57P0", 4) == 0 || strcmp(s, "55000") == 0 ||
			 strcmp(s, "25006") == 0)
		st = (GwStatus) {503, "unavailable_error", NULL};
	return st;
}

/*
 * Errors of the node rather than of the request: another node (or a fresh
 * connection) may well succeed. 25006 (read-only transaction) is not one: a
 * write reached a standby, which the caller handles by asking the primary.
 */
bool
gw_sqlstate_node_failure(const char *s)
{
	return s[0] == '\0' || class_is(s, "08") || strcmp(s, "57P01") == 0 ||
		strcmp(s, "57P02") == 0 || strcmp(s, "57P03") == 0 ||
		strcmp(s, "53300") == 0;
}

static void
copy_field(char *dst, size_t size, const char *src)
{
	size_t		n;

	if (src == NULL)
	{
		dst[0] = '\0';
		return;
	}
	n = strlen(src);
	if (n >= size)
		n = size - 1;
	memcpy(dst, src, n);
	dst[n] = '\0';
	/* libpq's connection messages span lines: one line for logs and JSON */
	for (size_t i = 0; i < n; i++)
		if (dst[i] == '\n' || dst[i] == '\t' || dst[i] == '\r')
			dst[i] = ' ';
	while (n > 0 && dst[n - 1] == ' ')
		dst[--n] = '\0';
}

/* An error result, or (res NULL) the connection's own error. */
void
gw_error_from_result(GwPgError *e, const PGresult *res, PGconn *pg)
{
	const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;

	copy_field(e->sqlstate, sizeof(e->sqlstate), state);
	if (res && PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY))
		copy_field(e->message, sizeof(e->message), PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY));
	else if (res && PQresultErrorMessage(res)[0])
		copy_field(e->message, sizeof(e->message), PQresultErrorMessage(res));
	else
		copy_field(e->message, sizeof(e->message), pg ? PQerrorMessage(pg) : "database connection failed");
	/*
	 * No SQLSTATE: libpq's own words about the connection, which name the
	 * server's host or socket path; the client gets a plain statement (the
	 * node's health check logs the details).
	 */
	if (state == NULL || state[0] == '\0')
		copy_field(e->message, sizeof(e->message), "the database node is unavailable");
	copy_field(e->detail, sizeof(e->detail), res ? PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL) : NULL);
	copy_field(e->hint, sizeof(e->hint), res ? PQresultErrorField(res, PG_DIAG_MESSAGE_HINT) : NULL);
	/* a broken connection yields results without SQLSTATE: a node failure */
	if (pg && PQstatus(pg) == CONNECTION_BAD && strncmp(e->sqlstate, "08", 2) != 0)
		e->sqlstate[0] = '\0';
}

void
gw_error_set(GwPgError *e, const char *sqlstate, const char *fmt,...)
{
	va_list		ap;

	copy_field(e->sqlstate, sizeof(e->sqlstate), sqlstate);
	va_start(ap, fmt);
	vsnprintf(e->message, sizeof(e->message), fmt, ap);
	va_end(ap);
	e->detail[0] = '\0';
	e->hint[0] = '\0';
}

void
gw_error_json(GwBuf *out, const char *message, const char *type, const char *code,
			  const char *sqlstate, const char *detail, const char *hint)
{
	gw_buf_puts(out, "{\"error\":{\"message\":");
	gw_buf_json_string(out, message, strlen(message));
	gw_buf_puts(out, ",\"type\":");
	gw_buf_json_string(out, type, strlen(type));
	gw_buf_puts(out, ",\"code\":");
	if (code)
		gw_buf_json_string(out, code, strlen(code));
	else
		gw_buf_puts(out, "null");
	gw_buf_puts(out, ",\"sqlstate\":");
	if (sqlstate && sqlstate[0])
		gw_buf_json_string(out, sqlstate, strlen(sqlstate));
	else
		gw_buf_puts(out, "null");
	if (detail && detail[0])
	{
		gw_buf_puts(out, ",\"detail\":");
		gw_buf_json_string(out, detail, strlen(detail));
	}
	if (hint && hint[0])
	{
		gw_buf_puts(out, ",\"hint\":");
		gw_buf_json_string(out, hint, strlen(hint));
	}
	gw_buf_puts(out, "}}");
}

/* Seconds to wait, from a refusal's detail "Retry in N s."; 1 when not said. */
int
gw_retry_after_s(const GwPgError *e)
{
	const char *p = strstr(e->detail, "Retry in ");
	long		n;

	if (p == NULL)
		return 1;
	n = strtol(p + 9, NULL, 10);
	return n >= 1 && n <= 86400 ? (int) n : 1;
}
