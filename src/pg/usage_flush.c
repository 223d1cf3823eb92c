/*
 * usage_flush.c — usage from shared memory (usage.c) to SQL: the maintenance
 * process the launcher starts for one database (in mms.so: it needs no
 * engine), which writes its usage and evaluates its alert rules (alerts.c),
 * mms_usage_flush() that waits for a flush, and the unwritten rows behind
 * mms.usage_summary. Which database to visit, when and for what is the
 * launcher's decision.
 *
 * A flush writes its database's rows in one transaction and subtracts them
 * from shared memory only after the commit, with interrupts held between the
 * two: a fast shutdown then finds in shared memory exactly what mms.usage
 * lacks, and writes it to the usage file. Rows are never written on a hot
 * standby; there shared memory is their only home.
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "tcop/tcopprot.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "mms.h"
#include "serve.h"

#define USAGE_COLS 14

static int	my_index = -1;
static uint32 my_generation = 0;

/* The column values of a row, as mms.usage and mms.usage_pending_rows() have them. */
static void
row_values(const MmsUsageEntry *e, Datum dbname, Datum *v)
{
	char	   *role = GetUserNameFromId(e->key.roleid, true);

	v[0] = TimestampTzGetDatum(e->key.hour);
	v[1] = ObjectIdGetDatum(e->key.roleid);
	/* a role dropped since it called keeps its oid, in place of a name */
	v[2] = DirectFunctionCall1(namein, CStringGetDatum(role ? role : psprintf("%u", e->key.roleid)));
	v[3] = dbname;
	v[4] = CStringGetTextDatum(e->name);
	v[5] = Int32GetDatum(e->version);
	v[6] = Int64GetDatum((int64) Min(e->c.calls, (uint64) PG_INT64_MAX));
	v[7] = Int64GetDatum((int64) Min(e->c.input_tokens, (uint64) PG_INT64_MAX));
	v[8] = Int64GetDatum((int64) Min(e->c.output_tokens, (uint64) PG_INT64_MAX));
	v[9] = Float8GetDatum((double) e->c.compute_us / 1000.0);
	v[10] = Float8GetDatum((double) e->c.queue_us / 1000.0);
	v[11] = Int64GetDatum((int64) Min(e->c.errors, (uint64) PG_INT64_MAX));
	v[12] = Int64GetDatum((int64) Min(e->c.cancels, (uint64) PG_INT64_MAX));
	v[13] = Int64GetDatum((int64) Min(e->c.rejections, (uint64) PG_INT64_MAX));
}

/* Adds the rows to mms.usage, as the registry owner, in the current transaction. */
static void
write_rows(const MmsUsageEntry *rows, int n)
{
	static const char *sql =
	"INSERT INTO mms.usage AS u (hour, role, role_name, database, model, version, calls,"
	" input_tokens, output_tokens, compute_ms, queue_ms, errors, cancels, rejections)"
	" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
	" ON CONFLICT (hour, role, database, model, version) DO UPDATE SET"
	" role_name = EXCLUDED.role_name,"
	" calls = u.calls OPERATOR(pg_catalog.+) EXCLUDED.calls,"
	" input_tokens = u.input_tokens OPERATOR(pg_catalog.+) EXCLUDED.input_tokens,"
	" output_tokens = u.output_tokens OPERATOR(pg_catalog.+) EXCLUDED.output_tokens,"
	" compute_ms = u.compute_ms OPERATOR(pg_catalog.+) EXCLUDED.compute_ms,"
	" queue_ms = u.queue_ms OPERATOR(pg_catalog.+) EXCLUDED.queue_ms,"
	" errors = u.errors OPERATOR(pg_catalog.+) EXCLUDED.errors,"
	" cancels = u.cancels OPERATOR(pg_catalog.+) EXCLUDED.cancels,"
	" rejections = u.rejections OPERATOR(pg_catalog.+) EXCLUDED.rejections";
	Oid			types[USAGE_COLS] = {TIMESTAMPTZOID, OIDOID, NAMEOID, NAMEOID, TEXTOID, INT4OID,
		INT8OID, INT8OID, INT8OID, FLOAT8OID, FLOAT8OID, INT8OID, INT8OID, INT8OID};
	Datum		v[USAGE_COLS];
	Datum		dbname = DirectFunctionCall1(namein, CStringGetDatum(get_database_name(MyDatabaseId)));
	MmsCatalogSession s;
	SPIPlanPtr	plan;

	mms_catalog_enter(&s);
	plan = SPI_prepare(sql, USAGE_COLS, types);
	if (plan == NULL)
		elog(ERROR, "mms usage flush: SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
	for (int i = 0; i < n; i++)
	{
		int			rc;

		row_values(&rows[i], dbname, v);
		rc = SPI_execute_plan(plan, v, NULL, false, 0);
		if (rc != SPI_OK_INSERT)
			elog(ERROR, "mms usage flush: insert failed: %s", SPI_result_code_string(rc));
	}
	mms_catalog_leave(&s);
}

static void
flush_exit(int code, Datum arg)
{
	mms_workers_exited(my_index, my_generation, code == 0);
	mms_wake_launcher();
}

void
mms_usage_flush_main(Datum arg)
{
	MmsWorker	me;
	MemoryContext cxt = CurrentMemoryContext;
	MmsUsageEntry *rows = NULL;
	uint64		seq = 0;
	int			n = 0;
	uint32		flags;

	my_index = DatumGetInt32(arg);
	memcpy(&my_generation, MyBgworkerEntry->bgw_extra, sizeof(my_generation));
	memcpy(&flags, MyBgworkerEntry->bgw_extra + sizeof(my_generation), sizeof(flags));
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	if (mms_shared == NULL || !mms_workers_begin(my_index, my_generation, &me))
		proc_exit(0);
	before_shmem_exit(flush_exit, 0);
	/* until this flush commits, the rows wait longer after each failure */
	if (flags & MMS_MAINT_USAGE)
		mms_usage_defer(me.dboid);
	BackgroundWorkerInitializeConnectionByOid(me.dboid, InvalidOid, 0);
	if (!(flags & MMS_MAINT_USAGE))
		goto alerts;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "writing usage into mms.usage");
	if (!RecoveryInProgress() && mms_catalog_is_current())
	{
		MemoryContext old = MemoryContextSwitchTo(cxt);

		rows = mms_usage_snapshot(MyDatabaseId, &n, &seq);
		MemoryContextSwitchTo(old);
		if (n > 0)
			write_rows(rows, n);
	}
	/* a terminate between the commit and the subtraction would count the rows twice */
	HOLD_INTERRUPTS();
	PopActiveSnapshot();
	CommitTransactionCommand();
	if (n > 0)
		mms_usage_written(rows, n, seq);
	RESUME_INTERRUPTS();

alerts:
	/* its own transaction: a failure here takes nothing of the flush back */
	if (flags & MMS_MAINT_ALERTS)
	{
		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		PushActiveSnapshot(GetTransactionSnapshot());
		pgstat_report_activity(STATE_RUNNING, "evaluating alert rules");
		mms_alerts_pass();
		PopActiveSnapshot();
		CommitTransactionCommand();
	}
	pgstat_report_activity(STATE_IDLE, NULL);
	proc_exit(0);
}

PG_FUNCTION_INFO_V1(mms_usage_flush);

/*
 * mms_usage_flush(timeout_ms integer) RETURNS boolean: asks the launcher to
 * flush now and waits until what this database counted before the call is in
 * mms.usage; false if that took longer than timeout_ms.
 */
Datum
mms_usage_flush(PG_FUNCTION_ARGS)
{
	int32		timeout_ms = PG_ARGISNULL(0) ? 60000 : PG_GETARG_INT32(0);
	TimestampTz deadline;
	TimestampTz asked = 0;
	uint64		seq;

	mms_require_serving();
	mms_require_admin("flush usage");
	if (RecoveryInProgress())
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("cannot flush usage during recovery"),
				 errdetail("A hot standby keeps its usage in shared memory; mms.usage_summary shows it.")));
	mms_require_current_catalog();
	seq = mms_usage_seq();
	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), Max(timeout_ms, 0));
	for (;;)
	{
		TimestampTz now;

		if (!mms_usage_pending_before(MyDatabaseId, seq))
			PG_RETURN_BOOL(true);
		now = GetCurrentTimestamp();
		if (now >= deadline)
			PG_RETURN_BOOL(false);
		/* again now and then: a flush already running may have copied the rows before the call */
		if (now - asked >= 500 * 1000)
		{
			mms_usage_request_flush();
			asked = now;
		}
		mms_wait_shared(100);
	}
}

PG_FUNCTION_INFO_V1(mms_usage_visible);

/* mms.usage_visible(role oid): may the current user see usage of that role? Its own, or all if an administrator. */
Datum
mms_usage_visible(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(PG_GETARG_OID(0) == GetUserId() || mms_is_admin(GetUserId()));
}

PG_FUNCTION_INFO_V1(mms_usage_pending_rows);

/* mms.usage_pending_rows(): this database's usage not yet in mms.usage, as mms.usage_visible allows. */
Datum
mms_usage_pending_rows(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	bool		all = mms_is_admin(GetUserId());
	bool		nulls[USAGE_COLS] = {0};
	Datum		v[USAGE_COLS];
	Datum		dbname;
	MmsUsageEntry *rows;
	uint64		seq;
	int			n;

	InitMaterializedSRF(fcinfo, 0);
	/* without the preload there is nothing in shared memory, and nothing to show */
	rows = mms_usage_snapshot(MyDatabaseId, &n, &seq);
	if (n == 0)
		return (Datum) 0;
	dbname = DirectFunctionCall1(namein, CStringGetDatum(get_database_name(MyDatabaseId)));
	for (int i = 0; i < n; i++)
	{
		if (!all && rows[i].key.roleid != GetUserId())
			continue;
		row_values(&rows[i], dbname, v);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, v, nulls);
	}
	return (Datum) 0;
}
