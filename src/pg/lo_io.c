/*
 * lo_io.c — model bytes in and out: large objects read and written in chunks
 * through the backend's lo_* layer (which checks large-object privileges for
 * the current user and cleans up at transaction end), server files, the size
 * cap, and sha256 over what was read. Whose rights apply is the caller's
 * choice: these functions use the current user.
 */
#include "postgres.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/cryptohash.h"
#include "libpq/be-fsstubs.h"
#include "libpq/libpq-fs.h"
#include "miscadmin.h"
#include "storage/fd.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/memutils.h"

#include "mms.h"

/* 1 MB: 512 pg_largeobject pages per call, few enough syscalls for files. */
#define IO_CHUNK_BYTES (1024 * 1024)

void
mms_check_model_size(int64 size_bytes)
{
	int64		cap = (int64) mms_max_model_size_kb * 1024;

	if (size_bytes > cap)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("model file of " INT64_FORMAT " bytes exceeds mms.max_model_size (" INT64_FORMAT " bytes)",
						size_bytes, cap),
				 errhint("A superuser can raise mms.max_model_size.")));
}

static pg_cryptohash_ctx *
sha_begin(void)
{
	pg_cryptohash_ctx *ctx = pg_cryptohash_create(PG_SHA256);

	if (ctx == NULL || pg_cryptohash_init(ctx) < 0)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("could not initialize sha256")));
	return ctx;
}

static void
sha_update(pg_cryptohash_ctx *ctx, const char *buf, Size n)
{
	if (pg_cryptohash_update(ctx, (const uint8 *) buf, n) < 0)
		elog(ERROR, "could not update sha256: %s", pg_cryptohash_error(ctx));
}

static void
sha_end(pg_cryptohash_ctx *ctx, char *hex_out)
{
	uint8		digest[32];

	if (pg_cryptohash_final(ctx, digest, sizeof(digest)) < 0)
		elog(ERROR, "could not finish sha256: %s", pg_cryptohash_error(ctx));
	pg_cryptohash_free(ctx);
	hex_encode((const char *) digest, sizeof(digest), hex_out);
	hex_out[64] = '\0';
}

/*
 * Reads the first max_bytes (-1: all, within mms.max_model_size) of a large
 * object with the current user's rights, into memory of cxt, hashing what it
 * reads when sha is not NULL.
 */
static char *
read_large_object(Oid loid, int64 max_bytes, pg_cryptohash_ctx *sha, MemoryContext cxt, Size *size,
				  char *into)
{
	/* be_lo_open checks SELECT on the large object for the current user */
	int32		fd = DatumGetInt32(DirectFunctionCall2(be_lo_open, ObjectIdGetDatum(loid),
													   Int32GetDatum(INV_READ)));
	int64		len = DatumGetInt64(DirectFunctionCall3(be_lo_lseek64, Int32GetDatum(fd),
														Int64GetDatum(0), Int32GetDatum(SEEK_END)));
	char	   *buf;
	int64		done = 0;

	if (max_bytes < 0)
		mms_check_model_size(len);
	else
		len = Min(len, max_bytes);
	(void) DirectFunctionCall3(be_lo_lseek64, Int32GetDatum(fd), Int64GetDatum(0),
							   Int32GetDatum(SEEK_SET));
	if (into != NULL && len != max_bytes)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("large object %u has " INT64_FORMAT " bytes, not the " INT64_FORMAT " registered",
						loid, len, max_bytes)));
	buf = into ? into : MemoryContextAllocHuge(cxt, len > 0 ? (Size) len : 1);
	while (done < len)
	{
		int			want = (int) Min(len - done, IO_CHUNK_BYTES);
		int			got;

		CHECK_FOR_INTERRUPTS();
		got = lo_read(fd, buf + done, want);
		if (got <= 0)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("large object %u ended after " INT64_FORMAT " of " INT64_FORMAT " bytes",
							loid, done, len)));
		if (sha)
			sha_update(sha, buf + done, got);
		done += got;
	}
	(void) DirectFunctionCall1(be_lo_close, Int32GetDatum(fd));
	*size = (Size) len;
	return buf;
}

char *
mms_lo_read_all(Oid loid, Size *size, char *sha_out)
{
	pg_cryptohash_ctx *sha = sha_begin();
	char	   *buf = read_large_object(loid, -1, sha, CurrentMemoryContext, size, NULL);

	sha_end(sha, sha_out);
	return buf;
}

char *
mms_file_read_all(const char *path, Size *size, char *sha_out)
{
	int			fd = OpenTransientFile(path, O_RDONLY | PG_BINARY);
	struct stat st;
	pg_cryptohash_ctx *sha;
	char	   *buf;
	Size		done = 0;

	if (fd < 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not open file \"%s\" for reading: %m", path)));
	if (fstat(fd, &st) < 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not stat file \"%s\": %m", path)));
	if (!S_ISREG(st.st_mode))
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("\"%s\" is not a regular file", path)));
	mms_check_model_size((int64) st.st_size);
	buf = MemoryContextAllocHuge(CurrentMemoryContext, st.st_size > 0 ? (Size) st.st_size : 1);
	sha = sha_begin();
	while (done < (Size) st.st_size)
	{
		Size		want = Min((Size) st.st_size - done, IO_CHUNK_BYTES);
		ssize_t		got;

		CHECK_FOR_INTERRUPTS();
		got = read(fd, buf + done, want);
		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0)
			ereport(ERROR,
					(errcode_for_file_access(),
					 errmsg("could not read file \"%s\": %m", path)));
		if (got == 0)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("file \"%s\" shrank while being read", path)));
		sha_update(sha, buf + done, (Size) got);
		done += (Size) got;
	}
	if (CloseTransientFile(fd) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not close file \"%s\": %m", path)));
	sha_end(sha, sha_out);
	*size = done;
	return buf;
}

Oid
mms_lo_create_from(const char *buf, Size size)
{
	Oid			loid = DatumGetObjectId(DirectFunctionCall1(be_lo_create,
															ObjectIdGetDatum(InvalidOid)));
	int32		fd = DatumGetInt32(DirectFunctionCall2(be_lo_open, ObjectIdGetDatum(loid),
													   Int32GetDatum(INV_WRITE)));
	Size		done = 0;

	while (done < size)
	{
		int			want = (int) Min(size - done, IO_CHUNK_BYTES);

		CHECK_FOR_INTERRUPTS();
		if (lo_write(fd, buf + done, want) != want)
			elog(ERROR, "short write to large object %u", loid);
		done += want;
	}
	(void) DirectFunctionCall1(be_lo_close, Int32GetDatum(fd));
	return loid;
}

void
mms_lo_unlink(Oid loid)
{
	(void) DirectFunctionCall1(be_lo_unlink, ObjectIdGetDatum(loid));
}

static void
check_sha(const MmsModel *m, const char *sha)
{
	if (strcmp(sha, m->sha256) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("stored weights of model \"%s:%d\" do not match their sha256", m->name, m->version),
				 errdetail("Large object %u has sha256 %s; the registry recorded %s.",
						   m->weights, sha, m->sha256)));
}

void
mms_read_weights_into(const MmsModel *m, char *dst)
{
	MmsCatalogSession s;
	char		sha[65];
	Size		size;
	pg_cryptohash_ctx *ctx;

	/* straight into dst (a shared segment): no private copy of the weights */
	mms_catalog_enter(&s);
	ctx = sha_begin();
	(void) read_large_object(m->weights, m->size_bytes, ctx, s.caller_cxt, &size, dst);
	sha_end(ctx, sha);
	mms_catalog_leave(&s);
	check_sha(m, sha);
}

char *
mms_read_weights_prefix(const MmsModel *m, Size want, Size *got)
{
	MmsCatalogSession s;
	char	   *buf;

	/* the weights belong to the registry owner: read them with its rights */
	mms_catalog_enter(&s);
	buf = read_large_object(m->weights, (int64) want, NULL, s.caller_cxt, got, NULL);
	mms_catalog_leave(&s);
	return buf;
}
