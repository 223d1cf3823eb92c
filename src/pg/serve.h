/*
 * serve.h — the shared state of inference and the verbs over it. Each shared
 * structure has one owner module, the only file that writes its fields; the
 * others call its verbs:
 *
 *   served.c   served models: one entry per distinct weights (sha256), with
 *              its DSM segment, its pool settings and the registrations that
 *              use it (locks: dir_lock)
 *   queue.c    request slots and one FIFO queue per served model, each queue
 *              under its own lock (queue_locks[served])
 *   workers.c  the worker table: inference workers and loaders (workers_lock)
 *   stats.c    statistics, a shared hash keyed by (database, role, model)
 *   histograms.c  latency and batch-size histograms, a shared hash keyed by
 *              (database, model version) (its own lock, "mms histograms")
 *   quota.c    token buckets of the role quotas, a shared hash (quota_lock)
 *   usage.c    usage metering per hour, role, database and model version,
 *              a shared hash flushed into mms.usage (usage_lock)
 *   events.c   the ring of serving decisions behind mms.events
 *   progress.c one entry per backend: what its statement asked and got
 *              back, behind mms.progress (single writer, no lock)
 *   alerts.c   alert rule states, call counters per (database, model name)
 *              and the databases with rules (its own lock, "mms alerts")
 *   shmem.c    sizes and creates all of the above
 *
 * Processes: calling backends (request.c submits, dispatch.c the SQL
 * functions), the launcher (launcher.c: loads, scales and replaces), loaders
 * (worker_loader.c: stream a large object into a segment, then exit),
 * per-database maintenance (usage_flush.c: usage, alerts; then exit) and
 * inference workers (worker.c: no database connection; attach a segment and
 * run requests from their model's queue). Workers and loaders are in
 * mms_worker.so, the only library that links OpenBLAS.
 *
 * Lock order, when two are held: dir_lock, workers_lock, a queue lock,
 * stats_lock, the histograms' lock, events_lock, quota_lock, usage_lock, the
 * alerts' lock. Most verbs take one and release it.
 *
 * Weights live in DSM segments (one per served model): the GGUF bytes, then
 * the dequantization arena at arena_off. Offsets only; every process maps the
 * segment at its own address. The engine never sees this header.
 */
#ifndef MMS_SERVE_H
#define MMS_SERVE_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "nodes/pg_list.h"
#include "storage/condition_variable.h"
#include "storage/dsm.h"
#include "storage/lwlock.h"
#include "utils/jsonb.h"

#include "generate.h"
#include "mms.h"
#include "tokenizer.h"

#define MMS_MAX_WORKERS 64		/* upper bound of mms.max_workers */
#define MMS_MAX_SERVED 64		/* distinct weights served at once */
#define MMS_MAX_USERS 8			/* registrations remembered per served model */
#define MMS_MAX_LOADERS 4		/* loads at once */
#define MMS_ERRMSG 256
#define MMS_ERRHINT 160
#define MMS_ERRDETAIL 96

/* ---- GUCs (mms.c) ---- */
extern int	mms_max_workers;
extern int	mms_threads_per_worker;
extern int	mms_worker_idle_timeout_ms;
extern int	mms_cache_size_mb;
extern int	mms_max_input_tokens;
extern int	mms_max_new_tokens;
extern int	mms_max_requests;
extern int	mms_max_batch;
extern int	mms_worker_memory_mb;	/* -1 = automatic */
extern int	mms_pool_target_requests;
extern int	mms_pool_upscale_wait_ms;
extern int	mms_max_stats;
extern double mms_backend_request_share;	/* mms.backend_request_share */
extern bool mms_fair_queueing;	/* mms.fair_queueing */
extern int	mms_usage_flush_interval_ms;	/* mms.usage_flush_interval */
extern int	mms_max_usage_entries;	/* mms.max_usage_entries */
extern int	mms_alert_interval_ms;	/* mms.alert_interval */
extern bool mms_track_latency;	/* mms.track_latency: histograms record */
/* mms.worker_memory in bytes, the automatic value worked out */
extern Size mms_worker_memory_bytes(void);

/* What a failure carries back to the caller. */
typedef struct MmsSlotError
{
	int			sqlstate;		/* 0 = no error */
	char		msg[MMS_ERRMSG];
	char		detail[MMS_ERRDETAIL];
	char		hint[MMS_ERRHINT];
} MmsSlotError;

extern void mms_set_error(MmsSlotError *e, int sqlstate, const char *msg, const char *hint);

/* A registration that uses a served model: enough to load it and to name it. */
typedef struct MmsModelRef
{
	Oid			dboid;
	int64		model_id;
	Oid			weights;
	int32		version;
	char		name[NAMEDATALEN];
} MmsModelRef;

/* ================= served.c: served models (the cache) ================= */

typedef enum MmsServedState
{
	MMS_S_EMPTY = 0,
	MMS_S_WANTED,				/* requests or a pin wait for a load */
	MMS_S_LOADING,				/* a loader fills the segment */
	MMS_S_READY,
	MMS_S_FAILED				/* the last load failed: load_err; retried on demand */
} MmsServedState;

typedef struct MmsServed
{
	MmsServedState state;
	uint32		generation;		/* bumped when the entry is reused */
	char		sha256[65];
	int64		size_bytes;
	MmsModelRef users[MMS_MAX_USERS];	/* users[0] is loaded from */
	int			n_users;
	MmsPoolConfig pool;
	dsm_handle	handle;
	Size		seg_bytes;		/* whole segment */
	Size		gguf_bytes;		/* file at offset 0 */
	Size		arena_off;		/* dequantization arena (f32) */
	Size		arena_floats;
	int			refcount;		/* processes attached */
	bool		doomed;			/* no registration left: drained, then freed */
	int			loader_pid;
	MmsSlotError load_err;
	TimestampTz wanted_at;
	TimestampTz last_used;		/* last request taken */
	TimestampTz loaded_at;
	double		load_ms;
	uint64		loads;
	uint64		steps;			/* decoder steps of its workers */
	uint64		rows;			/* sequence-steps: rows / steps = mean batch */
	int			max_batch;
} MmsServed;

/*
 * Finds or creates the served entry for m's weights and records m as a user;
 * pool settings come from m (the latest caller's view of mms.model_config).
 * Returns the index and its generation; ERROR when the directory is full.
 */
extern int	mms_served_acquire(const MmsModel *m, Oid dboid, uint32 *generation);
/* The same, -1 instead of an ERROR (at commit, where no ERROR may happen). */
extern int	mms_served_try_acquire(const MmsModel *m, Oid dboid, uint32 *generation);
/* Queues a filled slot on entry i if it still has that generation; -1 if gone, else the queue length. */
extern int	mms_served_submit(int i, uint32 generation, int slot);
/* An entry no registration uses and whose weights are not loaded: its queue fails, it goes. */
extern void mms_served_settle_unused(int i);
/* The entry wants its weights (a request or a pin): WANTED unless loaded or loading. */
extern void mms_served_want(int i, uint32 generation);
/* A copy of entry i (under dir_lock); false when i no longer has that generation (0 = any). */
extern bool mms_served_get(int i, uint32 generation, MmsServed *out);
/* Copies the whole directory (views, launcher). */
extern void mms_served_snapshot(MmsServed *out);
/* Loader verbs: claim a WANTED entry, publish the segment, or record a failure. */
extern bool mms_served_claim_load(int i, uint32 generation, MmsServed *out);
extern void mms_served_loaded(int i, dsm_handle h, Size seg_bytes, Size gguf_bytes, Size arena_off,
							  Size arena_floats, double load_ms, long loader_private_kb);
extern void mms_served_load_failed(int i, const MmsSlotError *err);
/* Worker verbs: attach (refcount) to a READY entry, detach (frees a doomed entry's last use). */
extern bool mms_served_attach(int i, uint32 generation, MmsServed *out);
extern void mms_served_detach(int i);
extern void mms_served_add_steps(int i, uint64 steps, uint64 rows, int last_batch);
/*
 * Cache budget: evicts unused, unpinned entries (lowest priority, then least
 * recently used) until need more bytes fit; returns false if they cannot now.
 */
extern bool mms_served_make_room(Size need, int for_entry, Size *used_out);
/* A registration (model_id; 0 = all of the database) is gone: drop it from its entries. */
extern void mms_served_forget(Oid dboid, int64 model_id);
/* Frees an unused loaded entry now (doomed_only: only if unregistered); false if in use or not loaded. */
extern bool mms_served_unload(int i, bool doomed_only, const char *why);
extern void mms_served_set_pool(Oid dboid, const char *name, const MmsPoolConfig *pool);
extern void mms_served_reset_stats(void);
/* The entry serving these weights, or -1. */
extern int	mms_served_lookup(const char *sha256);

/* ================= queue.c: requests ================= */

typedef enum MmsSlotState
{
	MMS_SLOT_FREE = 0,
	MMS_SLOT_FILLING,			/* taken by a backend, not queued yet */
	MMS_SLOT_QUEUED,
	MMS_SLOT_RUNNING,
	MMS_SLOT_DONE,
	MMS_SLOT_ABANDONED			/* the caller left while it ran */
} MmsSlotState;

typedef enum MmsReqKind
{
	MMS_REQ_GENERATE = 0,
	MMS_REQ_SCORE
} MmsReqKind;

/*
 * One request. Written by its owner while FILLING; once queued, its state
 * changes under the queue lock of its served model, and only the queue verbs
 * change it.
 */
typedef struct MmsSlot
{
	MmsSlotState state;
	int			served;			/* queue it is in */
	uint32		served_gen;
	int			prev;			/* queue links (QUEUED only) */
	int			next;
	int			owner_procno;
	int			owner_pid;
	/* who asked and for what: quotas charge it, fair queueing orders it */
	Oid			roleid;
	Oid			dboid;
	int64		model_id;
	int32		weight;			/* the role's share of the queue (quota weight, 1 by default) */
	double		vfinish;		/* fair queueing: virtual finish time, the queue's order */
	int			runner;			/* worker index while RUNNING */
	MmsReqKind	kind;
	MmsGenOptions opts;			/* final: defaults resolved and validated by the caller */
	int32		n_input;		/* tokens[0 .. n_input) */
	int32		n_target;		/* score: tokens[n_input .. +n_target) */
	int32		n_output;		/* result ids, written over tokens[0 ..) */
	bool		stream;			/* greedy/sampling: publish tokens as they come (below) */
	double		logprob;
	MmsSlotError err;
	TimestampTz t_queued;
	TimestampTz t_started;
	/* progress, written by the running worker alone (mms_queue_progress); 0 until then */
	TimestampTz t_first;		/* its first output token */
	int32		n_generated;	/* output tokens so far; when stream, they are
								 * tokens[n_input .. n_input + n_generated) */
	TimestampTz t_done;			/* when it ended (DONE) */
	int32		tokens[FLEXIBLE_ARRAY_MEMBER];	/* slot_tokens entries */
} MmsSlot;

extern MmsSlot *mms_slot(int i);
extern int	mms_slot_tokens(void);
/*
 * A FILLING slot, or -1 when none is free. The last free slots (a sixteenth)
 * are kept for backends with nothing in flight (first: the caller holds
 * none), so that a single call always finds one while arrays fill the rest.
 */
extern int	mms_queue_alloc(bool first);
extern void mms_queue_free_unqueued(int slot);	/* gives back a FILLING slot */
/* Queues a filled slot at the tail; returns the queue's length after (use mms_served_submit). */
extern int	mms_queue_submit(int slot, int served, uint32 served_gen);
/* Owner: true (and the slot freed, its result copied by fn) once DONE. */
typedef void (*MmsCollectFn) (const MmsSlot *s, void *arg);
extern bool mms_queue_collect(int slot, MmsCollectFn fn, void *arg);
/* Owner leaves: QUEUED/DONE freed, RUNNING marked ABANDONED; returns the state it found. */
extern MmsSlotState mms_queue_abandon(int slot);
/* Worker: takes up to max QUEUED requests, first come first served. */
extern int	mms_queue_take(int served, int worker, int max, int *out);
/* Worker: puts taken requests back, each at its place in the fair order (memory wait, preemption). */
extern void mms_queue_return(int served, const int *slots, int n);
/*
 * Worker: a running request's progress after a decoder step (first token time
 * set once). A streamed request also gets ids, the tokens so far (n_generated
 * of them; NULL when its generation cannot stream), and its owner is woken.
 */
extern void mms_queue_progress(int slot, int32 n_generated, const int32 *ids);
/* Worker: true when the caller abandoned this running request. */
extern bool mms_queue_is_abandoned(int slot);
/* Worker: ends a request with a result (ids, logprob) or an error (err). */
extern void mms_queue_finish(int slot, const int32 *ids, int n_ids, double logprob,
							 const MmsSlotError *err);
/* Every QUEUED request of the queue fails with err (its model cannot load). */
extern void mms_queue_fail_all(int served, const MmsSlotError *err);
/* Running requests of a worker that vanished fail; abandoned ones are freed. */
extern void mms_queue_orphan(int worker, const char *why);
extern void mms_queue_depth(int served, int *queued, int *running, TimestampTz *oldest);

/* ================= workers.c: the worker table ================= */

typedef enum MmsWorkerState
{
	MMS_W_FREE = 0,
	MMS_W_REQUESTED,			/* the launcher starts it */
	MMS_W_STARTING,				/* registered, process not up yet */
	MMS_W_ATTACHING,			/* mapping the weights */
	MMS_W_READY,
	MMS_W_DRAINING,				/* finishes what it holds, takes nothing, exits */
	MMS_W_EXITED				/* gone; the launcher frees the entry */
} MmsWorkerState;

typedef enum MmsWorkerKind
{
	MMS_WK_INFERENCE = 0,
	MMS_WK_LOADER,
	MMS_WK_SCAN,				/* reads pinned models of one database at start */
	MMS_WK_USAGE				/* maintenance of one database: usage, alerts (MMS_MAINT_*) */
} MmsWorkerKind;

/* What a maintenance process does, in its bgw_extra after the generation. */
#define MMS_MAINT_USAGE 0x01	/* writes the database's usage into mms.usage */
#define MMS_MAINT_ALERTS 0x02	/* evaluates its alert rules (alerts.c) */

typedef struct MmsWorker
{
	MmsWorkerState state;
	MmsWorkerKind kind;
	uint32		generation;		/* bumped on every use of the entry */
	int			served;
	uint32		served_gen;
	Oid			dboid;			/* loaders, scans, flushes: the database they connect to */
	int			pid;
	int			procno;			/* -1 until the process is up */
	bool		clean_exit;		/* left by itself (idle, drained, done) */
	bool		preempt;		/* draining: give running requests back to the queue, now */
	int			batch;			/* rows of the last decoder step */
	int			held;			/* requests in its scheduler */
	uint64		requests_served;
	TimestampTz started_at;
	TimestampTz last_active;
} MmsWorker;

/* Launcher: a FREE entry becomes REQUESTED for served (or a loader, a scan); -1 if none free. */
extern int	mms_workers_request(MmsWorkerKind kind, int served, uint32 served_gen, Oid dboid,
								MmsWorker *out);
extern void mms_workers_snapshot(MmsWorker *out);
/* Process start: REQUESTED/STARTING entry i of that generation becomes ours; false if not. */
extern bool mms_workers_begin(int i, uint32 generation, MmsWorker *out);
extern void mms_workers_set_state(int i, uint32 generation, MmsWorkerState st);
extern void mms_workers_report(int i, uint32 generation, int held, int batch, uint64 finished,
							   bool active);
/*
 * An idle inference worker asks to leave: granted (state EXITED) when it is
 * draining, when its model is doomed, or when idle past mms.worker_idle_timeout
 * with more workers in the pool than min_workers.
 */
extern bool mms_workers_may_leave(int i, uint32 generation, int min_workers, bool doomed);
/* Is the worker draining (preempt: its running requests go back to the queue at once)? */
extern bool mms_workers_is_draining(int i, uint32 generation, bool *preempt);
extern void mms_workers_exited(int i, uint32 generation, bool clean);
/* Latches of served's ready workers (after queueing work for them). */
extern void mms_workers_wake(int served);
extern int	mms_workers_count(int served, int *ready);
/* Could served's pool get another worker now (its max_workers, mms.max_workers), or is one coming? */
extern bool mms_workers_can_grow(int served, int max_workers);
extern void mms_workers_drain(int i, bool preempt);
extern void mms_workers_drain_served(int served);
/* Launcher only. */
extern void mms_workers_launched(int i, uint32 generation, bool ok);
extern void mms_workers_free(int i);
extern void mms_workers_vanished(int i);

/* ================= stats.c ================= */

typedef struct MmsStatKey
{
	Oid			dboid;
	Oid			roleid;
	int64		model_id;
} MmsStatKey;

typedef struct MmsStatCounts
{
	uint64		calls;
	uint64		input_tokens;
	uint64		output_tokens;
	uint64		errors;
	uint64		cancels;
	double		total_ms;
	double		queue_ms;
	double		compute_ms;		/* from taken by a worker to finished */
	uint64		rejections;		/* refused by a quota */
} MmsStatCounts;

typedef struct MmsStatEntry
{
	MmsStatKey	key;			/* hash key: first */
	char		name[NAMEDATALEN];
	int32		version;
	char		sha256[65];
	MmsStatCounts c;
} MmsStatEntry;

extern Size mms_stats_shmem_size(void);
extern void mms_stats_shmem_init(void);
/* Adds to the counters of (database, role, model); evicts the least used entries when full. */
extern void mms_stats_add(const MmsStatKey *k, const char *name, int32 version, const char *sha256,
						  const MmsStatCounts *add);
extern MmsStatEntry *mms_stats_snapshot(int *n, uint64 *dealloc, TimestampTz *reset);
extern void mms_stats_reset(void);
extern void mms_stats_forget(Oid dboid, int64 model_id);

/* ================= histograms.c: latency histograms ================= */

/*
 * Fixed cumulative buckets per (database, model version), Prometheus-style:
 * what mms.stat_latency, mms_metrics() and the in-database alerts read.
 */
typedef enum MmsHistMetric
{
	MMS_H_QUEUE_WAIT = 0,		/* seconds from queued to taken by a worker */
	MMS_H_TTFT,					/* seconds from the call to the first output token */
	MMS_H_TOTAL,				/* seconds from the call to the result */
	MMS_H_TPOT,					/* seconds per output token after the first */
	MMS_H_BATCH,				/* rows of a decoder step (recorded per step, per served model) */
	MMS_H_N
} MmsHistMetric;

#define MMS_HIST_BUCKETS 24		/* finite upper bounds; one more for +Inf */

typedef struct MmsHistogram
{
	uint64		counts[MMS_HIST_BUCKETS + 1];	/* per bucket (not cumulative); last = +Inf */
	uint64		count;
	double		sum;
} MmsHistogram;

typedef struct MmsHistKey
{
	Oid			dboid;
	int64		model_id;
} MmsHistKey;

typedef struct MmsHistEntry
{
	MmsHistKey	key;			/* hash key: first */
	char		name[NAMEDATALEN];
	int32		version;
	MmsHistogram h[MMS_H_N];
} MmsHistEntry;

extern void mms_hist_shmem_request(void);
extern void mms_hist_shmem_init(void);
/*
 * Adds the observations obs[metric] (seconds, or rows for MMS_H_BATCH; < 0 =
 * none) to (database, model version): one lock, no allocation; nothing while
 * mms.track_latency is off.
 */
extern void mms_hist_record(Oid dboid, int64 model_id, const char *name, int32 version,
							const double obs[MMS_H_N]);
/* Copies of every entry (palloc'd). */
extern MmsHistEntry *mms_hist_snapshot(int *n);
extern uint64 mms_hist_evicted(void);
extern void mms_hist_reset(void);
extern void mms_hist_forget(Oid dboid, int64 model_id);
/* Finite upper bounds of a metric's buckets (n of them; counts[MMS_HIST_BUCKETS] is +Inf). */
extern const double *mms_hist_bounds(MmsHistMetric m, int *n);
extern const char *mms_hist_metric_name(MmsHistMetric m);
/* histogram_quantile(): linear inside the bucket; NaN when empty. */
extern double mms_hist_quantile(const MmsHistogram *h, MmsHistMetric m, double q);

/* ================= usage.c: usage metering ================= */

typedef struct MmsUsageKey
{
	TimestampTz hour;			/* start of the hour (UTC) */
	Oid			dboid;
	Oid			roleid;
	int64		model_id;
} MmsUsageKey;

/* Integers only, so that subtracting what a flush wrote leaves exactly what came since. */
typedef struct MmsUsageCounts
{
	uint64		calls;
	uint64		input_tokens;
	uint64		output_tokens;
	uint64		errors;
	uint64		cancels;
	uint64		rejections;
	uint64		compute_us;
	uint64		queue_us;
} MmsUsageCounts;

typedef struct MmsUsageEntry
{
	MmsUsageKey key;			/* hash key: first */
	char		name[NAMEDATALEN];
	int32		version;
	int32		fails;			/* flushes of it that did not commit, in a row */
	TimestampTz retry_at;		/* after a failed flush: not before (0 = now) */
	uint64		born_seq;		/* the add that created it: tells it from a later one */
	uint64		since_seq;		/* its oldest unwritten count came after this add */
	MmsUsageCounts c;
} MmsUsageEntry;

extern Size mms_usage_shmem_size(void);
extern void mms_usage_shmem_init(void);
/* Adds counts to the current hour's row of (database, role, model version); never ERRORs. */
extern void mms_usage_add(Oid dboid, Oid roleid, const MmsModel *m, const MmsStatCounts *add);
/* Copies of the rows of dboid (InvalidOid: all) with something unwritten; *seq = adds so far. */
extern MmsUsageEntry *mms_usage_snapshot(Oid dboid, int *n, uint64 *seq);
/* After the commit of a flush: takes away exactly what it wrote. */
extern void mms_usage_written(const MmsUsageEntry *rows, int n, uint64 seq);
/* Before a flush: its rows wait before the next try unless mms_usage_written clears it. */
extern void mms_usage_defer(Oid dboid);
/* Databases with rows due for a flush (force: also those waiting after a failure). */
extern List *mms_usage_due_databases(bool force);
/* Adds counted so far, and: has dboid unwritten counts from adds up to seq? */
extern uint64 mms_usage_seq(void);
extern bool mms_usage_pending_before(Oid dboid, uint64 seq);
/* Asks the launcher for a flush now (force) or reads and clears the request. */
extern void mms_usage_request_flush(void);
extern bool mms_usage_take_flush_request(bool *force);
/* Rows dropped to make room since the server started. */
extern uint64 mms_usage_dropped(void);
extern void mms_usage_forget_database(Oid dboid);
/* Adds a row read back from the file of a clean shutdown (its counts unwritten). */
extern void mms_usage_restore(const MmsUsageEntry *e);
/* usage_file.c: pending rows across a clean shutdown. */
extern void mms_usage_file_write(int code, Datum arg);
extern void mms_usage_file_read(void);
/* usage_flush.c: the flush process (connected to one database) */
extern PGDLLEXPORT void mms_usage_flush_main(Datum arg);

/* ================= alerts.c: alert rules evaluated in the database (alert_rules.c writes them) ================= */

/* Shared state: rule states, call counters per (database, model), databases with rules. */
extern void mms_alerts_shmem_request(void);	/* space and its own lock, in the request hook */
extern void mms_alerts_shmem_init(void);
/* Adds to the counters of (database, model name) that error and rejection rates read; never ERRORs. */
extern void mms_alerts_count(Oid dboid, const char *model, uint64 calls, uint64 errors,
							 uint64 rejections);
/* Databases with alert rules (the launcher visits them every mms.alert_interval). */
extern List *mms_alerts_databases(void);
/* A database has rules (or not): the launcher visits it; false when the list is full. */
extern bool mms_alerts_set_database(Oid dboid, bool has_rules);
/* Is name one of the metrics a rule may watch? */
extern bool mms_alert_metric_exists(const char *name);
/* The database or its registry is gone: its rules' states, counters and place in the list. */
extern void mms_alerts_forget_database(Oid dboid);
/* Maintenance process, in a transaction: evaluates this database's rules, reports transitions. */
extern void mms_alerts_pass(void);

/* ================= quota.c: token buckets; quota_rules.c: which quota applies ================= */

/* The limits of one role on one model: the most specific mms.role_quotas row. */
typedef struct MmsQuotaLimits
{
	bool		row;			/* a row applies (else no limits, weight 1) */
	Oid			row_role;		/* the row's role; 0 = public */
	char		row_model[NAMEDATALEN];	/* the row's model; "" = every model */
	int32		requests_per_minute;	/* 0 = unlimited */
	int32		tokens_per_minute;
	int64		tokens_per_day;
	int32		max_concurrent;
	int32		weight;			/* share in fair queueing, 1 by default */
} MmsQuotaLimits;

/* Buckets are per calling role, in the scope of the row that applies. */
typedef struct MmsQuotaKey
{
	Oid			dboid;
	Oid			roleid;
	char		model[NAMEDATALEN];	/* the row's model, "" = every model */
} MmsQuotaKey;

typedef struct MmsQuotaRefusal
{
	bool		no_bucket;		/* the shared table of buckets is full of live ones */
	const char *limit;			/* the limit that refused (a column name) */
	int64		limit_value;
	double		retry_seconds;	/* when enough is back */
} MmsQuotaRefusal;

typedef struct MmsQuotaRemaining
{
	double		requests;
	double		tokens;
	double		day_tokens;
	int32		in_flight;
	/* seconds until each bucket is whole again */
	double		requests_full_in;
	double		tokens_full_in;
	double		day_tokens_full_in;
} MmsQuotaRemaining;

extern Size mms_quota_shmem_size(void);
extern void mms_quota_shmem_init(void);
/* Charges n requests of tokens in all against the buckets, all or nothing; false and why if over. */
extern bool mms_quota_charge(const MmsQuotaKey *k, const MmsQuotaLimits *l, int n, int64 tokens,
							 MmsQuotaRefusal *why);
/* Gives back a whole charge (requests and tokens) of requests that never ran. */
extern void mms_quota_uncharge(const MmsQuotaKey *k, int n, int64 tokens);
/* Gives back tokens a request was charged and did not use. */
extern void mms_quota_refund(const MmsQuotaKey *k, int64 tokens);
/*
 * max_concurrent: one more request in flight, if the limit allows (1; in_flight
 * is the count after), 0 at the limit, -1 when no bucket is free for the role.
 */
extern int	mms_quota_enter(const MmsQuotaKey *k, const MmsQuotaLimits *l, int32 *in_flight);
extern void mms_quota_leave(const MmsQuotaKey *k);
extern void mms_quota_remaining(const MmsQuotaKey *k, const MmsQuotaLimits *l, MmsQuotaRemaining *out);
/* quota_rules.c: the limits of role on model name (cached per backend until the rows change). */
extern void mms_quota_limits(Oid roleid, const char *model, MmsQuotaLimits *out);
extern void mms_quota_key(const MmsQuotaLimits *l, Oid roleid, MmsQuotaKey *out);
/* After writing mms.role_quotas: backends drop their cached limits at commit. */
extern void mms_quota_rows_changed(void);

/* ================= progress.c: each backend's statement, behind mms.progress ================= */

extern Size mms_progress_shmem_size(void);
extern void mms_progress_shmem_init(void);
/* request.c, as a request set begins: a new top-level statement starts from zero. */
extern void mms_progress_begin(const MmsModel *m, Oid roleid);
/* A request added; one finished (ok) or failed, with the output tokens it produced. */
extern void mms_progress_added(void);
extern void mms_progress_done(bool ok, int32 n_tokens);
/* The set ends; n_undone of its requests never finished (they count as failed). */
extern void mms_progress_end(int n_undone);

/* ================= events.c ================= */

#define MMS_MAX_EVENTS 256
#define MMS_EVENT_DETAIL 160

typedef struct MmsEvent
{
	TimestampTz at;
	char		kind[16];		/* load, load_failed, evict, scale_up, scale_down, worker_exit */
	char		model[NAMEDATALEN + 12];
	char		sha256[65];
	char		detail[MMS_EVENT_DETAIL];
} MmsEvent;

/* The kinds, in the order of the counters mms_events_counts returns. */
#define MMS_EVENT_KINDS 6
extern const char *const mms_event_kinds[MMS_EVENT_KINDS];

/* Records a serving decision (and writes it to the server log). */
extern void mms_event(const char *kind, const MmsServed *s, const char *fmt,...) pg_attribute_printf(3, 4);
extern int	mms_events_snapshot(MmsEvent *out);
/* Events of each kind since the server started (mms_event_kinds order). */
extern void mms_events_counts(uint64 *out);

/* ================= shmem.c ================= */

typedef struct MmsShared
{
	LWLock	   *dir_lock;
	LWLock	   *workers_lock;
	LWLock	   *slots_lock;		/* the free list of slots */
	LWLock	   *events_lock;
	LWLock	   *stats_lock;
	LWLock	   *quota_lock;
	LWLock	   *usage_lock;
	LWLock	   *queue_locks;	/* MMS_MAX_SERVED of them */
	ConditionVariable cv;		/* a served entry or a worker changed */
	int			launcher_procno;	/* -1 while no launcher runs */
	int			launcher_pid;
	bool		scanned;		/* pinned models of every database were read */
	/* queue.c */
	int			n_slots;
	int			slot_tokens;
	Size		slot_stride;
	Size		slots_off;		/* from the start of this struct */
	int			free_head;		/* free list through MmsSlot.next */
	int			n_free;
	int			q_head[MMS_MAX_SERVED];
	int			q_tail[MMS_MAX_SERVED];
	int			q_queued[MMS_MAX_SERVED];
	int			q_running[MMS_MAX_SERVED];
	double		q_vtime[MMS_MAX_SERVED];	/* fair queueing: virtual time of the queue */
	/* workers.c */
	MmsWorker	workers[MMS_MAX_WORKERS + MMS_MAX_LOADERS + 2];	/* + a scan, a usage flush */
	/* served.c */
	MmsServed	served[MMS_MAX_SERVED];
	/* events.c */
	int			event_next;
	uint64		event_count;
	uint64		event_kind_counts[MMS_EVENT_KINDS];
	MmsEvent	events[MMS_MAX_EVENTS];
} MmsShared;

#define MMS_WORKER_SLOTS (MMS_MAX_WORKERS + MMS_MAX_LOADERS + 2)

extern MmsShared *mms_shared;

extern void mms_shmem_install_hooks(void);
extern void mms_require_serving(void);
extern void mms_wake_procno(int procno);
/* Waits on the shared condition variable (with interrupts) for up to ms. */
extern void mms_wait_shared(long ms);

/* ---- launcher.c ---- */
extern void mms_launcher_register(void);
extern PGDLLEXPORT void mms_launcher_main(Datum arg);
extern void mms_wake_launcher(void);
extern void mms_release_database(Oid dboid);
/*
 * The model (model_id; 0 = every model of the database) is gone: its
 * registration leaves its served entry; an entry left without users drains
 * its workers and frees its weights; statistics are dropped.
 */
extern void mms_forget_models(Oid dboid, int64 model_id);
/* The same when the current transaction commits (nothing if it aborts): at_commit.c. */
extern void mms_forget_models_at_commit(Oid dboid, int64 model_id);

/* ---- request.c: the asynchronous request API of a backend ---- */

/* An error found while a call is prepared, raised later for its row (batch_exec.c). */
typedef struct MmsDeferredError
{
	int			sqlstate;
	char	   *msg;
	char	   *detail;			/* NULL = none */
	char	   *hint;			/* NULL = none */
} MmsDeferredError;


typedef struct MmsRequestSet MmsRequestSet;

typedef struct MmsResult
{
	bool		done;
	int32	   *ids;			/* palloc'd in the set's context */
	int32		n_ids;
	double		logprob;
	MmsSlotError *err;			/* NULL = succeeded */
} MmsResult;

/*
 * A set of requests on one model, submitted together and collected as they
 * finish. Requests wait in the backend until a slot is free. Cleanup is
 * automatic: an ERROR (or the end of the resource owner) abandons what is
 * still in flight, and the workers drop it.
 */
extern MmsRequestSet *mms_requests_begin(const MmsModel *m);
/* Adds a request (tokens copied into the slot when it is submitted); returns its index. */
extern int	mms_requests_add(MmsRequestSet *rs, MmsReqKind kind, const MmsGenOptions *opts,
							 const int32 *input, int32 n_input, const int32 *target, int32 n_target);
/* Does a request of n_tokens (input and target) fit a slot? If not, the error in *too_big. */
extern bool mms_requests_fit(int32 n_tokens, MmsDeferredError *too_big);
/*
 * Charges the requests added since the last admission now, as one call, if
 * the role's quota counts requests or tokens; else does nothing (polls admit
 * them). Refused: false, the error in *refused, and those requests end
 * without running (rejections). The batching node calls it after every row,
 * so that each row's call is admitted alone and refused at its row.
 */
extern bool mms_requests_admit(MmsRequestSet *rs, MmsDeferredError *refused);
/* Submits what fits in free slots, collects what finished; never waits. Returns requests still open. */
extern int	mms_requests_poll(MmsRequestSet *rs);
/* Waits until request i (or, with -1, every request) has finished. */
extern void mms_requests_wait(MmsRequestSet *rs, int i);
/*
 * Submits what it can (admitted whole, as a wait does), then sleeps until a
 * request of the backend finishes or publishes tokens, or a short while
 * passes, and collects. For callers that act on partial results.
 */
extern void mms_requests_wait_any(MmsRequestSet *rs);
extern const MmsResult *mms_requests_result(MmsRequestSet *rs, int i);
extern void mms_requests_cancel(MmsRequestSet *rs, int i);
/*
 * The caller has what it wanted of request i after used output tokens (a stop
 * sequence): it ends as a call that produced them, charged for them alone.
 */
extern void mms_requests_stop(MmsRequestSet *rs, int i, int32 used);
/*
 * Streaming: request i (added, not yet submitted) has its tokens published as
 * its worker chooses them (greedy and sampling; beam search only at the end).
 */
extern void mms_requests_stream(MmsRequestSet *rs, int i);
/*
 * Streaming: the tokens of request i so far in *ids (palloc'd in the set;
 * valid until the next call), the whole result once it is done; their count.
 * A request its worker gave back starts again with the same tokens (seeded).
 */
extern int32 mms_requests_partial(MmsRequestSet *rs, int i, const int32 **ids);
extern void mms_requests_end(MmsRequestSet *rs);

/* ---- tokenize.c ---- */
extern MmsTokenizer *mms_tokenizer_for_call(FunctionCallInfo fcinfo, text *ref_text,
											const MmsModel **model);

/*
 * Inputs of inference are bounded in tokens (a GUC) and, before any work, in
 * bytes: MMS_MAX_BYTES_PER_TOKEN per allowed token, far above what any
 * tokenizer needs per token, so only absurd texts are refused unread.
 * mms_tokenize has no token bound and is bounded in bytes alone.
 */
#define MMS_MAX_BYTES_PER_TOKEN 64
#define MMS_TOKENIZE_MAX_BYTES (64 * 1024 * 1024)

typedef struct MmsTokenBound
{
	int32		max_tokens;
	const char *what;			/* "input", "target" */
	const char *guc;			/* the GUC that sets max_tokens */
} MmsTokenBound;

/*
 * Token ids of t with the final eos, palloc'd; bound NULL = mms_tokenize's
 * byte bound only. Interruptible; ERROR on failure or beyond the bound.
 */
extern int32 *mms_encode_text(MmsTokenizer *tok, text *t, const MmsTokenBound *bound, int32 *n);

/* mms_encode_text, but a text beyond the bound returns NULL with the error in *too_long. */
extern int32 *mms_try_encode_text(MmsTokenizer *tok, text *t, const MmsTokenBound *bound, int32 *n,
								  MmsDeferredError *too_long);
extern void mms_raise_deferred(const MmsDeferredError *e);
/* Text of ids (interruptible, refused beyond 1 GB); ERROR on failure. */
extern text *mms_decode_ids(MmsTokenizer *tok, const int32 *ids, int32 n);
/* The tokenizer of a resolved model (cached by the backend; valid until it loads another). */
extern MmsTokenizer *mms_tokenizer_of(const MmsModel *m);

/* ---- dispatch.c: shared by the inference functions (stream.c) ---- */
/* mms.max_input_tokens as a bound for mms_encode_text */
extern const MmsTokenBound *mms_input_bound(void);
/* mms.max_new_tokens as the bound of a scored target */
extern const MmsTokenBound *mms_target_bound(void);
/* ERROR: the model argument is NULL */
extern void mms_null_model_error(void) pg_attribute_noreturn();
/* ERROR for an encoder-only model, which cannot generate */
extern void mms_require_decoder(const MmsModel *m);
/* ERROR carrying a failed request's SQLSTATE and message; nothing when e is NULL */
extern void mms_raise_call_error(const MmsModel *m, const MmsSlotError *e);

/* ---- options.c: the options jsonb, resolved over the engine's defaults and validated ---- */
extern void mms_parse_options(Jsonb *opts, MmsGenOptions *out);

#endif
