/*
 * serve.h — the shared state of inference: request slots, the worker table,
 * the model-cache directory and per-model statistics, all in one main-shmem
 * struct (shmem.c). Used by the calling backends (dispatch.c), the launcher
 * (launcher.c), the views (views.c) and the inference workers (worker*.c,
 * built into mms_worker.so). The engine never sees this header.
 *
 * Protocol (every field below is read and written under mms_shared->lock
 * unless said otherwise):
 *
 * - A backend takes FREE slots, writes the tokens and options (FILLING), then
 *   marks them QUEUED for a worker entry and sets that worker's latch (or the
 *   launcher's while the worker is not up). It waits on its own latch.
 * - The worker of that entry takes QUEUED slots (RUNNING), runs them in its
 *   scheduler, writes results and marks them DONE (sqlstate = 0 on success),
 *   then sets the owner's latch. The owner copies the result and frees the slot.
 * - A backend that stops waiting (ERROR, cancel, timeout, exit) frees its
 *   QUEUED/DONE slots and marks RUNNING ones ABANDONED: the worker cancels the
 *   request at the next step and frees the slot when it collects it.
 * - A worker that exits fails its RUNNING slots and frees its ABANDONED ones
 *   (before_shmem_exit); QUEUED ones stay for the replacement the launcher
 *   starts. The launcher does the same for a worker that vanished.
 *
 * Weights live in DSM segments (one per cached model): the GGUF bytes, then
 * the dequantization arena at arena_off. Offsets only; every process maps the
 * segment at its own address.
 */
#ifndef MMS_SERVE_H
#define MMS_SERVE_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "storage/condition_variable.h"
#include "storage/dsm.h"
#include "storage/lwlock.h"
#include "utils/jsonb.h"

#include "generate.h"
#include "mms.h"
#include "tokenizer.h"

#define MMS_MAX_WORKERS 64		/* upper bound of mms.max_workers */
#define MMS_MAX_CACHED 64		/* models in the cache directory */
#define MMS_MAX_STATS 128		/* models with statistics */
#define MMS_ERRMSG 256
#define MMS_ERRHINT 160

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
/* mms.worker_memory in bytes, the automatic value worked out */
extern Size mms_worker_memory_bytes(void);

typedef enum MmsSlotState
{
	MMS_SLOT_FREE = 0,
	MMS_SLOT_FILLING,
	MMS_SLOT_QUEUED,
	MMS_SLOT_RUNNING,
	MMS_SLOT_DONE,
	MMS_SLOT_ABANDONED
} MmsSlotState;

typedef enum MmsReqKind
{
	MMS_REQ_GENERATE = 0,
	MMS_REQ_SCORE
} MmsReqKind;

/*
 * Generation options as the caller gave them: values of the options in
 * `given` (MMS_OPT_* bits), the rest take the engine's defaults in the worker
 * (mms.so has no access to generate.c, which needs BLAS). max_new_cap is the
 * caller's mms.max_new_tokens, a bound on the default max_new_tokens.
 */
#define MMS_OPT_MAX_NEW_TOKENS		(1 << 0)
#define MMS_OPT_MIN_NEW_TOKENS		(1 << 1)
#define MMS_OPT_NUM_BEAMS			(1 << 2)
#define MMS_OPT_LENGTH_PENALTY		(1 << 3)
#define MMS_OPT_EARLY_STOPPING		(1 << 4)
#define MMS_OPT_DO_SAMPLE			(1 << 5)
#define MMS_OPT_TEMPERATURE			(1 << 6)
#define MMS_OPT_TOP_K				(1 << 7)
#define MMS_OPT_TOP_P				(1 << 8)
#define MMS_OPT_SEED				(1 << 9)
#define MMS_OPT_REPETITION_PENALTY	(1 << 10)

typedef struct MmsOptionSet
{
	uint32		given;
	int32		max_new_cap;
	MmsGenOptions v;
} MmsOptionSet;

/* What a failure carries back to the caller. */
typedef struct MmsSlotError
{
	int			sqlstate;		/* 0 = no error */
	char		msg[MMS_ERRMSG];
	char		hint[MMS_ERRHINT];
} MmsSlotError;

typedef struct MmsSlot
{
	MmsSlotState state;
	int			owner_procno;
	int			owner_pid;
	int			worker;			/* index in workers[] */
	uint32		worker_gen;		/* generation of that entry when queued */
	MmsReqKind	kind;
	MmsOptionSet opts;
	int32		n_input;		/* tokens[0 .. n_input) */
	int32		n_target;		/* score: tokens[n_input .. +n_target) */
	int32		n_output;		/* result ids, written over tokens[0 ..) */
	double		logprob;
	double		score;
	MmsSlotError err;
	TimestampTz t_queued;
	TimestampTz t_started;
	int32		tokens[FLEXIBLE_ARRAY_MEMBER];	/* slot_tokens entries */
} MmsSlot;

typedef enum MmsWorkerState
{
	MMS_W_FREE = 0,
	MMS_W_REQUESTED,			/* a backend wants it; the launcher starts it */
	MMS_W_STARTING,				/* registered, process not up yet */
	MMS_W_LOADING,				/* connected, loading or attaching weights */
	MMS_W_READY,
	MMS_W_EXITED				/* gone; the launcher frees or restarts the entry */
} MmsWorkerState;

typedef enum MmsExitReason
{
	MMS_EXIT_NONE = 0,
	MMS_EXIT_IDLE,				/* mms.worker_idle_timeout: not replaced */
	MMS_EXIT_STOP,				/* asked to stop (unload, budget, pool limit): not replaced */
	MMS_EXIT_LOAD_FAILED,		/* could not load: queued requests get err */
	MMS_EXIT_OTHER				/* terminated or failed: replaced when wanted */
} MmsExitReason;

/* The model a worker or cache entry serves: enough to load it without SPI. */
typedef struct MmsModelKey
{
	Oid			dboid;
	int64		model_id;
	Oid			weights;
	int64		size_bytes;
	int32		version;
	char		name[NAMEDATALEN];
	char		sha256[65];
} MmsModelKey;

typedef struct MmsWorker
{
	MmsWorkerState state;
	uint32		generation;		/* bumped on every (re)use of the entry */
	MmsModelKey model;
	int			pid;
	int			procno;			/* -1 until the process is up */
	bool		stop_requested;
	MmsExitReason exit_reason;
	int			failed_starts;	/* exits before READY in a row */
	MmsSlotError err;			/* why loading failed */
	int			batch;			/* rows of the last decoder step */
	int			held;			/* requests in its scheduler */
	uint64		served;
	TimestampTz started_at;
	TimestampTz last_active;
} MmsWorker;

typedef enum MmsCacheState
{
	MMS_C_EMPTY = 0,
	MMS_C_LOADING,
	MMS_C_READY
} MmsCacheState;

typedef struct MmsCacheEntry
{
	MmsCacheState state;
	MmsModelKey model;
	int			loader_pid;
	dsm_handle	handle;
	Size		seg_bytes;		/* whole segment */
	Size		gguf_bytes;		/* file at offset 0 */
	Size		arena_off;		/* dequantization arena (f32) */
	Size		arena_floats;
	int			refcount;		/* workers attached */
	bool		doomed;			/* model or database gone: freed at refcount 0, never reused */
	TimestampTz last_used;
	TimestampTz loaded_at;
	double		load_ms;
} MmsCacheEntry;

typedef struct MmsStat
{
	bool		used;
	Oid			dboid;
	int64		model_id;
	int32		version;
	char		name[NAMEDATALEN];
	uint64		calls;
	uint64		input_tokens;
	uint64		output_tokens;
	uint64		errors;
	uint64		cancels;
	uint64		cache_loads;
	uint64		steps;			/* decoder steps of its workers */
	uint64		rows;			/* sequence-steps: rows / steps = mean batch */
	int			max_batch;
	double		total_ms;
	double		queue_ms;
} MmsStat;

typedef struct MmsShared
{
	LWLock	   *lock;
	ConditionVariable cv;		/* a slot freed, a cache entry or a worker changed */
	int			launcher_procno;	/* -1 while no launcher runs */
	int			launcher_pid;
	int			n_slots;
	int			slot_tokens;
	Size		slot_stride;
	Size		slots_off;		/* from the start of this struct */
	TimestampTz stats_reset;
	MmsWorker	workers[MMS_MAX_WORKERS];
	MmsCacheEntry cache[MMS_MAX_CACHED];
	MmsStat		stats[MMS_MAX_STATS];
} MmsShared;

extern MmsShared *mms_shared;

/* ---- shmem.c ---- */
extern void mms_shmem_install_hooks(void);
extern void mms_require_serving(void);
extern MmsSlot *mms_slot(int i);
extern void mms_key_from_model(MmsModelKey *k, const MmsModel *m);
extern bool mms_key_equal(const MmsModelKey *a, const MmsModelKey *b);
/* lock held; creates the entry when missing (NULL if the table is full) */
extern MmsStat *mms_stat_for(const MmsModelKey *k);
extern void mms_wake_procno(int procno);
/* Lock held: empties cache entry i; returns its handle, to unpin after unlocking. */
extern dsm_handle mms_cache_evict_locked(int i);
extern int	mms_worker_queued(int w);	/* lock held: QUEUED + RUNNING + ABANDONED */
extern void mms_slot_fail(MmsSlot *s, int sqlstate, const char *msg, const char *hint);
/* lock held: worker w is gone; fail its running slots, free abandoned ones */
extern void mms_worker_orphan_slots(int w, const char *why);

/* ---- launcher.c ---- */
extern void mms_launcher_register(void);
extern PGDLLEXPORT void mms_launcher_main(Datum arg);
/* lock held: an entry serving k in this state set, or -1 */
extern int	mms_find_worker(const MmsModelKey *k);
/* lock held: find or request a worker for k; -1 when the table is full */
extern int	mms_want_worker(const MmsModelKey *k);
extern void mms_wake_launcher(void);
extern void mms_release_database(Oid dboid);
/*
 * The model (model_id; 0 = every model of the database) is gone: its workers
 * stop once idle, its cached weights are freed now or by the last worker to
 * detach, and its statistics are dropped.
 */
extern void mms_forget_models(Oid dboid, int64 model_id);
/* The same when the current transaction commits (nothing if it aborts). */
extern void mms_forget_models_at_commit(Oid dboid, int64 model_id);

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
/* Text of ids (interruptible, refused beyond 1 GB); ERROR on failure. */
extern text *mms_decode_ids(MmsTokenizer *tok, const int32 *ids, int32 n);

/* ---- options.c ---- */
extern void mms_parse_options(Jsonb *opts, MmsOptionSet *out);

#endif
