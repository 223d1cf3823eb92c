/*
 * mms_error.h — the engine's error convention: every fallible call returns an
 * MmsStatus and fills an MmsError. The extension maps codes to SQLSTATEs.
 * No engine function ever aborts, exits or asserts on input.
 */
#ifndef MMS_ERROR_H
#define MMS_ERROR_H

typedef enum MmsStatus
{
	MMS_OK = 0,
	MMS_ERR_IO = 1,				/* file could not be opened or read */
	MMS_ERR_FORMAT = 2,			/* malformed file: bad magic, truncated, bad offset */
	MMS_ERR_UNSUPPORTED = 3,	/* well-formed but not something we serve (version, arch, type) */
	MMS_ERR_MODEL = 4,			/* model incomplete: missing tensor, wrong shape, bad hparam */
	MMS_ERR_NOMEM = 5,			/* allocation failed or a size would overflow */
	MMS_ERR_ARG = 6,			/* bad argument from the caller (option out of range, bad id) */
	MMS_ERR_LIMIT = 7,			/* request exceeds a configured or structural limit */
	MMS_ERR_CANCELLED = 8,		/* request was cancelled by its caller */
	MMS_ERR_NUMERIC = 9			/* model produced non-finite values (NaN/inf weights) */
} MmsStatus;

#define MMS_ERRMSG_LEN 256

typedef struct MmsError
{
	MmsStatus	code;
	char		msg[MMS_ERRMSG_LEN];	/* lower-case, no trailing period */
} MmsError;

/* Sets err (if not NULL) and returns code, so callers can `return mms_fail(...)`. */
MmsStatus	mms_fail(MmsError *err, MmsStatus code, const char *fmt,...)
			__attribute__((format(printf, 3, 4)));

const char *mms_status_name(MmsStatus code);

#endif
