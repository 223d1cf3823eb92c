/*
 * pool.c — the database nodes and their connections: a fixed number of slots
 * per node (--pool), lent to one request at a time, and the routing choice
 * between nodes. Health (which node answers, which is the primary) is
 * health.c's, read here through the node's atomics.
 *
 * A pooled session: logged in as the gateway's role, SET ROLE mms_gateway,
 * application_name mms-gateway, in libpq pipeline mode while idle, statements
 * prepared lazily (GwConn.prepared). A slot is EMPTY, IDLE or BUSY; slots
 * change state under node->lock, connections are opened and closed outside it.
 */
#include <poll.h>
#include <stdlib.h>
#include <string.h>

#include "gateway.h"

GwNode		gw_nodes[GW_MAX_NODES];
int			gw_n_nodes;

static atomic_uint choose_rotor;

static void
ignore_notice(void *arg, const char *message)
{
	(void) arg;
	(void) message;
}

/* The conninfo for display: every setting but the secrets. */
static void
node_display(GwNode *node)
{
	PQconninfoOption *opts = PQconninfoParse(node->conninfo, NULL);
	GwBuf		b = {.limit = sizeof(node->display)};

	if (opts == NULL)
	{
		snprintf(node->display, sizeof(node->display), "(unparsable conninfo)");
		return;
	}
	for (PQconninfoOption *o = opts; o->keyword; o++)
	{
		if (o->val == NULL || o->val[0] == '\0' ||
			strcmp(o->keyword, "password") == 0 || strcmp(o->keyword, "sslpassword") == 0)
			continue;
		if (b.len > 0)
			gw_buf_puts(&b, " ");
		gw_buf_printf(&b, "%s=", o->keyword);
		if (strpbrk(o->val, " '\\") || o->val[0] == '\0')
		{
			gw_buf_puts(&b, "'");
			for (const char *c = o->val; *c; c++)
			{
				if (*c == '\'' || *c == '\\')
					gw_buf_puts(&b, "\\");
				gw_buf_append(&b, c, 1);
			}
			gw_buf_puts(&b, "'");
		}
		else
			gw_buf_puts(&b, o->val);
	}
	PQconninfoFree(opts);
	snprintf(node->display, sizeof(node->display), "%s", b.data ? b.data : "");
	gw_buf_free(&b);
}

bool
gw_pool_init(void)
{
	gw_n_nodes = gw_config.n_db;
	for (int i = 0; i < gw_n_nodes; i++)
	{
		GwNode	   *node = &gw_nodes[i];

		node->index = i;
		node->conninfo = gw_config.db[i];
		pthread_mutex_init(&node->lock, NULL);
		pthread_mutex_init(&node->status_lock, NULL);
		pthread_cond_init(&node->freed, NULL);
		node->slots = calloc((size_t) gw_config.pool_size, sizeof(GwConn));
		if (node->slots == NULL)
			return false;
		for (int s = 0; s < gw_config.pool_size; s++)
			node->slots[s].node = node;
		node_display(node);
		if (strcmp(node->display, "(unparsable conninfo)") == 0)
		{
			gw_log("cannot parse --db \"%s\"", node->conninfo);
			return false;
		}
	}
	return true;
}

PGconn *
gw_pool_connect(GwNode *node, char *schema, size_t schema_size, GwPgError *err)
{
	/* defaults before dbname (the conninfo overrides them), fixed ones after */
	const char *keys[] = {"connect_timeout", "dbname", "application_name", "client_encoding", NULL};
	const char *vals[] = {"5", node->conninfo, "mms-gateway", "UTF8", NULL};
	PGconn	   *pg = PQconnectdbParams(keys, vals, 1);
	PGresult   *res;

	if (pg == NULL || PQstatus(pg) != CONNECTION_OK)
	{
		gw_error_from_result(err, NULL, pg);
		err->sqlstate[0] = '\0';
		PQfinish(pg);
		return NULL;
	}
	PQsetNoticeProcessor(pg, ignore_notice, NULL);
	res = PQexec(pg,
				 "SET ROLE mms_gateway;"
				 "SELECT pg_catalog.quote_ident(n.nspname) FROM pg_catalog.pg_extension e"
				 " JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'mms'");
	if (PQresultStatus(res) != PGRES_TUPLES_OK)
	{
		gw_error_from_result(err, res, pg);
		/* a node we cannot use as intended: route around it */
		err->sqlstate[0] = '\0';
		PQclear(res);
		PQfinish(pg);
		return NULL;
	}
	if (PQntuples(res) != 1 || strlen(PQgetvalue(res, 0, 0)) >= schema_size)
	{
		gw_error_set(err, "", "extension mms is not installed in this database");
		PQclear(res);
		PQfinish(pg);
		return NULL;
	}
	strcpy(schema, PQgetvalue(res, 0, 0));
	PQclear(res);
	return pg;
}

static bool
slot_open(GwConn *c, GwPgError *err)
{
	c->pg = gw_pool_connect(c->node, c->schema, sizeof(c->schema), err);
	if (c->pg == NULL)
		return false;
	c->prepared = 0;
	c->cancel = PQgetCancel(c->pg);
	if (c->cancel == NULL || !PQenterPipelineMode(c->pg))
	{
		gw_error_set(err, "", "could not set up a database session");
		PQfreeCancel(c->cancel);
		PQfinish(c->pg);
		c->cancel = NULL;
		c->pg = NULL;
		return false;
	}
	return true;
}

static void
slot_close(GwConn *c)
{
	PQfreeCancel(c->cancel);
	PQfinish(c->pg);
	c->cancel = NULL;
	c->pg = NULL;
	c->prepared = 0;
}

/*
 * An idle session the server closed (restart, pg_terminate_backend) has its
 * socket readable: catch that here rather than fail the request on it.
 */
static bool
slot_alive(GwConn *c)
{
	struct pollfd p = {.fd = PQsocket(c->pg), .events = POLLIN | POLLRDHUP};

	if (PQstatus(c->pg) != CONNECTION_OK || p.fd < 0)
		return false;
	if (poll(&p, 1, 0) == 0)
		return true;
	if (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL))
		return false;
	/* a notice or a parameter change: read it and carry on */
	return PQconsumeInput(c->pg) && PQstatus(c->pg) == CONNECTION_OK && !PQisBusy(c->pg);
}

GwConn *
gw_pool_acquire(GwNode *node, int64_t deadline_ms, GwPgError *err)
{
	int			n = gw_config.pool_size;

	pthread_mutex_lock(&node->lock);
	for (;;)
	{
		GwConn	   *idle = NULL;
		GwConn	   *empty = NULL;

		for (int i = 0; i < n && idle == NULL; i++)
		{
			if (node->slots[i].state == GW_SLOT_IDLE)
				idle = &node->slots[i];
			else if (node->slots[i].state == GW_SLOT_EMPTY && empty == NULL)
				empty = &node->slots[i];
		}
		if (idle || empty)
		{
			GwConn	   *c = idle ? idle : empty;

			c->state = GW_SLOT_BUSY;
			node->n_busy++;
			pthread_mutex_unlock(&node->lock);
			if (c->pg && !slot_alive(c))
				slot_close(c);
			if (c->pg || slot_open(c, err))
				return c;
			pthread_mutex_lock(&node->lock);
			c->state = GW_SLOT_EMPTY;
			node->n_busy--;
			pthread_cond_signal(&node->freed);
			pthread_mutex_unlock(&node->lock);
			return NULL;
		}

		{
			int64_t		wait_ms = deadline_ms - gw_now_ms();
			struct timespec ts;

			if (wait_ms <= 0)
			{
				pthread_mutex_unlock(&node->lock);
				gw_error_set(err, "53300", "all %d database connections of the node are busy", n);
				return NULL;
			}
			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_sec += wait_ms / 1000;
			ts.tv_nsec += (wait_ms % 1000) * 1000000;
			if (ts.tv_nsec >= 1000000000)
			{
				ts.tv_sec++;
				ts.tv_nsec -= 1000000000;
			}
			pthread_cond_timedwait(&node->freed, &node->lock, &ts);
		}
	}
}

/* Back to the pool, or closed when it may hold state the next request must not see. */
void
gw_pool_release(GwConn *c, bool reusable)
{
	GwNode	   *node = c->node;

	if (reusable && (PQstatus(c->pg) != CONNECTION_OK ||
					 PQtransactionStatus(c->pg) != PQTRANS_IDLE ||
					 PQpipelineStatus(c->pg) != PQ_PIPELINE_ON || PQisBusy(c->pg)))
		reusable = false;
	if (!reusable)
		slot_close(c);
	pthread_mutex_lock(&node->lock);
	c->state = reusable ? GW_SLOT_IDLE : GW_SLOT_EMPTY;
	node->n_busy--;
	pthread_cond_signal(&node->freed);
	pthread_mutex_unlock(&node->lock);
}

int
gw_pool_in_use(GwNode *node)
{
	int			n;

	pthread_mutex_lock(&node->lock);
	n = node->n_busy;
	pthread_mutex_unlock(&node->lock);
	return n;
}

/* Opens the missing connections of a healthy node, so requests find them ready. */
void
gw_pool_warm(GwNode *node)
{
	for (int i = 0; i < gw_config.pool_size; i++)
	{
		GwConn	   *c = &node->slots[i];
		GwPgError	err;
		bool		ok;

		pthread_mutex_lock(&node->lock);
		if (c->state != GW_SLOT_EMPTY)
		{
			pthread_mutex_unlock(&node->lock);
			continue;
		}
		c->state = GW_SLOT_BUSY;
		node->n_busy++;
		pthread_mutex_unlock(&node->lock);
		ok = slot_open(c, &err);
		pthread_mutex_lock(&node->lock);
		c->state = ok ? GW_SLOT_IDLE : GW_SLOT_EMPTY;
		node->n_busy--;
		pthread_cond_signal(&node->freed);
		pthread_mutex_unlock(&node->lock);
		if (!ok)
			return;
	}
}

/* A node that failed its check: its idle sessions are most likely dead too. */
void
gw_pool_close_idle(GwNode *node)
{
	for (int i = 0; i < gw_config.pool_size; i++)
	{
		GwConn	   *c = &node->slots[i];

		pthread_mutex_lock(&node->lock);
		if (c->state != GW_SLOT_IDLE)
		{
			pthread_mutex_unlock(&node->lock);
			continue;
		}
		c->state = GW_SLOT_BUSY;
		node->n_busy++;
		pthread_mutex_unlock(&node->lock);
		slot_close(c);
		pthread_mutex_lock(&node->lock);
		c->state = GW_SLOT_EMPTY;
		node->n_busy--;
		pthread_cond_signal(&node->freed);
		pthread_mutex_unlock(&node->lock);
	}
}

void
gw_pool_close(void)
{
	for (int i = 0; i < gw_n_nodes; i++)
		for (int s = 0; s < gw_config.pool_size; s++)
			if (gw_nodes[i].slots[s].pg)
				slot_close(&gw_nodes[i].slots[s]);
}

/*
 * Routing: the healthy node (the primary, for writes) with the fewest
 * requests outstanding in this gateway; ties go round-robin. The count is
 * taken here so that concurrent choices see each other.
 */
GwNode *
gw_pool_choose(bool need_primary, const GwNode *exclude)
{
	unsigned	start = atomic_fetch_add(&choose_rotor, 1);
	GwNode	   *best = NULL;
	int			best_load = 0;

	for (int k = 0; k < gw_n_nodes; k++)
	{
		GwNode	   *node = &gw_nodes[(start + (unsigned) k) % (unsigned) gw_n_nodes];
		int			load;

		if (node == exclude || !atomic_load(&node->healthy))
			continue;
		if (need_primary && atomic_load(&node->in_recovery))
			continue;
		load = atomic_load(&node->outstanding);
		if (best == NULL || load < best_load)
		{
			best = node;
			best_load = load;
		}
	}
	if (best)
	{
		atomic_fetch_add(&best->outstanding, 1);
		atomic_fetch_add_explicit(&best->routed, 1, memory_order_relaxed);
	}
	return best;
}

void
gw_pool_done(GwNode *node)
{
	if (node)
		atomic_fetch_sub(&node->outstanding, 1);
}
