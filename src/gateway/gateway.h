/*
 * gateway.h — mms-gateway, the HTTP front of one or more PostgreSQL servers
 * running mms: the structs and verbs its files share. The API's logic and its
 * JSON validation live in SQL functions (mms_api_*); the gateway authenticates
 * keys, pools and routes connections, frames HTTP and SSE and maps SQLSTATEs
 * to statuses.
 *
 *   options.c   command line and config file (GwConfig)
 *   main.c      startup, signals, graceful stop
 *   http.c      libmicrohttpd callbacks: request state, bodies, responses
 *   routes.c    the endpoint table and path matching
 *   api.c       running an endpoint's SQL call on a node, with one retry
 *   ops.c       what the gateway answers itself: health, metrics, OpenAPI, nodes
 *   stream.c    server-sent events fed by single-row mode
 *   upload.c    a request body streamed into a large object, then registered
 *   pgcall.c    one request's pipeline on a pooled connection; cancel, cleanup
 *   pool.c      nodes, their connection slots, routing
 *   health.c    one health thread per node; the node list of /v1/nodes
 *   auth.c      API key → role cache (sha256.c hashes the keys)
 *   metrics.c   the gateway's Prometheus counters, /metrics
 *   errors.c    SQLSTATE → HTTP status, error bodies
 *   json.c      top-level member lookup in request and response texts
 *   buf.c       bounded growable byte buffers
 *   accesslog.c one line per request
 *
 * Threads: libmicrohttpd runs one thread per client connection, so a handler
 * may block on libpq without stalling other clients; a node's health thread
 * checks it every second. Shared state: the pool slots (node->lock), node
 * health (atomics written by its health thread; a write that meets a
 * read-only node marks it a standby until the next check), the key cache
 * (its own lock) and the metrics (atomics).
 */
#ifndef MMS_GATEWAY_H
#define MMS_GATEWAY_H

#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <pthread.h>
#include <sys/types.h>
#include <sys/socket.h>

#include <libpq-fe.h>
#include <microhttpd.h>

#define GW_VERSION "0.4.0"
#define GW_MAX_NODES 16
#define GW_NAME_BYTES 64		/* a PostgreSQL role name and its NUL */

/* ---- configuration (options.c) ------------------------------------------ */

typedef struct GwConfig
{
	char	   *listen;			/* HOST:PORT */
	char	   *db[GW_MAX_NODES];	/* conninfo strings */
	int			n_db;
	int			pool_size;		/* connections per node */
	char	   *tls_cert;		/* PEM files */
	char	   *tls_key;
	size_t		max_body_bytes; /* JSON bodies */
	uint64_t	max_upload_bytes;	/* model uploads */
	int			request_timeout_s;	/* also statement_timeout */
	int			key_ttl_s;		/* key cache lifetime */
	int			max_inflight;	/* requests being served */
	int			max_connections;	/* client TCP connections */
	int			pool_timeout_s; /* wait for a free database connection */
	int			client_timeout_s;	/* idle client connections */
	int			shutdown_timeout_s; /* in-flight grace on SIGTERM */
	int			upload_timeout_s;	/* statement_timeout of an upload */
	char	   *access_log;		/* file, "-" for stdout, NULL for none */
} GwConfig;

extern GwConfig gw_config;
extern atomic_bool gw_stopping;	/* SIGTERM received (main.c) */

/* 0: run; 1: exit 0 (--help, --version); -1: exit 2 (message printed) */
extern int	gw_options_parse(int argc, char **argv, GwConfig *cfg);

/* ---- small utilities (buf.c) -------------------------------------------- */

/* A byte buffer that refuses to grow past limit: every append checks. */
typedef struct GwBuf
{
	char	   *data;			/* NUL-terminated when len > 0 */
	size_t		len;
	size_t		cap;
	size_t		limit;			/* 0: GW_BUF_DEFAULT_LIMIT */
	bool		failed;			/* an append did not fit or malloc failed */
} GwBuf;

#define GW_BUF_DEFAULT_LIMIT ((size_t) 64 << 20)

extern bool gw_buf_append(GwBuf *b, const void *p, size_t n);
extern bool gw_buf_puts(GwBuf *b, const char *s);
extern bool gw_buf_printf(GwBuf *b, const char *fmt,...) __attribute__((format(printf, 2, 3)));
extern bool gw_buf_json_string(GwBuf *b, const char *s, size_t n);
extern void gw_buf_reset(GwBuf *b);
extern void gw_buf_free(GwBuf *b);
extern char *gw_buf_steal(GwBuf *b, size_t *len);

extern int64_t gw_now_ms(void);		/* monotonic */
extern int64_t gw_now_us(void);
extern void gw_log(const char *fmt,...) __attribute__((format(printf, 1, 2)));

/* ---- JSON scanning (json.c) --------------------------------------------- */

/* The last member `key` of the top-level object; false if none or not JSON. */
extern bool gw_json_member(const char *json, size_t len, const char *key,
						   const char **val, size_t *val_len);
/* Decodes a JSON string value into out (NUL-terminated); false if it does not fit. */
extern bool gw_json_string(const char *val, size_t len, char *out, size_t out_size);
extern bool gw_json_is_true(const char *val, size_t len);
extern bool gw_json_int64(const char *val, size_t len, long long *out);
/* usage.total_tokens of an OpenAI response or chunk, or -1 */
extern long long gw_json_total_tokens(const char *json, size_t len);

/* ---- errors (errors.c) -------------------------------------------------- */

/* A database error, copied out of its PGresult (bounded, no allocation). */
typedef struct GwPgError
{
	char		sqlstate[6];	/* "" when the connection failed */
	char		message[1024];
	char		detail[512];
	char		hint[512];
} GwPgError;

typedef struct GwStatus
{
	int			http;			/* HTTP status */
	const char *type;			/* error.type */
	const char *code;			/* error.code or NULL */
} GwStatus;

extern GwStatus gw_status_for_sqlstate(const char *sqlstate);
extern bool gw_sqlstate_node_failure(const char *sqlstate);
extern void gw_error_from_result(GwPgError *e, const PGresult *res, PGconn *pg);
extern void gw_error_set(GwPgError *e, const char *sqlstate, const char *fmt,...) __attribute__((format(printf, 3, 4)));
extern void gw_error_json(GwBuf *out, const char *message, const char *type,
						  const char *code, const char *sqlstate,
						  const char *detail, const char *hint);
extern int	gw_retry_after_s(const GwPgError *e);

/* ---- nodes and the connection pool (pool.c, health.c) ------------------- */

typedef enum GwStmt
{
	GW_STMT_SETUP,				/* role and statement_timeout, transaction-local */
	GW_STMT_COMMIT,
	GW_STMT_ROLLBACK,
	GW_STMT_AUTH,
	GW_STMT_QUOTA,
	GW_STMT_METRICS,
	GW_STMT_COMPLETIONS,
	GW_STMT_CHAT,
	GW_STMT_MODELS,
	GW_STMT_MODEL,
	GW_STMT_GENERATE,
	GW_STMT_SCORE,
	GW_STMT_TOKENIZE,
	GW_STMT_REGISTER,
	GW_STMT_UNREGISTER,
	GW_STMT_SET_ALIAS,
	GW_STMT_DROP_ALIAS,
	GW_N_STMTS
} GwStmt;

typedef enum GwSlotState
{
	GW_SLOT_EMPTY,				/* no connection */
	GW_SLOT_IDLE,				/* connected, in the pool */
	GW_SLOT_BUSY				/* lent out, or being connected */
} GwSlotState;

struct GwNode;

typedef struct GwConn
{
	struct GwNode *node;
	PGconn	   *pg;				/* in pipeline mode while idle */
	PGcancel   *cancel;
	GwSlotState state;			/* under node->lock */
	uint32_t	prepared;		/* bit per GwStmt prepared on this session */
	char		schema[2 * GW_NAME_BYTES + 3];	/* mms's schema, quoted */
} GwConn;

typedef struct GwNode
{
	int			index;
	const char *conninfo;
	char		display[512];	/* conninfo without secrets */
	pthread_mutex_t lock;		/* slots */
	pthread_cond_t freed;		/* a slot became idle or empty */
	GwConn	   *slots;			/* gw_config.pool_size of them */
	int			n_busy;
	atomic_int	outstanding;	/* requests routed here and not finished */
	atomic_ullong routed;		/* requests routed here, ever */
	/* written by the node's health thread */
	atomic_bool healthy;		/* answers, with mms */
	atomic_bool in_recovery;	/* a standby */
	atomic_bool checked;		/* at least one check finished */
	atomic_llong queued;		/* from mms.api_node_status() */
	atomic_llong running;
	atomic_llong workers;
	atomic_llong last_check_ms;	/* wall clock */
	pthread_mutex_t status_lock;	/* the strings below */
	char		last_error[512];
	char		mms_version[32];
	pthread_t	health_thread;
	bool		health_started;
} GwNode;

extern GwNode gw_nodes[GW_MAX_NODES];
extern int	gw_n_nodes;

extern bool gw_pool_init(void);
extern void gw_pool_close(void);
/* A healthy node (the primary if need_primary), its outstanding count taken. */
extern GwNode *gw_pool_choose(bool need_primary, const GwNode *exclude);
extern void gw_pool_done(GwNode *node);
/* NULL on failure: err->sqlstate "" when the node failed, 53300 on a pool timeout. */
extern GwConn *gw_pool_acquire(GwNode *node, int64_t deadline_ms, GwPgError *err);
extern void gw_pool_release(GwConn *c, bool reusable);
/* Opens a session as the gateway uses it (role, settings); NULL + err on failure. */
extern PGconn *gw_pool_connect(GwNode *node, char *schema, size_t schema_size, GwPgError *err);
extern void gw_pool_warm(GwNode *node);
extern void gw_pool_close_idle(GwNode *node);
extern int	gw_pool_in_use(GwNode *node);

extern void gw_health_start(void);
extern void gw_health_stop(void);
extern void gw_health_wait_first(int timeout_ms);
extern int	gw_health_n_healthy(void);
extern void gw_health_nodes_json(GwBuf *out);
extern void gw_health_note_recovery(GwNode *node);

/* ---- one request's SQL on a connection (pgcall.c) ----------------------- */

typedef enum GwCallResult
{
	GW_CALL_ROW,				/* a row of the main statement is available */
	GW_CALL_DONE,				/* the pipeline finished and committed */
	GW_CALL_FAILED,				/* an SQL error (err), the pipeline drained */
	GW_CALL_BROKEN,				/* the connection failed (err) */
	GW_CALL_HANGUP,				/* the HTTP client went away */
	GW_CALL_TIMEOUT				/* no answer before the deadline */
} GwCallResult;

#define GW_CALL_MAX_STEPS 4
#define GW_CALL_MAX_PARAMS 5

typedef struct GwStep
{
	GwStmt		stmt;
	int			n_params;
	const char *params[GW_CALL_MAX_PARAMS];
} GwStep;

typedef struct GwCall
{
	GwConn	   *conn;
	int			client_fd;		/* polled for hangup, -1: none */
	int64_t		deadline_ms;
	bool		single_row;		/* the main step in single-row mode */
	int			main_step;		/* whose rows are returned */
	/* the expected results, prepares included */
	int			n_expect;
	struct
	{
		GwStmt		stmt;
		bool		prepare;
		int			step;
	}			expect[2 * GW_CALL_MAX_STEPS];
	int			cur_expect;		/* result being read */
	PGresult   *rows;			/* rows being returned */
	int			next_row;
	bool		failed;
	bool		finished;		/* sync reached */
	GwPgError	err;
} GwCall;

extern bool gw_call_send(GwCall *call, GwConn *conn, const GwStep *steps, int n_steps,
						 int main_step, bool single_row, int client_fd, int64_t deadline_ms);
/* Next row: *row / *len valid until the next call. */
extern GwCallResult gw_call_next(GwCall *call, const char **row, int *len);
/*
 * Sends steps and reads to the end; the main step's first row is appended to
 * out. A HANGUP or TIMEOUT is abandoned here. *reusable: the session may
 * serve again.
 */
extern GwCallResult gw_call_run(GwConn *conn, const GwStep *steps, int n_steps, int main_step,
								int client_fd, int64_t deadline_ms, GwBuf *out, GwPgError *err,
								bool *reusable);
/* After HANGUP/TIMEOUT or mid-stream: cancels, drains; true if the connection is reusable. */
extern bool gw_call_abandon(GwCall *call);
extern void gw_call_clear(GwCall *call);
extern const char *gw_stmt_sql(GwStmt stmt);
extern void gw_setup_params(GwStep *step, const char *role, char *timeout_buf, size_t size);

/* ---- API keys (auth.c, sha256.c) ---------------------------------------- */

typedef struct GwIdentity
{
	char		role[GW_NAME_BYTES];
	bool		is_admin;
	long long	key_id;
} GwIdentity;

typedef enum GwAuthResult
{
	GW_AUTH_OK,
	GW_AUTH_INVALID,
	GW_AUTH_MISS,				/* not cached: ask a database */
	GW_AUTH_ERROR,				/* the database could not answer (err) */
	GW_AUTH_CLIENT_GONE			/* the HTTP client left while waiting */
} GwAuthResult;

extern void gw_auth_init(void);
extern GwAuthResult gw_auth_cached(const char *key, GwIdentity *id);
extern GwAuthResult gw_auth_lookup(GwConn *conn, const char *key, GwIdentity *id,
								   int client_fd, int64_t deadline_ms, GwPgError *err,
								   bool *reusable);
extern void gw_sha256(const void *data, size_t len, uint8_t out[32]);

/* ---- metrics (metrics.c) ------------------------------------------------ */

typedef enum GwCounter
{
	GW_COUNT_RETRIES,			/* requests retried on another node */
	GW_COUNT_CANCELS,			/* queries cancelled (client gone, timeout) */
	GW_COUNT_AUTH_HITS,			/* keys answered from the cache */
	GW_COUNT_AUTH_MISSES,		/* keys asked to a database */
	GW_COUNT_POOL_TIMEOUTS,		/* no free connection in time */
	GW_COUNT_OVERLOAD,			/* refused beyond --max-inflight */
	GW_COUNT_UPLOAD_BYTES,		/* model bytes written into large objects */
	GW_N_COUNTERS
} GwCounter;

extern void gw_metrics_request(int endpoint, int status, int64_t duration_us);
extern void gw_metrics_add(GwCounter c, unsigned long long n);
extern void gw_metrics_render(GwBuf *out);

extern atomic_int gw_inflight;

/* ---- access log (accesslog.c) ------------------------------------------- */

typedef struct GwLogLine
{
	const char *request_id;
	const char *role;
	const char *method;
	const char *path;
	const char *model;
	int			status;
	double		ms;
	long long	tokens;			/* -1: none */
} GwLogLine;

extern bool gw_access_log_open(const char *target);
extern void gw_access_log_reopen(void);
extern void gw_access_log(const GwLogLine *l);

/* ---- endpoints (routes.c) and requests (http.c) ------------------------ */

typedef enum GwEndpoint
{
	GW_EP_COMPLETIONS,
	GW_EP_CHAT,
	GW_EP_MODELS,
	GW_EP_UPLOAD,
	GW_EP_MODEL,
	GW_EP_DELETE_MODEL,
	GW_EP_GENERATE,
	GW_EP_SCORE,
	GW_EP_TOKENIZE,
	GW_EP_SET_ALIAS,
	GW_EP_DROP_ALIAS,
	GW_EP_NODES,
	GW_EP_HEALTHZ,
	GW_EP_READYZ,
	GW_EP_METRICS,
	GW_EP_OPENAPI,
	GW_EP_UNMATCHED,			/* 404 and 405 */
	GW_N_ENDPOINTS
} GwEndpoint;

typedef struct GwRoute
{
	GwEndpoint	endpoint;
	const char *method;
	const char *pattern;		/* "{}" matches one path segment */
	const char *label;			/* the pattern as the metrics and the docs name it */
	int			stmt;			/* GwStmt, or -1: answered by the gateway */
	bool		auth;			/* needs a key */
	bool		admin;			/* needs an mms_admin key */
	bool		write;			/* goes to the primary, never retried */
	bool		json_body;		/* the body is the request's jsonb parameter */
	bool		streamable;		/* "stream": true means server-sent events */
} GwRoute;

#define GW_PATH_PARAM_BYTES 512

/*
 * The route of method + url, path parameters decoded into p1 and p2. NULL
 * when none: *status is 404, or 405 with the allowed methods in allow.
 */
extern const GwRoute *gw_route_match(const char *method, const char *url,
									 char *p1, char *p2, char *allow, size_t allow_size,
									 int *status);
extern const char *gw_endpoint_label(int endpoint);
extern const char *gw_endpoint_method(int endpoint);

#define GW_MAX_EXTRA_HEADERS 8
#define GW_DISCARD_MAX_BYTES ((uint64_t) 64 << 20)	/* of a body over its limit, before closing */

struct GwStream;
struct GwUpload;

typedef struct GwRequest
{
	struct MHD_Connection *mhd;
	const GwRoute *route;		/* NULL when unmatched */
	int			endpoint;
	char		method[16];
	char		path[256];		/* for the log, truncated */
	char		p1[GW_PATH_PARAM_BYTES];	/* {ref} or {name} */
	char		p2[GW_PATH_PARAM_BYTES];	/* {alias} */
	char		request_id[72];
	bool		url_had_nul;	/* the path or query decoded a %00 */
	int64_t		start_us;
	bool		inflight;		/* counted in gw_inflight */
	bool		responded;		/* a response is queued */
	int			status;
	long long	tokens;			/* usage.total_tokens, -1 if none */
	char		model[GW_PATH_PARAM_BYTES];	/* for the log and quota headers */
	GwIdentity	id;
	bool		authenticated;
	GwBuf		body;
	bool		too_large;		/* a chunked body went over its limit */
	uint64_t	discarded;		/* bytes dropped since */
	int			n_headers;		/* extra response headers */
	char	   *headers[GW_MAX_EXTRA_HEADERS][2];
	atomic_int	refs;			/* the request and, when streaming, its response */
	struct GwStream *stream;
	struct GwUpload *upload;
} GwRequest;

extern int	gw_client_fd(GwRequest *req);
extern void gw_client_clock(GwRequest *req, bool running);
extern void gw_add_header(GwRequest *req, const char *name, const char *value);
extern enum MHD_Result gw_respond(GwRequest *req, int status, const char *content_type,
								  char *body, size_t len);
extern enum MHD_Result gw_respond_buf(GwRequest *req, int status, const char *content_type,
									  GwBuf *body);
extern enum MHD_Result gw_respond_error(GwRequest *req, int status, const char *type,
										const char *code, const char *message);
extern enum MHD_Result gw_respond_pg_error(GwRequest *req, const GwPgError *e);
extern enum MHD_Result gw_respond_gone(GwRequest *req);
extern void gw_request_release(GwRequest *req);
extern struct MHD_Daemon *gw_http_start(void);

/* ops.c: the endpoints the gateway answers itself */
extern enum MHD_Result gw_ops_respond(GwRequest *req);

/* api.c: answers a request whose body is complete */
extern enum MHD_Result gw_api_dispatch(GwRequest *req);
extern enum MHD_Result gw_respond_pool_timeout(GwRequest *req, const GwPgError *err);

/* stream.c */
extern enum MHD_Result gw_stream_respond(GwRequest *req, GwCall *call, GwConn *conn,
										 GwNode *node, const char *first_row, int first_len);
extern void gw_stream_finish(GwRequest *req);

/* upload.c */
extern enum MHD_Result gw_upload_begin(GwRequest *req);
/* false: over --max-upload (the upload is rolled back) */
extern bool gw_upload_write(GwRequest *req, const char *data, size_t len);
extern enum MHD_Result gw_upload_end(GwRequest *req);
extern void gw_upload_abort(GwRequest *req);

/* ---- the embedded OpenAPI document (generated from openapi.json) -------- */

extern const unsigned char gw_openapi_json[];
extern const size_t gw_openapi_json_len;

#endif							/* MMS_GATEWAY_H */
