/*
 * ops.c — the endpoints the gateway answers itself: /healthz (the process
 * runs), /readyz (a node is healthy with mms, and we are not stopping),
 * /metrics (ours, then mms_metrics() of a healthy node when mms_gateway may
 * call it), /openapi.json (embedded at build time) and /v1/nodes (admin keys;
 * api.c checks the key before calling here).
 */
#include <stdlib.h>
#include <string.h>

#include "gateway.h"

#define METRICS_WAIT_MS 2000

/* mms_metrics() of one healthy node, appended to out; nothing when not allowed */
static void
append_mms_metrics(GwBuf *out)
{
	GwNode	   *node = gw_pool_choose(false, NULL);
	GwConn	   *conn;
	GwPgError	err;
	GwStep		step = {.stmt = GW_STMT_METRICS};
	GwBuf		text = {.limit = (size_t) 16 << 20};
	bool		reusable;

	if (node == NULL)
		return;
	conn = gw_pool_acquire(node, gw_now_ms() + METRICS_WAIT_MS, &err);
	if (conn)
	{
		if (gw_call_run(conn, &step, 1, 0, -1, gw_now_ms() + METRICS_WAIT_MS, &text, &err, &reusable) == GW_CALL_DONE &&
			text.len > 0)
		{
			gw_buf_append(out, text.data, text.len);
			if (text.data[text.len - 1] != '\n')
				gw_buf_puts(out, "\n");
		}
		gw_pool_release(conn, reusable);
	}
	gw_pool_done(node);
	gw_buf_free(&text);
}

enum MHD_Result
gw_ops_respond(GwRequest *req)
{
	GwBuf		b = {0};

	switch (req->endpoint)
	{
		case GW_EP_HEALTHZ:
			gw_buf_puts(&b, "{\"status\":\"ok\"}");
			return gw_respond_buf(req, 200, "application/json", &b);
		case GW_EP_READYZ:
			{
				int			healthy = gw_health_n_healthy();
				bool		ready = healthy > 0 && !atomic_load(&gw_stopping);

				gw_buf_printf(&b, "{\"status\":\"%s\",\"nodes_healthy\":%d,\"nodes\":%d}",
							  ready ? "ready" : atomic_load(&gw_stopping) ? "stopping" : "unavailable",
							  healthy, gw_n_nodes);
				if (!ready)
					gw_add_header(req, "Retry-After", "1");
				return gw_respond_buf(req, ready ? 200 : 503, "application/json", &b);
			}
		case GW_EP_METRICS:
			b.limit = (size_t) 32 << 20;
			gw_metrics_render(&b);
			append_mms_metrics(&b);
			return gw_respond_buf(req, 200, "text/plain; version=0.0.4; charset=utf-8", &b);
		case GW_EP_OPENAPI:
			gw_buf_append(&b, gw_openapi_json, gw_openapi_json_len);
			return gw_respond_buf(req, 200, "application/json", &b);
		case GW_EP_NODES:
			gw_health_nodes_json(&b);
			return gw_respond_buf(req, 200, "application/json", &b);
		default:
			return gw_respond_error(req, 404, "not_found_error", "not_found", "no such endpoint");
	}
}
