/*
 * http.c — the libmicrohttpd side: the daemon's settings (one thread per
 * client connection, limits), the life of a request (route, limits, body,
 * dispatch, completion: metrics and the access log) and response helpers.
 * What an endpoint does is api.c's, ops.c's, stream.c's and upload.c's.
 *
 * A request's first call (headers only) routes it and refuses early what can
 * be refused without reading the body: unknown path (404/405), too many in
 * flight (503), Content-Length over the limit (413), and for uploads a bad or
 * non-admin key. Later calls deliver the body; the last one answers.
 */
#include <arpa/inet.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "gateway.h"

#define HEADER_MEMORY_BYTES (64 * 1024)	/* per connection: headers must fit */
#define THREAD_STACK_BYTES (1024 * 1024)

static atomic_ullong request_seq;
static uint64_t request_seed;

/*
 * MHD decodes the path and the query arguments before the first call of a
 * request, and a decoded %00 would silently cut a {ref} or ?name= short
 * ("flan%00.bak" naming "flan"). This decoder leaves %00 as it is and notes
 * it, and the request is refused: one thread serves one connection, and that
 * thread decodes a request's line before the request's first call, which
 * takes the note.
 */
static _Thread_local bool url_had_nul;

static int
hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

static size_t
unescape(void *cls, struct MHD_Connection *mhd, char *s)
{
	char	   *out = s;

	(void) cls;
	(void) mhd;
	for (const char *in = s; *in;)
	{
		int			hi = in[0] == '%' ? hex_value(in[1]) : -1;
		int			lo = hi >= 0 ? hex_value(in[2]) : -1;

		if (lo < 0)
			*out++ = *in++;
		else if (hi == 0 && lo == 0)
		{
			url_had_nul = true;
			memmove(out, in, 3);
			out += 3;
			in += 3;
		}
		else
		{
			*out++ = (char) (hi << 4 | lo);
			in += 3;
		}
	}
	*out = '\0';
	return (size_t) (out - s);
}

int
gw_client_fd(GwRequest *req)
{
	const union MHD_ConnectionInfo *ci =
		MHD_get_connection_info(req->mhd, MHD_CONNECTION_INFO_CONNECTION_FD);

	return ci ? ci->connect_fd : -1;
}

/*
 * MHD closes a connection idle for --client-timeout, and a connection whose
 * thread waits on the database looks idle. While the gateway works the clock
 * is off; turning it back on restarts it (MHD restarts the idle clock only
 * when the timeout was 0).
 */
void
gw_client_clock(GwRequest *req, bool running)
{
	MHD_set_connection_option(req->mhd, MHD_CONNECTION_OPTION_TIMEOUT, 0u);
	if (running)
		MHD_set_connection_option(req->mhd, MHD_CONNECTION_OPTION_TIMEOUT, (unsigned) gw_config.client_timeout_s);
}

void
gw_add_header(GwRequest *req, const char *name, const char *value)
{
	if (req->n_headers >= GW_MAX_EXTRA_HEADERS)
		return;
	req->headers[req->n_headers][0] = strdup(name);
	req->headers[req->n_headers][1] = strdup(value);
	req->n_headers++;
}

enum MHD_Result
gw_respond(GwRequest *req, int status, const char *content_type, char *body, size_t len)
{
	struct MHD_Response *r;
	enum MHD_Result ret;

	if (body == NULL)
		r = MHD_create_response_from_buffer(0, (void *) "", MHD_RESPMEM_PERSISTENT);
	else
		r = MHD_create_response_from_buffer_with_free_callback(len, body, free);
	if (r == NULL)
	{
		free(body);
		return MHD_NO;
	}
	if (content_type)
		MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
	MHD_add_response_header(r, "x-request-id", req->request_id);
	for (int i = 0; i < req->n_headers; i++)
		MHD_add_response_header(r, req->headers[i][0], req->headers[i][1]);
	gw_client_clock(req, true);
	ret = MHD_queue_response(req->mhd, (unsigned) status, r);
	MHD_destroy_response(r);
	req->responded = true;
	req->status = status;
	return ret;
}

enum MHD_Result
gw_respond_buf(GwRequest *req, int status, const char *content_type, GwBuf *body)
{
	size_t		len;
	char	   *data;

	if (body->failed)
	{
		gw_buf_free(body);
		return gw_respond_error(req, 500, "api_error", NULL, "the response could not be built");
	}
	data = gw_buf_steal(body, &len);
	return gw_respond(req, status, content_type, data, len);
}

enum MHD_Result
gw_respond_error(GwRequest *req, int status, const char *type, const char *code, const char *message)
{
	GwBuf		b = {0};

	gw_error_json(&b, message, type, code, NULL, NULL, NULL);
	return gw_respond_buf(req, status, "application/json", &b);
}

/*
 * The client went away. Answering still (nothing will arrive) keeps MHD from
 * logging an internal error per disconnect; the log line says 499, nginx's
 * "client closed request".
 */
enum MHD_Result
gw_respond_gone(GwRequest *req)
{
	return gw_respond(req, 499, NULL, NULL, 0);
}

enum MHD_Result
gw_respond_pg_error(GwRequest *req, const GwPgError *e)
{
	GwStatus	st = gw_status_for_sqlstate(e->sqlstate);
	GwBuf		b = {0};

	if (e->sqlstate[0] == '\0')
		st = (GwStatus) {503, "unavailable_error", NULL};
	if (st.http == 503 && req->n_headers == 0)
		gw_add_header(req, "Retry-After", "1");
	gw_error_json(&b, e->message, st.type, st.code, e->sqlstate, e->detail, e->hint);
	return gw_respond_buf(req, st.http, "application/json", &b);
}

/* x-request-id from the client when it is a sane token, else a fresh one */
static void
set_request_id(GwRequest *req)
{
	const char *given = MHD_lookup_connection_value(req->mhd, MHD_HEADER_KIND, "x-request-id");
	uint64_t	x;

	if (given && given[0] && strlen(given) < sizeof(req->request_id) &&
		strspn(given, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.:") == strlen(given))
	{
		strcpy(req->request_id, given);
		return;
	}
	/* splitmix64 over a counter: unique per process, unpredictable enough for logs */
	x = request_seed + atomic_fetch_add(&request_seq, 1) * 0x9E3779B97F4A7C15ULL;
	x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
	x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
	x ^= x >> 31;
	snprintf(req->request_id, sizeof(req->request_id), "req-%016llx", (unsigned long long) x);
}

static GwRequest *
request_new(struct MHD_Connection *mhd, const char *url, const char *method)
{
	GwRequest  *req = calloc(1, sizeof(GwRequest));

	if (req == NULL)
		return NULL;
	req->mhd = mhd;
	req->start_us = gw_now_us();
	req->endpoint = GW_EP_UNMATCHED;
	req->tokens = -1;
	atomic_init(&req->refs, 1);
	snprintf(req->method, sizeof(req->method), "%s", method);
	snprintf(req->path, sizeof(req->path), "%s", url);
	req->url_had_nul = url_had_nul;
	url_had_nul = false;
	set_request_id(req);
	return req;
}

void
gw_request_release(GwRequest *req)
{
	if (atomic_fetch_sub(&req->refs, 1) != 1)
		return;
	for (int i = 0; i < req->n_headers; i++)
	{
		free(req->headers[i][0]);
		free(req->headers[i][1]);
	}
	gw_buf_free(&req->body);
	free(req);
}

/* The headers are in: refuse now whatever needs no body to refuse. */
static enum MHD_Result
request_start(GwRequest *req, const char *url, const char *method)
{
	char		allow[64];
	int			status = 404;
	const char *length;
	unsigned long long limit;

	if (req->url_had_nul)
		return gw_respond_error(req, 400, "invalid_request_error", NULL,
								"the URL contains an encoded NUL byte (%00)");
	req->route = gw_route_match(method, url, req->p1, req->p2, allow, sizeof(allow), &status);
	if (req->route == NULL)
	{
		if (status == 405)
		{
			gw_add_header(req, "Allow", allow);
			return gw_respond_error(req, 405, "invalid_request_error", "method_not_allowed",
									"method not allowed on this path");
		}
		return gw_respond_error(req, 404, "not_found_error", "not_found", "no such endpoint");
	}
	req->endpoint = req->route->endpoint;

	/* /healthz and /metrics answer even when the gateway is saturated */
	if (req->route->auth)
	{
		if (atomic_fetch_add(&gw_inflight, 1) >= gw_config.max_inflight)
		{
			atomic_fetch_sub(&gw_inflight, 1);
			gw_metrics_add(GW_COUNT_OVERLOAD, 1);
			gw_add_header(req, "Retry-After", "1");
			return gw_respond_error(req, 503, "unavailable_error", "overloaded",
									"too many requests in flight; retry shortly");
		}
		req->inflight = true;
	}

	length = MHD_lookup_connection_value(req->mhd, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
	limit = req->endpoint == GW_EP_UPLOAD ? gw_config.max_upload_bytes : gw_config.max_body_bytes;
	if (length && strtoull(length, NULL, 10) > limit)
	{
		char		msg[128];

		snprintf(msg, sizeof(msg), "the request body is larger than the limit of %llu bytes", limit);
		return gw_respond_error(req, 413, "request_too_large", NULL, msg);
	}
	req->body.limit = gw_config.max_body_bytes + 1;
	if (req->endpoint == GW_EP_UPLOAD)
		return gw_upload_begin(req);
	return MHD_YES;
}

static enum MHD_Result
on_request(void *cls, struct MHD_Connection *mhd, const char *url, const char *method,
		   const char *version, const char *upload_data, size_t *upload_data_size,
		   void **con_cls)
{
	GwRequest  *req = *con_cls;
	enum MHD_Result ret;

	(void) cls;
	(void) version;
	if (req == NULL)
	{
		req = request_new(mhd, url, method);
		if (req == NULL)
			return MHD_NO;
		*con_cls = req;
		gw_client_clock(req, false);
		ret = request_start(req, url, method);
		gw_client_clock(req, true);
		return ret;
	}
	if (*upload_data_size > 0)
	{
		size_t		n = *upload_data_size;

		*upload_data_size = 0;
		if (req->responded)
			return MHD_YES;		/* answered early: the rest is dropped */
		if (req->too_large)
		{
			/* dropped, and only so much: then the connection closes */
			req->discarded += n;
			return req->discarded <= GW_DISCARD_MAX_BYTES ? MHD_YES : MHD_NO;
		}
		if (req->upload)
		{
			if (!gw_upload_write(req, upload_data, n))
				req->too_large = true;
			return MHD_YES;
		}
		if (!gw_buf_append(&req->body, upload_data, n) || req->body.len > gw_config.max_body_bytes)
		{
			/*
			 * A chunked body over the limit. No response can be queued while
			 * a body is being read: drop the rest, then answer 413.
			 */
			req->too_large = true;
			gw_buf_free(&req->body);
		}
		return MHD_YES;
	}
	if (!req->responded && req->too_large)
	{
		char		msg[128];

		snprintf(msg, sizeof(msg), "the request body is larger than the limit of %llu bytes",
				 req->endpoint == GW_EP_UPLOAD ? (unsigned long long) gw_config.max_upload_bytes
				 : (unsigned long long) gw_config.max_body_bytes);
		return gw_respond_error(req, 413, "request_too_large", NULL, msg);
	}
	if (req->responded)
		return MHD_YES;
	if (req->upload)
	{
		gw_client_clock(req, false);
		return gw_upload_end(req);
	}
	if (req->body.len > 0 && memchr(req->body.data, '\0', req->body.len))
		return gw_respond_error(req, 400, "invalid_request_error", NULL,
								"the request body contains a NUL byte");
	gw_client_clock(req, false);
	if (!req->route->auth)
		return gw_ops_respond(req);
	return gw_api_dispatch(req);
}

static void
on_completed(void *cls, struct MHD_Connection *mhd, void **con_cls,
			 enum MHD_RequestTerminationCode toe)
{
	GwRequest  *req = *con_cls;
	int64_t		us;
	GwLogLine	line;

	(void) cls;
	(void) mhd;
	if (req == NULL)
		return;
	*con_cls = NULL;
	if (req->upload)
		gw_upload_abort(req);
	if (req->stream)
		gw_stream_finish(req);
	/* nginx's 499: the client went away before an answer was queued */
	if (!req->responded)
		req->status = toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? 500 : 499;
	us = gw_now_us() - req->start_us;
	gw_metrics_request(req->endpoint, req->status, us);
	line = (GwLogLine) {
		.request_id = req->request_id,
		.role = req->authenticated ? req->id.role : NULL,
		.method = req->method,
		.path = req->path,
		.model = req->model,
		.status = req->status,
		.ms = (double) us / 1000.0,
		.tokens = req->tokens,
	};
	gw_access_log(&line);
	if (req->inflight)
		atomic_fetch_sub(&gw_inflight, 1);
	gw_request_release(req);
}

/*
 * libmicrohttpd logs per connection (each one refused at --max-connections,
 * each malformed request): a flood of them must not fill the disk. At most
 * MHD_LOG_PER_S lines a second; the next line allowed says how many were not.
 */
#define MHD_LOG_PER_S 20

static void
mhd_log(void *cls, const char *fmt, va_list ap)
{
	static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
	static int64_t window_ms;
	static int	n_window;
	static unsigned long long n_dropped;
	unsigned long long dropped = 0;
	int64_t		now = gw_now_ms();
	char		msg[512];
	size_t		n;

	(void) cls;
	pthread_mutex_lock(&lock);
	if (now - window_ms >= 1000)
	{
		window_ms = now;
		n_window = 0;
	}
	if (n_window >= MHD_LOG_PER_S)
	{
		n_dropped++;
		pthread_mutex_unlock(&lock);
		return;
	}
	n_window++;
	dropped = n_dropped;
	n_dropped = 0;
	pthread_mutex_unlock(&lock);
	if (dropped > 0)
		gw_log("http: %llu messages suppressed (more than %d a second)", dropped, MHD_LOG_PER_S);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	n = strlen(msg);
	while (n > 0 && msg[n - 1] == '\n')
		msg[--n] = '\0';
	gw_log("http: %s", msg);
}

static char *
read_file(const char *path)
{
	FILE	   *f = fopen(path, "rb");
	GwBuf		b = {.limit = 1 << 20};
	char		chunk[4096];
	size_t		n;
	size_t		len;

	if (f == NULL)
		return NULL;
	while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
		gw_buf_append(&b, chunk, n);
	fclose(f);
	if (b.failed || b.len == 0)
	{
		gw_buf_free(&b);
		return NULL;
	}
	return gw_buf_steal(&b, &len);
}

/* HOST:PORT, [V6]:PORT, or :PORT (every address) */
static bool
parse_listen(const char *listen, struct sockaddr_storage *addr, socklen_t *len)
{
	char		host[256];
	const char *port;
	const char *colon;
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
	struct addrinfo *res;
	size_t		n;

	if (listen[0] == '[')
	{
		const char *close = strchr(listen, ']');

		if (close == NULL || close[1] != ':')
			return false;
		n = (size_t) (close - listen - 1);
		colon = close + 1;
		if (n >= sizeof(host))
			return false;
		memcpy(host, listen + 1, n);
	}
	else
	{
		colon = strrchr(listen, ':');
		if (colon == NULL)
			return false;
		n = (size_t) (colon - listen);
		if (n >= sizeof(host))
			return false;
		memcpy(host, listen, n);
	}
	host[n] = '\0';
	port = colon + 1;
	if (port[0] == '\0' || strspn(port, "0123456789") != strlen(port))
		return false;
	if (getaddrinfo(host[0] && strcmp(host, "*") != 0 ? host : NULL, port, &hints, &res) != 0)
		return false;
	memcpy(addr, res->ai_addr, res->ai_addrlen);
	*len = res->ai_addrlen;
	freeaddrinfo(res);
	return true;
}

struct MHD_Daemon *
gw_http_start(void)
{
	static struct sockaddr_storage addr;
	static char *tls_cert;
	static char *tls_key;
	socklen_t	addr_len;
	unsigned	flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
		MHD_USE_POLL | MHD_USE_ITC | MHD_USE_ERROR_LOG;
	struct MHD_OptionItem opts[16];
	int			n = 0;
	struct MHD_Daemon *d;
	const union MHD_DaemonInfo *info;

	request_seed = (uint64_t) time(NULL) ^ ((uint64_t) getpid() << 32) ^ (uint64_t) gw_now_us();
	if (!parse_listen(gw_config.listen, &addr, &addr_len))
	{
		gw_log("cannot use --listen %s: expected HOST:PORT", gw_config.listen);
		return NULL;
	}
	if (addr.ss_family == AF_INET6)
		flags |= MHD_USE_IPv6;
	if (gw_config.tls_cert)
	{
		if (MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES)
		{
			gw_log("this libmicrohttpd has no TLS support");
			return NULL;
		}
		tls_cert = read_file(gw_config.tls_cert);
		tls_key = read_file(gw_config.tls_key);
		if (tls_cert == NULL || tls_key == NULL)
		{
			gw_log("cannot read %s", tls_cert == NULL ? gw_config.tls_cert : gw_config.tls_key);
			return NULL;
		}
		flags |= MHD_USE_TLS;
		opts[n++] = (struct MHD_OptionItem) {MHD_OPTION_HTTPS_MEM_CERT, 0, tls_cert};
		opts[n++] = (struct MHD_OptionItem) {MHD_OPTION_HTTPS_MEM_KEY, 0, tls_key};
	}
	opts[n++] = (struct MHD_OptionItem) {MHD_OPTION_SOCK_ADDR, 0, &addr};
	opts[n++] = (struct MHD_OptionItem) {MHD_OPTION_CONNECTION_LIMIT, gw_config.max_connections, NULL};
	opts[n++] = (struct MHD_OptionItem) {MHD_OPTION_CONNECTION_TIMEOUT, gw_config.client_timeout_s, NULL};
	opts[n++] = (struct MHD_OptionItem) {MHD_OPTION_CONNECTION_MEMORY_LIMIT, HEADER_MEMORY_BYTES, NULL};
	opts[n++] = (struct MHD_OptionItem) {MHD_OPTION_THREAD_STACK_SIZE, THREAD_STACK_BYTES, NULL};
	opts[n++] = (struct MHD_OptionItem) {MHD_OPTION_LISTEN_BACKLOG_SIZE, 1024, NULL};
	opts[n++] = (struct MHD_OptionItem) {MHD_OPTION_END, 0, NULL};

	d = MHD_start_daemon(flags, 0, NULL, NULL, on_request, NULL,
						 MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
						 MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL,
						 MHD_OPTION_UNESCAPE_CALLBACK, unescape, NULL,
						 MHD_OPTION_ARRAY, opts,
						 MHD_OPTION_END);
	if (d == NULL)
	{
		gw_log("cannot listen on %s", gw_config.listen);
		return NULL;
	}
	info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
	{
		/* the port really bound: --listen HOST:0 picks one */
		const char *colon = strrchr(gw_config.listen, ':');

		gw_log("listening on %s://%.*s:%u", gw_config.tls_cert ? "https" : "http",
			   (int) (colon - gw_config.listen), gw_config.listen, info ? (unsigned) info->port : 0);
	}
	return d;
}
