/*
 * mms.c — the extension's entry point: module magic, _PG_init, the GUCs of
 * the registry and of inference, and (when preloaded) the shared-memory hooks
 * and the launcher. The SQL functions live in the files named after their concern
 * (register.c, manage.c, resolve.c, tokenize.c).
 */
#include "postgres.h"

#include <limits.h>
#include <unistd.h>

#include "fmgr.h"
#include "miscadmin.h"
#include "utils/guc.h"

#include "batch.h"
#include "mms.h"
#include "serve.h"

PG_MODULE_MAGIC;

/* Default cap: large enough for flan-t5-large in f32 (3.1 GB) with room to spare. */
int			mms_max_model_size_kb = 8 * 1024 * 1024;
int			mms_tokenizer_cache_size = 8;

/* inference (serve.h) */
int			mms_max_workers = 4;
int			mms_threads_per_worker = 1;
int			mms_worker_idle_timeout_ms = 300 * 1000;
int			mms_cache_size_mb = 1024;
int			mms_max_input_tokens = 1024;
int			mms_max_new_tokens = 512;
int			mms_max_requests = 256;
int			mms_max_batch = 64;
int			mms_worker_memory_mb = -1;
int			mms_pool_target_requests = 16;
int			mms_pool_upscale_wait_ms = 500;
int			mms_max_stats = 5000;
double		mms_backend_request_share = 0.25;
bool		mms_fair_queueing = true;
int			mms_usage_flush_interval_ms = 10000;
int			mms_max_usage_entries = 10000;
int			mms_alert_interval_ms = 10000;
bool		mms_track_latency = true;

void		_PG_init(void);

/* 0 (what '512kB' rounds to) would otherwise read as "automatic", the largest budget. */
static bool
check_worker_memory(int *newval, void **extra, GucSource source)
{
	if (*newval == 0)
	{
		GUC_check_errdetail("mms.worker_memory must be at least 1MB, or -1 for automatic.");
		return false;
	}
	return true;
}

Size
mms_worker_memory_bytes(void)
{
	long		pages;
	long		page_size;
	Size		auto_bytes;

	if (mms_worker_memory_mb > 0)
		return (Size) mms_worker_memory_mb * 1024 * 1024;
	pages = sysconf(_SC_PHYS_PAGES);
	page_size = sysconf(_SC_PAGESIZE);
	if (pages <= 0 || page_size <= 0)
		return (Size) 1024 * 1024 * 1024;	/* unknown machine: 1 GB */
	auto_bytes = (Size) pages * (Size) page_size / 4 / (Size) Max(mms_max_workers, 1);
	return Max(auto_bytes, (Size) 64 * 1024 * 1024);
}

void
_PG_init(void)
{
	/*
	 * A model is read into backend memory whole to be validated; the cap keeps
	 * one registration from exhausting the server. Superuser-only, since a
	 * role could otherwise raise its own limit.
	 */
	DefineCustomIntVariable("mms.max_model_size",
							"Largest model file mms_register and mms_import accept.",
							NULL,
							&mms_max_model_size_kb,
							8 * 1024 * 1024,
							1,
							INT_MAX,
							PGC_SUSET,
							GUC_UNIT_KB,
							NULL, NULL, NULL);

	DefineCustomIntVariable("mms.tokenizer_cache_size",
							"Number of tokenizers each session keeps loaded.",
							NULL,
							&mms_tokenizer_cache_size,
							8,
							1,
							64,
							PGC_USERSET,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("mms.max_workers",
							"Most inference workers running at once, all models together.",
							"Each is a background worker: keep max_worker_processes above it.",
							&mms_max_workers,
							4,
							1,
							MMS_MAX_WORKERS,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("mms.pool_target_requests",
							"A model's pool grows by a worker when it has more outstanding requests than this per worker.",
							"Outstanding = queued + running. Pools stay within max_workers of mms_configure and mms.max_workers.",
							&mms_pool_target_requests,
							16,
							1,
							65536,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("mms.pool_upscale_wait",
							"A model's pool grows by a worker when its oldest queued request has waited this long.",
							NULL,
							&mms_pool_upscale_wait_ms,
							500,
							1,
							INT_MAX,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("mms.threads_per_worker",
							"BLAS threads each inference worker uses.",
							NULL,
							&mms_threads_per_worker,
							1,
							1,
							256,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("mms.worker_idle_timeout",
							"An inference worker with no request for this long exits, "
							"unless its pool would fall below min_workers.",
							"This is the pool's scale-down delay.",
							&mms_worker_idle_timeout_ms,
							300 * 1000,
							100,
							INT_MAX,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("mms.cache_size",
							"Shared memory for cached model weights; unused models are evicted beyond it.",
							"Cached weights live in dynamic shared memory (/dev/shm on Linux).",
							&mms_cache_size_mb,
							1024,
							1,
							INT_MAX / 2,
							PGC_SIGHUP,
							GUC_UNIT_MB,
							NULL, NULL, NULL);

	DefineCustomIntVariable("mms.max_new_tokens",
							"Largest max_new_tokens option (and longest scored target) a call may ask for.",
							NULL,
							&mms_max_new_tokens,
							512,
							1,
							MMS_GEN_MAX_NEW_TOKENS,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("mms.worker_memory",
							"Memory the requests of one inference worker may take (decoder caches and scratch); -1 = automatic.",
							"Automatic: a quarter of the machine's memory divided by mms.max_workers. Requests that do not fit wait; one that can never fit fails.",
							&mms_worker_memory_mb,
							-1,
							-1,
							INT_MAX / 2,
							PGC_SIGHUP,
							GUC_UNIT_MB,
							check_worker_memory, NULL, NULL);

	DefineCustomIntVariable("mms.max_batch",
							"Most requests one inference worker decodes together.",
							NULL,
							&mms_max_batch,
							64,
							1,
							4096,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomRealVariable("mms.backend_request_share",
							 "Largest share of mms.max_requests one backend holds in flight at once.",
							 "An array call beyond it submits the rest as its own requests finish, so one session cannot take every slot.",
							 &mms_backend_request_share,
							 0.25,
							 0.01,
							 1.0,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);

	DefineCustomBoolVariable("mms.fair_queueing",
							 "Serves each model's queue fairly between roles, by tokens and quota weights.",
							 "Off: first come, first served.",
							 &mms_fair_queueing,
							 true,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);

	DefineCustomBoolVariable("mms.track_latency",
							 "Records latency and batch-size histograms (mms.stat_latency, mms_metrics()).",
							 NULL,
							 &mms_track_latency,
							 true,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("mms.alert_interval",
							"How often the alert rules of each database are evaluated.",
							NULL,
							&mms_alert_interval_ms,
							10000,
							1000,
							3600 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("mms.usage_flush_interval",
							"How often the launcher writes usage counted in shared memory into mms.usage.",
							NULL,
							&mms_usage_flush_interval_ms,
							10000,
							100,
							3600 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomBoolVariable("mms.transparent_batching",
							 "Batches the per-row mms_generate and mms_score calls of a statement's rows.",
							 "Takes effect when a statement is planned; off, a cached plan runs one row at a time.",
							 &mms_transparent_batching,
							 true,
							 PGC_USERSET,
							 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("mms.batch_rows",
							"Rows whose calls transparent batching sends at once.",
							NULL,
							&mms_batch_rows,
							64,
							1,
							4096,
							PGC_USERSET,
							0,
							NULL, NULL, NULL);

	/*
	 * Inference needs shared memory and the launcher, which only a preloaded
	 * library can set up. This library never links OpenBLAS (it lives in the
	 * postmaster); the workers load mms_worker, which does.
	 */
	if (process_shared_preload_libraries_in_progress)
	{
		/*
		 * These size the request slots, hence are fixed at server start; a
		 * library loaded later may not define them (nor use them).
		 */
		DefineCustomIntVariable("mms.max_input_tokens",
								"Longest input (in tokens, eos included) an inference call accepts.",
								NULL,
								&mms_max_input_tokens,
								1024,
								16,
								65536,
								PGC_POSTMASTER,
								0,
								NULL, NULL, NULL);

		DefineCustomIntVariable("mms.max_requests",
								"Inference requests in flight at once, all sessions together (shared-memory slots).",
								NULL,
								&mms_max_requests,
								256,
								8,
								65536,
								PGC_POSTMASTER,
								0,
								NULL, NULL, NULL);

		DefineCustomIntVariable("mms.max_stats",
								"Entries of mms.stat_models (database, role, model); the least used are evicted beyond it.",
								NULL,
								&mms_max_stats,
								5000,
								100,
								1000000,
								PGC_POSTMASTER,
								0,
								NULL, NULL, NULL);

		DefineCustomIntVariable("mms.max_usage_entries",
								"Rows of usage (hour, database, role, model version) counted in shared memory between flushes.",
								NULL,
								&mms_max_usage_entries,
								10000,
								100,
								1000000,
								PGC_POSTMASTER,
								0,
								NULL, NULL, NULL);

		mms_shmem_install_hooks();
		mms_launcher_register();
	}

	/*
	 * Installed wherever the library is loaded; preloading makes it cover
	 * every session (a DROP ROLE in a session that never loaded mms is not
	 * seen).
	 */
	mms_utility_install_hook();
	mms_batch_install_hook();

	MarkGUCPrefixReserved("mms");
}
