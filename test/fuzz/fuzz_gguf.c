/*
 * fuzz_gguf.c — libFuzzer target for the GGUF parser and dequantization:
 * parses the input, reads every byte every view points at, runs the getters
 * and dequantizes every tensor. Seeds: test/fuzz/corpus_gguf (written by
 * `build/test/test_gguf --write-corpus test/fuzz/corpus_gguf`).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "t5_meta.h"

/* Dequantized floats per input, so slow inputs stay rare. */
#define FUZZ_MAX_ELEMS ((UINT64_C(64) << 20) / sizeof(float))

static volatile uint64_t sink;

static uint64_t
touch(const void *p, uint64_t n)
{
	const uint8_t *b = p;
	uint64_t	s = 0;

	for (uint64_t i = 0; i < n; i++)
		s += b[i];
	return s;
}

/* A view handed out by the parser must lie inside the input. */
static void
check_inside(const uint8_t *data, size_t size, const void *p, uint64_t n)
{
	const uint8_t *b = p;

	if (n == 0)
		return;
	if (b < data || b > data + size || n > (uint64_t) (data + size - b))
		__builtin_trap();
}

static void
walk_kv(const MmsGguf *g, const uint8_t *data, size_t size, const MmsGgufKV *kv)
{
	char		key[128];
	size_t		klen = kv->key.len < sizeof(key) - 1 ? (size_t) kv->key.len : sizeof(key) - 1;
	int64_t		i;
	double		f;
	int			b;
	MmsGgufStr	s;
	MmsError	err;
	uint64_t	sum;

	check_inside(data, size, kv->key.ptr, kv->key.len);
	sum = touch(kv->key.ptr, kv->key.len);
	if (kv->type == MMS_GGUF_STRING)
	{
		check_inside(data, size, kv->v.s.ptr, kv->v.s.len);
		sum += touch(kv->v.s.ptr, kv->v.s.len);
	}
	else if (kv->type == MMS_GGUF_ARRAY && kv->arr_type == MMS_GGUF_STRING)
	{
		for (uint64_t j = 0; j < kv->arr_n; j++)
		{
			check_inside(data, size, kv->arr_str[j].ptr, kv->arr_str[j].len);
			sum += touch(kv->arr_str[j].ptr, kv->arr_str[j].len);
		}
	}
	else if (kv->type == MMS_GGUF_ARRAY)
	{
		static const uint8_t esize[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

		if (kv->arr_type > MMS_GGUF_F64 || esize[kv->arr_type] == 0)
			__builtin_trap();
		check_inside(data, size, kv->arr_data, kv->arr_n * esize[kv->arr_type]);
		sum += touch(kv->arr_data, kv->arr_n * esize[kv->arr_type]);
	}
	else if (kv->type == MMS_GGUF_BOOL && kv->v.u > 1)
		__builtin_trap();

	/* getters by this key (truncated keys may find nothing: fine) */
	memcpy(key, kv->key.ptr, klen);
	key[klen] = '\0';
	if (mms_gguf_find_kv(g, key) == NULL && memchr(key, '\0', klen) == NULL &&
		klen == kv->key.len)
		__builtin_trap();
	sum += (uint64_t) mms_gguf_get_int(g, key, &i, &err);
	sum += (uint64_t) mms_gguf_get_float(g, key, &f, &err);
	sum += (uint64_t) mms_gguf_get_bool(g, key, &b, &err);
	sum += (uint64_t) mms_gguf_get_str(g, key, &s, &err);
	sink += sum;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	MmsGguf		g;
	MmsError	err;
	uint64_t	budget = FUZZ_MAX_ELEMS;

	/* the header-only parse over a prefix must be as safe, and agree on the metadata */
	if (mms_gguf_parse_prefix(data, size / 2, size, &g, &err) == MMS_OK)
	{
		for (uint64_t k = 0; k < g.n_kv; k++)
			walk_kv(&g, data, size / 2, &g.kv[k]);
		for (uint64_t t = 0; t < g.n_tensors; t++)
			if (g.tensors[t].data != NULL &&
				(g.tensors[t].data < data || g.tensors[t].data + g.tensors[t].n_bytes > data + size / 2))
				__builtin_trap();
		mms_gguf_free(&g);
	}

	if (mms_gguf_parse(data, size, &g, &err) != MMS_OK)
	{
		static const uint8_t zero[sizeof(MmsGguf)];

		/* failure must leave the output zeroed and the message terminated */
		if (memcmp(&g, zero, sizeof(g)) != 0 || memchr(err.msg, '\0', sizeof(err.msg)) == NULL)
			__builtin_trap();
		return 0;
	}
	if (g.alignment == 0 || (g.alignment & (g.alignment - 1)) != 0 ||
		g.data_offset % g.alignment != 0)
		__builtin_trap();

	for (uint64_t k = 0; k < g.n_kv; k++)
		walk_kv(&g, data, size, &g.kv[k]);

	/* what registration runs on every uploaded file: T5 metadata and tensor-table checks */
	{
		MmsT5Info	info;

		if (mms_t5_validate(&g, &info, &err) != MMS_OK && memchr(err.msg, '\0', sizeof(err.msg)) == NULL)
			__builtin_trap();
	}

	for (uint64_t t = 0; t < g.n_tensors; t++)
	{
		const MmsGgufTensor *ti = &g.tensors[t];
		uint64_t	n = 1;
		float	   *x;

		for (int d = 0; d < MMS_GGUF_MAX_DIMS; d++)
			n *= ti->ne[d];
		if (n != ti->n_elems || ti->n_dims < 1 || ti->n_dims > MMS_GGUF_MAX_DIMS ||
			ti->n_bytes != mms_tensor_type_bytes(ti->type, ti->n_elems) ||
			ti->offset % g.alignment != 0 ||
			mms_gguf_find_tensor(&g, "") != NULL)
			__builtin_trap();
		check_inside(data, size, ti->name.ptr, ti->name.len);
		check_inside(data, size, ti->data, ti->n_bytes);
		sink += touch(ti->name.ptr, ti->name.len) + touch(ti->data, ti->n_bytes);

		if (ti->n_elems > budget)
			continue;
		budget -= ti->n_elems;
		x = malloc(ti->n_elems * sizeof(float));
		if (x == NULL)
			continue;
		if (mms_gguf_dequantize(ti, x, &err) != MMS_OK)
			__builtin_trap();
		sink += touch(x, ti->n_elems * sizeof(float));
		free(x);
	}

	/* no two tensors share a name or a byte (quadratic: small inputs only) */
	for (uint64_t t = 0; g.n_tensors <= 512 && t < g.n_tensors; t++)
	{
		for (uint64_t u = t + 1; u < g.n_tensors; u++)
		{
			const MmsGgufTensor *x = &g.tensors[t];
			const MmsGgufTensor *y = &g.tensors[u];

			if (x->name.len == y->name.len &&
				memcmp(x->name.ptr, y->name.ptr, x->name.len) == 0)
				__builtin_trap();
			if (x->data < y->data + y->n_bytes && y->data < x->data + x->n_bytes)
				__builtin_trap();
		}
	}
	mms_gguf_free(&g);
	return 0;
}
