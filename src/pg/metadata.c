/*
 * metadata.c — a GGUF file's key/value metadata as jsonb for the catalog's
 * metadata column. Arrays longer than MAX_INLINE_ARRAY and the tokenizer's
 * vocabulary arrays become {"type": "array", "element_type": ..., "length": N}
 * summaries, so a row stays small; the file itself keeps the full values.
 */
#include "postgres.h"

#include <math.h>

#include "common/shortest_dec.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "utils/fmgrprotos.h"
#include "utils/json.h"

#include "mms.h"

#define MAX_INLINE_ARRAY 64
/* Longer strings (none in a T5 file) are replaced by their length. */
#define MAX_INLINE_STRING (64 * 1024)

/* Always summarized, whatever their length: they hold the vocabulary. */
static const char *const vocab_arrays[] = {
	"tokenizer.ggml.tokens",
	"tokenizer.ggml.scores",
	"tokenizer.ggml.token_type",
	"tokenizer.ggml.precompiled_charsmap",
	"tokenizer.ggml.merges",
};

static const char *
type_name(MmsGgufType t)
{
	static const char *const names[] = {
		"u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64"
	};

	return (unsigned) t < lengthof(names) ? names[t] : "unknown";
}

/*
 * GGUF strings are UTF-8 by specification but unchecked bytes in practice.
 * Valid text is kept; otherwise, and in a database whose encoding cannot be
 * trusted to hold it, bytes outside printable ASCII become '?', so that a
 * registration never fails on a cosmetic key.
 */
static void
append_json_str(StringInfo out, const char *s, uint64 len)
{
	char	   *copy;
	bool		keep;

	if (len > MAX_INLINE_STRING)
	{
		appendStringInfo(out, "\"<string of " UINT64_FORMAT " bytes>\"", len);
		return;
	}
	copy = palloc(len + 1);
	keep = memchr(s, '\0', len) == NULL && pg_verify_mbstr(PG_UTF8, s, (int) len, true);
	memcpy(copy, s, len);
	copy[len] = '\0';
	if (keep && GetDatabaseEncoding() != PG_UTF8)
	{
		for (uint64 i = 0; i < len; i++)
			if ((unsigned char) copy[i] >= 0x80)
				keep = false;
	}
	if (!keep)
	{
		for (uint64 i = 0; i < len; i++)
			if ((unsigned char) copy[i] >= 0x80 || copy[i] == '\0')
				copy[i] = '?';
	}
	escape_json(out, copy);
	pfree(copy);
}

static void
append_float(StringInfo out, double v, bool is_f32)
{
	char		buf[64];

	if (isnan(v) || isinf(v))
	{
		/* JSON has no literal for these */
		appendStringInfo(out, "\"%s\"", isnan(v) ? "NaN" : (v > 0 ? "Infinity" : "-Infinity"));
		return;
	}
	/* shortest text that reads back to the same f32 or f64 */
	if (is_f32)
		float_to_shortest_decimal_buf((float) v, buf);
	else
		double_to_shortest_decimal_buf(v, buf);
	appendStringInfoString(out, buf);
}

static void
append_scalar_kv(StringInfo out, const MmsGgufKV *kv)
{
	switch (kv->type)
	{
		case MMS_GGUF_U8:
		case MMS_GGUF_U16:
		case MMS_GGUF_U32:
		case MMS_GGUF_U64:
			appendStringInfo(out, UINT64_FORMAT, (uint64) kv->v.u);
			break;
		case MMS_GGUF_I8:
		case MMS_GGUF_I16:
		case MMS_GGUF_I32:
		case MMS_GGUF_I64:
			appendStringInfo(out, INT64_FORMAT, (int64) kv->v.i);
			break;
		case MMS_GGUF_F32:
		case MMS_GGUF_F64:
			append_float(out, kv->v.f, kv->type == MMS_GGUF_F32);
			break;
		case MMS_GGUF_BOOL:
			appendStringInfoString(out, kv->v.u ? "true" : "false");
			break;
		case MMS_GGUF_STRING:
			append_json_str(out, kv->v.s.ptr, kv->v.s.len);
			break;
		default:
			appendStringInfoString(out, "null");
			break;
	}
}

/* One array element, read little-endian from the file's bytes. */
static void
append_array_elem(StringInfo out, const MmsGgufKV *kv, uint64 i)
{
	const uint8 *p;
	MmsGgufKV	e;
	uint64		u = 0;
	int			width;

	if (kv->arr_type == MMS_GGUF_STRING)
	{
		append_json_str(out, kv->arr_str[i].ptr, kv->arr_str[i].len);
		return;
	}
	switch (kv->arr_type)
	{
		case MMS_GGUF_U8:
		case MMS_GGUF_I8:
		case MMS_GGUF_BOOL:
			width = 1;
			break;
		case MMS_GGUF_U16:
		case MMS_GGUF_I16:
			width = 2;
			break;
		case MMS_GGUF_U32:
		case MMS_GGUF_I32:
		case MMS_GGUF_F32:
			width = 4;
			break;
		default:
			width = 8;
			break;
	}
	p = kv->arr_data + i * width;
	for (int b = width - 1; b >= 0; b--)
		u = (u << 8) | p[b];

	memset(&e, 0, sizeof(e));
	e.type = kv->arr_type;
	switch (kv->arr_type)
	{
		case MMS_GGUF_I8:
			e.v.i = (int8) u;
			break;
		case MMS_GGUF_I16:
			e.v.i = (int16) u;
			break;
		case MMS_GGUF_I32:
			e.v.i = (int32) u;
			break;
		case MMS_GGUF_I64:
			e.v.i = (int64) u;
			break;
		case MMS_GGUF_F32:
			{
				uint32		bits = (uint32) u;
				float		f;

				memcpy(&f, &bits, sizeof(f));
				e.v.f = f;
				break;
			}
		case MMS_GGUF_F64:
			memcpy(&e.v.f, &u, sizeof(e.v.f));
			break;
		default:
			e.v.u = u;
			break;
	}
	append_scalar_kv(out, &e);
}

static bool
is_vocab_array(const MmsGgufKV *kv)
{
	for (int i = 0; i < lengthof(vocab_arrays); i++)
		if (mms_gguf_str_eq(kv->key, vocab_arrays[i]))
			return true;
	return false;
}

Datum
mms_gguf_metadata_jsonb(const MmsGguf *g)
{
	StringInfoData out;

	initStringInfo(&out);
	appendStringInfoChar(&out, '{');
	for (uint64 k = 0; k < g->n_kv; k++)
	{
		const MmsGgufKV *kv = &g->kv[k];

		if (k > 0)
			appendStringInfoString(&out, ", ");
		append_json_str(&out, kv->key.ptr, kv->key.len);
		appendStringInfoString(&out, ": ");
		if (kv->type != MMS_GGUF_ARRAY)
			append_scalar_kv(&out, kv);
		else if (kv->arr_n > MAX_INLINE_ARRAY || is_vocab_array(kv))
			appendStringInfo(&out, "{\"type\": \"array\", \"element_type\": \"%s\", \"length\": " UINT64_FORMAT "}",
							 type_name(kv->arr_type), (uint64) kv->arr_n);
		else
		{
			appendStringInfoChar(&out, '[');
			for (uint64 i = 0; i < kv->arr_n; i++)
			{
				if (i > 0)
					appendStringInfoString(&out, ", ");
				append_array_elem(&out, kv, i);
			}
			appendStringInfoChar(&out, ']');
		}
	}
	appendStringInfoChar(&out, '}');
	return DirectFunctionCall1(jsonb_in, CStringGetDatum(out.data));
}
