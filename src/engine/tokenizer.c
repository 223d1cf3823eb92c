/*
 * tokenizer.c — SentencePiece unigram encoding and decoding, matching the C++
 * library (normalizer.cc, unigram_model.cc EncodeOptimized, DecodeIds) id for
 * id. Owns the vocabulary tries and the precompiled charsmap; not the GGUF
 * parsing (gguf.c) nor any model weights.
 */
#include "tokenizer.h"

#include <stdlib.h>
#include <string.h>
#include <float.h>

/* Largest normalized text we tokenize: positions are kept in 32 bits. */
#define TOK_MAX_NORM_BYTES ((size_t) 1 << 30)

/* What SentencePiece's decoder prints for <unk> (kDefaultUnknownSymbol). */
static const char kUnkSurface[] = " \xE2\x81\x87 ";
static const char kSpaceSymbol[] = "\xE2\x96\x81";	/* U+2581 */
static const char kReplacement[] = "\xEF\xBF\xBD";	/* U+FFFD */

/*
 * Byte trie over piece strings. Children live in one open-addressing hash
 * keyed by (parent node, byte), so a walk costs one probe per byte and the
 * whole thing is a few flat arrays. Root children get a direct table since
 * every walk starts there.
 */
typedef struct PieceTrie
{
	uint32_t	n_nodes;
	uint32_t	cap_nodes;
	int32_t    *value;			/* piece id ending at node, or -1 */
	uint32_t	root_child[256];	/* 0 = none (node 0 is the root) */
	uint64_t   *hkey;			/* ((parent << 8) | byte) + 1; 0 = empty */
	uint32_t   *hval;
	uint64_t	hcap;			/* power of two */
	uint64_t	n_edges;
} PieceTrie;

struct MmsTokenizer
{
	int32_t		n_pieces;
	char	   *piece_bytes;	/* all piece strings back to back */
	uint64_t   *piece_off;		/* n_pieces + 1 offsets into piece_bytes */
	float	   *scores;
	uint8_t    *types;
	int16_t    *byte_val;		/* BYTE pieces: the byte; else -1 */
	int			add_space_prefix;
	int			remove_extra_whitespaces;
	int32_t		eos_id;
	int32_t		unk_id;
	int32_t		pad_id;
	float		min_score;		/* over NORMAL pieces, as SentencePiece */
	float		max_score;
	PieceTrie	pieces;			/* NORMAL and USER_DEFINED */
	PieceTrie	user;			/* USER_DEFINED only: the normalizer's matcher */
	int			has_user;

	/* precompiled charsmap: Darts-clone double array + replacement pool */
	uint32_t   *units;			/* host order */
	uint32_t	n_units;
	char	   *pool;			/* pool_len bytes plus a guard NUL */
	uint32_t	pool_len;
	uint32_t	pool_end;		/* valid rule offsets are below this */

	/* ASCII bytes that no rule, user symbol or space handling touches */
	uint8_t		plain[256];
};

/* ---------------------------------------------------------------- tries */

static uint64_t
trie_hash(uint64_t key)
{
	key ^= key >> 29;
	key *= 0x9E3779B97F4A7C15ULL;
	return key ^ (key >> 32);
}

static uint32_t
trie_child(const PieceTrie *t, uint32_t node, uint8_t byte)
{
	uint64_t	key;
	uint64_t	i;

	if (node == 0)
		return t->root_child[byte];
	key = (((uint64_t) node << 8) | byte) + 1;
	for (i = trie_hash(key) & (t->hcap - 1);; i = (i + 1) & (t->hcap - 1))
	{
		if (t->hkey[i] == key)
			return t->hval[i];
		if (t->hkey[i] == 0)
			return 0;
	}
}

static int
trie_grow_hash(PieceTrie *t)
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
		for (j = trie_hash(t->hkey[i]) & (ncap - 1); nkey[j] != 0; j = (j + 1) & (ncap - 1))
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
trie_new_node(PieceTrie *t, uint32_t *out)
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
trie_init(PieceTrie *t)
{
	uint32_t	root;

	return (trie_new_node(t, &root) != 0 || trie_grow_hash(t) != 0) ? -1 : 0;
}

/* Inserts s[0..len) -> id; an existing key keeps its first id. */
static int
trie_insert(PieceTrie *t, const uint8_t *s, uint64_t len, int32_t id)
{
	uint32_t	node = 0;
	uint64_t	k;

	for (k = 0; k < len; k++)
	{
		uint32_t	child = trie_child(t, node, s[k]);

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
				for (i = trie_hash(key) & (t->hcap - 1); t->hkey[i] != 0; i = (i + 1) & (t->hcap - 1))
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

static void
trie_free(PieceTrie *t)
{
	free(t->value);
	free(t->hkey);
	free(t->hval);
}

/* ------------------------------------------------------------- charsmap */

/* Darts-clone unit fields. */
static inline uint32_t
dunit_offset(uint32_t u)
{
	return (u >> 10) << ((u & (1U << 9)) >> 6);
}

static inline uint32_t
dunit_label(uint32_t u)
{
	return u & ((1U << 31) | 0xFF);
}

static inline int
dunit_has_leaf(uint32_t u)
{
	return (u >> 8) & 1;
}

/*
 * Checks every rule's pool offset in one pass over the array. A unit whose
 * label is a byte (bit 31 clear) and that has a leaf is a trie node; its leaf
 * must name a NUL-terminated string in the pool. Every node a lookup can
 * reach is such a unit, so encoding only needs per-step bounds checks after
 * this. (darts-clone leaves unused units with has_leaf clear, so genuine
 * blobs pass; a forged unreachable unit may be rejected, which is fine.)
 */
static MmsStatus
charsmap_validate(const MmsTokenizer *t, MmsError *err)
{
	uint32_t	i;

	for (i = 0; i < t->n_units; i++)
	{
		uint32_t	u = t->units[i];
		uint32_t	leaf;

		if ((u & 0x80000000U) || !dunit_has_leaf(u))
			continue;
		leaf = i ^ dunit_offset(u);
		if (leaf >= t->n_units || (t->units[leaf] & 0x7FFFFFFFU) >= t->pool_end)
			return mms_fail(err, MMS_ERR_MODEL,
							"precompiled_charsmap has a rule outside its string pool");
	}
	return MMS_OK;
}

static MmsStatus
charsmap_load(MmsTokenizer *t, const uint8_t *blob, size_t len, MmsError *err)
{
	uint32_t	trie_size;
	uint32_t	i;

	if (blob == NULL || len == 0)
		return MMS_OK;
	if (len <= 4)
		return mms_fail(err, MMS_ERR_MODEL, "precompiled_charsmap is truncated (%zu bytes)", len);
	trie_size = (uint32_t) blob[0] | (uint32_t) blob[1] << 8 |
		(uint32_t) blob[2] << 16 | (uint32_t) blob[3] << 24;
	/* SentencePiece's own check: the trie must leave room for the pool */
	if ((uint64_t) trie_size + 4 > len)
		return mms_fail(err, MMS_ERR_MODEL,
						"precompiled_charsmap trie size %u exceeds the blob (%zu bytes)", trie_size, len);
	if (trie_size < 4)
		return mms_fail(err, MMS_ERR_MODEL, "precompiled_charsmap has an empty trie");
	if (len - 4 - trie_size >= (size_t) UINT32_MAX)
		return mms_fail(err, MMS_ERR_MODEL, "precompiled_charsmap string pool is too large");

	t->n_units = trie_size / 4;
	t->units = malloc((size_t) t->n_units * sizeof(uint32_t));
	t->pool_len = (uint32_t) (len - 4 - trie_size);
	t->pool = malloc((size_t) t->pool_len + 1);
	if (t->units == NULL || t->pool == NULL)
		return mms_fail(err, MMS_ERR_NOMEM, "out of memory loading precompiled_charsmap");
	for (i = 0; i < t->n_units; i++)
	{
		const uint8_t *p = blob + 4 + (size_t) i * 4;

		t->units[i] = (uint32_t) p[0] | (uint32_t) p[1] << 8 |
			(uint32_t) p[2] << 16 | (uint32_t) p[3] << 24;
	}
	memcpy(t->pool, blob + 4 + trie_size, t->pool_len);
	t->pool[t->pool_len] = '\0';
	/* offsets at or past the last NUL would run off the pool */
	for (t->pool_end = t->pool_len; t->pool_end > 0 && t->pool[t->pool_end - 1] != '\0'; t->pool_end--)
		;
	return charsmap_validate(t, err);
}

/*
 * Longest charsmap rule that is a prefix of s[0..len) (Darts
 * commonPrefixSearch, keeping the longest). Returns its byte length, 0 if none.
 */
static size_t
charsmap_match(const MmsTokenizer *t, const uint8_t *s, size_t len, const char **repl)
{
	uint32_t	id;
	size_t		best = 0;
	size_t		i;

	if (t->n_units == 0)
		return 0;
	id = dunit_offset(t->units[0]);
	for (i = 0; i < len; i++)
	{
		uint32_t	unit;

		id ^= s[i];
		if (id >= t->n_units)
			break;
		unit = t->units[id];
		if (dunit_label(unit) != s[i])
			break;
		id ^= dunit_offset(unit);
		if (dunit_has_leaf(unit))
		{
			uint32_t	v;

			if (id >= t->n_units)
				break;
			v = t->units[id] & 0x7FFFFFFFU;
			if (v >= t->pool_end)
				break;
			best = i + 1;
			*repl = t->pool + v;
		}
	}
	return best;
}

/* ----------------------------------------------------------------- UTF-8 */

/* SentencePiece's OneCharLen: the lead byte's claim, not validated. */
static inline size_t
one_char_len(uint8_t b)
{
	static const uint8_t tab[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};

	return tab[b >> 4];
}

static inline int
is_trail(uint8_t b)
{
	return (b & 0xC0) == 0x80;
}

/*
 * SentencePiece's IsValidDecodeUTF8: length of the valid character at s, or 0
 * (malformed: overlong, surrogate, > U+10FFFF, truncated, stray byte).
 */
static size_t
utf8_valid_len(const uint8_t *s, size_t len)
{
	uint32_t	cp;

	if (s[0] < 0x80)
		return 1;
	if (len >= 2 && (s[0] & 0xE0) == 0xC0)
	{
		cp = ((uint32_t) (s[0] & 0x1F) << 6) | (s[1] & 0x3F);
		return (is_trail(s[1]) && cp >= 0x80) ? 2 : 0;
	}
	if (len >= 3 && (s[0] & 0xF0) == 0xE0)
	{
		cp = ((uint32_t) (s[0] & 0x0F) << 12) | ((uint32_t) (s[1] & 0x3F) << 6) | (s[2] & 0x3F);
		return (is_trail(s[1]) && is_trail(s[2]) && cp >= 0x800 &&
				(cp < 0xD800 || cp >= 0xE000)) ? 3 : 0;
	}
	if (len >= 4 && (s[0] & 0xF8) == 0xF0)
	{
		cp = ((uint32_t) (s[0] & 0x07) << 18) | ((uint32_t) (s[1] & 0x3F) << 12) |
			((uint32_t) (s[2] & 0x3F) << 6) | (s[3] & 0x3F);
		return (is_trail(s[1]) && is_trail(s[2]) && is_trail(s[3]) &&
				cp >= 0x10000 && cp <= 0x10FFFF) ? 4 : 0;
	}
	return 0;
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

MmsStatus
mms_tok_create(const MmsTokenizerSpec *spec, MmsTokenizer **out, MmsError *err)
{
	MmsTokenizer *t;
	uint64_t	total = 0;
	int32_t		i;
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
	t->byte_val = malloc((size_t) t->n_pieces * sizeof(int16_t));
	if (!t->piece_bytes || !t->piece_off || !t->scores || !t->types || !t->byte_val)
	{
		mms_tok_free(t);
		return mms_fail(err, MMS_ERR_NOMEM, "out of memory creating tokenizer");
	}

	/* SentencePiece starts from FLT_MAX / FLT_MIN, so an all-negative vocab
	 * keeps max_score at FLT_MIN: user-defined pieces then score about -0.1 */
	t->min_score = FLT_MAX;
	t->max_score = FLT_MIN;
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
			int			b = parse_byte_piece(spec->pieces[i].ptr, spec->pieces[i].len);

			if (b < 0)
			{
				mms_tok_free(t);
				return mms_fail(err, MMS_ERR_MODEL, "byte piece %d is not of the form <0xNN>", i);
			}
			t->byte_val[i] = (int16_t) b;
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

	if (trie_init(&t->pieces) != 0 || trie_init(&t->user) != 0)
	{
		mms_tok_free(t);
		return mms_fail(err, MMS_ERR_NOMEM, "out of memory building the piece trie");
	}
	/* Only NORMAL and USER_DEFINED pieces can match text; UNUSED ones sit in
	 * SentencePiece's trie but are skipped, which is the same as absent. */
	for (i = 0; i < t->n_pieces; i++)
	{
		const uint8_t *s = (const uint8_t *) t->piece_bytes + t->piece_off[i];
		uint64_t	len = t->piece_off[i + 1] - t->piece_off[i];

		if (len == 0 || (t->types[i] != MMS_PIECE_NORMAL && t->types[i] != MMS_PIECE_USER_DEFINED))
			continue;
		if (trie_insert(&t->pieces, s, len, i) != 0 ||
			(t->types[i] == MMS_PIECE_USER_DEFINED && trie_insert(&t->user, s, len, i) != 0))
		{
			mms_tok_free(t);
			return mms_fail(err, MMS_ERR_NOMEM, "out of memory building the piece trie");
		}
		if (t->types[i] == MMS_PIECE_USER_DEFINED)
			t->has_user = 1;
	}

	if ((st = charsmap_load(t, spec->charsmap, spec->charsmap_len, err)) != MMS_OK)
	{
		mms_tok_free(t);
		return st;
	}
	for (i = 1; i < 0x80; i++)
	{
		uint32_t	child = t->n_units ? dunit_offset(t->units[0]) ^ (uint32_t) i : 0;
		int			in_charsmap = child < t->n_units && dunit_label(t->units[child]) == (uint32_t) i;

		t->plain[i] = i != ' ' && !in_charsmap && t->user.root_child[i] == 0;
	}
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
	free(tok->byte_val);
	trie_free(&tok->pieces);
	trie_free(&tok->user);
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

/* ------------------------------------------------------------- encoding */

typedef struct Buf
{
	char	   *p;
	size_t		len;
	size_t		cap;
} Buf;

/* Returns 0, -1 when out of memory, -2 past TOK_MAX_NORM_BYTES. */
static int
buf_append(Buf *b, const char *s, size_t n)
{
	if (n > TOK_MAX_NORM_BYTES - b->len)
		return -2;
	if (n > b->cap - b->len)
	{
		size_t		ncap = b->cap;
		char	   *np;

		while (n > ncap - b->len)
			ncap *= 2;
		np = realloc(b->p, ncap);
		if (np == NULL)
			return -1;
		b->p = np;
		b->cap = ncap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	return 0;
}

/*
 * One step of SentencePiece's NormalizePrefix: (*out, *out_len) is the
 * normalized text for the prefix of s, and the return value how many input
 * bytes it consumed. User-defined symbols are copied untouched; otherwise the
 * longest charsmap rule applies; otherwise one character is copied, a
 * malformed byte becoming U+FFFD.
 */
static size_t
normalize_prefix(const MmsTokenizer *t, const uint8_t *s, size_t len,
				 const char **out, size_t *out_len)
{
	size_t		n;

	if (t->has_user)
	{
		uint32_t	node = 0;
		size_t		best = 0;
		size_t		k;

		for (k = 0; k < len; k++)
		{
			node = trie_child(&t->user, node, s[k]);
			if (node == 0)
				break;
			if (t->user.value[node] >= 0)
				best = k + 1;
		}
		if (best > 0)
		{
			*out = (const char *) s;
			*out_len = best;
			return best;
		}
	}
	n = charsmap_match(t, s, len, out);
	if (n > 0)
	{
		*out_len = strlen(*out);
		return n;
	}
	n = utf8_valid_len(s, len);
	if (n == 0)
	{
		*out = kReplacement;
		*out_len = 3;
		return 1;
	}
	*out = (const char *) s;
	*out_len = n;
	return n;
}

/* Normalizer::Normalize with escape_whitespaces on (T5 has no way to say otherwise). */
static int
normalize(const MmsTokenizer *t, const uint8_t *s, size_t len, Buf *norm)
{
	int			prev_space;
	const char *piece;
	size_t		plen;
	int			rc;

	norm->len = 0;
	if (t->remove_extra_whitespaces)
	{
		while (len > 0)
		{
			size_t		used = normalize_prefix(t, s, len, &piece, &plen);

			if (!(plen == 1 && piece[0] == ' '))
				break;
			s += used;
			len -= used;
		}
	}
	if (len == 0)
		return 0;
	if (t->add_space_prefix && (rc = buf_append(norm, kSpaceSymbol, 3)) != 0)
		return rc;

	prev_space = t->remove_extra_whitespaces;
	while (len > 0)
	{
		size_t		used;

		if (t->plain[s[0]])
		{
			/* the common case, copied as a run: ASCII no rule touches */
			for (used = 1; used < len && t->plain[s[used]]; used++)
				;
			if ((rc = buf_append(norm, (const char *) s, used)) != 0)
				return rc;
			prev_space = 0;
			s += used;
			len -= used;
			continue;
		}
		used = normalize_prefix(t, s, len, &piece, &plen);

		if (prev_space)
		{
			while (plen > 0 && piece[0] == ' ')
			{
				piece++;
				plen--;
			}
		}
		if (plen > 0)
		{
			size_t		k;
			size_t		run = 0;

			/* copy runs between spaces in one go; each space becomes U+2581 */
			for (k = 0; k < plen; k++)
			{
				if (piece[k] != ' ')
					continue;
				if ((rc = buf_append(norm, piece + run, k - run)) != 0 ||
					(rc = buf_append(norm, kSpaceSymbol, 3)) != 0)
					return rc;
				run = k + 1;
			}
			if ((rc = buf_append(norm, piece + run, plen - run)) != 0)
				return rc;
			prev_space = piece[plen - 1] == ' ';
		}
		s += used;
		len -= used;
		if (!t->remove_extra_whitespaces)
			prev_space = 0;
	}
	/* strips U+2581 from the end, whether it came from a space or the input */
	if (t->remove_extra_whitespaces)
	{
		while (norm->len >= 3 && memcmp(norm->p + norm->len - 3, kSpaceSymbol, 3) == 0)
			norm->len -= 3;
	}
	return 0;
}

/* Best path ending at a byte position (EncodeOptimized's BestPathNode). */
typedef struct BestNode
{
	float		score;
	int32_t		id;
	int32_t		starts_at;		/* -1 until reached */
} BestNode;

static int
is_unknown(const MmsTokenizer *t, int32_t id)
{
	return id == t->unk_id || t->types[id] == MMS_PIECE_UNKNOWN;
}

MmsStatus
mms_tok_encode(const MmsTokenizer *tok, const char *text, size_t len,
			   int add_eos, int32_t **ids, size_t *n_ids, MmsError *err)
{
	Buf			norm = {NULL, 0, 0};
	BestNode   *best = NULL;
	int32_t    *out = NULL;
	size_t		n;
	size_t		pos;
	size_t		n_out = 0;
	int			rc;
	const float unk_score = tok->min_score - 10.0f;

	*ids = NULL;
	*n_ids = 0;
	if (text == NULL && len > 0)
		return mms_fail(err, MMS_ERR_ARG, "text is NULL");
	if (len > TOK_MAX_NORM_BYTES)
		return mms_fail(err, MMS_ERR_LIMIT, "text of %zu bytes is too long to tokenize", len);

	/* NFKC rarely grows text by half; the buffer doubles when it does */
	norm.cap = len + len / 2 + 16;
	norm.p = malloc(norm.cap);
	if (norm.p == NULL)
		return mms_fail(err, MMS_ERR_NOMEM, "out of memory tokenizing");
	if ((rc = normalize(tok, (const uint8_t *) text, len, &norm)) != 0)
	{
		free(norm.p);
		if (rc == -2)
			return mms_fail(err, MMS_ERR_LIMIT, "normalized text is too long to tokenize");
		return mms_fail(err, MMS_ERR_NOMEM, "out of memory normalizing text");
	}
	n = norm.len;

	best = malloc((n + 1) * sizeof(BestNode));
	/* worst case one id per byte, plus eos */
	out = malloc((n + 1) * sizeof(int32_t));
	if (best == NULL || out == NULL)
	{
		free(norm.p);
		free(best);
		free(out);
		return mms_fail(err, MMS_ERR_NOMEM, "out of memory tokenizing");
	}
	for (pos = 0; pos <= n; pos++)
	{
		best[pos].score = 0.0f;
		best[pos].id = -1;
		best[pos].starts_at = -1;
	}

	/*
	 * Viterbi as EncodeOptimized does it: for each character start, walk the
	 * pieces that begin there, keep per end position the first-arrived path
	 * unless a later one is strictly better. A character no single piece
	 * covers gets an unknown candidate.
	 */
	pos = 0;
	while (pos < n)
	{
		const uint8_t *s = (const uint8_t *) norm.p;
		const float till_here = best[pos].score;
		size_t		mblen = one_char_len(s[pos]);
		int			has_single = 0;
		uint32_t	node = 0;
		size_t		k;

		if (mblen > n - pos)
			mblen = n - pos;
		for (k = pos; k < n; k++)
		{
			int32_t		id;
			BestNode   *target;
			size_t		length;

			node = trie_child(&tok->pieces, node, s[k]);
			if (node == 0)
				break;
			id = tok->pieces.value[node];
			if (id < 0)
				continue;
			target = &best[k + 1];
			length = k + 1 - pos;
			if (tok->types[id] == MMS_PIECE_USER_DEFINED)
			{
				/* SentencePiece computes this bonus in double precision */
				double		score = (double) ((float) length * tok->max_score) - 0.1;
				double		cand = score + (double) till_here;

				if (target->starts_at == -1 || cand > (double) target->score)
				{
					target->score = (float) cand;
					target->starts_at = (int32_t) pos;
					target->id = id;
				}
			}
			else
			{
				float		cand = tok->scores[id] + till_here;

				if (target->starts_at == -1 || cand > target->score)
				{
					target->score = cand;
					target->starts_at = (int32_t) pos;
					target->id = id;
				}
			}
			if (length == mblen)
				has_single = 1;
		}
		if (!has_single)
		{
			BestNode   *target = &best[pos + mblen];
			float		cand = unk_score + till_here;

			if (target->starts_at == -1 || cand > target->score)
			{
				target->score = cand;
				target->starts_at = (int32_t) pos;
				target->id = tok->unk_id;
			}
		}
		pos += mblen;
	}

	/* backtrack; consecutive unknowns fuse into one, as the processor does */
	pos = n;
	while (pos > 0)
	{
		int32_t		id = best[pos].id;

		if (!(n_out > 0 && is_unknown(tok, id) && is_unknown(tok, out[n_out - 1])))
			out[n_out++] = id;
		pos = (size_t) best[pos].starts_at;
	}
	for (pos = 0; pos < n_out / 2; pos++)
	{
		int32_t		tmp = out[pos];

		out[pos] = out[n_out - 1 - pos];
		out[n_out - 1 - pos] = tmp;
	}
	if (add_eos && tok->eos_id >= 0)
		out[n_out++] = tok->eos_id;

	free(norm.p);
	free(best);
	*ids = out;
	*n_ids = n_out;
	return MMS_OK;
}

/* ------------------------------------------------------------- decoding */

/* Flushes bytes[0..n) of a run of byte pieces: valid characters, else U+FFFD per bad byte. */
static void
flush_bytes(const uint8_t *bytes, size_t n, Buf *o)
{
	size_t		i = 0;

	while (i < n)
	{
		size_t		k = utf8_valid_len(bytes + i, n - i);

		if (k == 0)
		{
			memcpy(o->p + o->len, kReplacement, 3);
			o->len += 3;
			i++;
		}
		else
		{
			memcpy(o->p + o->len, bytes + i, k);
			o->len += k;
			i += k;
		}
	}
}

MmsStatus
mms_tok_decode(const MmsTokenizer *tok, const int32_t *ids, size_t n_ids,
			   char **text, size_t *len, MmsError *err)
{
	Buf			o = {NULL, 0, 0};
	uint8_t    *bytes = NULL;
	size_t		n_bytes = 0;
	size_t		bound = 1;
	size_t		i;
	int			is_bos_ws = 1;
	int			bos_ws_seen = 0;

	*text = NULL;
	*len = 0;
	if (ids == NULL && n_ids > 0)
		return mms_fail(err, MMS_ERR_ARG, "ids is NULL");
	for (i = 0; i < n_ids; i++)
	{
		int32_t		id = ids[i];
		uint64_t	plen;

		if (id < 0 || id >= tok->n_pieces)
			return mms_fail(err, MMS_ERR_ARG, "token id %d is out of range [0, %d)", id, tok->n_pieces);
		plen = tok->piece_off[id + 1] - tok->piece_off[id];
		/* a piece never grows except <unk> (5 bytes) and a bad byte (3) */
		bound += plen > 5 ? plen : 5;
	}
	o.p = malloc(bound);
	bytes = malloc(n_ids > 0 ? n_ids : 1);
	if (o.p == NULL || bytes == NULL)
	{
		free(o.p);
		free(bytes);
		return mms_fail(err, MMS_ERR_NOMEM, "out of memory decoding");
	}
	o.cap = bound;

	for (i = 0; i < n_ids; i++)
	{
		int32_t		id = ids[i];
		uint8_t		type = tok->types[id];
		const char *p = tok->piece_bytes + tok->piece_off[id];
		size_t		plen = tok->piece_off[id + 1] - tok->piece_off[id];
		size_t		k;

		if (type == MMS_PIECE_BYTE)
		{
			bytes[n_bytes++] = (uint8_t) tok->byte_val[id];
			continue;
		}
		flush_bytes(bytes, n_bytes, &o);
		n_bytes = 0;

		/*
		 * The dummy-prefix space is dropped from the first piece that prints
		 * anything; with remove_extra_whitespaces every leading piece loses
		 * its U+2581 until text appears (DecodeSentencePiece's is_bos_ws).
		 */
		if (bos_ws_seen || o.len > 0)
			is_bos_ws = 0;
		/*
		 * SentencePiece prints UNUSED pieces as text; we drop them with the
		 * control pieces, since in converted T5 vocabularies they are the
		 * "[PAD32000]" fillers past the sentencepiece model's own pieces.
		 */
		if (type == MMS_PIECE_CONTROL || type == MMS_PIECE_UNUSED)
		{
			bos_ws_seen = 0;
			continue;
		}
		if (type == MMS_PIECE_UNKNOWN)
		{
			memcpy(o.p + o.len, kUnkSurface, sizeof(kUnkSurface) - 1);
			o.len += sizeof(kUnkSurface) - 1;
			bos_ws_seen = 0;
			continue;
		}
		bos_ws_seen = 0;
		if (is_bos_ws && (tok->add_space_prefix || tok->remove_extra_whitespaces) &&
			plen >= 3 && memcmp(p, kSpaceSymbol, 3) == 0)
		{
			p += 3;
			plen -= 3;
			bos_ws_seen = !tok->remove_extra_whitespaces;
		}
		for (k = 0; k < plen; k++)
		{
			if (k + 3 <= plen && memcmp(p + k, kSpaceSymbol, 3) == 0)
			{
				o.p[o.len++] = ' ';
				k += 2;
			}
			else
				o.p[o.len++] = p[k];
		}
	}
	flush_bytes(bytes, n_bytes, &o);
	free(bytes);
	o.p[o.len] = '\0';
	*text = o.p;
	*len = o.len;
	return MMS_OK;
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
