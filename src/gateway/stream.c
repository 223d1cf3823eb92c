/*
 * stream.c — "stream": true answers as server-sent events. api.c reads the
 * call's first row before answering (so errors before it still get their
 * HTTP status, and a failed node can still be retried); gw_stream_respond
 * then owns the call, its connection and its node count, whatever happens. Rows come in
 * libpq single-row mode and each goes out as `data: <row>\n\n` as soon as it
 * arrives (chunked transfer, one chunk per event), then `data: [DONE]\n\n`
 * after the pipeline committed. An error after the first row can only be an
 * event: `data: {"error": ...}`, and no [DONE].
 *
 * MHD calls the reader in the connection's own thread, where it may block;
 * while it waits for a row it watches the client's socket, and a client that
 * leaves gets its query cancelled.
 */
#include <stdlib.h>
#include <string.h>

#include "gateway.h"

#define STREAM_BLOCK_BYTES (16 * 1024)

typedef struct GwStream
{
	GwCall	   *call;
	GwConn	   *conn;			/* NULL once released */
	GwNode	   *node;
	GwBuf		pending;		/* events not yet handed to MHD */
	size_t		sent;			/* bytes of pending already handed */
	bool		done;			/* nothing follows pending */
} GwStream;

/* The call is over (or abandoned): the connection goes back, the node's count down. */
static void
stream_release(GwStream *s, bool reusable)
{
	if (s->conn == NULL)
		return;
	gw_call_clear(s->call);
	gw_pool_release(s->conn, reusable);
	gw_pool_done(s->node);
	s->conn = NULL;
}

static void
stream_abandon(GwStream *s)
{
	if (s->conn)
		stream_release(s, gw_call_abandon(s->call));
}

static void
add_event(GwRequest *req, GwStream *s, const char *row, size_t len)
{
	long long	tokens = gw_json_total_tokens(row, len);

	if (tokens >= 0)
		req->tokens = tokens;
	gw_buf_puts(&s->pending, "data: ");
	gw_buf_append(&s->pending, row, len);
	gw_buf_puts(&s->pending, "\n\n");
}

static void
add_error_event(GwStream *s, const GwPgError *e, const char *fallback_type)
{
	GwStatus	st = gw_status_for_sqlstate(e->sqlstate);

	gw_buf_puts(&s->pending, "data: ");
	gw_error_json(&s->pending, e->message, e->sqlstate[0] ? st.type : fallback_type, st.code,
				  e->sqlstate, e->detail, e->hint);
	gw_buf_puts(&s->pending, "\n\n");
}

static ssize_t
stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
	GwRequest  *req = cls;
	GwStream   *s = req->stream;

	(void) pos;
	for (;;)
	{
		const char *row;
		int			len;
		GwPgError	e;
		GwCallResult r;

		if (s->pending.failed)
		{
			stream_abandon(s);
			return MHD_CONTENT_READER_END_WITH_ERROR;
		}
		if (s->sent < s->pending.len)
		{
			size_t		n = s->pending.len - s->sent;

			if (n > max)
				n = max;
			memcpy(buf, s->pending.data + s->sent, n);
			s->sent += n;
			if (s->sent == s->pending.len)
			{
				gw_buf_reset(&s->pending);
				s->sent = 0;
			}
			return (ssize_t) n;
		}
		if (s->done || s->conn == NULL)
			return MHD_CONTENT_READER_END_OF_STREAM;
		gw_client_clock(req, false);
		r = gw_call_next(s->call, &row, &len);
		gw_client_clock(req, true);
		switch (r)
		{
			case GW_CALL_ROW:
				add_event(req, s, row, (size_t) len);
				break;
			case GW_CALL_DONE:
				gw_buf_puts(&s->pending, "data: [DONE]\n\n");
				stream_release(s, true);
				s->done = true;
				break;
			case GW_CALL_FAILED:
				add_error_event(s, &s->call->err, "api_error");
				stream_release(s, true);
				s->done = true;
				break;
			case GW_CALL_TIMEOUT:
				gw_error_set(&e, "57014", "the database did not answer in time");
				add_error_event(s, &e, "timeout_error");
				stream_abandon(s);
				s->done = true;
				break;
			case GW_CALL_HANGUP:
				stream_abandon(s);
				return MHD_CONTENT_READER_END_WITH_ERROR;
			case GW_CALL_BROKEN:
				add_error_event(s, &s->call->err, "unavailable_error");
				stream_release(s, false);
				s->done = true;
				break;
		}
	}
}

/* The response is gone (sent, or the connection closed). */
static void
stream_free(void *cls)
{
	GwRequest  *req = cls;
	GwStream   *s = req->stream;

	if (s)
	{
		stream_abandon(s);
		gw_buf_free(&s->pending);
		free(s->call);
		free(s);
		req->stream = NULL;
	}
	gw_request_release(req);
}

/* The request completed (or failed) while its response may still exist. */
void
gw_stream_finish(GwRequest *req)
{
	if (req->stream)
		stream_abandon(req->stream);
}

enum MHD_Result
gw_stream_respond(GwRequest *req, GwCall *call, GwConn *conn, GwNode *node,
				  const char *first_row, int first_len)
{
	GwStream   *s = calloc(1, sizeof(GwStream));
	struct MHD_Response *r;
	enum MHD_Result ret;

	if (s == NULL)
	{
		gw_pool_release(conn, gw_call_abandon(call));
		gw_pool_done(node);
		free(call);
		return gw_respond_error(req, 503, "unavailable_error", NULL, "out of memory");
	}
	s->call = call;
	s->conn = conn;
	s->node = node;
	s->pending.limit = (size_t) 16 << 20;
	req->stream = s;
	if (first_row)
		add_event(req, s, first_row, (size_t) first_len);
	else
	{
		/* no row at all, and the pipeline already finished */
		gw_buf_puts(&s->pending, "data: [DONE]\n\n");
		stream_release(s, true);
		s->done = true;
	}
	atomic_fetch_add(&req->refs, 1);
	r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, STREAM_BLOCK_BYTES, stream_read, req, stream_free);
	if (r == NULL)
	{
		/* stream_free never runs: do its work */
		stream_abandon(s);
		gw_buf_free(&s->pending);
		free(call);
		free(s);
		req->stream = NULL;
		atomic_fetch_sub(&req->refs, 1);
		return MHD_NO;
	}
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
	MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
	MHD_add_response_header(r, "X-Accel-Buffering", "no");
	MHD_add_response_header(r, "x-request-id", req->request_id);
	gw_client_clock(req, true);
	ret = MHD_queue_response(req->mhd, MHD_HTTP_OK, r);
	MHD_destroy_response(r);
	req->responded = true;
	req->status = 200;
	return ret;
}
