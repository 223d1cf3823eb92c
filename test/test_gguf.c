/*
 * test_gguf.c — cmocka tests for the GGUF parser (gguf.c) and dequantization
 * (quant.c): files built in memory, dozens of malformed variants, llama.cpp's
 * reference dequantization (test/fixtures/quant_ref.txt) and fixture models.
 * `test_gguf --write-corpus DIR` writes the fuzzer's seed corpus instead.
 */
#include "test_util.h"

#include <glob.h>
#include <inttypes.h>
#include <math.h>
#include <sys/stat.h>

#include "gguf.h"

/* ---- an in-memory GGUF writer -------------------------------------------- */

typedef struct Buf
{
	uint8_t    *p;
	size_t		n;
	size_t		cap;
} Buf;

typedef struct TSpec
{
	const char *name;
	uint32_t	n_dims;
	uint64_t	ne[4];
	uint32_t	type;
	int			fixed_offset;	/* offset set by the test, not placed */
	uint64_t	offset;
	uint64_t	n_bytes;
} TSpec;

typedef struct Builder
{
	uint32_t	version;
	int			set_n_kv;
	uint64_t	n_kv;			/* header value when set_n_kv */
	int			set_n_tensors;
	uint64_t	n_tensors;
	Buf			kv;				/* encoded pairs */
	uint64_t	kv_count;
	TSpec		t[8];
	int			nt;
	uint64_t	alignment;		/* used to place tensors and pad */
	size_t		cut_end;		/* bytes dropped from the end of the file */
} Builder;

static void
put(Buf *b, const void *src, size_t n)
{
	if (n == 0)
		return;
	if (b->n + n > b->cap)
	{
		b->cap = (b->n + n) * 2 + 64;
		b->p = realloc(b->p, b->cap);
		assert_non_null(b->p);
	}
	memcpy(b->p + b->n, src, n);
	b->n += n;
}

/* Native byte order: the engine, like llama.cpp, runs on little-endian hosts. */
#define PUT_LE(name, type) \
static void name(Buf *b, type v) { put(b, &v, sizeof(v)); }
PUT_LE(put_u8, uint8_t)
PUT_LE(put_u16, uint16_t)
PUT_LE(put_u32, uint32_t)
PUT_LE(put_u64, uint64_t)
PUT_LE(put_f32, float)
PUT_LE(put_f64, double)

static void
put_str(Buf *b, const char *s)
{
	put_u64(b, strlen(s));
	put(b, s, strlen(s));
}

static void
builder_init(Builder *B)
{
	memset(B, 0, sizeof(*B));
	B->version = 3;
	B->alignment = MMS_GGUF_DEFAULT_ALIGNMENT;
}

/* Starts a pair: key and value type; the caller writes the value into B->kv. */
static Buf *
kv(Builder *B, const char *key, uint32_t type)
{
	put_str(&B->kv, key);
	put_u32(&B->kv, type);
	B->kv_count++;
	return &B->kv;
}

static void
kv_array(Builder *B, const char *key, uint32_t etype, uint64_t n, const void *data, size_t bytes)
{
	Buf		   *b = kv(B, key, MMS_GGUF_ARRAY);

	put_u32(b, etype);
	put_u64(b, n);
	put(b, data, bytes);
}

static void
set_alignment(Builder *B, uint32_t a)
{
	put_u32(kv(B, "general.alignment", MMS_GGUF_U32), a);
	B->alignment = a;
}

static uint64_t
spec_bytes(const TSpec *t)
{
	uint64_t	n = 1;
	uint32_t	d;

	for (d = 0; d < t->n_dims && d < 4; d++)
		n *= t->ne[d];
	switch (t->type)
	{
		case MMS_T_F16:
		case MMS_T_BF16:
			return n * 2;
		case MMS_T_Q8_0:
			return n / 32 * 34;
		case MMS_T_Q4_0:
			return n / 32 * 18;
	}
	return n * 4;
}

static TSpec *
tensor(Builder *B, const char *name, uint32_t type, uint64_t ne0, uint64_t ne1)
{
	TSpec	   *t = &B->t[B->nt++];

	memset(t, 0, sizeof(*t));
	t->name = name;
	t->type = type;
	t->n_dims = ne1 > 0 ? 2 : 1;
	t->ne[0] = ne0;
	t->ne[1] = ne1 > 0 ? ne1 : 1;
	t->ne[2] = t->ne[3] = 1;
	return t;
}

/* Element j of a filled tensor of this type, as fill_data writes it. */
static float
fill_value(uint32_t type, uint64_t j)
{
	uint64_t	k = j % 32;

	switch (type)
	{
		case MMS_T_F16:
			return 1.0f + (float) (j % 1024) / 1024.0f;
		case MMS_T_BF16:
			return 1.0f + (float) (j % 128) / 128.0f;
		case MMS_T_Q8_0:
			return ((float) k - 16.0f + (float) (j / 32 % 8)) * 0.5f;
		case MMS_T_Q4_0:
			return k < 16 ? ((float) k - 8.0f) * 2.0f : (7.0f - (float) (k - 16)) * 2.0f;
	}
	return (float) j * 0.25f - 3.0f;
}

static void
fill_data(uint8_t *p, const TSpec *t)
{
	uint64_t	n = t->n_bytes;
	uint64_t	j;

	switch (t->type)
	{
		case MMS_T_F16:
			for (j = 0; j < n / 2; j++)
			{
				uint16_t	h = (uint16_t) (0x3c00 + j % 1024);

				memcpy(p + 2 * j, &h, 2);
			}
			break;
		case MMS_T_BF16:
			for (j = 0; j < n / 2; j++)
			{
				uint16_t	h = (uint16_t) (0x3f80 + j % 128);

				memcpy(p + 2 * j, &h, 2);
			}
			break;
		case MMS_T_Q8_0:
			for (j = 0; j < n / 34; j++)
			{
				int			k;

				p[34 * j] = 0x00;
				p[34 * j + 1] = 0x38;	/* 0.5 */
				for (k = 0; k < 32; k++)
					p[34 * j + 2 + k] = (uint8_t) (int8_t) (k - 16 + (int) (j % 8));
			}
			break;
		case MMS_T_Q4_0:
			for (j = 0; j < n / 18; j++)
			{
				int			k;

				p[18 * j] = 0x00;
				p[18 * j + 1] = 0x40;	/* 2.0 */
				for (k = 0; k < 16; k++)
					p[18 * j + 2 + k] = (uint8_t) (k | (15 - k) << 4);
			}
			break;
		default:
			for (j = 0; j < n / 4; j++)
			{
				float		v = fill_value(MMS_T_F32, j);

				memcpy(p + 4 * j, &v, 4);
			}
			break;
	}
}

static uint64_t
align_up(uint64_t x, uint64_t a)
{
	return (x + a - 1) / a * a;
}

/* Lays the file out as llama.cpp does; returns a malloc'd buffer. */
static uint8_t *
build(Builder *B, size_t *size)
{
	Buf			f = {0};
	uint64_t	next = 0;
	uint64_t	data_end = 0;
	size_t		data_offset;
	int			i;
	uint32_t	d;

	put(&f, "GGUF", 4);
	put_u32(&f, B->version);
	put_u64(&f, B->set_n_tensors ? B->n_tensors : (uint64_t) B->nt);
	put_u64(&f, B->set_n_kv ? B->n_kv : B->kv_count);
	if (B->kv.n > 0)
		put(&f, B->kv.p, B->kv.n);
	for (i = 0; i < B->nt; i++)
	{
		TSpec	   *t = &B->t[i];

		t->n_bytes = spec_bytes(t);
		if (!t->fixed_offset)
		{
			t->offset = align_up(next, B->alignment);
			next = t->offset + t->n_bytes;
		}
		put_str(&f, t->name);
		put_u32(&f, t->n_dims);
		for (d = 0; d < t->n_dims; d++)
			put_u64(&f, d < 4 ? t->ne[d] : 1);
		put_u32(&f, t->type);
		put_u64(&f, t->offset);
		if (t->offset < (1 << 20) && t->n_bytes < (1 << 20))
			data_end = t->offset + t->n_bytes > data_end ? t->offset + t->n_bytes : data_end;
	}
	/* like llama.cpp's metadata-only files, no padding without tensors */
	while (B->nt > 0 && f.n % B->alignment != 0)
		put_u8(&f, 0);
	data_offset = f.n;
	for (uint64_t k = 0; k < data_end; k++)
		put_u8(&f, 0);
	for (i = 0; i < B->nt; i++)
	{
		TSpec	   *t = &B->t[i];

		if (t->offset + t->n_bytes <= data_end)
			fill_data(f.p + data_offset + t->offset, t);
	}
	if (f.p == NULL)
		put_u8(&f, 0);
	*size = f.n - (B->cut_end < f.n ? B->cut_end : f.n);
	free(B->kv.p);
	B->kv.p = NULL;
	return f.p;
}

/* ---- helpers ------------------------------------------------------------- */

static int
all_zero(const void *p, size_t n)
{
	const uint8_t *b = p;

	for (size_t i = 0; i < n; i++)
		if (b[i] != 0)
			return 0;
	return 1;
}

static void
check_message_style(const MmsError *err)
{
	size_t		n = strlen(err->msg);

	assert_true(n > 0);
	assert_false(err->msg[0] >= 'A' && err->msg[0] <= 'Z');
	assert_true(err->msg[n - 1] != '.' && err->msg[n - 1] != '\n');
	for (size_t i = 0; i < n; i++)
		assert_true((unsigned char) err->msg[i] >= 0x20 && (unsigned char) err->msg[i] < 0x7f);
}

static void
expect_fail_buf(const uint8_t *buf, size_t size, MmsStatus code, const char *substr)
{
	MmsGguf		g;
	MmsError	err = {0};
	MmsStatus	st;

	memset(&g, 0xa5, sizeof(g));
	st = mms_gguf_parse(buf, size, &g, &err);
	if (st != code || err.code != code || strstr(err.msg, substr) == NULL)
		fail_msg("expected %s with \"%s\", got %s: %s", mms_status_name(code), substr,
				 mms_status_name(st), err.msg);
	assert_true(all_zero(&g, sizeof(g)));
	check_message_style(&err);
}

static void
parse_ok(Builder *B, MmsGguf *g, uint8_t **buf)
{
	size_t		size;
	MmsError	err = {0};
	MmsStatus	st;

	*buf = build(B, &size);
	st = mms_gguf_parse(*buf, size, g, &err);
	if (st != MMS_OK)
		fail_msg("parse failed: %s", err.msg);
}

/* ---- valid files ------------------------------------------------------------ */

static void
add_every_kv(Builder *B)
{
	static const int32_t ints[3] = {-1, 0, 123456};
	static const float floats[2] = {0.5f, -1e-6f};
	static const uint8_t bools[3] = {1, 0, 1};
	static const uint16_t u16s[2] = {1, 65535};
	Buf		   *b;

	put_u8(kv(B, "k.u8", MMS_GGUF_U8), 200);
	put_u8(kv(B, "k.i8", MMS_GGUF_I8), (uint8_t) -100);
	put_u16(kv(B, "k.u16", MMS_GGUF_U16), 60000);
	put_u16(kv(B, "k.i16", MMS_GGUF_I16), (uint16_t) -30000);
	put_u32(kv(B, "k.u32", MMS_GGUF_U32), 4000000000u);
	put_u32(kv(B, "k.i32", MMS_GGUF_I32), (uint32_t) -2000000000);
	put_f32(kv(B, "k.f32", MMS_GGUF_F32), 1e-6f);
	put_u8(kv(B, "k.bool", MMS_GGUF_BOOL), 1);
	put_str(kv(B, "k.str", MMS_GGUF_STRING), "t5");
	put_str(kv(B, "k.empty", MMS_GGUF_STRING), "");
	put_u64(kv(B, "k.u64", MMS_GGUF_U64), UINT64_MAX);
	put_u64(kv(B, "k.u64s", MMS_GGUF_U64), 7);
	put_u64(kv(B, "k.i64", MMS_GGUF_I64), (uint64_t) INT64_MIN);
	put_f64(kv(B, "k.f64", MMS_GGUF_F64), -2.25);
	kv_array(B, "a.i32", MMS_GGUF_I32, 3, ints, sizeof(ints));
	kv_array(B, "a.f32", MMS_GGUF_F32, 2, floats, sizeof(floats));
	kv_array(B, "a.bool", MMS_GGUF_BOOL, 3, bools, sizeof(bools));
	kv_array(B, "a.u16", MMS_GGUF_U16, 2, u16s, sizeof(u16s));
	kv_array(B, "a.empty", MMS_GGUF_U64, 0, NULL, 0);
	b = kv(B, "a.str", MMS_GGUF_ARRAY);
	put_u32(b, MMS_GGUF_STRING);
	put_u64(b, 3);
	put_str(b, "<pad>");
	put_str(b, "");
	put_str(b, "\xe2\x96\x81the");
}

static void
test_every_kv_type(void **state)
{
	Builder		B;
	MmsGguf		g;
	uint8_t    *buf;
	int64_t		i;
	double		f;
	int			bv;
	MmsGgufStr	s;
	MmsError	err = {0};
	const MmsGgufKV *kv;

	builder_init(&B);
	add_every_kv(&B);
	parse_ok(&B, &g, &buf);
	assert_int_equal(g.version, 3);
	assert_int_equal(g.n_kv, 20);
	assert_int_equal(g.n_tensors, 0);
	assert_int_equal(g.alignment, 32);

#define INT_IS(key, v) \
	do { assert_int_equal(mms_gguf_get_int(&g, key, &i, &err), 1); assert_true(i == (v)); } while (0)
	INT_IS("k.u8", 200);
	INT_IS("k.i8", -100);
	INT_IS("k.u16", 60000);
	INT_IS("k.i16", -30000);
	INT_IS("k.u32", 4000000000);
	INT_IS("k.i32", -2000000000);
	INT_IS("k.bool", 1);
	INT_IS("k.u64s", 7);
	INT_IS("k.i64", INT64_MIN);
	assert_int_equal(mms_gguf_get_float(&g, "k.f32", &f, &err), 1);
	assert_true(f == (double) 1e-6f);
	assert_int_equal(mms_gguf_get_float(&g, "k.f64", &f, &err), 1);
	assert_true(f == -2.25);
	assert_int_equal(mms_gguf_get_bool(&g, "k.bool", &bv, &err), 1);
	assert_int_equal(bv, 1);
	assert_int_equal(mms_gguf_get_str(&g, "k.str", &s, &err), 1);
	assert_true(mms_gguf_str_eq(s, "t5"));
	assert_int_equal(mms_gguf_get_str(&g, "k.empty", &s, &err), 1);
	assert_int_equal(s.len, 0);
	assert_true(mms_gguf_str_eq(s, ""));

	kv = mms_gguf_find_kv(&g, "a.i32");
	assert_non_null(kv);
	assert_int_equal(kv->type, MMS_GGUF_ARRAY);
	assert_int_equal(kv->arr_type, MMS_GGUF_I32);
	assert_int_equal(kv->arr_n, 3);
	{
		int32_t		v;

		memcpy(&v, kv->arr_data + 8, 4);
		assert_int_equal(v, 123456);
	}
	kv = mms_gguf_find_kv(&g, "a.bool");
	assert_int_equal(kv->arr_n, 3);
	assert_memory_equal(kv->arr_data, "\1\0\1", 3);
	kv = mms_gguf_find_kv(&g, "a.empty");
	assert_int_equal(kv->arr_type, MMS_GGUF_U64);
	assert_int_equal(kv->arr_n, 0);
	kv = mms_gguf_find_kv(&g, "a.str");
	assert_int_equal(kv->arr_type, MMS_GGUF_STRING);
	assert_int_equal(kv->arr_n, 3);
	assert_non_null(kv->arr_str);
	assert_true(mms_gguf_str_eq(kv->arr_str[0], "<pad>"));
	assert_true(mms_gguf_str_eq(kv->arr_str[1], ""));
	assert_true(mms_gguf_str_eq(kv->arr_str[2], "\xe2\x96\x81the"));
	/* views point into the buffer */
	assert_true((const uint8_t *) kv->arr_str[0].ptr > buf);
	assert_null(mms_gguf_find_kv(&g, "k.missing"));
	assert_null(mms_gguf_find_kv(&g, "k.u"));
	assert_null(mms_gguf_find_tensor(&g, "k.u8"));
	mms_gguf_free(&g);
	assert_true(all_zero(&g, sizeof(g)));
	mms_gguf_free(&g);			/* twice is harmless */
	mms_gguf_free(NULL);
	free(buf);
}

static void
test_getter_errors(void **state)
{
	Builder		B;
	MmsGguf		g;
	uint8_t    *buf;
	int64_t		i = 42;
	double		f = 42;
	int			bv = 42;
	MmsGgufStr	s = {0};
	MmsError	err = {0};

	builder_init(&B);
	add_every_kv(&B);
	parse_ok(&B, &g, &buf);

	assert_int_equal(mms_gguf_get_int(&g, "absent", &i, &err), 0);
	assert_int_equal(mms_gguf_get_float(&g, "absent", &f, &err), 0);
	assert_int_equal(mms_gguf_get_bool(&g, "absent", &bv, &err), 0);
	assert_int_equal(mms_gguf_get_str(&g, "absent", &s, &err), 0);
	assert_int_equal(i, 42);
	assert_int_equal(err.code, MMS_OK);

	assert_int_equal(mms_gguf_get_int(&g, "k.str", &i, &err), -1);
	assert_int_equal(err.code, MMS_ERR_MODEL);
	assert_non_null(strstr(err.msg, "\"k.str\""));
	assert_non_null(strstr(err.msg, "string"));
	check_message_style(&err);
	assert_int_equal(mms_gguf_get_int(&g, "k.u64", &i, &err), -1);
	assert_non_null(strstr(err.msg, "18446744073709551615"));
	assert_int_equal(mms_gguf_get_int(&g, "k.f32", &i, &err), -1);
	assert_non_null(strstr(err.msg, "f32"));
	assert_int_equal(mms_gguf_get_int(&g, "a.i32", &i, &err), -1);
	assert_non_null(strstr(err.msg, "array of i32"));
	assert_int_equal(mms_gguf_get_float(&g, "k.i32", &f, &err), -1);
	assert_non_null(strstr(err.msg, "\"k.i32\" has type i32"));
	assert_int_equal(mms_gguf_get_bool(&g, "k.u8", &bv, &err), -1);
	assert_non_null(strstr(err.msg, "u8"));
	assert_int_equal(mms_gguf_get_str(&g, "a.str", &s, &err), -1);
	assert_non_null(strstr(err.msg, "array of string"));
	assert_int_equal(err.code, MMS_ERR_MODEL);
	assert_int_equal(i, 42);
	assert_true(f == 42);
	mms_gguf_free(&g);
	free(buf);
}

static void
add_every_tensor(Builder *B)
{
	TSpec	   *t;

	tensor(B, "token_embd.weight", MMS_T_F32, 8, 3);
	tensor(B, "enc.blk.0.attn_q.weight", MMS_T_F16, 5, 0);	/* odd size: padding */
	tensor(B, "enc.blk.0.attn_k.weight", MMS_T_BF16, 64, 2);
	tensor(B, "enc.blk.0.ffn_up.weight", MMS_T_Q8_0, 64, 3);
	t = tensor(B, "dec.blk.0.ffn_down.weight", MMS_T_Q4_0, 32, 0);
	t->n_dims = 4;
	t->ne[1] = 2;
	t->ne[2] = 3;
	t->ne[3] = 2;
}

static void
check_every_tensor(const Builder *B, const MmsGguf *g)
{
	int			i;

	assert_int_equal(g->n_tensors, B->nt);
	assert_int_equal(g->data_offset % g->alignment, 0);
	for (i = 0; i < B->nt; i++)
	{
		const TSpec *s = &B->t[i];
		const MmsGgufTensor *t = mms_gguf_find_tensor(g, s->name);
		float	   *x;
		MmsError	err = {0};
		uint64_t	j;

		assert_non_null(t);
		assert_ptr_equal(t, &g->tensors[i]);
		assert_int_equal(t->n_dims, s->n_dims);
		assert_int_equal(t->type, s->type);
		assert_int_equal(t->offset, s->offset);
		assert_int_equal(t->offset % g->alignment, 0);
		assert_int_equal(t->n_bytes, s->n_bytes);
		assert_int_equal(t->n_elems, s->ne[0] * s->ne[1] * s->ne[2] * s->ne[3]);
		for (j = 0; j < 4; j++)
			assert_int_equal(t->ne[j], s->ne[j]);
		assert_ptr_equal(t->data, g->buf + g->data_offset + s->offset);
		x = malloc(t->n_elems * sizeof(float));
		assert_int_equal(mms_gguf_dequantize(t, x, &err), MMS_OK);
		for (j = 0; j < t->n_elems; j++)
			if (x[j] != fill_value(t->type, j))
				fail_msg("%s[%" PRIu64 "] = %g, expected %g", s->name, j, x[j],
						 fill_value(t->type, j));
		free(x);
	}
}

static void
test_every_tensor_type(void **state)
{
	Builder		B;
	MmsGguf		g;
	uint8_t    *buf;

	builder_init(&B);
	put_str(kv(&B, "general.architecture", MMS_GGUF_STRING), "t5");
	add_every_tensor(&B);
	parse_ok(&B, &g, &buf);
	check_every_tensor(&B, &g);
	assert_int_equal(g.tensors[1].ne[1], 1);	/* unused dims are 1 */
	assert_int_equal(g.tensors[1].n_bytes, 10);
	assert_int_equal(g.tensors[1].offset, 96);
	assert_int_equal(g.tensors[2].offset, 128);	/* 10 bytes padded to 32 */
	assert_int_equal(g.tensors[3].n_bytes, 6 * 34);
	assert_int_equal(g.tensors[4].n_bytes, 12 * 18);
	assert_null(mms_gguf_find_tensor(&g, "token_embd"));
	assert_null(mms_gguf_find_tensor(&g, "token_embd.weight2"));
	mms_gguf_free(&g);
	free(buf);
}

static void
test_alignments(void **state)
{
	static const uint32_t aligns[] = {1, 2, 8, 32, 64, 4096};

	for (size_t a = 0; a < sizeof(aligns) / sizeof(aligns[0]); a++)
	{
		Builder		B;
		MmsGguf		g;
		uint8_t    *buf;

		builder_init(&B);
		put_str(kv(&B, "general.name", MMS_GGUF_STRING), "x");
		set_alignment(&B, aligns[a]);
		add_every_tensor(&B);
		parse_ok(&B, &g, &buf);
		assert_int_equal(g.alignment, aligns[a]);
		check_every_tensor(&B, &g);
		if (aligns[a] == 64)
			assert_int_equal(g.tensors[2].offset, 192);
		if (aligns[a] == 1)
			assert_int_equal(g.tensors[2].offset, 106);
		mms_gguf_free(&g);
		free(buf);
	}
}

static void
test_version2_and_trailing_bytes(void **state)
{
	Builder		B;
	MmsGguf		g;
	uint8_t    *buf;
	size_t		size;
	MmsError	err = {0};

	builder_init(&B);
	B.version = 2;
	add_every_tensor(&B);
	buf = build(&B, &size);
	buf = realloc(buf, size + 100);
	memset(buf + size, 0xff, 100);
	assert_int_equal(mms_gguf_parse(buf, size + 100, &g, &err), MMS_OK);
	assert_int_equal(g.version, 2);
	assert_int_equal(g.size, size + 100);
	check_every_tensor(&B, &g);
	mms_gguf_free(&g);
	free(buf);
}

static void
test_empty_and_metadata_only(void **state)
{
	Builder		B;
	MmsGguf		g;
	uint8_t    *buf;
	size_t		size;
	MmsError	err = {0};

	/* header only */
	builder_init(&B);
	buf = build(&B, &size);
	assert_int_equal(mms_gguf_parse(buf, 24, &g, &err), MMS_OK);
	assert_int_equal(g.n_kv + g.n_tensors, 0);
	assert_null(g.kv);
	assert_null(mms_gguf_find_kv(&g, "x"));
	mms_gguf_free(&g);
	free(buf);

	/* llama.cpp writes metadata-only files without the final padding */
	builder_init(&B);
	put_str(kv(&B, "general.architecture", MMS_GGUF_STRING), "t5");
	buf = build(&B, &size);
	assert_int_equal(size, 24 + 8 + 20 + 4 + 8 + 2);
	assert_int_equal(mms_gguf_parse(buf, size, &g, &err), MMS_OK);
	assert_int_equal(g.n_kv, 1);
	assert_int_equal(g.data_offset, 96);
	mms_gguf_free(&g);
	buf = realloc(buf, 96);
	memset(buf + size, 0, 96 - size);
	assert_int_equal(mms_gguf_parse(buf, 96, &g, &err), MMS_OK);
	mms_gguf_free(&g);
	free(buf);

	/* bad arguments */
	assert_int_equal(mms_gguf_parse(NULL, 0, &g, &err), MMS_ERR_FORMAT);
	assert_int_equal(mms_gguf_parse(NULL, 10, &g, &err), MMS_ERR_ARG);
	assert_int_equal(mms_gguf_parse("GGUF", 4, NULL, &err), MMS_ERR_ARG);
	assert_int_equal(mms_gguf_parse("GGUF", 4, &g, NULL), MMS_ERR_FORMAT);
}

/* Every proper prefix of a valid file must fail cleanly, and never crash. */
static void
test_every_truncation(void **state)
{
	Builder		B;
	uint8_t    *buf;
	size_t		size;

	builder_init(&B);
	add_every_kv(&B);
	set_alignment(&B, 64);
	add_every_tensor(&B);
	buf = build(&B, &size);
	for (size_t n = 0; n < size; n++)
	{
		uint8_t    *copy = malloc(n > 0 ? n : 1);	/* exact size: ASan sees overreads */
		MmsGguf		g;
		MmsError	err = {0};
		MmsStatus	st;

		memcpy(copy, buf, n);
		st = mms_gguf_parse(copy, n, &g, &err);
		if (st != MMS_ERR_FORMAT)
			fail_msg("prefix of %zu bytes: got %s (%s)", n, mms_status_name(st), err.msg);
		assert_true(all_zero(&g, sizeof(g)));
		check_message_style(&err);
		free(copy);
	}
	free(buf);
}

static void
test_str_eq_and_type_helpers(void **state)
{
	MmsGgufStr	s = {"abc", 3};
	MmsGgufStr	e = {NULL, 0};

	assert_true(mms_gguf_str_eq(s, "abc"));
	assert_false(mms_gguf_str_eq(s, "ab"));
	assert_false(mms_gguf_str_eq(s, "abcd"));
	assert_false(mms_gguf_str_eq(s, "abd"));
	assert_true(mms_gguf_str_eq(e, ""));
	assert_false(mms_gguf_str_eq(e, "a"));

	assert_string_equal(mms_tensor_type_name(MMS_T_F32), "f32");
	assert_string_equal(mms_tensor_type_name(MMS_T_F16), "f16");
	assert_string_equal(mms_tensor_type_name(MMS_T_BF16), "bf16");
	assert_string_equal(mms_tensor_type_name(MMS_T_Q8_0), "q8_0");
	assert_string_equal(mms_tensor_type_name(MMS_T_Q4_0), "q4_0");
	assert_string_equal(mms_tensor_type_name((MmsTensorType) 3), "unknown");
	for (uint32_t t = 0; t < 64; t++)
		assert_int_equal(mms_tensor_type_supported(t), t == 0 || t == 1 || t == 2 || t == 8 || t == 30);
	assert_false(mms_tensor_type_supported(UINT32_MAX));
	assert_int_equal(mms_tensor_type_block(MMS_T_F32), 1);
	assert_int_equal(mms_tensor_type_block(MMS_T_BF16), 1);
	assert_int_equal(mms_tensor_type_block(MMS_T_Q8_0), 32);
	assert_int_equal(mms_tensor_type_block(MMS_T_Q4_0), 32);
	assert_int_equal(mms_tensor_type_block((MmsTensorType) 99), 0);
	assert_int_equal(mms_tensor_type_bytes(MMS_T_F32, 10), 40);
	assert_int_equal(mms_tensor_type_bytes(MMS_T_F16, 10), 20);
	assert_int_equal(mms_tensor_type_bytes(MMS_T_BF16, 3), 6);
	assert_int_equal(mms_tensor_type_bytes(MMS_T_Q8_0, 64), 68);
	assert_int_equal(mms_tensor_type_bytes(MMS_T_Q4_0, 64), 36);
	assert_int_equal(mms_tensor_type_bytes(MMS_T_Q4_0, 33), 0);
	assert_int_equal(mms_tensor_type_bytes(MMS_T_F32, UINT64_MAX / 2), 0);
	assert_int_equal(mms_tensor_type_bytes((MmsTensorType) 3, 32), 0);
}

/* ---- malformed files ------------------------------------------------------- */

typedef struct BadCase
{
	const char *name;
	void		(*make) (Builder *B);
	MmsStatus	code;
	const char *substr;
} BadCase;

static TSpec *
one_tensor(Builder *B)
{
	return tensor(B, "w", MMS_T_F32, 4, 0);
}

static void
raw_array(Builder *B, const char *key, uint32_t etype, uint64_t n)
{
	Buf		   *b = kv(B, key, MMS_GGUF_ARRAY);

	put_u32(b, etype);
	put_u64(b, n);
}

static void
mk_bad_magic(Builder *B)
{
	put_u8(kv(B, "a", MMS_GGUF_U8), 1);
}

static void
mk_version1(Builder *B)
{
	B->version = 1;
}

static void
mk_version4(Builder *B)
{
	B->version = 4;
}

static void
mk_version0(Builder *B)
{
	B->version = 0;
}

static void
mk_big_endian(Builder *B)
{
	B->version = 0x03000000;
}

static void
mk_kv_absurd(Builder *B)
{
	B->set_n_kv = 1;
	B->n_kv = UINT64_C(1) << 62;
	one_tensor(B);
}

static void
mk_kv_max(Builder *B)
{
	B->set_n_kv = 1;
	B->n_kv = UINT64_MAX;
}

static void
mk_tensors_absurd(Builder *B)
{
	B->set_n_tensors = 1;
	B->n_tensors = UINT64_C(1) << 62;
	one_tensor(B);
}

static void
mk_tensors_2_60(Builder *B)
{
	put_u8(kv(B, "a", MMS_GGUF_U8), 1);
	B->set_n_tensors = 1;
	B->n_tensors = UINT64_C(1) << 60;
}

static void
mk_kv_one_too_many(Builder *B)
{
	put_u8(kv(B, "a", MMS_GGUF_U8), 1);
	B->set_n_kv = 1;
	B->n_kv = 2;
}

static void
mk_tensor_one_too_many(Builder *B)
{
	one_tensor(B);
	B->set_n_tensors = 1;
	B->n_tensors = 2;
}

static void
mk_key_huge_len(Builder *B)
{
	put_u64(&B->kv, UINT64_C(1) << 63);
	put_u32(&B->kv, MMS_GGUF_U8);
	put_u64(&B->kv, 0);
	put_u8(&B->kv, 0);
	B->kv_count = 1;
}

static void
mk_key_len_past_end(Builder *B)
{
	put_u64(&B->kv, 100);
	put(&B->kv, "abcdefghijklmn", 14);
	B->kv_count = 1;
}

static void
mk_string_value_huge(Builder *B)
{
	put_u64(kv(B, "s", MMS_GGUF_STRING), UINT64_MAX);
	put_u32(&B->kv, 0);
}

static void
mk_string_value_past_end(Builder *B)
{
	put_u64(kv(B, "s", MMS_GGUF_STRING), 50);
	put(&B->kv, "short", 5);
}

static void
mk_empty_key(Builder *B)
{
	put_u8(kv(B, "a", MMS_GGUF_U8), 1);
	put_u8(kv(B, "", MMS_GGUF_U8), 1);
	put_u16(kv(B, "b", MMS_GGUF_U16), 1);
}

static void
mk_kv_type_13(Builder *B)
{
	put_u32(kv(B, "a.b", 13), 0);
}

static void
mk_kv_type_max(Builder *B)
{
	put_u32(kv(B, "a.b", UINT32_MAX), 0);
}

static void
mk_nested_array(Builder *B)
{
	raw_array(B, "nest", MMS_GGUF_ARRAY, 1);
	put_u32(&B->kv, MMS_GGUF_U8);
	put_u64(&B->kv, 0);
}

static void
mk_array_bad_etype(Builder *B)
{
	raw_array(B, "arr", 42, 1);
	put_u32(&B->kv, 0);
}

static void
mk_array_absurd(Builder *B)
{
	raw_array(B, "arr", MMS_GGUF_U32, UINT64_C(1) << 61);
	put_u32(&B->kv, 0);
}

static void
mk_array_u64_max(Builder *B)
{
	raw_array(B, "arr", MMS_GGUF_F64, UINT64_MAX);
	put_u64(&B->kv, 0);
}

static void
mk_array_short(Builder *B)
{
	raw_array(B, "arr", MMS_GGUF_U16, 3);
	put_u16(&B->kv, 1);
	put_u16(&B->kv, 2);
}

static void
mk_str_array_absurd(Builder *B)
{
	raw_array(B, "toks", MMS_GGUF_STRING, UINT64_C(1) << 62);
	put_str(&B->kv, "a");
}

static void
mk_str_array_elem_past_end(Builder *B)
{
	raw_array(B, "toks", MMS_GGUF_STRING, 2);
	put_str(&B->kv, "a");
	put_u64(&B->kv, 1000);
	put(&B->kv, "xy", 2);
}

static void
mk_bool_2(Builder *B)
{
	put_u8(kv(B, "flag", MMS_GGUF_BOOL), 2);
}

static void
mk_bool_array_7(Builder *B)
{
	raw_array(B, "flags", MMS_GGUF_BOOL, 3);
	put(&B->kv, "\1\0\7", 3);
}

static void
mk_dup_key(Builder *B)
{
	put_u8(kv(B, "a.b", MMS_GGUF_U8), 1);
	put_u8(kv(B, "c", MMS_GGUF_U8), 1);
	put_str(kv(B, "a.b", MMS_GGUF_STRING), "x");
}

static void
mk_dup_key_binary(Builder *B)
{
	put_u8(kv(B, "k\n\xff", MMS_GGUF_U8), 1);
	put_u8(kv(B, "k\n\xff", MMS_GGUF_U8), 1);
}

static void
mk_align_0(Builder *B)
{
	set_alignment(B, 0);
	B->alignment = 32;
	one_tensor(B);
}

static void
mk_align_48(Builder *B)
{
	set_alignment(B, 48);
	one_tensor(B);
}

static void
mk_align_u64(Builder *B)
{
	put_u64(kv(B, "general.alignment", MMS_GGUF_U64), 64);
	one_tensor(B);
}

static void
mk_align_str(Builder *B)
{
	put_str(kv(B, "general.alignment", MMS_GGUF_STRING), "32");
}

static void
mk_ndims_0(Builder *B)
{
	one_tensor(B);
	B->t[0].n_dims = 0;
}

static void
mk_ndims_5(Builder *B)
{
	one_tensor(B);
	B->t[0].n_dims = 5;
	B->t[0].ne[1] = B->t[0].ne[2] = B->t[0].ne[3] = 1;
}

static void
mk_ne_0(Builder *B)
{
	TSpec	   *t = tensor(B, "w", MMS_T_F32, 4, 0);

	t->n_dims = 2;
	t->ne[1] = 0;
}

static void
mk_ne0_0(Builder *B)
{
	tensor(B, "w", MMS_T_F32, 0, 0);
}

static void
mk_product_overflow(Builder *B)
{
	TSpec	   *t = tensor(B, "big", MMS_T_F32, UINT64_C(1) << 32, UINT64_C(1) << 32);

	t->fixed_offset = 1;
}

static void
mk_product_over_cap(Builder *B)
{
	TSpec	   *t = tensor(B, "big", MMS_T_F16, UINT64_C(1) << 21, UINT64_C(1) << 20);

	t->fixed_offset = 1;
}

static void
mk_product_overflow_4d(Builder *B)
{
	TSpec	   *t = tensor(B, "big", MMS_T_F32, 1 << 16, 1 << 16);

	t->n_dims = 4;
	t->ne[2] = 1 << 16;
	t->ne[3] = 1 << 16;
	t->fixed_offset = 1;
}

static void
mk_q8_ne0_48(Builder *B)
{
	tensor(B, "q", MMS_T_Q8_0, 48, 2);
}

static void
mk_q4_ne0_16(Builder *B)
{
	tensor(B, "q", MMS_T_Q4_0, 16, 0);
}

static void
mk_type_3(Builder *B)
{
	tensor(B, "enc.blk.0.attn_q.weight", 3, 32, 0);
}

static void
mk_type_99(Builder *B)
{
	tensor(B, "x", 99, 32, 0);
}

static void
mk_type_max(Builder *B)
{
	tensor(B, "x", UINT32_MAX, 32, 0);
}

static void
mk_dup_tensor(Builder *B)
{
	one_tensor(B);
	tensor(B, "v", MMS_T_F16, 8, 0);
	one_tensor(B);
}

static void
mk_empty_tensor_name(Builder *B)
{
	tensor(B, "", MMS_T_F32, 4, 0);
}

static void
mk_offset_unaligned(Builder *B)
{
	TSpec	   *t = one_tensor(B);

	t->fixed_offset = 1;
	t->offset = 16;
}

static void
mk_offset_unaligned_64(Builder *B)
{
	TSpec	   *t;

	set_alignment(B, 64);
	one_tensor(B);
	t = tensor(B, "v", MMS_T_F32, 4, 0);
	t->fixed_offset = 1;
	t->offset = 32;
}

static void
mk_offset_past_end(Builder *B)
{
	TSpec	   *t;

	one_tensor(B);
	t = tensor(B, "far", MMS_T_F32, 4, 0);
	t->fixed_offset = 1;
	t->offset = UINT64_C(1) << 40;
}

static void
mk_offset_wrap(Builder *B)
{
	TSpec	   *t = tensor(B, "wrap", MMS_T_F32, 64, 0);

	t->fixed_offset = 1;
	t->offset = UINT64_MAX - 31;
}

static void
mk_data_past_end(Builder *B)
{
	tensor(B, "enc.blk.0.attn_q.weight", MMS_T_F32, 8, 0);
	B->cut_end = 1;
}

static void
mk_data_section_past_end(Builder *B)
{
	set_alignment(B, 4096);
	one_tensor(B);
	B->cut_end = 20;
}

static void
mk_overlap(Builder *B)
{
	tensor(B, "a", MMS_T_F32, 16, 0);
	tensor(B, "b", MMS_T_F32, 8, 0);
	B->t[1].fixed_offset = 1;
	B->t[1].offset = 32;
}

static void
mk_overlap_same(Builder *B)
{
	tensor(B, "a", MMS_T_Q8_0, 32, 0);
	tensor(B, "b", MMS_T_F16, 4, 0);
	B->t[1].fixed_offset = 1;
}

static void
mk_overlap_unsorted(Builder *B)
{
	tensor(B, "c", MMS_T_F32, 8, 0);
	tensor(B, "a", MMS_T_F32, 64, 0);
	tensor(B, "b", MMS_T_F32, 4, 0);
	B->t[2].fixed_offset = 1;
	B->t[2].offset = 64;
}

static void
mk_tensor_name_huge(Builder *B)
{
	B->set_n_tensors = 1;
	B->n_tensors = 1;
	put_u64(&B->kv, INT64_MAX);	/* no pairs: these bytes are the tensor info */
	put(&B->kv, "name and then some more bytes of the file", 40);
}

static void
mk_long_key_dup(Builder *B)
{
	static char key[201];

	memset(key, 'k', 200);
	put_u8(kv(B, key, MMS_GGUF_U8), 1);
	put_u8(kv(B, key, MMS_GGUF_U8), 2);
}

static const BadCase bad_cases[] = {
	{"bad magic", mk_bad_magic, MMS_ERR_FORMAT, "bad magic 0x47475547"},
	{"version 0", mk_version0, MMS_ERR_UNSUPPORTED, "unsupported gguf version 0"},
	{"version 1", mk_version1, MMS_ERR_UNSUPPORTED, "unsupported gguf version 1"},
	{"version 4", mk_version4, MMS_ERR_UNSUPPORTED, "unsupported gguf version 4"},
	{"big-endian", mk_big_endian, MMS_ERR_UNSUPPORTED, "big-endian gguf files are not supported"},
	{"n_kv 2^62", mk_kv_absurd, MMS_ERR_FORMAT, "header claims 4611686018427387904 metadata keys"},
	{"n_kv max", mk_kv_max, MMS_ERR_FORMAT, "metadata keys"},
	{"n_tensors 2^62", mk_tensors_absurd, MMS_ERR_FORMAT, "header claims 4611686018427387904 tensors"},
	{"n_tensors 2^60", mk_tensors_2_60, MMS_ERR_FORMAT, "1152921504606846976 tensors"},
	{"n_kv one too many", mk_kv_one_too_many, MMS_ERR_FORMAT, "metadata keys"},
	{"n_tensors one too many", mk_tensor_one_too_many, MMS_ERR_FORMAT, "tensors"},
	{"key length 2^63", mk_key_huge_len, MMS_ERR_FORMAT, "name of metadata key 0 has length 9223372036854775808"},
	{"key past end", mk_key_len_past_end, MMS_ERR_FORMAT, "past the end of the file"},
	{"string value 2^64-1", mk_string_value_huge, MMS_ERR_FORMAT, "string value of metadata key \"s\" has length 18446744073709551615"},
	{"string value past end", mk_string_value_past_end, MMS_ERR_FORMAT, "has length 50"},
	{"empty key", mk_empty_key, MMS_ERR_FORMAT, "metadata key 1 at offset 38 has an empty name"},
	{"kv type 13", mk_kv_type_13, MMS_ERR_FORMAT, "metadata key \"a.b\" has unknown value type 13"},
	{"kv type 2^32-1", mk_kv_type_max, MMS_ERR_FORMAT, "unknown value type 4294967295"},
	{"nested array", mk_nested_array, MMS_ERR_UNSUPPORTED, "metadata key \"nest\" is an array of arrays"},
	{"array of type 42", mk_array_bad_etype, MMS_ERR_FORMAT, "array of unknown value type 42"},
	{"array 2^61 u32", mk_array_absurd, MMS_ERR_FORMAT, "array of 2305843009213693952 u32 elements"},
	{"array 2^64-1 f64", mk_array_u64_max, MMS_ERR_FORMAT, "extends past the end of the file"},
	{"array short", mk_array_short, MMS_ERR_FORMAT, "array of 3 u16 elements"},
	{"string array 2^62", mk_str_array_absurd, MMS_ERR_FORMAT, "\"toks\" claims 4611686018427387904 strings"},
	{"string array element past end", mk_str_array_elem_past_end, MMS_ERR_FORMAT, "array string of metadata key \"toks\" has length 1000"},
	{"bool 2", mk_bool_2, MMS_ERR_FORMAT, "metadata key \"flag\" has bool value 2"},
	{"bool array 7", mk_bool_array_7, MMS_ERR_FORMAT, "bool value 7 in element 2"},
	{"duplicate key", mk_dup_key, MMS_ERR_FORMAT, "metadata key \"a.b\" appears more than once"},
	{"duplicate binary key", mk_dup_key_binary, MMS_ERR_FORMAT, "metadata key \"k??\" appears"},
	{"duplicate long key", mk_long_key_dup, MMS_ERR_FORMAT, "kkkkkkkk...\" appears"},
	{"alignment 0", mk_align_0, MMS_ERR_FORMAT, "general.alignment is 0, must be a nonzero power of two"},
	{"alignment 48", mk_align_48, MMS_ERR_FORMAT, "general.alignment is 48"},
	{"alignment u64", mk_align_u64, MMS_ERR_FORMAT, "general.alignment has type u64, expected u32"},
	{"alignment string", mk_align_str, MMS_ERR_FORMAT, "general.alignment has type string"},
	{"n_dims 0", mk_ndims_0, MMS_ERR_FORMAT, "tensor \"w\" has 0 dimensions (must be 1 to 4)"},
	{"n_dims 5", mk_ndims_5, MMS_ERR_FORMAT, "tensor \"w\" has 5 dimensions"},
	{"ne[1] 0", mk_ne_0, MMS_ERR_FORMAT, "tensor \"w\" has size 0 in dimension 1"},
	{"ne[0] 0", mk_ne0_0, MMS_ERR_FORMAT, "size 0 in dimension 0"},
	{"ne product overflow", mk_product_overflow, MMS_ERR_FORMAT, "tensor \"big\" has too many elements"},
	{"ne product over cap", mk_product_over_cap, MMS_ERR_FORMAT, "too many elements"},
	{"ne product overflow 4d", mk_product_overflow_4d, MMS_ERR_FORMAT, "too many elements"},
	{"q8_0 ne[0] 48", mk_q8_ne0_48, MMS_ERR_FORMAT, "tensor \"q\" of type q8_0 has 48 elements in dimension 0, not a multiple of the block size 32"},
	{"q4_0 ne[0] 16", mk_q4_ne0_16, MMS_ERR_FORMAT, "q4_0 has 16 elements"},
	{"tensor type 3", mk_type_3, MMS_ERR_UNSUPPORTED, "tensor \"enc.blk.0.attn_q.weight\" has unsupported type 3 (q4_1)"},
	{"tensor type 99", mk_type_99, MMS_ERR_UNSUPPORTED, "unsupported type 99"},
	{"tensor type 2^32-1", mk_type_max, MMS_ERR_UNSUPPORTED, "unsupported type 4294967295"},
	{"duplicate tensor", mk_dup_tensor, MMS_ERR_FORMAT, "tensor \"w\" appears more than once"},
	{"empty tensor name", mk_empty_tensor_name, MMS_ERR_FORMAT, "tensor 0 at offset 24 has an empty name"},
	{"tensor name past end", mk_tensor_name_huge, MMS_ERR_FORMAT, "name of tensor 0 has length"},
	{"offset unaligned", mk_offset_unaligned, MMS_ERR_FORMAT, "tensor \"w\" data offset 16 is not a multiple of the alignment 32"},
	{"offset unaligned 64", mk_offset_unaligned_64, MMS_ERR_FORMAT, "offset 32 is not a multiple of the alignment 64"},
	{"offset past end", mk_offset_past_end, MMS_ERR_FORMAT, "tensor \"far\" data (offset 1099511627776, 16 bytes) extends past the end of the file"},
	{"offset wraps", mk_offset_wrap, MMS_ERR_FORMAT, "tensor \"wrap\" data (offset 18446744073709551584, 256 bytes) extends past"},
	{"data past end", mk_data_past_end, MMS_ERR_FORMAT, "tensor \"enc.blk.0.attn_q.weight\" data (offset 0, 32 bytes) extends past the end of the file (127 bytes)"},
	{"data section past end", mk_data_section_past_end, MMS_ERR_FORMAT, "tensor data section starts at offset 4096"},
	{"overlap", mk_overlap, MMS_ERR_FORMAT, "tensors \"a\" (offset 0, 64 bytes) and \"b\" (offset 32) overlap"},
	{"overlap same offset", mk_overlap_same, MMS_ERR_FORMAT, "tensors \"a\" (offset 0, 34 bytes) and \"b\" (offset 0) overlap"},
	{"overlap unsorted", mk_overlap_unsorted, MMS_ERR_FORMAT, "tensors \"a\" (offset 32, 256 bytes) and \"b\" (offset 64) overlap"},
};

static void
test_bad_case(void **state)
{
	const BadCase *c = *state;
	Builder		B;
	uint8_t    *buf;
	size_t		size;

	builder_init(&B);
	c->make(&B);
	buf = build(&B, &size);
	if (c->make == mk_bad_magic)
		buf[3] = 'G';
	expect_fail_buf(buf, size, c->code, c->substr);
	free(buf);
}

static void
test_short_files(void **state)
{
	expect_fail_buf((const uint8_t *) "", 0, MMS_ERR_FORMAT, "0 bytes is too short");
	expect_fail_buf((const uint8_t *) "GGU", 3, MMS_ERR_FORMAT, "too short");
	expect_fail_buf((const uint8_t *) "GGUF\3\0", 6, MMS_ERR_FORMAT,
					"file is truncated: version of the header at offset 4 needs 4 bytes, only 2 remain");
	expect_fail_buf((const uint8_t *) "GGUF\3\0\0\0\0\0", 10, MMS_ERR_FORMAT, "tensor count");
	expect_fail_buf((const uint8_t *) "\x7f" "ELF", 4, MMS_ERR_FORMAT, "bad magic 0x7f454c46");
}

/* ---- dequantization -------------------------------------------------------- */

static uint32_t
bits_of(float f)
{
	uint32_t	u;

	memcpy(&u, &f, 4);
	return u;
}

/* Exact IEEE half to single, written the slow obvious way. */
static float
ref_f16(uint16_t h)
{
	int			e = (h >> 10) & 31;
	int			m = h & 1023;
	float		v;

	if (e == 0)
		v = ldexpf((float) m, -24);
	else if (e == 31)
		v = m != 0 ? NAN : INFINITY;
	else
		v = ldexpf((float) (m + 1024), e - 25);
	return (h & 0x8000) ? -v : v;
}

static void
test_f16_every_value(void **state)
{
	uint16_t   *src = malloc(65536 * 2 + 1);
	float	   *dst = malloc(65536 * sizeof(float));
	MmsError	err = {0};

	for (uint32_t h = 0; h < 65536; h++)
	{
		float		got = mms_f16_to_f32((uint16_t) h);
		float		want = ref_f16((uint16_t) h);

		if (isnan(want))
		{
			/* NaN keeps its sign and payload, as a bit shift would */
			uint32_t	expect = (h & 0x8000) << 16 | 0x7f800000 | (h & 0x3ff) << 13;

			assert_true(isnan(got));
			assert_int_equal(bits_of(got), expect);
		}
		else if (bits_of(got) != bits_of(want))
			fail_msg("f16 0x%04x: got %a, want %a", h, got, want);
		src[h] = (uint16_t) h;
		assert_int_equal(bits_of(mms_bf16_to_f32((uint16_t) h)), h << 16);
	}
	assert_true(mms_f16_to_f32(0x3c00) == 1.0f);
	assert_true(mms_f16_to_f32(0xc000) == -2.0f);
	assert_true(mms_f16_to_f32(0x7bff) == 65504.0f);
	assert_true(mms_f16_to_f32(0x0001) == 0x1p-24f);
	assert_true(mms_f16_to_f32(0x03ff) == 0x3ffp-24f);
	assert_true(mms_f16_to_f32(0x0400) == 0x1p-14f);
	assert_true(isinf(mms_f16_to_f32(0x7c00)) && mms_f16_to_f32(0x7c00) > 0);
	assert_true(isinf(mms_f16_to_f32(0xfc00)) && mms_f16_to_f32(0xfc00) < 0);
	assert_true(isnan(mms_f16_to_f32(0x7e00)));
	assert_true(signbit(mms_f16_to_f32(0x8000)) && mms_f16_to_f32(0x8000) == 0.0f);
	assert_true(mms_bf16_to_f32(0x3f80) == 1.0f);
	assert_true(mms_bf16_to_f32(0x7f7f) == 0x1.fep127f);

	/* the bulk path (chunked, unaligned source) agrees with the scalar one */
	memmove((uint8_t *) src + 1, src, 65536 * 2);
	assert_int_equal(mms_dequantize(MMS_T_F16, (uint8_t *) src + 1, 65536, dst, &err), MMS_OK);
	for (uint32_t h = 0; h < 65536; h++)
		assert_int_equal(bits_of(dst[h]), bits_of(mms_f16_to_f32((uint16_t) h)));
	assert_int_equal(mms_dequantize(MMS_T_BF16, (uint8_t *) src + 1, 65536, dst, &err), MMS_OK);
	for (uint32_t h = 0; h < 65536; h++)
		assert_int_equal(bits_of(dst[h]), h << 16);
	free(src);
	free(dst);
}

static void
test_dequantize_errors(void **state)
{
	uint8_t		src[64] = {0};
	float		dst[64];
	MmsError	err = {0};
	MmsGgufTensor t = {0};

	assert_int_equal(mms_dequantize(MMS_T_Q8_0, src, 16, dst, &err), MMS_ERR_ARG);
	assert_non_null(strstr(err.msg, "not a multiple of the block size 32"));
	check_message_style(&err);
	assert_int_equal(mms_dequantize(MMS_T_Q4_0, src, 33, dst, &err), MMS_ERR_ARG);
	assert_int_equal(mms_dequantize((MmsTensorType) 3, src, 32, dst, &err), MMS_ERR_ARG);
	assert_non_null(strstr(err.msg, "type 3"));
	assert_int_equal(mms_dequantize(MMS_T_F32, NULL, 4, dst, &err), MMS_ERR_ARG);
	assert_int_equal(mms_dequantize(MMS_T_F32, src, 4, NULL, &err), MMS_ERR_ARG);
	assert_int_equal(mms_dequantize(MMS_T_Q8_0, NULL, 0, NULL, &err), MMS_OK);
	assert_int_equal(mms_gguf_dequantize(NULL, dst, &err), MMS_ERR_ARG);
	t.type = MMS_T_F32;
	t.n_elems = 4;
	assert_int_equal(mms_gguf_dequantize(&t, dst, &err), MMS_ERR_ARG);
	t.data = src;
	assert_int_equal(mms_gguf_dequantize(&t, dst, NULL), MMS_OK);
}

static int
hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* One type's records in quant_ref.txt, dequantized at several misalignments. */
static void
test_quant_ref(void **state)
{
	const char *want_type = *state;
	size_t		size;
	uint8_t    *file = mms_test_read_file(MMS_FIXTURE_DIR "quant_ref.txt", &size);
	char	   *text = malloc(size + 1);
	char	   *save = NULL;
	int			records = 0;

	memcpy(text, file, size);
	text[size] = '\0';
	for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
	{
		char		tname[16];
		unsigned long n;
		int			used = 0;
		char	   *p;
		size_t		nbytes;
		uint8_t    *raw;
		float	   *want;
		float	   *got;
		MmsTensorType type;
		MmsError	err = {0};

		if (line[0] == '#' || line[0] == '\0')
			continue;
		assert_int_equal(sscanf(line, "%15s %lu %n", tname, &n, &used), 2);
		if (strcmp(tname, want_type) != 0)
			continue;
		type = strcmp(tname, "f32") == 0 ? MMS_T_F32 :
			strcmp(tname, "f16") == 0 ? MMS_T_F16 :
			strcmp(tname, "bf16") == 0 ? MMS_T_BF16 :
			strcmp(tname, "q8_0") == 0 ? MMS_T_Q8_0 : MMS_T_Q4_0;
		p = line + used;
		nbytes = strcspn(p, " ") / 2;
		assert_int_equal(nbytes, mms_tensor_type_bytes(type, n));
		raw = malloc(nbytes + 8);
		for (size_t i = 0; i < nbytes; i++)
		{
			assert_true(hexval(p[2 * i]) >= 0 && hexval(p[2 * i + 1]) >= 0);
			raw[i] = (uint8_t) (hexval(p[2 * i]) << 4 | hexval(p[2 * i + 1]));
		}
		p += nbytes * 2;
		want = malloc(n * sizeof(float));
		got = malloc(n * sizeof(float));
		for (size_t i = 0; i < n; i++)
		{
			char	   *end;

			want[i] = strtof(p, &end);
			assert_true(end != p);
			p = end;
		}
		for (size_t shift = 0; shift < 8; shift += 3)
		{
			memmove(raw + shift, shift > 0 ? raw + shift - 3 : raw, nbytes);
			assert_int_equal(mms_dequantize(type, raw + shift, n, got, &err), MMS_OK);
			for (size_t i = 0; i < n; i++)
			{
				if (isnan(want[i]))
					assert_true(isnan(got[i]));
				else if (bits_of(got[i]) != bits_of(want[i]))
					fail_msg("%s record %d element %zu: got %.9g, want %.9g",
							 tname, records, i, got[i], want[i]);
			}
		}
		free(raw);
		free(want);
		free(got);
		records++;
	}
	assert_true(records > 0);
	free(text);
	free(file);
}

/* ---- fixture models -------------------------------------------------------- */

static void
test_fixture_models(void **state)
{
	glob_t		gl;
	int			rc = glob(MMS_FIXTURE_DIR "*.gguf", 0, NULL, &gl);

	if (rc != 0 || gl.gl_pathc == 0)
	{
		if (rc == 0)
			globfree(&gl);
		print_message("no test/fixtures/*.gguf yet: skipped\n");
		skip();
	}
	for (size_t f = 0; f < gl.gl_pathc; f++)
	{
		size_t		size;
		uint8_t    *buf = mms_test_read_file(gl.gl_pathv[f], &size);
		MmsGguf		g;
		MmsError	err = {0};
		MmsGgufStr	arch;
		char		key[64];
		int64_t		v;
		uint64_t	budget = UINT64_C(64) << 20;

		if (mms_gguf_parse(buf, size, &g, &err) != MMS_OK)
			fail_msg("%s: %s", gl.gl_pathv[f], err.msg);
		/* a model names its architecture; a tokenizer-only file its tokenizer */
		if (mms_gguf_get_str(&g, "general.architecture", &arch, &err) != 1)
			assert_int_equal(mms_gguf_get_str(&g, "tokenizer.ggml.model", &arch, &err), 1);
		else if (g.n_tensors > 0 &&
				 (mms_gguf_str_eq(arch, "t5") || mms_gguf_str_eq(arch, "t5encoder")))
		{
			snprintf(key, sizeof(key), "%.*s.block_count", (int) arch.len, arch.ptr);
			assert_int_equal(mms_gguf_get_int(&g, key, &v, &err), 1);
			assert_true(v > 0);
			snprintf(key, sizeof(key), "%.*s.embedding_length", (int) arch.len, arch.ptr);
			assert_int_equal(mms_gguf_get_int(&g, key, &v, &err), 1);
			assert_true(v > 0);
			assert_non_null(mms_gguf_find_tensor(&g, "token_embd.weight"));
		}
		if (mms_gguf_find_kv(&g, "tokenizer.ggml.model") != NULL)
		{
			const MmsGgufKV *tok = mms_gguf_find_kv(&g, "tokenizer.ggml.tokens");

			assert_non_null(tok);
			assert_int_equal(tok->type, MMS_GGUF_ARRAY);
			assert_int_equal(tok->arr_type, MMS_GGUF_STRING);
			assert_true(tok->arr_n > 3);
			assert_true(mms_gguf_str_eq(tok->arr_str[1], "</s>"));
		}
		for (uint64_t i = 0; i < g.n_tensors; i++)
		{
			const MmsGgufTensor *t = &g.tensors[i];
			float	   *x;

			if (t->n_elems > budget)
				continue;
			budget -= t->n_elems;
			x = malloc(t->n_elems * sizeof(float));
			assert_non_null(x);
			assert_int_equal(mms_gguf_dequantize(t, x, &err), MMS_OK);
			free(x);
		}
		print_message("%s: %" PRIu64 " keys, %" PRIu64 " tensors\n", gl.gl_pathv[f],
					  g.n_kv, g.n_tensors);
		mms_gguf_free(&g);
		free(buf);
	}
	globfree(&gl);
}

/* ---- fuzzer seed corpus ---------------------------------------------------- */

static void
add_t5_like(Builder *B)
{
	static const float scores[4] = {0, 0, 0, -3.5f};
	static const int32_t types[4] = {3, 3, 2, 1};
	Buf		   *b;

	put_str(kv(B, "general.architecture", MMS_GGUF_STRING), "t5");
	put_u32(kv(B, "t5.context_length", MMS_GGUF_U32), 512);
	put_u32(kv(B, "t5.embedding_length", MMS_GGUF_U32), 32);
	put_u64(kv(B, "t5.block_count", MMS_GGUF_U64), 1);
	put_f32(kv(B, "t5.attention.layer_norm_rms_epsilon", MMS_GGUF_F32), 1e-6f);
	put_str(kv(B, "tokenizer.ggml.model", MMS_GGUF_STRING), "t5");
	b = kv(B, "tokenizer.ggml.tokens", MMS_GGUF_ARRAY);
	put_u32(b, MMS_GGUF_STRING);
	put_u64(b, 4);
	put_str(b, "<pad>");
	put_str(b, "</s>");
	put_str(b, "<unk>");
	put_str(b, "\xe2\x96\x81");
	kv_array(B, "tokenizer.ggml.scores", MMS_GGUF_F32, 4, scores, sizeof(scores));
	kv_array(B, "tokenizer.ggml.token_type", MMS_GGUF_I32, 4, types, sizeof(types));
	put_u8(kv(B, "tokenizer.ggml.add_space_prefix", MMS_GGUF_BOOL), 1);
}

static int
write_corpus(const char *dir)
{
	for (int seed = 0; seed < 5; seed++)
	{
		Builder		B;
		uint8_t    *buf;
		size_t		size;
		char		path[512];
		FILE	   *f;

		builder_init(&B);
		switch (seed)
		{
			case 0:
				add_every_kv(&B);
				add_every_tensor(&B);
				break;
			case 1:
				put_str(kv(&B, "general.name", MMS_GGUF_STRING), "aligned");
				set_alignment(&B, 64);
				add_every_tensor(&B);
				break;
			case 2:
				add_t5_like(&B);
				break;
			case 3:
				B.version = 2;
				add_t5_like(&B);
				tensor(&B, "token_embd.weight", MMS_T_Q4_0, 32, 4);
				tensor(&B, "enc.output_norm.weight", MMS_T_F32, 32, 0);
				break;
			default:
				set_alignment(&B, 8);
				tensor(&B, "enc.blk.0.attn_rel_b.weight", MMS_T_F16, 2, 32);
				tensor(&B, "dec.blk.0.ffn_gate.weight", MMS_T_Q8_0, 32, 2);
				tensor(&B, "output.weight", MMS_T_BF16, 8, 4);
				break;
		}
		buf = build(&B, &size);
		snprintf(path, sizeof(path), "%s/seed%d.gguf", dir, seed);
		f = fopen(path, "wb");
		if (f == NULL || fwrite(buf, 1, size, f) != size || fclose(f) != 0)
		{
			fprintf(stderr, "cannot write %s\n", path);
			return 1;
		}
		printf("wrote %s (%zu bytes)\n", path, size);
		free(buf);
	}
	return 0;
}

int
main(int argc, char **argv)
{
	static const struct CMUnitTest fixed[] = {
		cmocka_unit_test(test_every_kv_type),
		cmocka_unit_test(test_getter_errors),
		cmocka_unit_test(test_every_tensor_type),
		cmocka_unit_test(test_alignments),
		cmocka_unit_test(test_version2_and_trailing_bytes),
		cmocka_unit_test(test_empty_and_metadata_only),
		cmocka_unit_test(test_every_truncation),
		cmocka_unit_test(test_str_eq_and_type_helpers),
		cmocka_unit_test(test_short_files),
		cmocka_unit_test(test_f16_every_value),
		cmocka_unit_test(test_dequantize_errors),
		cmocka_unit_test(test_fixture_models),
	};
	static const char *const quant_types[] = {"f32", "f16", "bf16", "q8_0", "q4_0"};
	static char quant_names[5][32];
	size_t		n_fixed = sizeof(fixed) / sizeof(fixed[0]);
	size_t		n_bad = sizeof(bad_cases) / sizeof(bad_cases[0]);
	size_t		n = 0;
	struct CMUnitTest *tests;
	int			rc;

	if (argc == 3 && strcmp(argv[1], "--write-corpus") == 0)
		return write_corpus(argv[2]);

	tests = calloc(n_fixed + 5 + n_bad, sizeof(*tests));
	for (size_t i = 0; i < n_fixed; i++)
		tests[n++] = fixed[i];
	for (size_t i = 0; i < 5; i++)
	{
		snprintf(quant_names[i], sizeof(quant_names[i]), "test_quant_ref_%s", quant_types[i]);
		tests[n].name = quant_names[i];
		tests[n].test_func = test_quant_ref;
		tests[n++].initial_state = (void *) quant_types[i];
	}
	for (size_t i = 0; i < n_bad; i++)
	{
		tests[n].name = bad_cases[i].name;
		tests[n].test_func = test_bad_case;
		tests[n++].initial_state = (void *) &bad_cases[i];
	}
	rc = _cmocka_run_group_tests("gguf", tests, n, NULL, NULL);
	free(tests);
	return rc;
}
