/*
 * mms_error.c — formatting of engine errors. Owns nothing else.
 */
#include "mms_error.h"

#include <stdarg.h>
#include <stdio.h>

MmsStatus
mms_fail(MmsError *err, MmsStatus code, const char *fmt,...)
{
	if (err != NULL)
	{
		va_list		ap;

		err->code = code;
		va_start(ap, fmt);
		vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
		va_end(ap);
	}
	return code;
}

const char *
mms_status_name(MmsStatus code)
{
	switch (code)
	{
		case MMS_OK:
			return "ok";
		case MMS_ERR_IO:
			return "io error";
		case MMS_ERR_FORMAT:
			return "malformed file";
		case MMS_ERR_UNSUPPORTED:
			return "unsupported";
		case MMS_ERR_MODEL:
			return "invalid model";
		case MMS_ERR_NOMEM:
			return "out of memory";
		case MMS_ERR_ARG:
			return "invalid argument";
		case MMS_ERR_LIMIT:
			return "limit exceeded";
		case MMS_ERR_CANCELLED:
			return "cancelled";
		case MMS_ERR_NUMERIC:
			return "model produced non-finite values";
	}
	return "unknown error";
}
