/*
 * metrics.c — the gateway's own Prometheus metrics: requests by endpoint and
 * status, a duration histogram per endpoint, in-flight requests, pool and node
 * gauges, and event counters. All atomics, written by the request threads;
 * rendering reads them without locks (a scrape sees each value at some point
 * during the scrape). mms_metrics() of a node is appended by ops.c.
 */
#include <string.h>

#include "gateway.h"

#define STATUS_MIN 100
#define STATUS_N 500			/* 100..599 */

static const double bucket_s[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};

#define N_BUCKETS (sizeof(bucket_s) / sizeof(bucket_s[0]))

static atomic_ullong requests[GW_N_ENDPOINTS][STATUS_N];
static atomic_ullong duration_bucket[GW_N_ENDPOINTS][N_BUCKETS + 1];	/* not cumulative */
static atomic_ullong duration_sum_us[GW_N_ENDPOINTS];
static atomic_ullong counters[GW_N_COUNTERS];

atomic_int	gw_inflight;

static const struct
{
	const char *name;
	const char *help;
}			counter_info[GW_N_COUNTERS] = {
	[GW_COUNT_RETRIES] = {"mms_gateway_retries_total", "Requests retried on another node (or a fresh connection) after their node failed."},
	[GW_COUNT_CANCELS] = {"mms_gateway_cancels_total", "Queries cancelled because the client went away or the request timed out."},
	[GW_COUNT_AUTH_HITS] = {"mms_gateway_key_cache_hits_total", "API keys answered from the key cache."},
	[GW_COUNT_AUTH_MISSES] = {"mms_gateway_key_cache_misses_total", "API keys checked by a database."},
	[GW_COUNT_POOL_TIMEOUTS] = {"mms_gateway_pool_timeouts_total", "Requests refused because no database connection became free in time."},
	[GW_COUNT_OVERLOAD] = {"mms_gateway_overload_rejections_total", "Requests refused beyond --max-inflight."},
	[GW_COUNT_UPLOAD_BYTES] = {"mms_gateway_upload_bytes_total", "Model bytes written into large objects by uploads."},
};

void
gw_metrics_request(int endpoint, int status, int64_t duration_us)
{
	size_t		b = 0;
	double		s = (double) duration_us / 1e6;

	if (endpoint < 0 || endpoint >= GW_N_ENDPOINTS)
		endpoint = GW_EP_UNMATCHED;
	if (status >= STATUS_MIN && status < STATUS_MIN + STATUS_N)
		atomic_fetch_add_explicit(&requests[endpoint][status - STATUS_MIN], 1, memory_order_relaxed);
	while (b < N_BUCKETS && s > bucket_s[b])
		b++;
	atomic_fetch_add_explicit(&duration_bucket[endpoint][b], 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&duration_sum_us[endpoint], (unsigned long long) (duration_us > 0 ? duration_us : 0),
							  memory_order_relaxed);
}

void
gw_metrics_add(GwCounter c, unsigned long long n)
{
	atomic_fetch_add_explicit(&counters[c], n, memory_order_relaxed);
}

static void
label_value(GwBuf *out, const char *s)
{
	gw_buf_puts(out, "\"");
	for (; *s; s++)
	{
		if (*s == '\\' || *s == '"')
			gw_buf_printf(out, "\\%c", *s);
		else if (*s == '\n')
			gw_buf_puts(out, "\\n");
		else
			gw_buf_append(out, s, 1);
	}
	gw_buf_puts(out, "\"");
}

static void
family(GwBuf *out, const char *name, const char *type, const char *help)
{
	gw_buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void
render_requests(GwBuf *out)
{
	family(out, "mms_gateway_requests_total", "counter", "HTTP requests answered, by method, endpoint and status.");
	for (int e = 0; e < GW_N_ENDPOINTS; e++)
		for (int s = 0; s < STATUS_N; s++)
		{
			unsigned long long n = atomic_load_explicit(&requests[e][s], memory_order_relaxed);

			if (n == 0)
				continue;
			gw_buf_printf(out, "mms_gateway_requests_total{method=\"%s\",endpoint=\"%s\",status=\"%d\"} %llu\n",
						  gw_endpoint_method(e), gw_endpoint_label(e), s + STATUS_MIN, n);
		}

	family(out, "mms_gateway_request_duration_seconds", "histogram",
		   "Time from a request's arrival to its completion (the last byte of a stream), by method and endpoint.");
	for (int e = 0; e < GW_N_ENDPOINTS; e++)
	{
		unsigned long long cum = 0;
		unsigned long long counts[N_BUCKETS + 1];

		for (size_t b = 0; b <= N_BUCKETS; b++)
		{
			counts[b] = atomic_load_explicit(&duration_bucket[e][b], memory_order_relaxed);
			cum += counts[b];
		}
		if (cum == 0)
			continue;
		cum = 0;
		for (size_t b = 0; b <= N_BUCKETS; b++)
		{
			char		le[32];

			cum += counts[b];
			if (b < N_BUCKETS)
				snprintf(le, sizeof(le), "%g", bucket_s[b]);
			else
				strcpy(le, "+Inf");
			gw_buf_printf(out, "mms_gateway_request_duration_seconds_bucket{method=\"%s\",endpoint=\"%s\",le=\"%s\"} %llu\n",
						  gw_endpoint_method(e), gw_endpoint_label(e), le, cum);
		}
		gw_buf_printf(out, "mms_gateway_request_duration_seconds_sum{method=\"%s\",endpoint=\"%s\"} %.6f\n",
					  gw_endpoint_method(e), gw_endpoint_label(e),
					  (double) atomic_load(&duration_sum_us[e]) / 1e6);
		gw_buf_printf(out, "mms_gateway_request_duration_seconds_count{method=\"%s\",endpoint=\"%s\"} %llu\n",
					  gw_endpoint_method(e), gw_endpoint_label(e), cum);
	}
}

static void
render_nodes(GwBuf *out)
{
	family(out, "mms_gateway_node_info", "gauge", "Each database node, with its connection string (secrets removed).");
	for (int i = 0; i < gw_n_nodes; i++)
	{
		gw_buf_printf(out, "mms_gateway_node_info{node=\"%d\",conninfo=", i);
		label_value(out, gw_nodes[i].display);
		gw_buf_puts(out, "} 1\n");
	}
	family(out, "mms_gateway_node_healthy", "gauge", "1 when the node answered its last health check with mms installed.");
	for (int i = 0; i < gw_n_nodes; i++)
		gw_buf_printf(out, "mms_gateway_node_healthy{node=\"%d\"} %d\n", i, (int) atomic_load(&gw_nodes[i].healthy));
	family(out, "mms_gateway_node_in_recovery", "gauge", "1 when the node is a standby (read-only).");
	for (int i = 0; i < gw_n_nodes; i++)
		gw_buf_printf(out, "mms_gateway_node_in_recovery{node=\"%d\"} %d\n", i, (int) atomic_load(&gw_nodes[i].in_recovery));
	family(out, "mms_gateway_node_outstanding_requests", "gauge", "Requests routed to the node and not finished.");
	for (int i = 0; i < gw_n_nodes; i++)
		gw_buf_printf(out, "mms_gateway_node_outstanding_requests{node=\"%d\"} %d\n", i, atomic_load(&gw_nodes[i].outstanding));
	family(out, "mms_gateway_node_requests_total", "counter", "Requests routed to the node (retries included).");
	for (int i = 0; i < gw_n_nodes; i++)
		gw_buf_printf(out, "mms_gateway_node_requests_total{node=\"%d\"} %llu\n", i, atomic_load(&gw_nodes[i].routed));
	family(out, "mms_gateway_pool_connections_in_use", "gauge", "Database connections lent to requests (or being opened), by node.");
	for (int i = 0; i < gw_n_nodes; i++)
		gw_buf_printf(out, "mms_gateway_pool_connections_in_use{node=\"%d\"} %d\n", i, gw_pool_in_use(&gw_nodes[i]));
	family(out, "mms_gateway_pool_connections_max", "gauge", "Database connections the pool may open, by node (--pool).");
	for (int i = 0; i < gw_n_nodes; i++)
		gw_buf_printf(out, "mms_gateway_pool_connections_max{node=\"%d\"} %d\n", i, gw_config.pool_size);
}

void
gw_metrics_render(GwBuf *out)
{
	family(out, "mms_gateway_build_info", "gauge", "The gateway's version.");
	gw_buf_printf(out, "mms_gateway_build_info{version=\"%s\"} 1\n", GW_VERSION);
	render_requests(out);
	family(out, "mms_gateway_requests_in_flight", "gauge", "Requests being served now.");
	gw_buf_printf(out, "mms_gateway_requests_in_flight %d\n", atomic_load(&gw_inflight));
	for (int c = 0; c < GW_N_COUNTERS; c++)
	{
		family(out, counter_info[c].name, "counter", counter_info[c].help);
		gw_buf_printf(out, "%s %llu\n", counter_info[c].name, atomic_load(&counters[c]));
	}
	render_nodes(out);
}
