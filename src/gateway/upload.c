/*
 * upload.c — POST /v1/models?name=&version=&author=&description=: the body
 * goes into a large object as MHD delivers it, then mms_api_register(name,
 * oid, ...) registers it, all in one transaction as the key's role on the
 * primary. Nothing is buffered beyond one staging chunk. The key (mms_admin)
 * and the name are checked before the body is read, so a refused upload
 * costs no transfer (the 100-continue is not sent).
 *
 * The large-object calls use libpq's fast-path interface, which pipeline mode
 * does not allow: the session leaves pipeline mode for the upload and comes
 * back to it for the registration and the COMMIT (one pipeline, the client's
 * socket watched while it runs).
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <libpq/libpq-fs.h>

#include "gateway.h"

#define STAGING_BYTES (256 * 1024)

typedef struct GwUpload
{
	GwNode	   *node;
	GwConn	   *conn;			/* NULL once released */
	Oid			oid;
	int			lo_fd;
	GwBuf		staging;
	uint64_t	bytes;			/* received */
	GwPgError	err;
	bool		failed;			/* err holds why; the rest of the body is dropped */
} GwUpload;

static void
upload_release(GwUpload *u)
{
	PGresult   *res;
	bool		reusable;

	if (u->conn == NULL)
		return;
	if (PQpipelineStatus(u->conn->pg) == PQ_PIPELINE_OFF)
	{
		if (PQtransactionStatus(u->conn->pg) != PQTRANS_IDLE)
		{
			res = PQexec(u->conn->pg, "ROLLBACK");
			PQclear(res);
		}
		PQenterPipelineMode(u->conn->pg);
	}
	reusable = PQstatus(u->conn->pg) == CONNECTION_OK &&
		PQtransactionStatus(u->conn->pg) == PQTRANS_IDLE;
	gw_pool_release(u->conn, reusable);
	gw_pool_done(u->node);
	u->conn = NULL;
}

static void
upload_free(GwRequest *req)
{
	GwUpload   *u = req->upload;

	upload_release(u);
	gw_buf_free(&u->staging);
	free(u);
	req->upload = NULL;
}

static bool
upload_failed_pg(GwUpload *u, PGresult *res)
{
	gw_error_from_result(&u->err, res, u->conn->pg);
	PQclear(res);
	u->failed = true;
	return false;
}

/* BEGIN, the role and timeout, a new large object opened for writing */
static bool
upload_open(GwUpload *u, const char *role)
{
	PGconn	   *pg = u->conn->pg;
	char		timeout[16];
	const char *params[2] = {role, timeout};
	PGresult   *res;

	if (!PQexitPipelineMode(pg))
	{
		gw_error_set(&u->err, "", "could not leave pipeline mode: %s", PQerrorMessage(pg));
		u->failed = true;
		return false;
	}
	res = PQexec(pg, "BEGIN");
	if (PQresultStatus(res) != PGRES_COMMAND_OK)
		return upload_failed_pg(u, res);
	PQclear(res);
	snprintf(timeout, sizeof(timeout), "%lld", (long long) gw_config.upload_timeout_s * 1000);
	res = PQexecParams(pg, gw_stmt_sql(GW_STMT_SETUP), 2, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(res) != PGRES_TUPLES_OK)
		return upload_failed_pg(u, res);
	PQclear(res);
	u->oid = lo_creat(pg, INV_READ | INV_WRITE);
	if (u->oid == InvalidOid || (u->lo_fd = lo_open(pg, u->oid, INV_WRITE)) < 0)
	{
		gw_error_from_result(&u->err, NULL, pg);
		if (PQstatus(pg) == CONNECTION_OK)
			memcpy(u->err.sqlstate, "55000", 6);
		u->failed = true;
		return false;
	}
	return true;
}

static bool
upload_flush(GwUpload *u)
{
	if (u->staging.len == 0)
		return true;
	if (lo_write(u->conn->pg, u->lo_fd, u->staging.data, u->staging.len) != (int) u->staging.len)
	{
		gw_error_from_result(&u->err, NULL, u->conn->pg);
		if (PQstatus(u->conn->pg) == CONNECTION_OK)
			memcpy(u->err.sqlstate, "58030", 6);
		u->failed = true;
		return false;
	}
	gw_metrics_add(GW_COUNT_UPLOAD_BYTES, u->staging.len);
	gw_buf_reset(&u->staging);
	return true;
}

enum MHD_Result
gw_upload_begin(GwRequest *req)
{
	const char *auth = MHD_lookup_connection_value(req->mhd, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
	const char *name = MHD_lookup_connection_value(req->mhd, MHD_GET_ARGUMENT_KIND, "name");
	const char *key = NULL;
	GwUpload   *u;
	GwPgError	err;
	bool		reusable = true;
	GwAuthResult a = GW_AUTH_INVALID;

	if (auth && strncasecmp(auth, "Bearer ", 7) == 0)
	{
		key = auth + 7;
		while (*key == ' ')
			key++;
	}
	if (key == NULL || *key == '\0')
	{
		gw_add_header(req, "WWW-Authenticate", "Bearer realm=\"mms\"");
		return gw_respond_error(req, 401, "authentication_error", "missing_api_key",
								"an API key is required: Authorization: Bearer <key>");
	}
	a = gw_auth_cached(key, &req->id);
	if (a == GW_AUTH_OK)
		req->authenticated = true;
	else if (a == GW_AUTH_INVALID)
		goto unauthorized;
	if (req->authenticated && !req->id.is_admin)
		return gw_respond_error(req, 403, "permission_error", NULL,
								"uploading a model needs the key of a member of mms_admin");
	u = calloc(1, sizeof(GwUpload));
	if (u == NULL)
		return MHD_NO;
	u->lo_fd = -1;
	u->staging.limit = STAGING_BYTES + 1;
	req->upload = u;
	u->node = gw_pool_choose(true, NULL);
	if (u->node == NULL)
	{
		gw_error_set(&err, "", "no healthy primary database node");
		upload_free(req);
		return gw_respond_pg_error(req, &err);
	}
	u->conn = gw_pool_acquire(u->node, gw_now_ms() + (int64_t) gw_config.pool_timeout_s * 1000, &err);
	if (u->conn == NULL)
	{
		gw_pool_done(u->node);
		upload_free(req);
		if (err.sqlstate[0] != '\0')
			return gw_respond_pool_timeout(req, &err);
		return gw_respond_pg_error(req, &err);
	}
	if (!req->authenticated)
	{
		a = gw_auth_lookup(u->conn, key, &req->id, gw_client_fd(req),
						   gw_now_ms() + (int64_t) gw_config.request_timeout_s * 1000, &err, &reusable);
		if (!reusable)
		{
			gw_pool_release(u->conn, false);
			u->conn = NULL;
			gw_pool_done(u->node);
		}
		if (a == GW_AUTH_CLIENT_GONE)
		{
			upload_free(req);
			return gw_respond_gone(req);
		}
		if (a == GW_AUTH_ERROR)
		{
			upload_free(req);
			return gw_respond_pg_error(req, &err);
		}
		if (a == GW_AUTH_INVALID)
		{
			upload_free(req);
			goto unauthorized;
		}
		req->authenticated = true;
		if (!req->id.is_admin || u->conn == NULL)
		{
			upload_free(req);
			return gw_respond_error(req, 403, "permission_error", NULL,
									"uploading a model needs the key of a member of mms_admin");
		}
	}
	if (name == NULL || name[0] == '\0')
	{
		upload_free(req);
		return gw_respond_error(req, 400, "invalid_request_error", NULL,
								"the query parameter \"name\" is required (a model name)");
	}
	if (strlen(name) >= sizeof(req->model))
	{
		upload_free(req);
		return gw_respond_error(req, 400, "invalid_request_error", NULL,
								"the query parameter \"name\" is too long");
	}
	snprintf(req->model, sizeof(req->model), "%s", name);
	if (!upload_open(u, req->id.role))
	{
		err = u->err;
		upload_free(req);
		return gw_respond_pg_error(req, &err);
	}
	return MHD_YES;

unauthorized:
	gw_add_header(req, "WWW-Authenticate", "Bearer realm=\"mms\", error=\"invalid_token\"");
	return gw_respond_error(req, 401, "authentication_error", "invalid_api_key",
							"the API key is not valid (unknown, revoked or expired)");
}

bool
gw_upload_write(GwRequest *req, const char *data, size_t len)
{
	GwUpload   *u = req->upload;

	u->bytes += len;
	if (u->bytes > gw_config.max_upload_bytes)
	{
		/* a chunked body over the limit: roll back now, the rest is dropped */
		upload_free(req);
		return false;
	}
	if (u->failed)
		return true;			/* answered at the end, with the first error */
	while (len > 0)
	{
		size_t		room = STAGING_BYTES - u->staging.len;
		size_t		n = len < room ? len : room;

		gw_buf_append(&u->staging, data, n);
		data += n;
		len -= n;
		if (u->staging.len == STAGING_BYTES && !upload_flush(u))
			return true;
	}
	return true;
}

enum MHD_Result
gw_upload_end(GwRequest *req)
{
	GwUpload   *u = req->upload;
	char		oid[16];
	const char *version = MHD_lookup_connection_value(req->mhd, MHD_GET_ARGUMENT_KIND, "version");
	const char *author = MHD_lookup_connection_value(req->mhd, MHD_GET_ARGUMENT_KIND, "author");
	const char *description = MHD_lookup_connection_value(req->mhd, MHD_GET_ARGUMENT_KIND, "description");
	GwStep		steps[2];
	GwBuf		out = {0};
	GwPgError	err;
	GwCallResult r;
	bool		reusable;

	if (!u->failed && upload_flush(u) && lo_close(u->conn->pg, u->lo_fd) != 0)
	{
		gw_error_from_result(&u->err, NULL, u->conn->pg);
		u->failed = true;
	}
	if (u->failed)
	{
		err = u->err;
		upload_free(req);
		return gw_respond_pg_error(req, &err);
	}
	if (u->bytes == 0)
	{
		upload_free(req);
		return gw_respond_error(req, 400, "invalid_request_error", NULL,
								"the request body is empty: it must be a GGUF file");
	}
	if (!PQenterPipelineMode(u->conn->pg))
	{
		gw_error_set(&err, "", "could not enter pipeline mode");
		upload_free(req);
		return gw_respond_pg_error(req, &err);
	}
	snprintf(oid, sizeof(oid), "%u", u->oid);
	steps[0] = (GwStep) {.stmt = GW_STMT_REGISTER, .n_params = 5,
	.params = {req->model, oid, version, author, description}};
	steps[1] = (GwStep) {.stmt = GW_STMT_COMMIT};
	r = gw_call_run(u->conn, steps, 2, 0, gw_client_fd(req),
					gw_now_ms() + (int64_t) gw_config.upload_timeout_s * 1000 + 2000, &out, &err, &reusable);
	if (!reusable)
	{
		gw_pool_release(u->conn, false);
		gw_pool_done(u->node);
		u->conn = NULL;
	}
	else if (PQtransactionStatus(u->conn->pg) != PQTRANS_IDLE)
	{
		GwStep		rollback = {.stmt = GW_STMT_ROLLBACK};
		GwPgError	ignored;

		gw_call_run(u->conn, &rollback, 1, 0, -1, gw_now_ms() + 5000, NULL, &ignored, &reusable);
		if (!reusable)
		{
			gw_pool_release(u->conn, false);
			gw_pool_done(u->node);
			u->conn = NULL;
		}
	}
	upload_free(req);
	switch (r)
	{
		case GW_CALL_DONE:
			if (out.len == 0)
			{
				gw_buf_free(&out);
				return gw_respond_error(req, 500, "api_error", NULL, "mms_api_register returned no value");
			}
			return gw_respond_buf(req, 201, "application/json", &out);
		case GW_CALL_HANGUP:
			gw_buf_free(&out);
			return gw_respond_gone(req);
		case GW_CALL_TIMEOUT:
			gw_buf_free(&out);
			return gw_respond_error(req, 504, "timeout_error", NULL, "the registration did not finish in time");
		default:
			gw_buf_free(&out);
			return gw_respond_pg_error(req, &err);
	}
}

/* The request ended without gw_upload_end (client gone, error): roll back. */
void
gw_upload_abort(GwRequest *req)
{
	if (req->upload)
		upload_free(req);
}
