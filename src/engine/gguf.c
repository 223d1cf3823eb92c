/*
 * gguf.c — GGUF v2/v3 parser over a caller-owned buffer, and the metadata
 * lookups and getters. Every count, length, offset and dimension read from the
 * file is checked before use; tensor types and dequantization are quant.c's.
 */
#include "gguf.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Element cap per tensor: 2^40 f32 would already be 4 TB. */
#define GGUF_MAX_ELEMS (UINT64_C(1) << 40)

/*
 * Smallest possible encodings, used to reject absurd counts before anything
 * is allocated: a metadata pair is a non-empty key (u64 length + 1 byte), a
 * u32 type and a 1-byte value; a tensor info is a non-empty name, u32 n_dims,
 * one u64 dimension, u32 type and u64 offset.
 */
#define GGUF_MIN_KV_BYTES (8 + 1 + 4 + 1)
#define GGUF_MIN_TENSOR_BYTES (8 + 1 + 4 + 8 + 4 + 8)

/* Longest name quoted in an error message, in bytes. */
#define GGUF_SHOW_NAME 64

typedef struct Reader
{
	const uint8_t *buf;
	size_t		size;
	size_t		pos;
	MmsError   *err;
	char		where[GGUF_SHOW_NAME + 48];	/* item being read, for messages */
} Reader;

typedef struct TensorSpan
{
	uint64_t	start;
	uint64_t	end;
	uint64_t	index;
} TensorSpan;

/*
 * Copies a name from the file into dst for an error message: at most
 * GGUF_SHOW_NAME bytes, anything outside printable ASCII shown as '?', so a
 * hostile file cannot put invalid UTF-8 or control bytes into our messages.
 */
static void
show_name(char *dst, size_t dstsize, const char *p, uint64_t len)
{
	size_t		n = 0;
	uint64_t	i;

	for (i = 0; i < len && i < GGUF_SHOW_NAME && n + 4 < dstsize; i++)
	{
		unsigned char c = (unsigned char) p[i];

		dst[n++] = (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') ? (char) c : '?';
	}
	if (i < len && n + 4 < dstsize)
	{
		memcpy(dst + n, "...", 3);
		n += 3;
	}
	dst[n] = '\0';
}

static const char *
value_type_name(uint32_t t)
{
	static const char *const names[] = {
		"u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string",
		"array", "u64", "i64", "f64"
	};

	if (t < sizeof(names) / sizeof(names[0]))
		return names[t];
	return "unknown";
}

/* Encoded size of one scalar element; 0 for strings, arrays and unknown types. */
static size_t
value_type_size(uint32_t t)
{
	switch (t)
	{
		case MMS_GGUF_U8:
		case MMS_GGUF_I8:
		case MMS_GGUF_BOOL:
			return 1;
		case MMS_GGUF_U16:
		case MMS_GGUF_I16:
			return 2;
		case MMS_GGUF_U32:
		case MMS_GGUF_I32:
		case MMS_GGUF_F32:
			return 4;
		case MMS_GGUF_U64:
		case MMS_GGUF_I64:
		case MMS_GGUF_F64:
			return 8;
	}
	return 0;
}

/* ggml's names for the types we refuse, so the message says what it was. */
static const char *
ggml_type_name(uint32_t t)
{
	static const char *const names[] = {
		"f32", "f16", "q4_0", "q4_1", "q4_2", "q4_3", "q5_0", "q5_1", "q8_0",
		"q8_1", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "q8_k", "iq2_xxs",
		"iq2_xs", "iq3_xxs", "iq1_s", "iq4_nl", "iq3_s", "iq2_s", "iq4_xs",
		"i8", "i16", "i32", "i64", "f64", "iq1_m", "bf16", "q4_0_4_4",
		"q4_0_4_8", "q4_0_8_8", "tq1_0", "tq2_0", "iq4_nl_4_4", "iq4_nl_4_8",
		"iq4_nl_8_8", "mxfp4"
	};

	if (t < sizeof(names) / sizeof(names[0]))
		return names[t];
	return "unknown";
}

/* ---- bounds-checked reads --------------------------------------------- */

static MmsStatus
truncated(Reader *r, const char *what, uint64_t need)
{
	return mms_fail(r->err, MMS_ERR_FORMAT,
					"file is truncated: %s of %s at offset %zu needs %" PRIu64
					" bytes, only %zu remain",
					what, r->where, r->pos, need, r->size - r->pos);
}

static MmsStatus
read_bytes(Reader *r, const char *what, size_t n, const uint8_t **p)
{
	if (n > r->size - r->pos)
		return truncated(r, what, n);
	*p = r->buf + r->pos;
	r->pos += n;
	return MMS_OK;
}

/* Little-endian loads from unaligned bytes; compilers turn these into one load. */
static uint32_t
load_u32(const uint8_t *p)
{
	return (uint32_t) p[0] | (uint32_t) p[1] << 8 | (uint32_t) p[2] << 16 |
		(uint32_t) p[3] << 24;
}

static uint64_t
load_u64(const uint8_t *p)
{
	return (uint64_t) load_u32(p) | (uint64_t) load_u32(p + 4) << 32;
}

static MmsStatus
read_u32(Reader *r, const char *what, uint32_t *v)
{
	const uint8_t *p = NULL;
	MmsStatus	st = read_bytes(r, what, 4, &p);

	if (st != MMS_OK)
		return st;
	*v = load_u32(p);
	return MMS_OK;
}

static MmsStatus
read_u64(Reader *r, const char *what, uint64_t *v)
{
	const uint8_t *p = NULL;
	MmsStatus	st = read_bytes(r, what, 8, &p);

	if (st != MMS_OK)
		return st;
	*v = load_u64(p);
	return MMS_OK;
}

static MmsStatus
read_str(Reader *r, const char *what, MmsGgufStr *s)
{
	uint64_t	len;
	MmsStatus	st = read_u64(r, what, &len);

	if (st != MMS_OK)
		return st;
	if (len > r->size - r->pos)
		return mms_fail(r->err, MMS_ERR_FORMAT,
						"%s of %s has length %" PRIu64 " at offset %zu, "
						"past the end of the file (%zu bytes)",
						what, r->where, len, r->pos - 8, r->size);
	s->ptr = (const char *) (r->buf + r->pos);
	s->len = len;
	r->pos += (size_t) len;
	return MMS_OK;
}

/* ---- metadata ----------------------------------------------------------- */

/* Reads one scalar of type t (not an array) into kv->v. */
static MmsStatus
read_scalar(Reader *r, uint32_t t, MmsGgufKV *kv)
{
	const uint8_t *p = NULL;
	size_t		n = value_type_size(t);
	MmsStatus	st;

	if (t == MMS_GGUF_STRING)
		return read_str(r, "string value", &kv->v.s);
	st = read_bytes(r, "value", n, &p);
	if (st != MMS_OK)
		return st;
	switch (t)
	{
		case MMS_GGUF_U8:
			kv->v.u = p[0];
			break;
		case MMS_GGUF_BOOL:
			if (p[0] > 1)
				return mms_fail(r->err, MMS_ERR_FORMAT,
								"%s has bool value %u at offset %zu (must be 0 or 1)",
								r->where, p[0], r->pos - 1);
			kv->v.u = p[0];
			break;
		case MMS_GGUF_I8:
			kv->v.i = (int8_t) p[0];
			break;
		case MMS_GGUF_U16:
			kv->v.u = (uint16_t) (p[0] | p[1] << 8);
			break;
		case MMS_GGUF_I16:
			kv->v.i = (int16_t) (uint16_t) (p[0] | p[1] << 8);
			break;
		case MMS_GGUF_U32:
			kv->v.u = load_u32(p);
			break;
		case MMS_GGUF_I32:
			kv->v.i = (int32_t) load_u32(p);
			break;
		case MMS_GGUF_F32:
			{
				float		f;

				memcpy(&f, p, 4);
				kv->v.f = f;
				break;
			}
		case MMS_GGUF_U64:
			kv->v.u = load_u64(p);
			break;
		case MMS_GGUF_I64:
			kv->v.i = (int64_t) load_u64(p);
			break;
		case MMS_GGUF_F64:
			memcpy(&kv->v.f, p, 8);
			break;
	}
	return MMS_OK;
}

static MmsStatus
read_array(Reader *r, MmsGgufKV *kv)
{
	uint32_t	et;
	uint64_t	n;
	size_t		esize;
	MmsStatus	st;

	if ((st = read_u32(r, "array element type", &et)) != MMS_OK)
		return st;
	if (et == MMS_GGUF_ARRAY)
		return mms_fail(r->err, MMS_ERR_UNSUPPORTED,
						"%s is an array of arrays, which is not supported", r->where);
	if (et > MMS_GGUF_F64)
		return mms_fail(r->err, MMS_ERR_FORMAT,
						"%s is an array of unknown value type %" PRIu32, r->where, et);
	if ((st = read_u64(r, "array length", &n)) != MMS_OK)
		return st;
	kv->arr_type = (MmsGgufType) et;
	kv->arr_n = n;
	kv->arr_data = r->buf + r->pos;

	if (et == MMS_GGUF_STRING)
	{
		uint64_t	i;

		/* each string is at least its u64 length */
		if (n > (r->size - r->pos) / 8)
			return mms_fail(r->err, MMS_ERR_FORMAT,
							"%s claims %" PRIu64 " strings, more than the %zu "
							"bytes left in the file can hold",
							r->where, n, r->size - r->pos);
		if (n > SIZE_MAX / sizeof(MmsGgufStr))
			return mms_fail(r->err, MMS_ERR_NOMEM, "%s: array too large", r->where);
		if (n > 0)
		{
			kv->arr_str = malloc((size_t) n * sizeof(MmsGgufStr));
			if (kv->arr_str == NULL)
				return mms_fail(r->err, MMS_ERR_NOMEM,
								"out of memory for %" PRIu64 " strings of %s",
								n, r->where);
		}
		for (i = 0; i < n; i++)
		{
			if ((st = read_str(r, "array string", &kv->arr_str[i])) != MMS_OK)
				return st;
		}
		return MMS_OK;
	}

	esize = value_type_size(et);
	if (n > (r->size - r->pos) / esize)
		return mms_fail(r->err, MMS_ERR_FORMAT,
						"%s: array of %" PRIu64 " %s elements at offset %zu "
						"extends past the end of the file (%zu bytes)",
						r->where, n, value_type_name(et), r->pos, r->size);
	if (et == MMS_GGUF_BOOL)
	{
		uint64_t	i;

		for (i = 0; i < n; i++)
		{
			if (kv->arr_data[i] > 1)
				return mms_fail(r->err, MMS_ERR_FORMAT,
								"%s has bool value %u in element %" PRIu64
								" (must be 0 or 1)",
								r->where, kv->arr_data[i], i);
		}
	}
	r->pos += (size_t) (n * esize);
	return MMS_OK;
}

static MmsStatus
read_kv(Reader *r, uint64_t index, MmsGgufKV *kv)
{
	uint32_t	t;
	MmsStatus	st;
	char		name[GGUF_SHOW_NAME + 8];

	snprintf(r->where, sizeof(r->where), "metadata key %" PRIu64, index);
	if ((st = read_str(r, "name", &kv->key)) != MMS_OK)
		return st;
	if (kv->key.len == 0)
		return mms_fail(r->err, MMS_ERR_FORMAT,
						"metadata key %" PRIu64 " at offset %zu has an empty name",
						index, r->pos - 8);
	show_name(name, sizeof(name), kv->key.ptr, kv->key.len);
	snprintf(r->where, sizeof(r->where), "metadata key \"%s\"", name);

	if ((st = read_u32(r, "value type", &t)) != MMS_OK)
		return st;
	if (t > MMS_GGUF_F64)
		return mms_fail(r->err, MMS_ERR_FORMAT,
						"%s has unknown value type %" PRIu32 " at offset %zu",
						r->where, t, r->pos - 4);
	kv->type = (MmsGgufType) t;
	if (t == MMS_GGUF_ARRAY)
		return read_array(r, kv);
	return read_scalar(r, t, kv);
}

static int
cmp_str(const void *a, const void *b)
{
	const MmsGgufStr *x = a;
	const MmsGgufStr *y = b;

	if (x->len != y->len)
		return x->len < y->len ? -1 : 1;
	return memcmp(x->ptr, y->ptr, (size_t) x->len);
}

/*
 * Finds a repeated name among n strings by sorting a copy (n can be large in
 * a hostile file, so no quadratic scan). Returns the duplicate or NULL; sets
 * *nomem on allocation failure.
 */
static const MmsGgufStr *
find_duplicate(const MmsGgufStr *names, uint64_t n, size_t stride,
			   MmsGgufStr *dup, int *nomem)
{
	MmsGgufStr *tmp;
	uint64_t	i;
	const MmsGgufStr *found = NULL;

	*nomem = 0;
	if (n < 2)
		return NULL;
	tmp = malloc((size_t) n * sizeof(MmsGgufStr));
	if (tmp == NULL)
	{
		*nomem = 1;
		return NULL;
	}
	for (i = 0; i < n; i++)
		memcpy(&tmp[i], (const char *) names + i * stride, sizeof(MmsGgufStr));
	qsort(tmp, (size_t) n, sizeof(MmsGgufStr), cmp_str);
	for (i = 1; i < n; i++)
	{
		if (cmp_str(&tmp[i - 1], &tmp[i]) == 0)
		{
			*dup = tmp[i];
			found = dup;
			break;
		}
	}
	free(tmp);
	return found;
}

static MmsStatus
read_alignment(const MmsGguf *g, uint64_t *alignment, MmsError *err)
{
	const MmsGgufKV *kv = mms_gguf_find_kv(g, "general.alignment");

	*alignment = MMS_GGUF_DEFAULT_ALIGNMENT;
	if (kv == NULL)
		return MMS_OK;
	if (kv->type != MMS_GGUF_U32)
		return mms_fail(err, MMS_ERR_FORMAT,
						"general.alignment has type %s, expected u32",
						value_type_name(kv->type));
	if (kv->v.u == 0 || (kv->v.u & (kv->v.u - 1)) != 0)
		return mms_fail(err, MMS_ERR_FORMAT,
						"general.alignment is %" PRIu64 ", must be a nonzero power of two",
						kv->v.u);
	*alignment = kv->v.u;
	return MMS_OK;
}

/* ---- tensor infos ------------------------------------------------------- */

static MmsStatus
read_tensor_info(Reader *r, uint64_t index, uint64_t alignment, MmsGgufTensor *t)
{
	uint32_t	n_dims;
	uint32_t	type;
	uint32_t	d;
	uint32_t	block;
	MmsStatus	st;
	char		name[GGUF_SHOW_NAME + 8];

	snprintf(r->where, sizeof(r->where), "tensor %" PRIu64, index);
	if ((st = read_str(r, "name", &t->name)) != MMS_OK)
		return st;
	if (t->name.len == 0)
		return mms_fail(r->err, MMS_ERR_FORMAT,
						"tensor %" PRIu64 " at offset %zu has an empty name",
						index, r->pos - 8);
	show_name(name, sizeof(name), t->name.ptr, t->name.len);
	snprintf(r->where, sizeof(r->where), "tensor \"%s\"", name);

	if ((st = read_u32(r, "dimension count", &n_dims)) != MMS_OK)
		return st;
	if (n_dims < 1 || n_dims > MMS_GGUF_MAX_DIMS)
		return mms_fail(r->err, MMS_ERR_FORMAT,
						"%s has %" PRIu32 " dimensions (must be 1 to %d)",
						r->where, n_dims, MMS_GGUF_MAX_DIMS);
	t->n_dims = n_dims;
	t->n_elems = 1;
	for (d = 0; d < MMS_GGUF_MAX_DIMS; d++)
		t->ne[d] = 1;
	for (d = 0; d < n_dims; d++)
	{
		if ((st = read_u64(r, "dimension", &t->ne[d])) != MMS_OK)
			return st;
		if (t->ne[d] == 0)
			return mms_fail(r->err, MMS_ERR_FORMAT,
							"%s has size 0 in dimension %" PRIu32, r->where, d);
		if (t->ne[d] > GGUF_MAX_ELEMS / t->n_elems)
			return mms_fail(r->err, MMS_ERR_FORMAT,
							"%s has too many elements (more than 2^40)", r->where);
		t->n_elems *= t->ne[d];
	}

	if ((st = read_u32(r, "type", &type)) != MMS_OK)
		return st;
	if (!mms_tensor_type_supported(type))
		return mms_fail(r->err, MMS_ERR_UNSUPPORTED,
						"%s has unsupported type %" PRIu32 " (%s); supported are "
						"f32, f16, bf16, q8_0 and q4_0",
						r->where, type, ggml_type_name(type));
	t->type = (MmsTensorType) type;
	block = mms_tensor_type_block(t->type);
	if (t->ne[0] % block != 0)
		return mms_fail(r->err, MMS_ERR_FORMAT,
						"%s of type %s has %" PRIu64 " elements in dimension 0, "
						"not a multiple of the block size %" PRIu32,
						r->where, mms_tensor_type_name(t->type), t->ne[0], block);
	t->n_bytes = mms_tensor_type_bytes(t->type, t->n_elems);

	if ((st = read_u64(r, "data offset", &t->offset)) != MMS_OK)
		return st;
	if (t->offset % alignment != 0)
		return mms_fail(r->err, MMS_ERR_FORMAT,
						"%s data offset %" PRIu64 " is not a multiple of the "
						"alignment %" PRIu64,
						r->where, t->offset, alignment);
	return MMS_OK;
}

static int
cmp_span(const void *a, const void *b)
{
	const TensorSpan *x = a;
	const TensorSpan *y = b;

	if (x->start != y->start)
		return x->start < y->start ? -1 : 1;
	return (x->index > y->index) - (x->index < y->index);
}

/* Checks that every tensor lies inside the file and that none overlap. */
static MmsStatus
check_tensor_data(MmsGguf *g, MmsError *err)
{
	uint64_t	avail;
	uint64_t	i;
	TensorSpan *spans;
	char		a[GGUF_SHOW_NAME + 8];
	char		b[GGUF_SHOW_NAME + 8];

	if (g->n_tensors == 0)
		return MMS_OK;
	/* bounds are those of the whole file; a prefix parse may hold less of it */
	if (g->data_offset > g->file_size)
		return mms_fail(err, MMS_ERR_FORMAT,
						"tensor data section starts at offset %" PRIu64
						", past the end of the file (%" PRIu64 " bytes)",
						g->data_offset, g->file_size);
	avail = g->file_size - g->data_offset;
	for (i = 0; i < g->n_tensors; i++)
	{
		MmsGgufTensor *t = &g->tensors[i];

		if (t->offset > avail || t->n_bytes > avail - t->offset)
		{
			show_name(a, sizeof(a), t->name.ptr, t->name.len);
			return mms_fail(err, MMS_ERR_FORMAT,
							"tensor \"%s\" data (offset %" PRIu64 ", %" PRIu64
							" bytes) extends past the end of the file (%" PRIu64 " bytes)",
							a, t->offset, t->n_bytes, g->file_size);
		}
		/* in the buffer only when the whole tensor is: else NULL (header-only parse) */
		if (g->data_offset <= g->size && t->offset <= g->size - g->data_offset &&
			t->n_bytes <= g->size - g->data_offset - t->offset)
			t->data = g->buf + g->data_offset + t->offset;
		else
			t->data = NULL;
	}

	if (g->n_tensors < 2)
		return MMS_OK;
	spans = malloc((size_t) g->n_tensors * sizeof(TensorSpan));
	if (spans == NULL)
		return mms_fail(err, MMS_ERR_NOMEM, "out of memory checking %" PRIu64 " tensors",
						g->n_tensors);
	for (i = 0; i < g->n_tensors; i++)
	{
		spans[i].start = g->tensors[i].offset;
		spans[i].end = g->tensors[i].offset + g->tensors[i].n_bytes;
		spans[i].index = i;
	}
	qsort(spans, (size_t) g->n_tensors, sizeof(TensorSpan), cmp_span);
	for (i = 1; i < g->n_tensors; i++)
	{
		if (spans[i].start < spans[i - 1].end)
		{
			const MmsGgufTensor *x = &g->tensors[spans[i - 1].index];
			const MmsGgufTensor *y = &g->tensors[spans[i].index];

			show_name(a, sizeof(a), x->name.ptr, x->name.len);
			show_name(b, sizeof(b), y->name.ptr, y->name.len);
			free(spans);
			return mms_fail(err, MMS_ERR_FORMAT,
							"tensors \"%s\" (offset %" PRIu64 ", %" PRIu64
							" bytes) and \"%s\" (offset %" PRIu64 ") overlap",
							a, x->offset, x->n_bytes, b, y->offset);
		}
	}
	free(spans);
	return MMS_OK;
}

/* ---- entry points ------------------------------------------------------- */

static MmsStatus
parse(MmsGguf *g, MmsError *err)
{
	Reader		r = {.buf = g->buf,.size = g->size,.pos = 0,.err = err};
	const uint8_t *magic = NULL;
	uint64_t	i;
	uint64_t	pad;
	MmsGgufStr	dup;
	int			nomem = 0;
	MmsStatus	st;
	char		name[GGUF_SHOW_NAME + 8];

	snprintf(r.where, sizeof(r.where), "the header");
	if (g->size < 4)
		return mms_fail(err, MMS_ERR_FORMAT,
						"file is truncated: %zu bytes is too short for a gguf header",
						g->size);
	if ((st = read_bytes(&r, "magic", 4, &magic)) != MMS_OK)
		return st;
	if (memcmp(magic, "GGUF", 4) != 0)
		return mms_fail(err, MMS_ERR_FORMAT,
						"not a gguf file: bad magic 0x%02x%02x%02x%02x",
						magic[0], magic[1], magic[2], magic[3]);
	if ((st = read_u32(&r, "version", &g->version)) != MMS_OK)
		return st;
	if (g->version != 2 && g->version != 3)
	{
		uint32_t	v = g->version;
		uint32_t	swapped = (v >> 24) | ((v >> 8) & 0xff00) |
			((v << 8) & 0xff0000) | (v << 24);

		if (swapped == 2 || swapped == 3)
			return mms_fail(err, MMS_ERR_UNSUPPORTED,
							"big-endian gguf files are not supported (version %" PRIu32
							" byte-swapped)", swapped);
		return mms_fail(err, MMS_ERR_UNSUPPORTED,
						"unsupported gguf version %" PRIu32 " (versions 2 and 3 are supported)",
						v);
	}
	if ((st = read_u64(&r, "tensor count", &g->n_tensors)) != MMS_OK)
		return st;
	if ((st = read_u64(&r, "metadata key count", &g->n_kv)) != MMS_OK)
		return st;

	/* Both counts must fit in what is left before anything is allocated. */
	if (g->n_kv > (r.size - r.pos) / GGUF_MIN_KV_BYTES)
		return mms_fail(err, MMS_ERR_FORMAT,
						"header claims %" PRIu64 " metadata keys, more than the "
						"%zu bytes after the header can hold",
						g->n_kv, r.size - r.pos);
	if (g->n_tensors > (r.size - r.pos - g->n_kv * GGUF_MIN_KV_BYTES) / GGUF_MIN_TENSOR_BYTES)
		return mms_fail(err, MMS_ERR_FORMAT,
						"header claims %" PRIu64 " tensors, more than the "
						"%zu bytes after the header can hold",
						g->n_tensors, r.size - r.pos);

	if (g->n_kv > 0)
	{
		g->kv = calloc((size_t) g->n_kv, sizeof(MmsGgufKV));
		if (g->kv == NULL)
			return mms_fail(err, MMS_ERR_NOMEM, "out of memory for %" PRIu64 " metadata keys",
							g->n_kv);
	}
	for (i = 0; i < g->n_kv; i++)
	{
		if ((st = read_kv(&r, i, &g->kv[i])) != MMS_OK)
			return st;
	}
	if (g->n_kv > 1 &&
		find_duplicate(&g->kv[0].key, g->n_kv, sizeof(MmsGgufKV), &dup, &nomem) != NULL)
	{
		show_name(name, sizeof(name), dup.ptr, dup.len);
		return mms_fail(err, MMS_ERR_FORMAT, "metadata key \"%s\" appears more than once", name);
	}
	if (nomem)
		return mms_fail(err, MMS_ERR_NOMEM, "out of memory checking metadata keys");
	if ((st = read_alignment(g, &g->alignment, err)) != MMS_OK)
		return st;

	if (g->n_tensors > 0)
	{
		g->tensors = calloc((size_t) g->n_tensors, sizeof(MmsGgufTensor));
		if (g->tensors == NULL)
			return mms_fail(err, MMS_ERR_NOMEM, "out of memory for %" PRIu64 " tensors",
							g->n_tensors);
	}
	for (i = 0; i < g->n_tensors; i++)
	{
		if ((st = read_tensor_info(&r, i, g->alignment, &g->tensors[i])) != MMS_OK)
			return st;
	}
	if (g->n_tensors > 1 &&
		find_duplicate(&g->tensors[0].name, g->n_tensors, sizeof(MmsGgufTensor),
					   &dup, &nomem) != NULL)
	{
		show_name(name, sizeof(name), dup.ptr, dup.len);
		return mms_fail(err, MMS_ERR_FORMAT, "tensor \"%s\" appears more than once", name);
	}
	if (nomem)
		return mms_fail(err, MMS_ERR_NOMEM, "out of memory checking tensor names");

	/*
	 * The data section starts at the next multiple of the alignment. A file
	 * without tensors may stop before that padding (llama.cpp writes
	 * metadata-only files that way), so only files with tensors need it.
	 */
	pad = r.pos % g->alignment;
	pad = pad == 0 ? 0 : g->alignment - pad;
	g->data_offset = (uint64_t) r.pos + pad;
	return check_tensor_data(g, err);
}

/*
 * Parses the first avail bytes of a file of file_size bytes into *out (zeroed
 * on failure). *header_done tells whether the error came after the header.
 */
static MmsStatus
parse_buffer(const void *buf, size_t avail, uint64_t file_size, MmsGguf *out, int *header_done,
			 MmsError *err)
{
	MmsGguf		g;
	MmsStatus	st;

	*header_done = 0;
	if (out == NULL)
		return mms_fail(err, MMS_ERR_ARG, "gguf parse: output is NULL");
	memset(out, 0, sizeof(*out));
	if ((buf == NULL && avail > 0) || avail > file_size)
		return mms_fail(err, MMS_ERR_ARG, "gguf parse: bad buffer");
	memset(&g, 0, sizeof(g));
	g.buf = buf;
	g.size = avail;
	g.file_size = file_size;
	g.alignment = MMS_GGUF_DEFAULT_ALIGNMENT;
	st = parse(&g, err);
	if (st != MMS_OK)
	{
		/* data_offset is set once the header parsed: later errors are about the data */
		*header_done = g.data_offset != 0;
		mms_gguf_free(&g);
		return st;
	}
	*out = g;
	return MMS_OK;
}

MmsStatus
mms_gguf_parse(const void *buf, size_t size, MmsGguf *out, MmsError *err)
{
	int			header_done;

	return parse_buffer(buf, size, size, out, &header_done, err);
}

MmsStatus
mms_gguf_parse_prefix(const void *buf, size_t avail, uint64_t file_size, MmsGguf *out, MmsError *err)
{
	int			header_done;
	MmsStatus	st = parse_buffer(buf, avail, file_size, out, &header_done, err);

	/* running off a prefix is not a bad file: the caller should read more */
	if (st == MMS_ERR_FORMAT && avail < file_size && !header_done)
		return mms_fail(err, MMS_ERR_LIMIT, "gguf header does not fit in the first %zu bytes", avail);
	return st;
}

void
mms_gguf_free(MmsGguf *g)
{
	uint64_t	i;

	if (g == NULL)
		return;
	if (g->kv != NULL)
	{
		for (i = 0; i < g->n_kv; i++)
			free(g->kv[i].arr_str);
		free(g->kv);
	}
	free(g->tensors);
	memset(g, 0, sizeof(*g));
}

/* ---- lookups and getters ---------------------------------------------- */

int
mms_gguf_str_eq(MmsGgufStr s, const char *cstr)
{
	size_t		n = strlen(cstr);

	return s.len == n && (n == 0 || memcmp(s.ptr, cstr, n) == 0);
}

const MmsGgufKV *
mms_gguf_find_kv(const MmsGguf *g, const char *key)
{
	uint64_t	i;

	if (g == NULL || key == NULL)
		return NULL;
	for (i = 0; i < g->n_kv; i++)
	{
		if (mms_gguf_str_eq(g->kv[i].key, key))
			return &g->kv[i];
	}
	return NULL;
}

const MmsGgufTensor *
mms_gguf_find_tensor(const MmsGguf *g, const char *name)
{
	uint64_t	i;

	if (g == NULL || name == NULL)
		return NULL;
	for (i = 0; i < g->n_tensors; i++)
	{
		if (mms_gguf_str_eq(g->tensors[i].name, name))
			return &g->tensors[i];
	}
	return NULL;
}

static int
wrong_type(const MmsGgufKV *kv, const char *key, const char *expected, MmsError *err)
{
	if (kv->type == MMS_GGUF_ARRAY)
		mms_fail(err, MMS_ERR_MODEL,
				 "metadata key \"%s\" has type array of %s, expected %s",
				 key, value_type_name(kv->arr_type), expected);
	else
		mms_fail(err, MMS_ERR_MODEL, "metadata key \"%s\" has type %s, expected %s",
				 key, value_type_name(kv->type), expected);
	return -1;
}

int
mms_gguf_get_int(const MmsGguf *g, const char *key, int64_t *out, MmsError *err)
{
	const MmsGgufKV *kv = mms_gguf_find_kv(g, key);

	if (kv == NULL)
		return 0;
	switch (kv->type)
	{
		case MMS_GGUF_U8:
		case MMS_GGUF_U16:
		case MMS_GGUF_U32:
		case MMS_GGUF_BOOL:
			*out = (int64_t) kv->v.u;
			return 1;
		case MMS_GGUF_U64:
			if (kv->v.u > (uint64_t) INT64_MAX)
			{
				mms_fail(err, MMS_ERR_MODEL,
						 "metadata key \"%s\" value %" PRIu64 " is out of range",
						 key, kv->v.u);
				return -1;
			}
			*out = (int64_t) kv->v.u;
			return 1;
		case MMS_GGUF_I8:
		case MMS_GGUF_I16:
		case MMS_GGUF_I32:
		case MMS_GGUF_I64:
			*out = kv->v.i;
			return 1;
		default:
			return wrong_type(kv, key, "an integer", err);
	}
}

int
mms_gguf_get_float(const MmsGguf *g, const char *key, double *out, MmsError *err)
{
	const MmsGgufKV *kv = mms_gguf_find_kv(g, key);

	if (kv == NULL)
		return 0;
	if (kv->type != MMS_GGUF_F32 && kv->type != MMS_GGUF_F64)
		return wrong_type(kv, key, "f32 or f64", err);
	*out = kv->v.f;
	return 1;
}

int
mms_gguf_get_bool(const MmsGguf *g, const char *key, int *out, MmsError *err)
{
	const MmsGgufKV *kv = mms_gguf_find_kv(g, key);

	if (kv == NULL)
		return 0;
	if (kv->type != MMS_GGUF_BOOL)
		return wrong_type(kv, key, "bool", err);
	*out = (int) kv->v.u;
	return 1;
}

int
mms_gguf_get_str(const MmsGguf *g, const char *key, MmsGgufStr *out, MmsError *err)
{
	const MmsGgufKV *kv = mms_gguf_find_kv(g, key);

	if (kv == NULL)
		return 0;
	if (kv->type != MMS_GGUF_STRING)
		return wrong_type(kv, key, "string", err);
	*out = kv->v.s;
	return 1;
}
