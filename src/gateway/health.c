/*
 * health.c — one thread per node asks it `SELECT mms.api_node_status()` every
 * second on a session of its own, and publishes the answer in the node's
 * atomics: healthy (answers, mms installed), in_recovery (a standby), queue
 * figures. Routing (pool.c) reads them. A failed node is reconnected at the
 * next tick; a recovered one gets its pool refilled here, not by requests.
 */
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gateway.h"

#define HEALTH_INTERVAL_MS 1000
#define HEALTH_TIMEOUT_MS 3000

static atomic_bool health_stopping;
static pthread_mutex_t stop_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t stop_cond = PTHREAD_COND_INITIALIZER;

static int64_t
wall_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void
node_failed(GwNode *node, const char *why)
{
	bool		was = atomic_exchange(&node->healthy, false);

	pthread_mutex_lock(&node->status_lock);
	snprintf(node->last_error, sizeof(node->last_error), "%s", why);
	pthread_mutex_unlock(&node->status_lock);
	atomic_store(&node->last_check_ms, wall_ms());
	if (was || !atomic_load(&node->checked))
		gw_log("node %d (%s) is unhealthy: %s", node->index, node->display, why);
	atomic_store(&node->checked, true);
	gw_pool_close_idle(node);
}

static long long
member_int(const char *json, size_t len, const char *key)
{
	const char *v;
	size_t		n;
	long long	x;

	return gw_json_member(json, len, key, &v, &n) && gw_json_int64(v, n, &x) ? x : 0;
}

static void
node_answered(GwNode *node, const char *json)
{
	size_t		len = strlen(json);
	const char *v;
	size_t		n;
	char		version[32] = "";
	bool		standby;
	bool		was;

	if (!gw_json_member(json, len, "mms", &v, &n) || !gw_json_string(v, n, version, sizeof(version)))
	{
		node_failed(node, "mms.api_node_status() did not report the mms version");
		return;
	}
	standby = gw_json_member(json, len, "in_recovery", &v, &n) && gw_json_is_true(v, n);
	atomic_store(&node->in_recovery, standby);
	atomic_store(&node->queued, member_int(json, len, "queued"));
	atomic_store(&node->running, member_int(json, len, "running"));
	atomic_store(&node->workers, member_int(json, len, "workers"));
	pthread_mutex_lock(&node->status_lock);
	memcpy(node->mms_version, version, sizeof(version));
	pthread_mutex_unlock(&node->status_lock);
	atomic_store(&node->last_check_ms, wall_ms());
	was = atomic_exchange(&node->healthy, true);
	if (!was)
		gw_log("node %d (%s) is healthy, %s, mms %s", node->index, node->display,
			   standby ? "standby" : "primary", version);
	atomic_store(&node->checked, true);
	gw_pool_warm(node);
}

/* One check on the thread's own session; a session that fails is dropped. */
static void
check_node(GwNode *node, PGconn **pg)
{
	char		schema[2 * GW_NAME_BYTES + 3];
	GwPgError	err;
	PGresult   *res;
	PGresult   *extra;
	int64_t		deadline = gw_now_ms() + HEALTH_TIMEOUT_MS;

	if (*pg && PQstatus(*pg) != CONNECTION_OK)
	{
		PQfinish(*pg);
		*pg = NULL;
	}
	if (*pg == NULL && (*pg = gw_pool_connect(node, schema, sizeof(schema), &err)) == NULL)
	{
		node_failed(node, err.message);
		return;
	}
	if (!PQsendQuery(*pg, "SELECT mms.api_node_status()::text"))
		goto broken;
	while (PQisBusy(*pg))
	{
		struct pollfd p = {.fd = PQsocket(*pg), .events = POLLIN};
		int64_t		left = deadline - gw_now_ms();

		if (left <= 0)
		{
			node_failed(node, "the health check timed out");
			PQfinish(*pg);
			*pg = NULL;
			return;
		}
		if (poll(&p, 1, (int) left) > 0 && !PQconsumeInput(*pg))
			goto broken;
	}
	res = PQgetResult(*pg);
	while ((extra = PQgetResult(*pg)) != NULL)
		PQclear(extra);
	if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 && !PQgetisnull(res, 0, 0))
		node_answered(node, PQgetvalue(res, 0, 0));
	else
	{
		gw_error_from_result(&err, res, *pg);
		node_failed(node, err.message);
	}
	PQclear(res);
	return;

broken:
	gw_error_from_result(&err, NULL, *pg);
	node_failed(node, err.message);
	PQfinish(*pg);
	*pg = NULL;
}

static void *
health_main(void *arg)
{
	GwNode	   *node = arg;
	PGconn	   *pg = NULL;

	while (!atomic_load(&health_stopping))
	{
		struct timespec ts;

		check_node(node, &pg);
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += (long) HEALTH_INTERVAL_MS * 1000000;
		ts.tv_sec += ts.tv_nsec / 1000000000;
		ts.tv_nsec %= 1000000000;
		pthread_mutex_lock(&stop_lock);
		if (!atomic_load(&health_stopping))
			pthread_cond_timedwait(&stop_cond, &stop_lock, &ts);
		pthread_mutex_unlock(&stop_lock);
	}
	PQfinish(pg);
	return NULL;
}

void
gw_health_start(void)
{
	for (int i = 0; i < gw_n_nodes; i++)
	{
		if (pthread_create(&gw_nodes[i].health_thread, NULL, health_main, &gw_nodes[i]) == 0)
			gw_nodes[i].health_started = true;
		else
			gw_log("could not start the health thread of node %d", i);
	}
}

void
gw_health_stop(void)
{
	pthread_mutex_lock(&stop_lock);
	atomic_store(&health_stopping, true);
	pthread_cond_broadcast(&stop_cond);
	pthread_mutex_unlock(&stop_lock);
	for (int i = 0; i < gw_n_nodes; i++)
		if (gw_nodes[i].health_started)
			pthread_join(gw_nodes[i].health_thread, NULL);
}

/* At startup: until every node has been checked once (or timeout_ms). */
void
gw_health_wait_first(int timeout_ms)
{
	int64_t		end = gw_now_ms() + timeout_ms;

	while (gw_now_ms() < end)
	{
		int			n = 0;

		for (int i = 0; i < gw_n_nodes; i++)
			n += atomic_load(&gw_nodes[i].checked);
		if (n == gw_n_nodes)
			return;
		poll(NULL, 0, 10);
	}
}

int
gw_health_n_healthy(void)
{
	int			n = 0;

	for (int i = 0; i < gw_n_nodes; i++)
		n += atomic_load(&gw_nodes[i].healthy);
	return n;
}

/* A write met a read-only node: it is a standby now, whatever it was. */
void
gw_health_note_recovery(GwNode *node)
{
	atomic_store(&node->in_recovery, true);
}

static void
json_time(GwBuf *out, int64_t ms)
{
	time_t		t = (time_t) (ms / 1000);
	struct tm	tm;
	char		s[40];

	gmtime_r(&t, &tm);
	strftime(s, sizeof(s), "%Y-%m-%dT%H:%M:%S", &tm);
	gw_buf_printf(out, "\"%s.%03dZ\"", s, (int) (ms % 1000));
}

/* GET /v1/nodes */
void
gw_health_nodes_json(GwBuf *out)
{
	gw_buf_puts(out, "{\"object\":\"list\",\"data\":[");
	for (int i = 0; i < gw_n_nodes; i++)
	{
		GwNode	   *node = &gw_nodes[i];
		bool		checked = atomic_load(&node->checked);
		char		error[sizeof(node->last_error)];
		char		version[sizeof(node->mms_version)];

		pthread_mutex_lock(&node->status_lock);
		memcpy(error, node->last_error, sizeof(error));
		memcpy(version, node->mms_version, sizeof(version));
		pthread_mutex_unlock(&node->status_lock);

		gw_buf_printf(out, "%s{\"id\":%d,\"conninfo\":", i ? "," : "", i);
		gw_buf_json_string(out, node->display, strlen(node->display));
		gw_buf_printf(out, ",\"role\":\"%s\",\"healthy\":%s,\"outstanding\":%d,\"requests\":%llu,"
					  "\"pool_size\":%d,\"in_use\":%d,\"queued\":%lld,\"running\":%lld,\"workers\":%lld,"
					  "\"mms_version\":",
					  !checked ? "unknown" : atomic_load(&node->in_recovery) ? "standby" : "primary",
					  atomic_load(&node->healthy) ? "true" : "false",
					  atomic_load(&node->outstanding), atomic_load(&node->routed),
					  gw_config.pool_size, gw_pool_in_use(node),
					  atomic_load(&node->queued), atomic_load(&node->running),
					  atomic_load(&node->workers));
		if (version[0])
			gw_buf_json_string(out, version, strlen(version));
		else
			gw_buf_puts(out, "null");
		gw_buf_puts(out, ",\"last_check\":");
		if (checked)
			json_time(out, atomic_load(&node->last_check_ms));
		else
			gw_buf_puts(out, "null");
		gw_buf_puts(out, ",\"last_error\":");
		if (error[0])
			gw_buf_json_string(out, error, strlen(error));
		else
			gw_buf_puts(out, "null");
		gw_buf_puts(out, "}");
	}
	gw_buf_puts(out, "]}");
}
