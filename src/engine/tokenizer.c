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

/*
 * Units of work (bytes read, ids) between two polls of the caller's cancel
 * callback: about 0.1 ms of work, so a cancel is seen promptly while the
 * indirect call costs nothing measurable.
 */
#define TOK_POLL_INTERVAL ((size_t) 1 << 16)

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
	size_t		max_piece_len;	/* longest key in pieces: how far one Viterbi step reads */
	int			unk_matchable;	/* unk_id is a key of pieces, so matched text can fuse */
	/* lattice entries are id + length * step_mul when that fits (see Lattice) */
	uint32_t	step_shift;
	uint32_t	step_mul;		/* 1 << step_shift, or 0: entries are bare ids */

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

/* The id stored for s[0..len), or -1. */
static int32_t
trie_find(const PieceTrie *t, const uint8_t *s, uint64_t len)
{
	uint32_t	node = 0;
	uint64_t	k;

	for (k = 0; k < len; k++)
	{
		node = trie_child(t, node, s[k]);
		if (node == 0)
			return -1;
	}
	return len > 0 ? t->value[node] : -1;
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
 * commonPrefixSearch, keeping the longest). Returns its byte length, 0 if none;
 * adds the bytes it looked at to *walked.
 */
static size_t
charsmap_match(const MmsTokenizer *t, const uint8_t *s, size_t len, const char **repl,
			   size_t *walked)
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
	*walked += i;
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
		if (len > t->max_piece_len)
			t->max_piece_len = (size_t) len;
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
	/* a forged vocabulary may give the unknown id to a NORMAL piece */
	t->unk_matchable =
		trie_find(&t->pieces, (const uint8_t *) t->piece_bytes + t->piece_off[t->unk_id],
				  t->piece_off[t->unk_id + 1] - t->piece_off[t->unk_id]) == t->unk_id;

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

/* ----------------------------------------------------- limits and cancel */

/* The caller's cancel callback, and how much work is left before polling it. */
typedef struct TokGuard
{
	int			(*cancel) (void *arg);
	void	   *arg;
	size_t		left;
} TokGuard;

static void
guard_init(TokGuard *g, const MmsTokLimits *lim)
{
	g->cancel = lim != NULL ? lim->cancel : NULL;
	g->arg = lim != NULL ? lim->cancel_arg : NULL;
	g->left = TOK_POLL_INTERVAL;
}

/* Polls now; nonzero when the caller wants us to stop. */
static int
guard_poll(TokGuard *g)
{
	g->left = TOK_POLL_INTERVAL;
	return g->cancel != NULL && g->cancel(g->arg) != 0;
}

/* Counts units of work done, polling once per TOK_POLL_INTERVAL of them. */
static inline int
guard_tick(TokGuard *g, size_t units)
{
	if (units < g->left)
	{
		g->left -= units;
		return 0;
	}
	return guard_poll(g);
}

static MmsStatus
fail_cancelled(MmsError *err)
{
	return mms_fail(err, MMS_ERR_CANCELLED, "tokenization was cancelled");
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

		/* len + n <= 1 GiB, so doubling stays far from overflow */
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
 * malformed byte becoming U+FFFD. Adds the bytes its trie walks looked at to
 * *walked, which can exceed what it consumes when rules share long prefixes.
 */
static size_t
normalize_prefix(const MmsTokenizer *t, const uint8_t *s, size_t len,
				 const char **out, size_t *out_len, size_t *walked)
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
		*walked += k;
		if (best > 0)
		{
			*out = (const char *) s;
			*out_len = best;
			return best;
		}
	}
	n = charsmap_match(t, s, len, out, walked);
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

/*
 * Normalizer::Normalize with escape_whitespaces on (T5 has no way to say
 * otherwise), done a slice at a time so that the caller can poll for cancel
 * and run Viterbi over what is already final between slices.
 */
typedef struct NormState
{
	const uint8_t *s;			/* input not consumed yet; done when len is 0 */
	size_t		len;
	int			started;		/* leading whitespace skipped, prefix written */
	int			prev_space;
} NormState;

/*
 * Normalizes until budget input bytes were consumed, or the rules' work
 * (bytes their trie walks looked at plus bytes they wrote: large only with
 * forged rules) reached budget. Appends to norm; the trailing whitespace is
 * the caller's to strip once ns->len is 0. Returns 0, -1 when out of memory,
 * -2 past TOK_MAX_NORM_BYTES.
 */
static int
normalize_some(const MmsTokenizer *t, NormState *ns, Buf *norm, size_t budget)
{
	/* the state in locals: stores through norm's char pointer may alias *ns */
	const uint8_t *s = ns->s;
	const uint8_t *const s_end = s + (ns->len < budget ? ns->len : budget);
	size_t		len = ns->len;
	int			prev_space = ns->prev_space;
	const char *piece;
	size_t		plen;
	size_t		used;
	size_t		work = 0;
	int			rc = 0;

	if (!ns->started)
	{
		if (t->remove_extra_whitespaces)
		{
			while (len > 0)
			{
				used = normalize_prefix(t, s, len, &piece, &plen, &work);
				if (!(plen == 1 && piece[0] == ' '))
					break;
				s += used;
				len -= used;
				if (s >= s_end || work >= budget)
					goto out;
			}
		}
		if (len == 0)
			goto out;
		if (t->add_space_prefix && (rc = buf_append(norm, kSpaceSymbol, 3)) != 0)
			goto out;
		ns->started = 1;
		prev_space = t->remove_extra_whitespaces;
	}

	while (s < s_end)
	{
		if (t->plain[s[0]])
		{
			/* the common case, copied as a run: ASCII no rule touches */
			const size_t max_run = (size_t) (s_end - s);

			for (used = 1; used < max_run && t->plain[s[used]]; used++)
				;
			if ((rc = buf_append(norm, (const char *) s, used)) != 0)
				goto out;
			prev_space = 0;
			s += used;
			len -= used;
			continue;
		}
		used = normalize_prefix(t, s, len, &piece, &plen, &work);

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
					goto out;
				run = k + 1;
			}
			if ((rc = buf_append(norm, piece + run, plen - run)) != 0)
				goto out;
			prev_space = piece[plen - 1] == ' ';
		}
		s += used;
		len -= used;
		if (!t->remove_extra_whitespaces)
			prev_space = 0;
		if ((work += plen) >= budget)
			break;
	}
out:
	ns->s = s;
	ns->len = len;
	ns->prev_space = prev_space;
	return rc;
}

/*
 * How much of norm is final while normalization goes on. Appends never touch
 * earlier bytes, but the end is stripped of U+2581 (E2 96 81) once the input
 * is done, so with remove_extra_whitespaces only the text up to the last byte
 * that is none of E2, 96, 81 is sure to stay. *scanned remembers how far the
 * search got, so each byte is looked at once.
 */
static size_t
norm_final_len(const MmsTokenizer *t, const Buf *norm, size_t *scanned, size_t *final)
{
	size_t		i;

	if (!t->remove_extra_whitespaces)
		return *final = norm->len;
	for (i = *scanned; i < norm->len; i++)
	{
		uint8_t		b = (uint8_t) norm->p[i];

		if (b != 0xE2 && b != 0x96 && b != 0x81)
			*final = i + 1;
	}
	*scanned = norm->len;
	return *final;
}

/*
 * The Viterbi lattice, built one character start at a time (EncodeOptimized's
 * BestPathNode split in two). Backtracking needs only how the best path ends
 * at each byte, so that is all that is kept for the whole text (4 bytes per
 * byte); scores and "reached" are only read within the longest piece ahead of
 * the current position, so they live in a ring of that size. A slot names the
 * position it holds, so a slot left from a position behind us reads as
 * unreached without being cleared (positions fit 32 bits; nothing targets 0,
 * whose zeroed slot gives the start its score of 0).
 *
 * ends[p] is the last step of the best path ending at byte p: with
 * tok->step_mul, id + length * step_mul (an unknown character as unk_id);
 * else the piece id, its length in piece_off, or for an unknown character
 * its byte length negated (-1..-4). Entries are written when a position is
 * first reached; unreached ones are never read.
 */
typedef struct LatticeSlot
{
	float		score;
	uint32_t	at;				/* position whose best score this is */
} LatticeSlot;

/* Ring slots kept in the Lattice itself: enough for real vocabularies. */
#define LATTICE_LOCAL_RING 64

typedef struct Lattice
{
	int32_t    *ends;
	size_t		cap;			/* entries in ends */
	size_t		cap_hint;		/* the text will not be longer: grow at most to this + 1 */
	LatticeSlot *ring;			/* slot of position p: ring[p & ring_mask] */
	size_t		ring_mask;
	size_t		pos;			/* next character start to expand */
	size_t		known;			/* bytes of characters only a matched piece covers */
	LatticeSlot local[LATTICE_LOCAL_RING];	/* the ring, unless it must be larger */
} Lattice;

static void
lattice_free_ring(Lattice *lat)
{
	if (lat->ring != lat->local)
		free(lat->ring);
	lat->ring = NULL;
}

/* Room for ends[0..n]. */
static int
lattice_reserve(Lattice *lat, size_t n)
{
	size_t		ncap;
	int32_t    *ne;

	if (n < lat->cap)
		return 0;
	/* doubling, but not past the normalized text's own buffer */
	ncap = lat->cap * 2;
	if (ncap > lat->cap_hint + 1)
		ncap = lat->cap_hint + 1;
	if (ncap < n + 1)
		ncap = n + 1;
	if (ncap > SIZE_MAX / sizeof(int32_t))
		return -1;
	ne = realloc(lat->ends, ncap * sizeof(int32_t));
	if (ne == NULL)
		return -1;
	lat->ends = ne;
	lat->cap = ncap;
	return 0;
}

/*
 * Makes the ring hold at least reach + 1 slots (positions pos .. pos+reach),
 * moving the live slots to their places in the larger ring.
 */
static int
lattice_ring(Lattice *lat, size_t reach)
{
	size_t		size = lat->ring ? lat->ring_mask + 1 : 0;
	size_t		nsize = 16;
	LatticeSlot *nr;
	size_t		p;

	if (reach < size)
		return 0;
	while (nsize <= reach)
	{
		if (nsize > SIZE_MAX / 2 / sizeof(LatticeSlot))
			return -1;
		nsize *= 2;
	}
	if (lat->ring == NULL && nsize <= LATTICE_LOCAL_RING)
	{
		/* a short text or a real vocabulary: no allocation per call */
		memset(lat->local, 0, nsize * sizeof(LatticeSlot));
		lat->ring = lat->local;
		lat->ring_mask = nsize - 1;
		return 0;
	}
	nr = calloc(nsize, sizeof(LatticeSlot));
	if (nr == NULL)
		return -1;
	if (lat->ring != NULL)
	{
		for (p = lat->pos; p < lat->pos + size; p++)
			nr[p & (nsize - 1)] = lat->ring[p & lat->ring_mask];
		lattice_free_ring(lat);
	}
	lat->ring = nr;
	lat->ring_mask = nsize - 1;
	return 0;
}

/* The id and the bytes of text of the step recorded in an ends[] entry. */
static inline int32_t
lattice_step(const MmsTokenizer *tok, int32_t e, size_t *len)
{
	if (tok->step_mul != 0)
	{
		*len = (uint32_t) e >> tok->step_shift;
		return (int32_t) ((uint32_t) e & (tok->step_mul - 1));
	}
	if (e < 0)
	{
		*len = (size_t) -e;
		return tok->unk_id;
	}
	*len = (size_t) (tok->piece_off[e + 1] - tok->piece_off[e]);
	return e;
}

static int
is_unknown(const MmsTokenizer *t, int32_t id)
{
	return id == t->unk_id || t->types[id] == MMS_PIECE_UNKNOWN;
}

typedef enum
{
	LAT_OK, LAT_NOMEM, LAT_TOO_MANY, LAT_CANCELLED
} LatticeResult;

/*
 * Expands character starts below stop over s[0..n). Every piece walk from
 * such a start must end within s[0..n) exactly as it would on the whole text,
 * which the caller guarantees. Gives up with LAT_TOO_MANY once lat->known
 * passes known_max.
 *
 * This is EncodeOptimized: for each character start, walk the pieces that
 * begin there, keep per end position the first-arrived path unless a later
 * one is strictly better. A character no single piece covers gets an unknown
 * candidate.
 */
static LatticeResult
lattice_advance(const MmsTokenizer *tok, Lattice *lat, const uint8_t *s, size_t n,
				size_t stop, size_t known_max, TokGuard *g)
{
	const float unk_score = tok->min_score - 10.0f;
	const uint32_t step_mul = tok->step_mul;
	/*
	 * Positions per block between polls and bound checks: a step walks at
	 * most max_piece_len + 1 bytes, so a block reads about TOK_POLL_INTERVAL
	 * bytes however long the pieces are, and the per-character loop carries
	 * no extra test.
	 */
	const size_t block = tok->max_piece_len + 1 < TOK_POLL_INTERVAL ?
		TOK_POLL_INTERVAL / (tok->max_piece_len + 1) : 1;
	LatticeSlot *ring;
	size_t		mask;
	size_t		pos;
	size_t		known;

	if (lat->pos >= stop)
		return LAT_OK;
	if (lattice_reserve(lat, n) != 0 ||
		lattice_ring(lat, (tok->max_piece_len < n ? tok->max_piece_len : n) + 4) != 0)
		return LAT_NOMEM;
	ring = lat->ring;
	mask = lat->ring_mask;
	pos = lat->pos;
	known = lat->known;

	while (pos < stop)
	{
		const size_t block_end = stop - pos > block ? pos + block : stop;

		while (pos < block_end)
		{
			const float till_here = ring[pos & mask].score;
			size_t		mblen = one_char_len(s[pos]);
			int			has_single = 0;
			uint32_t	node = 0;
			size_t		k;

			if (mblen > n - pos)
				mblen = n - pos;
			for (k = pos; k < n; k++)
			{
				int32_t		id;
				LatticeSlot *target;
				size_t		length;

				node = trie_child(&tok->pieces, node, s[k]);
				if (node == 0)
					break;
				id = tok->pieces.value[node];
				if (id < 0)
					continue;
				target = &ring[(k + 1) & mask];
				length = k + 1 - pos;
				if (tok->types[id] == MMS_PIECE_USER_DEFINED)
				{
					/* SentencePiece computes this bonus in double precision */
					double		score = (double) ((float) length * tok->max_score) - 0.1;
					double		cand = score + (double) till_here;

					if (target->at != (uint32_t) (k + 1) || cand > (double) target->score)
					{
						target->score = (float) cand;
						target->at = (uint32_t) (k + 1);
						lat->ends[k + 1] = (int32_t) ((uint32_t) id + (uint32_t) length * step_mul);
					}
				}
				else
				{
					float		cand = tok->scores[id] + till_here;

					if (target->at != (uint32_t) (k + 1) || cand > target->score)
					{
						target->score = cand;
						target->at = (uint32_t) (k + 1);
						lat->ends[k + 1] = (int32_t) ((uint32_t) id + (uint32_t) length * step_mul);
					}
				}
				if (length == mblen)
					has_single = 1;
			}
			if (!has_single)
			{
				LatticeSlot *target = &ring[(pos + mblen) & mask];
				float		cand = unk_score + till_here;

				if (target->at != (uint32_t) (pos + mblen) || cand > target->score)
				{
					target->score = cand;
					target->at = (uint32_t) (pos + mblen);
					lat->ends[pos + mblen] = step_mul != 0 ?
						(int32_t) ((uint32_t) tok->unk_id + (uint32_t) mblen * step_mul) :
						-(int32_t) mblen;
				}
			}
			else
				known += mblen;
			pos += mblen;
		}
		lat->pos = pos;
		lat->known = known;
		if (known > known_max)
			return LAT_TOO_MANY;
		if (guard_poll(g))
			return LAT_CANCELLED;
	}
	return LAT_OK;
}

/*
 * Walks the best path back from n, fusing consecutive unknowns into one as
 * the processor does, and writes the ids into ends itself, text order, in
 * ends[n - count + 1 .. n]: the j-th id from the end goes to n - j, while
 * every read still to come is below n - j (each step covers at least a byte),
 * so the lattice is its own output buffer. Returns the count, or SIZE_MAX
 * when cancelled.
 */
static size_t
lattice_backtrack(const MmsTokenizer *tok, Lattice *lat, size_t n, TokGuard *g)
{
	size_t		pos = n;
	size_t		n_out = 0;
	size_t		countdown = TOK_POLL_INTERVAL;
	int			prev_unknown = 0;

	while (pos > 0)
	{
		size_t		len;
		int32_t		id = lattice_step(tok, lat->ends[pos], &len);
		int			unknown = is_unknown(tok, id);

		pos -= len;
		if (!(prev_unknown && unknown))
		{
			lat->ends[n - n_out] = id;
			n_out++;
			prev_unknown = unknown;
		}
		if (--countdown == 0)
		{
			if (guard_poll(g))
				return SIZE_MAX;
			countdown = TOK_POLL_INTERVAL;
		}
	}
	return n_out;
}

MmsStatus
mms_tok_encode(const MmsTokenizer *tok, const char *text, size_t len,
			   int add_eos, int32_t **ids, size_t *n_ids, MmsError *err)
{
	return mms_tok_encode_limited(tok, text, len, add_eos, NULL, ids, n_ids, err);
}

MmsStatus
mms_tok_encode_limited(const MmsTokenizer *tok, const char *text, size_t len,
					   int add_eos, const MmsTokLimits *lim,
					   int32_t **ids, size_t *n_ids, MmsError *err)
{
	Buf			norm = {NULL, 0, 0};
	NormState	ns;
	Lattice		lat;
	TokGuard	g;
	int32_t    *out = NULL;
	const size_t n_eos = (add_eos && tok->eos_id >= 0) ? 1 : 0;
	const size_t max_tokens = lim != NULL ? lim->max_tokens : 0;
	size_t		known_max = SIZE_MAX;
	size_t		scanned = 0;
	size_t		final = 0;
	size_t		window;
	size_t		n;
	size_t		count;
	LatticeResult lr = LAT_OK;
	MmsStatus	st;
	int			rc;

	*ids = NULL;
	*n_ids = 0;
	if (text == NULL && len > 0)
		return mms_fail(err, MMS_ERR_ARG, "text is NULL");
	if (len > TOK_MAX_NORM_BYTES)
		return mms_fail(err, MMS_ERR_LIMIT, "text of %zu bytes is too long to tokenize", len);
	guard_init(&g, lim);
	memset(&lat, 0, offsetof(Lattice, local));
	memset(&ns, 0, sizeof(ns));
	ns.s = (const uint8_t *) text;
	ns.len = len;

	/*
	 * A lower bound on the token count, so a huge input is refused after a
	 * prefix rather than after all of it. Counting bytes or characters is
	 * not sound: whitespace runs collapse, rules may map text to nothing, and
	 * any run of characters no piece covers fuses into one <unk>. But a
	 * character that has a single-character piece never gets an unknown
	 * candidate, so whatever path wins covers it with a matched piece; those
	 * are never unknown (unless a forged vocabulary makes unk_id matchable)
	 * and so never fuse, and each spans at most max_piece_len bytes. Hence
	 * tokens >= ceil(known / max_piece_len) + eos, and the bound passes
	 * max_tokens exactly when known > (max_tokens - eos) * max_piece_len.
	 */
	if (max_tokens > 0 && !tok->unk_matchable && tok->max_piece_len > 0)
	{
		size_t		room = max_tokens >= n_eos ? max_tokens - n_eos : 0;

		if (room <= SIZE_MAX / tok->max_piece_len)
			known_max = room * tok->max_piece_len;
	}

	/* NFKC rarely grows text by half; the buffer doubles when it does */
	norm.cap = len + len / 2 + 16;
	norm.p = malloc(norm.cap);
	if (norm.p == NULL)
		return mms_fail(err, MMS_ERR_NOMEM, "out of memory tokenizing");

	/*
	 * Normalize a slice, then expand every character start whose piece walk
	 * (at most max_piece_len + 1 bytes, and 4 for the character itself) lies
	 * in text that is final: same lattice as after normalizing everything,
	 * but a cancel or a too-long input is noticed a slice in.
	 */
	window = tok->max_piece_len + 1 > 4 ? tok->max_piece_len + 1 : 4;
	for (;;)
	{
		size_t		stable;

		rc = normalize_some(tok, &ns, &norm, TOK_POLL_INTERVAL);
		if (rc != 0)
			goto norm_failed;
		if (guard_poll(&g))
		{
			lr = LAT_CANCELLED;
			goto lattice_failed;
		}
		if (ns.len == 0)
			break;
		stable = norm_final_len(tok, &norm, &scanned, &final);
		lat.cap_hint = norm.cap;
		if (stable >= window &&
			(lr = lattice_advance(tok, &lat, (const uint8_t *) norm.p, stable,
								  stable - window + 1, known_max, &g)) != LAT_OK)
			goto lattice_failed;
	}
	/* strips U+2581 from the end, whether it came from a space or the input */
	if (tok->remove_extra_whitespaces)
	{
		while (norm.len >= 3 && memcmp(norm.p + norm.len - 3, kSpaceSymbol, 3) == 0)
		{
			norm.len -= 3;
			if (guard_tick(&g, 3))
			{
				lr = LAT_CANCELLED;
				goto lattice_failed;
			}
		}
	}
	n = norm.len;
	lat.cap_hint = n;
	if ((lr = lattice_advance(tok, &lat, (const uint8_t *) norm.p, n, n, known_max, &g)) != LAT_OK)
		goto lattice_failed;
	free(norm.p);
	norm.p = NULL;
	lattice_free_ring(&lat);

	count = lattice_backtrack(tok, &lat, n, &g);
	if (count == SIZE_MAX)
	{
		lr = LAT_CANCELLED;
		goto lattice_failed;
	}
	if (max_tokens > 0 && count + n_eos > max_tokens)
	{
		free(lat.ends);
		*n_ids = count + n_eos;
		return mms_fail(err, MMS_ERR_LIMIT, "input has %zu tokens, more than %zu",
						count + n_eos, max_tokens);
	}
	if (lat.ends == NULL)
	{
		/* empty text: nothing was expanded, so there is no lattice to reuse */
		lat.ends = malloc(sizeof(int32_t));
		if (lat.ends == NULL)
			return mms_fail(err, MMS_ERR_NOMEM, "out of memory tokenizing");
	}
	/* count <= n and ends has n + 1 entries, so eos fits */
	memmove(lat.ends, lat.ends + n + 1 - count, count * sizeof(int32_t));
	if (n_eos)
		lat.ends[count] = tok->eos_id;
	/* hand back only what is used (if worth a call: a long text has about
	 * one id per 4 bytes); if shrinking fails the block still works */
	out = lat.ends;
	if (lat.cap - (count + n_eos) >= 1024)
	{
		out = realloc(lat.ends, (count + n_eos > 0 ? count + n_eos : 1) * sizeof(int32_t));
		if (out == NULL)
			out = lat.ends;
	}
	*ids = out;
	*n_ids = count + n_eos;
	return MMS_OK;

norm_failed:
	free(norm.p);
	free(lat.ends);
	lattice_free_ring(&lat);
	if (rc == -2)
		return mms_fail(err, MMS_ERR_LIMIT, "normalized text is too long to tokenize");
	return mms_fail(err, MMS_ERR_NOMEM, "out of memory normalizing text");

lattice_failed:
	free(norm.p);
	free(lat.ends);
	lattice_free_ring(&lat);
	switch (lr)
	{
		case LAT_TOO_MANY:
			/* ceil(known / max_piece_len) + eos, past max_tokens */
			*n_ids = (lat.known + tok->max_piece_len - 1) / tok->max_piece_len + n_eos;
			st = mms_fail(err, MMS_ERR_LIMIT, "input has more than %zu tokens", max_tokens);
			break;
		case LAT_CANCELLED:
			st = fail_cancelled(err);
			break;
		default:
			st = mms_fail(err, MMS_ERR_NOMEM, "out of memory tokenizing");
			break;
	}
	return st;
}

/* ------------------------------------------------------------- decoding */

/* Bytes a piece prints: each U+2581 becomes one space. */
static size_t
piece_text_len(const char *p, size_t plen)
{
	size_t		w = 0;
	size_t		k;

	for (k = 0; k < plen; k++, w++)
		if (k + 3 <= plen && memcmp(p + k, kSpaceSymbol, 3) == 0)
			k += 2;
	return w;
}

/* Appends s[0..n) unless the output would pass max bytes; -1 then. */
static inline int
out_put(Buf *o, const char *s, size_t n, size_t max)
{
	if (n > max - o->len)
		return -1;
	memcpy(o->p + o->len, s, n);
	o->len += n;
	return 0;
}

/*
 * A run of byte pieces being reassembled: valid characters pass, each bad
 * byte becomes U+FFFD. Whether bytes start a valid character depends on at
 * most the next 4, so keeping 4 pending decides exactly as looking at the
 * whole run would, without a buffer as long as the ids.
 */
typedef struct ByteRun
{
	uint8_t		b[4];
	size_t		n;
} ByteRun;

/*
 * Writes the first character (or U+FFFD for a bad first byte) to dst and
 * drops it from the run; returns the bytes written, SIZE_MAX if they would
 * be more than room. The output goes through (dst, room) rather than the Buf
 * so that the Buf never escapes and stays in registers on the common path.
 */
static inline size_t
run_emit(ByteRun *r, char *dst, size_t room)
{
	size_t		k = utf8_valid_len(r->b, r->n);
	const char *src = (const char *) r->b;
	size_t		w = k;

	if (k == 0)
	{
		src = kReplacement;
		w = 3;
		k = 1;
	}
	if (w > room)
		return SIZE_MAX;
	memcpy(dst, src, w);
	memmove(r->b, r->b + k, r->n - k);
	r->n -= k;
	return w;
}

static inline size_t
run_push(ByteRun *r, uint8_t byte, char *dst, size_t room)
{
	r->b[r->n++] = byte;
	return r->n == 4 ? run_emit(r, dst, room) : 0;
}

/* Kept out of line: T5 text rarely has byte pieces, and inlined this loop
 * costs the common path its registers. */
__attribute__((noinline)) static size_t
run_flush(ByteRun *r, char *dst, size_t room)
{
	size_t		total = 0;

	while (r->n > 0)
	{
		size_t		w = run_emit(r, dst + total, room - total);

		if (w == SIZE_MAX)
			return SIZE_MAX;
		total += w;
	}
	return total;
}

MmsStatus
mms_tok_decode(const MmsTokenizer *tok, const int32_t *ids, size_t n_ids,
			   char **text, size_t *len, MmsError *err)
{
	return mms_tok_decode_limited(tok, ids, n_ids, NULL, text, len, err);
}

MmsStatus
mms_tok_decode_limited(const MmsTokenizer *tok, const int32_t *ids, size_t n_ids,
					   const MmsTokLimits *lim, char **text, size_t *len, MmsError *err)
{
	Buf			o = {NULL, 0, 0};
	ByteRun		run = {{0}, 0};
	TokGuard	g;
	const size_t max = (lim != NULL && lim->max_bytes > 0) ? lim->max_bytes : SIZE_MAX - 1;
	size_t		bound = 0;
	size_t		i;
	size_t		w;
	int			is_bos_ws = 1;
	int			bos_ws_seen = 0;

	*text = NULL;
	*len = 0;
	if (ids == NULL && n_ids > 0)
		return mms_fail(err, MMS_ERR_ARG, "ids is NULL");
	guard_init(&g, lim);
	/* both passes go in blocks of TOK_POLL_INTERVAL ids, polling after each */
	for (i = 0; i < n_ids;)
	{
		const size_t end = n_ids - i > TOK_POLL_INTERVAL ? i + TOK_POLL_INTERVAL : n_ids;

		for (; i < end; i++)
		{
			int32_t		id = ids[i];
			size_t		plen;

			if (id < 0 || id >= tok->n_pieces)
				return mms_fail(err, MMS_ERR_ARG, "token id %d is out of range [0, %d)", id, tok->n_pieces);
			plen = (size_t) (tok->piece_off[id + 1] - tok->piece_off[id]);
			/* a piece never grows except <unk> (5 bytes) and a bad byte (3) */
			if (plen < 5)
				plen = 5;
			bound = plen > SIZE_MAX - bound ? SIZE_MAX : bound + plen;
		}
		if (guard_poll(&g))
			return fail_cancelled(err);
	}
	/* never more than max + 1: past max we stop */
	o.cap = bound < max ? bound : max;
	if (o.cap >= SIZE_MAX - 1)
		return mms_fail(err, MMS_ERR_NOMEM, "decoded text would be too large");
	o.p = malloc(o.cap + 1);
	if (o.p == NULL)
		return mms_fail(err, MMS_ERR_NOMEM, "out of memory decoding");

	for (i = 0; i < n_ids;)
	{
		const size_t end = n_ids - i > TOK_POLL_INTERVAL ? i + TOK_POLL_INTERVAL : n_ids;

		for (; i < end; i++)
		{
			int32_t		id = ids[i];
			uint8_t		type = tok->types[id];
			const char *p = tok->piece_bytes + tok->piece_off[id];
			size_t		plen = (size_t) (tok->piece_off[id + 1] - tok->piece_off[id]);
			size_t		k;

			if (type == MMS_PIECE_BYTE)
			{
				w = run_push(&run, (uint8_t) tok->byte_val[id], o.p + o.len, max - o.len);
				if (w == SIZE_MAX)
					goto too_long;
				o.len += w;
				continue;
			}
			if (run.n > 0)
			{
				w = run_flush(&run, o.p + o.len, max - o.len);
				if (w == SIZE_MAX)
					goto too_long;
				o.len += w;
			}

			/*
			 * The dummy-prefix space is dropped from the first piece that
			 * prints anything; with remove_extra_whitespaces every leading
			 * piece loses its U+2581 until text appears
			 * (DecodeSentencePiece's is_bos_ws).
			 */
			if (bos_ws_seen || o.len > 0)
				is_bos_ws = 0;
			/*
			 * SentencePiece prints UNUSED pieces as text; we drop them with
			 * the control pieces, since in converted T5 vocabularies they are
			 * the "[PAD32000]" fillers past the sentencepiece model's own
			 * pieces.
			 */
			if (type == MMS_PIECE_CONTROL || type == MMS_PIECE_UNUSED)
			{
				bos_ws_seen = 0;
				continue;
			}
			if (type == MMS_PIECE_UNKNOWN)
			{
				if (out_put(&o, kUnkSurface, sizeof(kUnkSurface) - 1, max) != 0)
					goto too_long;
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
			/* it prints at most plen bytes, so only near the limit count them */
			if (plen > max - o.len && piece_text_len(p, plen) > max - o.len)
				goto too_long;
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
		if (guard_poll(&g))
		{
			free(o.p);
			return fail_cancelled(err);
		}
	}
	w = run_flush(&run, o.p + o.len, max - o.len);
	if (w == SIZE_MAX)
		goto too_long;
	o.len += w;
	o.p[o.len] = '\0';
	*text = o.p;
	*len = o.len;
	return MMS_OK;

too_long:
	free(o.p);
	return mms_fail(err, MMS_ERR_LIMIT, "decoded text is longer than %zu bytes", max);
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
