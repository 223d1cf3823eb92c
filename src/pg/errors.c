/*
 * errors.c — the border between engine errors and PostgreSQL errors: engine
 * status codes mapped to SQLSTATEs, and engine parse results tied to memory
 * contexts so that an ERROR never leaks the engine's malloc'd arrays.
 */
#include "postgres.h"

#include "utils/memutils.h"

#include "mms.h"

int
mms_engine_sqlstate(MmsStatus st)
{
	switch (st)
	{
		case MMS_OK:
			return ERRCODE_SUCCESSFUL_COMPLETION;
		case MMS_ERR_IO:
			return ERRCODE_IO_ERROR;
		case MMS_ERR_FORMAT:
			/* bytes that do not form a valid GGUF file */
			return ERRCODE_INVALID_BINARY_REPRESENTATION;
		case MMS_ERR_UNSUPPORTED:
			return ERRCODE_FEATURE_NOT_SUPPORTED;
		case MMS_ERR_MODEL:
		case MMS_ERR_ARG:
			return ERRCODE_INVALID_PARAMETER_VALUE;
		case MMS_ERR_NOMEM:
			return ERRCODE_OUT_OF_MEMORY;
		case MMS_ERR_LIMIT:
			return ERRCODE_PROGRAM_LIMIT_EXCEEDED;
		case MMS_ERR_CANCELLED:
			return ERRCODE_QUERY_CANCELED;
		case MMS_ERR_NUMERIC:
			/* NaN or infinity in the model's output: its weights are broken */
			return ERRCODE_FLOATING_POINT_EXCEPTION;
	}
	return ERRCODE_INTERNAL_ERROR;
}

typedef struct GgufHolder
{
	MmsGguf		g;
	MemoryContextCallback cb;
} GgufHolder;

static void
gguf_holder_free(void *arg)
{
	GgufHolder *h = (GgufHolder *) arg;

	mms_gguf_free(&h->g);
}

MmsGguf *
mms_gguf_parse_pg(const char *buf, Size size, MmsError *err)
{
	return mms_gguf_parse_prefix_pg(buf, size, size, err);
}

MmsGguf *
mms_gguf_parse_prefix_pg(const char *buf, Size avail, uint64 file_size, MmsError *err)
{
	GgufHolder *h = palloc0(sizeof(GgufHolder));
	MmsStatus	st = avail == file_size ? mms_gguf_parse(buf, avail, &h->g, err) :
		mms_gguf_parse_prefix(buf, avail, file_size, &h->g, err);

	if (st != MMS_OK)
	{
		pfree(h);
		return NULL;
	}
	/* nothing between the parse and the registration can ERROR */
	h->cb.func = gguf_holder_free;
	h->cb.arg = h;
	MemoryContextRegisterResetCallback(CurrentMemoryContext, &h->cb);
	return &h->g;
}
