/*
 * usage_file.c — carries the unwritten usage rows across a clean shutdown:
 * the postmaster writes them to pg_stat/mms_usage.stat at its exit and reads
 * them back (then removes the file) when it creates the shared state, so the
 * launcher's first flush writes them. A crash or an immediate stop writes no
 * file: those rows are lost, at most one mms.usage_flush_interval of usage
 * (an immediate stop kills processes wherever they are, so the counters may
 * be torn, or already written by a flush killed before it could subtract).
 * The file is untrusted input: its header, size and every row are checked.
 */
#include "postgres.h"

#include <sys/stat.h>
#include <unistd.h>

#include "catalog/pg_control.h"
#include "common/controldata_utils.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/fd.h"

#include "serve.h"

#define USAGE_FILE PGSTAT_STAT_PERMANENT_DIRECTORY "/mms_usage.stat"
#define USAGE_FILE_TMP USAGE_FILE ".tmp"
#define USAGE_FILE_MAGIC 0x4d4d5355 /* "MMSU" */
#define USAGE_FILE_FORMAT 1
#define USAGE_FILE_MAX_ROWS 1000000 /* the highest mms.max_usage_entries */

typedef struct UsageFileHeader
{
	uint32		magic;
	uint32		format;
	uint32		row_bytes;		/* sizeof(MmsUsageEntry) of the server that wrote it */
	uint32		n_rows;
} UsageFileHeader;

/*
 * Did every process stop in order? The postmaster exits with code 0 after an
 * immediate stop as after a fast one; pg_control tells them apart: only an
 * orderly stop ends with a shutdown checkpoint (or restartpoint, on a standby).
 */
static bool
stopped_in_order(void)
{
	bool		crc_ok = false;
	ControlFileData *cf = get_controlfile(DataDir, &crc_ok);

	return crc_ok && (cf->state == DB_SHUTDOWNED || cf->state == DB_SHUTDOWNED_IN_RECOVERY);
}

/* on_shmem_exit of the postmaster: every other process is gone, nothing adds any more. */
void
mms_usage_file_write(int code, Datum arg)
{
	UsageFileHeader h;
	MmsUsageEntry *rows;
	uint64		seq;
	int			n;
	FILE	   *f;

	if (code != 0 || mms_shared == NULL || !stopped_in_order())
		return;
	rows = mms_usage_snapshot(InvalidOid, &n, &seq);
	if (n == 0)
		return;
	f = AllocateFile(USAGE_FILE_TMP, PG_BINARY_W);
	if (f == NULL)
		goto error;
	h.magic = USAGE_FILE_MAGIC;
	h.format = USAGE_FILE_FORMAT;
	h.row_bytes = sizeof(MmsUsageEntry);
	h.n_rows = (uint32) Min(n, USAGE_FILE_MAX_ROWS);
	if (fwrite(&h, sizeof(h), 1, f) != 1 ||
		fwrite(rows, sizeof(MmsUsageEntry), h.n_rows, f) != h.n_rows)
		goto error;
	if (FreeFile(f) != 0)
	{
		f = NULL;
		goto error;
	}
	(void) durable_rename(USAGE_FILE_TMP, USAGE_FILE, LOG);
	return;

error:
	ereport(LOG,
			(errcode_for_file_access(),
			 errmsg("mms: could not write usage file \"%s\": %m", USAGE_FILE_TMP),
			 errdetail("%d rows of usage not written into mms.usage are lost.", n)));
	if (f)
		FreeFile(f);
	(void) unlink(USAGE_FILE_TMP);
}

/* A row read from the file may be restored: its strings end, its ids and counts are sane. */
static bool
row_is_sane(MmsUsageEntry *e)
{
	const uint64 *c = (const uint64 *) &e->c;

	e->name[NAMEDATALEN - 1] = '\0';
	if (!OidIsValid(e->key.dboid) || !OidIsValid(e->key.roleid) || e->key.model_id <= 0 ||
		e->version <= 0 || e->name[0] == '\0' || e->key.hour % USECS_PER_HOUR != 0)
		return false;
	for (int i = 0; i < (int) (sizeof(e->c) / sizeof(uint64)); i++)
		if (c[i] > (uint64) PG_INT64_MAX)
			return false;
	return true;
}

/* At the creation of the shared state, in the postmaster. */
void
mms_usage_file_read(void)
{
	UsageFileHeader h;
	struct stat st;
	FILE	   *f;
	uint32		bad = 0;

	f = AllocateFile(USAGE_FILE, PG_BINARY_R);
	if (f == NULL)
	{
		if (errno != ENOENT)
			ereport(LOG,
					(errcode_for_file_access(),
					 errmsg("mms: could not read usage file \"%s\": %m", USAGE_FILE)));
		return;
	}
	if (fstat(fileno(f), &st) != 0 || fread(&h, sizeof(h), 1, f) != 1 ||
		h.magic != USAGE_FILE_MAGIC || h.format != USAGE_FILE_FORMAT ||
		h.row_bytes != sizeof(MmsUsageEntry) || h.n_rows > USAGE_FILE_MAX_ROWS ||
		(uint64) st.st_size != sizeof(h) + (uint64) h.n_rows * sizeof(MmsUsageEntry))
	{
		ereport(LOG,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("mms: ignoring usage file \"%s\": it is not one this server wrote", USAGE_FILE)));
		goto done;
	}
	for (uint32 i = 0; i < h.n_rows; i++)
	{
		MmsUsageEntry e;

		if (fread(&e, sizeof(e), 1, f) != 1)
		{
			ereport(LOG,
					(errcode_for_file_access(),
					 errmsg("mms: could not read usage file \"%s\": %m", USAGE_FILE)));
			break;
		}
		if (row_is_sane(&e))
			mms_usage_restore(&e);
		else
			bad++;
	}
	if (bad > 0)
		ereport(LOG,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("mms: ignored %u malformed rows of usage file \"%s\"", bad, USAGE_FILE)));

done:
	FreeFile(f);
	/* read once: a later crash restart must not count these rows again */
	(void) unlink(USAGE_FILE);
}
