/*
 * tok_vocab.c — the tokenizer's vocabulary: pieces, scores and types from a
 * GGUF file (tokenizer.ggml.*) or plain arrays, the piece tries, which pieces
 * are special or added tokens (and the <extra_id_N> sentinels of a file that
 * has [PADn] pieces in their place), byte fallback. Not the normalizer
 * (tok_normalize.c) nor encoding and decoding.
 */
#include "tok_internal.h"

#include <float.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- tries */

static int
trie_grow_hash(TokTrie *t)
{
	uint64_t	ncap = t->hcap ? t->hcap * 2 : 1024;
	uint64_t   *nkey = calloc(ncap, sizeof(uint64_t));
	uint32_t   *nval = malloc(ncap * sizeof(uint32_t));
	uint64_t	i;

	if (nkey == NULL || nval == NULL)
	{
		free(nkey);
		free(nval);
		return -1;
	}
	for (i = 0; i < t->hcap; i++)
	{
		uint64_t	j;

		if (t->hkey[i] == 0)
			continue;
		for (j = tok_trie_hash(t->hkey[i]) & (ncap - 1); nkey[j] != 0; j = (j + 1) & (ncap - 1))
			;
		nkey[j] = t->hkey[i];
		nval[j] = t->hval[i];
	}
	free(t->hkey);
	free(t->hval);
	t->hkey = nkey;
	t->hval = nval;
	t->hcap = ncap;
	return 0;
}

static int
trie_new_node(TokTrie *t, uint32_t *out)
{
	if (t->n_nodes == t->cap_nodes)
	{
		uint32_t	ncap = t->cap_nodes ? t->cap_nodes * 2 : 256;
		int32_t    *nv;

		if (ncap <= t->cap_nodes)
			return -1;
		nv = realloc(t->value, (size_t) ncap * sizeof(int32_t));
		if (nv == NULL)
			return -1;
		t->value = nv;
		t->cap_nodes = ncap;
	}
	t->value[t->n_nodes] = -1;
	*out = t->n_nodes++;
	return 0;
}

/* An empty trie: the root and a hash table, so lookups never see NULL. */
static int
trie_init(TokTrie *t)
{
	uint32_t	root;

	return (trie_new_node(t, &root) != 0 || trie_grow_hash(t) != 0) ? -1 : 0;
}

/* Inserts s[0..len) -> id; an existing key keeps its first id. */
static int
trie_insert(TokTrie *t, const uint8_t *s, uint64_t len, int32_t id)
{
	uint32_t	node = 0;
	uint64_t	k;

	for (k = 0; k < len; k++)
	{
		uint32_t	child = tok_trie_child(t, node, s[k]);

		if (child == 0)
		{
			if (trie_new_node(t, &child) != 0)
				return -1;
			if (node == 0)
				t->root_child[s[k]] = child;
			else
			{
				uint64_t	key = (((uint64_t) node << 8) | s[k]) + 1;
				uint64_t	i;

				if ((t->n_edges + 1) * 2 > t->hcap && trie_grow_hash(t) != 0)
					return -1;
				for (i = tok_trie_hash(key) & (t->hcap - 1); t->hkey[i] != 0; i = (i + 1) & (t->hcap - 1))
					;
				t->hkey[i] = key;
				t->hval[i] = child;
				t->n_edges++;
			}
		}
		node = child;
	}
	if (t->value[node] < 0)
		t->value[node] = id;
	return 0;
}

/* The id stored for s[0..len), or -1. */
static int32_t
trie_find(const TokTrie *t, const uint8_t *s, uint64_t len)
{
	uint32_t	node = 0;
	uint64_t	k;

	for (k = 0; k < len; k++)
	{
		node = tok_trie_child(t, node, s[k]);
		if (node == 0)
			return -1;
	}
	return len > 0 ? t->value[node] : -1;
}

static void
trie_free(TokTrie *t)
{
	free(t->value);
	free(t->hkey);
	free(t->hval);
}
/* ------------------------------------------------------------- building */

static int
parse_byte_piece(const char *s, uint64_t len)
{
	int			v = 0;
	uint64_t	i;

	if (len != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>')
		return -1;
	for (i = 3; i < 5; i++)
	{
		char		c = s[i];

		v <<= 4;
		if (c >= '0' && c <= '9')
			v |= c - '0';
		else if (c >= 'A' && c <= 'F')
			v |= c - 'A' + 10;
		else
			return -1;
	}
	return v;
}

static MmsStatus
check_special_id(int32_t id, int32_t n, const char *what, MmsError *err)
{
	if (id < -1 || id >= n)
		return mms_fail(err, MMS_ERR_MODEL, "%s id %d is outside the vocabulary of %d pieces", what, id, n);
	return MMS_OK;
}

/*
 * N when s is "<extra_id_N>" as transformers spells a sentinel (0 <= N < 100,
 * no leading zero), else -1.
 */
static int
sentinel_number(const char *s, uint64_t len)
{
	static const char prefix[] = "<extra_id_";
	const uint64_t plen = sizeof(prefix) - 1;

	if (len < plen + 2 || len > plen + 3 || memcmp(s, prefix, plen) != 0 || s[len - 1] != '>')
		return -1;
	if (len == plen + 2)
		return (s[plen] >= '0' && s[plen] <= '9') ? s[plen] - '0' : -1;
	if (s[plen] < '1' || s[plen] > '9' || s[plen + 1] < '0' || s[plen + 1] > '9')
		return -1;
	return (s[plen] - '0') * 10 + (s[plen + 1] - '0');
}

static int
insert_piece(MmsTokenizer *t, const uint8_t *s, uint64_t len, int32_t id, int in_pieces, int in_added)
{
	if (in_pieces)
	{
		if (trie_insert(&t->pieces, s, len, id) != 0)
			return -1;
		if (len > t->max_piece_len)
			t->max_piece_len = (size_t) len;
	}
	if (in_added)
	{
		if (trie_insert(&t->added, s, len, id) != 0)
			return -1;
		t->has_added = 1;
		if (len > t->max_added_len)
			t->max_added_len = (size_t) len;
	}
	return 0;
}

/*
 * Fills the tries and the flags. Viterbi matches NORMAL and USER_DEFINED
 * pieces, as SentencePiece does, and also CONTROL pieces and sentinels,
 * which transformers' Unigram model holds as pieces (so "＜/s＞", normalized
 * to "</s>", is eos there); UNKNOWN stays out, so that matched text never
 * fuses with unknown characters. The special and added tokens, split out of
 * the raw text before SentencePiece runs, are the CONTROL, UNKNOWN and
 * USER_DEFINED pieces and the sentinels.
 *
 * Sentinels: llama.cpp's converter writes transformers' <extra_id_N> as
 * USER_DEFINED pieces when the checkpoint has added_tokens.json, else leaves
 * "[PADn]" UNUSED pieces in their place. transformers numbers them down from
 * the last of the 100 ids after the SentencePiece pieces, which in a
 * converted file are the first 100 of the trailing run of UNUSED pieces; so
 * when no piece spells a sentinel and that run has 100 pieces or more,
 * "<extra_id_N>" means id sentinel_top - N.
 */
static int
build_tries(MmsTokenizer *t)
{
	int32_t		i;
	int32_t		run = t->n_pieces;
	int			spelled = 0;

	if (trie_init(&t->pieces) != 0 || trie_init(&t->added) != 0)
		return -1;
	for (i = 0; i < t->n_pieces; i++)
	{
		const uint8_t *s = (const uint8_t *) t->piece_bytes + t->piece_off[i];
		uint64_t	len = t->piece_off[i + 1] - t->piece_off[i];
		uint8_t		type = t->types[i];

		if (type == MMS_PIECE_CONTROL || type == MMS_PIECE_USER_DEFINED)
		{
			t->flags[i] |= TOK_F_ADDED_SCORE;
			if (sentinel_number((const char *) s, len) >= 0)
			{
				t->flags[i] |= TOK_F_SENTINEL | TOK_F_SPECIAL;
				spelled = 1;
			}
		}
		if (type == MMS_PIECE_CONTROL || type == MMS_PIECE_UNKNOWN)
			t->flags[i] |= TOK_F_SPECIAL;
		if (len == 0 || type == MMS_PIECE_UNUSED || type == MMS_PIECE_BYTE)
			continue;
		if (insert_piece(t, s, len, i, type != MMS_PIECE_UNKNOWN, type != MMS_PIECE_NORMAL) != 0)
			return -1;
	}

	t->sentinel_top = -1;
	while (run > 0 && t->types[run - 1] == MMS_PIECE_UNUSED)
		run--;
	if (!spelled && t->n_pieces - run >= TOK_N_SENTINELS)
	{
		t->sentinel_top = run + TOK_N_SENTINELS - 1;
		for (i = 0; i < TOK_N_SENTINELS; i++)
		{
			char		name[16];
			int			len = snprintf(name, sizeof(name), "<extra_id_%d>", (int) i);

			t->flags[t->sentinel_top - i] |= TOK_F_ADDED_SCORE | TOK_F_SPECIAL | TOK_F_SENTINEL;
			if (insert_piece(t, (const uint8_t *) name, (uint64_t) len, t->sentinel_top - i, 1, 1) != 0)
				return -1;
		}
	}
	return 0;
}

MmsStatus
mms_tok_create(const MmsTokenizerSpec *spec, MmsTokenizer **out, MmsError *err)
{
	MmsTokenizer *t;
	uint64_t	total = 0;
	int32_t		i;
	int			b;
	MmsStatus	st;

	*out = NULL;
	if (spec == NULL || spec->n_pieces <= 0 || spec->pieces == NULL)
		return mms_fail(err, MMS_ERR_MODEL, "tokenizer has no pieces");
	for (i = 0; i < spec->n_pieces; i++)
	{
		if (spec->pieces[i].len > 0 && spec->pieces[i].ptr == NULL)
			return mms_fail(err, MMS_ERR_MODEL, "piece %d has no data", i);
		total += spec->pieces[i].len;
		if (total > ((uint64_t) 1 << 32))
			return mms_fail(err, MMS_ERR_LIMIT, "tokenizer pieces exceed 4 GB");
	}

	t = calloc(1, sizeof(MmsTokenizer));
	if (t == NULL)
		return mms_fail(err, MMS_ERR_NOMEM, "out of memory creating tokenizer");
	t->n_pieces = spec->n_pieces;
	t->add_space_prefix = spec->add_space_prefix != 0;
	t->remove_extra_whitespaces = spec->remove_extra_whitespaces != 0;
	t->eos_id = spec->eos_id;
	t->unk_id = spec->unk_id;
	t->pad_id = spec->pad_id;
	t->piece_bytes = malloc(total + 1);
	t->piece_off = malloc(((size_t) t->n_pieces + 1) * sizeof(uint64_t));
	t->scores = malloc((size_t) t->n_pieces * sizeof(float));
	t->types = malloc((size_t) t->n_pieces);
	t->flags = calloc((size_t) t->n_pieces, 1);
	t->byte_val = malloc((size_t) t->n_pieces * sizeof(int16_t));
	if (!t->piece_bytes || !t->piece_off || !t->scores || !t->types || !t->flags || !t->byte_val)
	{
		mms_tok_free(t);
		return mms_fail(err, MMS_ERR_NOMEM, "out of memory creating tokenizer");
	}

	/* SentencePiece starts from FLT_MAX / FLT_MIN, so an all-negative vocab
	 * keeps max_score at FLT_MIN: user-defined pieces then score about -0.1 */
	t->min_score = FLT_MAX;
	t->max_score = FLT_MIN;
	for (b = 0; b < 256; b++)
		t->byte_id[b] = -1;
	total = 0;
	for (i = 0; i < t->n_pieces; i++)
	{
		int32_t		type = spec->types ? spec->types[i] : MMS_PIECE_NORMAL;

		if (type < MMS_PIECE_NORMAL || type > MMS_PIECE_BYTE)
		{
			mms_tok_free(t);
			return mms_fail(err, MMS_ERR_MODEL, "piece %d has unknown type %d", i, type);
		}
		t->types[i] = (uint8_t) type;
		t->scores[i] = spec->scores ? spec->scores[i] : 0.0f;
		t->piece_off[i] = total;
		if (spec->pieces[i].len > 0)
			memcpy(t->piece_bytes + total, spec->pieces[i].ptr, spec->pieces[i].len);
		total += spec->pieces[i].len;
		t->byte_val[i] = -1;
		if (type == MMS_PIECE_BYTE)
		{
			b = parse_byte_piece(spec->pieces[i].ptr, spec->pieces[i].len);
			if (b < 0)
			{
				mms_tok_free(t);
				return mms_fail(err, MMS_ERR_MODEL, "byte piece %d is not of the form <0xNN>", i);
			}
			t->byte_val[i] = (int16_t) b;
			if (t->byte_id[b] < 0)
				t->byte_id[b] = i;
		}
		if (type == MMS_PIECE_NORMAL)
		{
			if (t->scores[i] < t->min_score)
				t->min_score = t->scores[i];
			if (t->scores[i] > t->max_score)
				t->max_score = t->scores[i];
		}
		if (type == MMS_PIECE_UNKNOWN && t->unk_id < 0)
			t->unk_id = i;
	}
	t->piece_off[t->n_pieces] = total;
	t->piece_bytes[total] = '\0';
	/* SentencePiece falls back to bytes only with all 256 byte pieces */
	t->byte_fallback = 1;
	for (b = 0; b < 256; b++)
		if (t->byte_id[b] < 0)
			t->byte_fallback = 0;

	if ((st = check_special_id(t->eos_id, t->n_pieces, "eos", err)) != MMS_OK ||
		(st = check_special_id(t->pad_id, t->n_pieces, "padding", err)) != MMS_OK ||
		(st = check_special_id(t->unk_id, t->n_pieces, "unknown", err)) != MMS_OK)
	{
		mms_tok_free(t);
		return st;
	}
	if (t->unk_id < 0)
	{
		mms_tok_free(t);
		return mms_fail(err, MMS_ERR_MODEL, "tokenizer has no unknown piece");
	}

	if (build_tries(t) != 0)
	{
		mms_tok_free(t);
		return mms_fail(err, MMS_ERR_NOMEM, "out of memory building the piece trie");
	}
	/*
	 * A lattice step is a piece id and a length. Real vocabularies (32k
	 * pieces of a few dozen bytes) leave room for both in 31 bits, which
	 * makes backtracking one load per token; else the length comes from
	 * piece_off.
	 */
	while (t->step_shift < 31 && ((uint64_t) 1 << t->step_shift) < (uint64_t) t->n_pieces)
		t->step_shift++;
	if (t->step_shift < 31 &&
		(t->max_piece_len > 4 ? t->max_piece_len : 4) < ((uint64_t) 1 << (31 - t->step_shift)))
		t->step_mul = (uint32_t) 1 << t->step_shift;
	/* a forged vocabulary may give the unknown id to a matchable piece */
	t->unk_matchable =
		trie_find(&t->pieces, (const uint8_t *) t->piece_bytes + t->piece_off[t->unk_id],
				  t->piece_off[t->unk_id + 1] - t->piece_off[t->unk_id]) == t->unk_id;

	if ((st = mms_tok_charsmap_load(t, spec->charsmap, spec->charsmap_len, err)) != MMS_OK)
	{
		mms_tok_free(t);
		return st;
	}
	mms_tok_plain_init(t);
	*out = t;
	return MMS_OK;
}

void
mms_tok_free(MmsTokenizer *tok)
{
	if (tok == NULL)
		return;
	free(tok->piece_bytes);
	free(tok->piece_off);
	free(tok->scores);
	free(tok->types);
	free(tok->flags);
	free(tok->byte_val);
	trie_free(&tok->pieces);
	trie_free(&tok->added);
	free(tok->units);
	free(tok->pool);
	free(tok);
}

/* Reads an integer array element of any integer width. */
static int
gguf_arr_int(const MmsGgufKV *kv, uint64_t i, int64_t *v)
{
	const uint8_t *p;

	switch (kv->arr_type)
	{
		case MMS_GGUF_U8:
			*v = kv->arr_data[i];
			return 1;
		case MMS_GGUF_I8:
			*v = (int8_t) kv->arr_data[i];
			return 1;
		case MMS_GGUF_U16:
		case MMS_GGUF_I16:
			p = kv->arr_data + i * 2;
			*v = (uint16_t) (p[0] | p[1] << 8);
			if (kv->arr_type == MMS_GGUF_I16)
				*v = (int16_t) *v;
			return 1;
		case MMS_GGUF_U32:
		case MMS_GGUF_I32:
			p = kv->arr_data + i * 4;
			*v = (uint32_t) p[0] | (uint32_t) p[1] << 8 | (uint32_t) p[2] << 16 | (uint32_t) p[3] << 24;
			if (kv->arr_type == MMS_GGUF_I32)
				*v = (int32_t) *v;
			return 1;
		default:
			return 0;
	}
}

static MmsStatus
gguf_special_id(const MmsGguf *g, const char *key, int32_t *id, MmsError *err)
{
	int64_t		v;
	int			r = mms_gguf_get_int(g, key, &v, err);

	if (r < 0)
		return MMS_ERR_MODEL;
	if (r == 0)
		return MMS_OK;
	if (v < 0 || v > INT32_MAX)
		return mms_fail(err, MMS_ERR_MODEL, "%s is out of range (%lld)", key, (long long) v);
	*id = (int32_t) v;
	return MMS_OK;
}

MmsStatus
mms_tok_load_gguf(const MmsGguf *g, MmsTokenizer **out, MmsError *err)
{
	MmsTokenizerSpec spec;
	const MmsGgufKV *kv_tok;
	const MmsGgufKV *kv_scores;
	const MmsGgufKV *kv_types;
	const MmsGgufKV *kv_cmap;
	MmsGgufStr	model;
	float	   *scores = NULL;
	int32_t    *types = NULL;
	uint64_t	i;
	int			r;
	MmsStatus	st;

	*out = NULL;
	memset(&spec, 0, sizeof(spec));
	r = mms_gguf_get_str(g, "tokenizer.ggml.model", &model, err);
	if (r < 0)
		return MMS_ERR_MODEL;
	if (r == 0)
		return mms_fail(err, MMS_ERR_MODEL, "tokenizer.ggml.model is missing");
	if (!mms_gguf_str_eq(model, "t5"))
		return mms_fail(err, MMS_ERR_UNSUPPORTED, "tokenizer model \"%.*s\" is not supported (want \"t5\")",
						(int) (model.len > 64 ? 64 : model.len), model.ptr);

	kv_tok = mms_gguf_find_kv(g, "tokenizer.ggml.tokens");
	if (kv_tok == NULL || kv_tok->type != MMS_GGUF_ARRAY || kv_tok->arr_type != MMS_GGUF_STRING)
		return mms_fail(err, MMS_ERR_MODEL, "tokenizer.ggml.tokens is missing or not a string array");
	if (kv_tok->arr_n == 0 || kv_tok->arr_n > INT32_MAX)
		return mms_fail(err, MMS_ERR_MODEL, "tokenizer.ggml.tokens has %llu entries",
						(unsigned long long) kv_tok->arr_n);
	spec.n_pieces = (int32_t) kv_tok->arr_n;
	spec.pieces = kv_tok->arr_str;

	kv_scores = mms_gguf_find_kv(g, "tokenizer.ggml.scores");
	if (kv_scores != NULL)
	{
		if (kv_scores->type != MMS_GGUF_ARRAY || kv_scores->arr_type != MMS_GGUF_F32 ||
			kv_scores->arr_n != kv_tok->arr_n)
			return mms_fail(err, MMS_ERR_MODEL, "tokenizer.ggml.scores must be %llu f32 values",
							(unsigned long long) kv_tok->arr_n);
		scores = malloc(kv_tok->arr_n * sizeof(float));
		if (scores == NULL)
			return mms_fail(err, MMS_ERR_NOMEM, "out of memory loading scores");
		for (i = 0; i < kv_tok->arr_n; i++)
		{
			const uint8_t *p = kv_scores->arr_data + i * 4;
			uint32_t	bits = (uint32_t) p[0] | (uint32_t) p[1] << 8 |
				(uint32_t) p[2] << 16 | (uint32_t) p[3] << 24;

			memcpy(&scores[i], &bits, sizeof(float));
		}
		spec.scores = scores;
	}

	kv_types = mms_gguf_find_kv(g, "tokenizer.ggml.token_type");
	if (kv_types != NULL)
	{
		if (kv_types->type != MMS_GGUF_ARRAY || kv_types->arr_n != kv_tok->arr_n)
		{
			free(scores);
			return mms_fail(err, MMS_ERR_MODEL, "tokenizer.ggml.token_type must have %llu entries",
							(unsigned long long) kv_tok->arr_n);
		}
		types = malloc(kv_tok->arr_n * sizeof(int32_t));
		if (types == NULL)
		{
			free(scores);
			return mms_fail(err, MMS_ERR_NOMEM, "out of memory loading token types");
		}
		for (i = 0; i < kv_tok->arr_n; i++)
		{
			int64_t		v;

			if (!gguf_arr_int(kv_types, i, &v))
			{
				free(scores);
				free(types);
				return mms_fail(err, MMS_ERR_MODEL, "tokenizer.ggml.token_type is not an integer array");
			}
			types[i] = (v < INT32_MIN || v > INT32_MAX) ? 0 : (int32_t) v;
		}
		spec.types = types;
	}

	/* SentencePiece's defaults when a converter left the flags out */
	spec.add_space_prefix = 1;
	spec.remove_extra_whitespaces = 1;
	if (mms_gguf_get_bool(g, "tokenizer.ggml.add_space_prefix", &spec.add_space_prefix, err) < 0 ||
		mms_gguf_get_bool(g, "tokenizer.ggml.remove_extra_whitespaces",
						  &spec.remove_extra_whitespaces, err) < 0)
	{
		free(scores);
		free(types);
		return MMS_ERR_MODEL;
	}

	kv_cmap = mms_gguf_find_kv(g, "tokenizer.ggml.precompiled_charsmap");
	if (kv_cmap != NULL)
	{
		if (kv_cmap->type != MMS_GGUF_ARRAY ||
			(kv_cmap->arr_type != MMS_GGUF_U8 && kv_cmap->arr_type != MMS_GGUF_I8))
		{
			free(scores);
			free(types);
			return mms_fail(err, MMS_ERR_MODEL, "tokenizer.ggml.precompiled_charsmap is not a byte array");
		}
		spec.charsmap = kv_cmap->arr_data;
		spec.charsmap_len = (size_t) kv_cmap->arr_n;
	}

	spec.eos_id = -1;
	spec.unk_id = -1;
	spec.pad_id = -1;
	if ((st = gguf_special_id(g, "tokenizer.ggml.eos_token_id", &spec.eos_id, err)) != MMS_OK ||
		(st = gguf_special_id(g, "tokenizer.ggml.unknown_token_id", &spec.unk_id, err)) != MMS_OK ||
		(st = gguf_special_id(g, "tokenizer.ggml.padding_token_id", &spec.pad_id, err)) != MMS_OK)
	{
		free(scores);
		free(types);
		return st;
	}

	st = mms_tok_create(&spec, out, err);
	free(scores);
	free(types);
	return st;
}

int32_t
mms_tok_n_pieces(const MmsTokenizer *tok)
{
	return tok->n_pieces;
}

int32_t
mms_tok_eos_id(const MmsTokenizer *tok)
{
	return tok->eos_id;
}

int32_t
mms_tok_unk_id(const MmsTokenizer *tok)
{
	return tok->unk_id;
}

int32_t
mms_tok_pad_id(const MmsTokenizer *tok)
{
	return tok->pad_id;
}
