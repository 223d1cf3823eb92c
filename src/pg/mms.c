/*
 * mms.c — the extension's entry point: module magic, _PG_init and the GUCs of
 * the registry. The SQL functions live in the files named after their concern
 * (register.c, manage.c, resolve.c, tokenize.c).
 */
#include "postgres.h"

#include <limits.h>

#include "fmgr.h"
#include "utils/guc.h"

#include "mms.h"

PG_MODULE_MAGIC;

/* Default cap: large enough for flan-t5-large in f32 (3.1 GB) with room to spare. */
int			mms_max_model_size_kb = 8 * 1024 * 1024;
int			mms_tokenizer_cache_size = 8;

void		_PG_init(void);

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

	MarkGUCPrefixReserved("mms");
}
