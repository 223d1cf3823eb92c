/*
 * tok_internal.h — what the tokenizer's files share and nobody else sees: the
 * MmsTokenizer struct, the piece trie (tok_vocab.c), the normalizer
 * (tok_normalize.c) and the cancel guard. Not part of the engine's API.
 */
#ifndef MMS_TOK_INTERNAL_H
#define MMS_TOK_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "tokenizer.h"

/* Largest normalized text we tokenize: positions are kept in 32 bits. */
#define TOK_MAX_NORM_BYTES ((size_t) 1 << 30)

/*
 * Units of work (bytes read, ids) between two polls of the caller's cancel
 * callback: about 0.1 ms of work, so a cancel is seen promptly while the
 * indirect call costs nothing measurable.
 */
#define TOK_POLL_INTERVAL ((size_t) 1 << 16)

#define TOK_SPACE_SYMBOL "\xE2\x96\x81"	/* U+2581, SentencePiece's space */
#define TOK_REPLACEMENT "\xEF\xBF\xBD"	/* U+FFFD */

/* transformers' T5Tokenizer numbers <extra_id_N> down from the last of these */
#define TOK_N_SENTINELS 100

/* Per-piece flags (MmsTokenizer.flags) */
#define TOK_F_ADDED_SCORE 1		/* in the lattice with SentencePiece's user-defined score */
#define TOK_F_SPECIAL 2			/* transformers' special token: decode skips it by default */
#define TOK_F_SENTINEL 4		/* an <extra_id_N> id */

/*
 * Byte trie over piece strings. Children live in one open-addressing hash
 * keyed by (parent node, byte), so a walk costs one probe per byte and the
 * whole thing is a few flat arrays. Root children get a direct table since
 * every walk starts there.
 */
typedef struct TokTrie
{
	uint32_t	n_nodes;
	uint32_t	cap_nodes;
	int32_t    *value;			/* piece id ending at node, or -1 */
	uint32_t	root_child[256];	/* 0 = none (node 0 is the root) */
	uint64_t   *hkey;			/* ((parent << 8) | byte) + 1; 0 = empty */
	uint32_t   *hval;
	uint64_t	hcap;			/* power of two */
	uint64_t	n_edges;
} TokTrie;

struct MmsTokenizer
{
	int32_t		n_pieces;
	char	   *piece_bytes;	/* all piece strings back to back */
	uint64_t   *piece_off;		/* n_pieces + 1 offsets into piece_bytes */
	float	   *scores;
	uint8_t    *types;
	uint8_t    *flags;			/* TOK_F_* */
	int16_t    *byte_val;		/* BYTE pieces: the byte; else -1 */
	int			add_space_prefix;
	int			remove_extra_whitespaces;
	int32_t		eos_id;
	int32_t		unk_id;
	int32_t		pad_id;
	float		min_score;		/* over NORMAL pieces, as SentencePiece */
	float		max_score;

	/*
	 * pieces: what Viterbi matches in normalized text: NORMAL, USER_DEFINED
	 * and CONTROL pieces, and the sentinels (transformers' Unigram model has
	 * its special tokens as pieces). added: the special and added tokens
	 * split out of the raw text before normalization (CONTROL, UNKNOWN,
	 * USER_DEFINED, sentinels); has_added if there is one.
	 */
	TokTrie		pieces;
	TokTrie		added;
	int			has_added;
	size_t		max_piece_len;	/* longest key in pieces: how far one Viterbi step reads */
	size_t		max_added_len;	/* longest key in added */
	int			unk_matchable;	/* unk_id is a key of pieces, so matched text can fuse */
	/* sentinels written as [PADn] unused pieces: <extra_id_0> is sentinel_top */
	int32_t		sentinel_top;	/* -1 when the file spells its sentinels (or has none) */
	/* all 256 <0xNN> pieces: unknown text becomes its UTF-8 bytes' pieces */
	int			byte_fallback;
	int32_t		byte_id[256];
	/* lattice entries are id + length * step_mul when that fits (see Lattice) */
	uint32_t	step_shift;
	uint32_t	step_mul;		/* 1 << step_shift, or 0: entries are bare ids */

	/* precompiled charsmap: Darts-clone double array + replacement pool */
	uint32_t   *units;			/* host order */
	uint32_t	n_units;
	char	   *pool;			/* pool_len bytes plus a guard NUL */
	uint32_t	pool_len;
	uint32_t	pool_end;		/* valid rule offsets are below this */

	/* ASCII bytes that no rule or space handling touches */
	uint8_t		plain[256];
};

/* ---- piece trie (tok_vocab.c) ---- */

static inline uint64_t
tok_trie_hash(uint64_t key)
{
	key ^= key >> 29;
	key *= 0x9E3779B97F4A7C15ULL;
	return key ^ (key >> 32);
}

/* The child of node by byte, 0 if none. Inline: Viterbi's inner loop. */
static inline uint32_t
tok_trie_child(const TokTrie *t, uint32_t node, uint8_t byte)
{
	uint64_t	key;
	uint64_t	i;

	if (node == 0)
		return t->root_child[byte];
	key = (((uint64_t) node << 8) | byte) + 1;
	for (i = tok_trie_hash(key) & (t->hcap - 1);; i = (i + 1) & (t->hcap - 1))
	{
		if (t->hkey[i] == key)
			return t->hval[i];
		if (t->hkey[i] == 0)
			return 0;
	}
}

/* ---- normalizer (tok_normalize.c) ---- */

/* SentencePiece's OneCharLen: the lead byte's claim, not validated. */
static inline size_t
tok_one_char_len(uint8_t b)
{
	static const uint8_t tab[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};

	return tab[b >> 4];
}

size_t		mms_tok_utf8_valid_len(const uint8_t *s, size_t len);

MmsStatus	mms_tok_charsmap_load(MmsTokenizer *t, const uint8_t *blob, size_t len, MmsError *err);

/* Fills t->plain once the charsmap is loaded. */
void		mms_tok_plain_init(MmsTokenizer *t);

typedef struct TokBuf
{
	char	   *p;
	size_t		len;
	size_t		cap;
} TokBuf;

/* Returns 0, -1 when out of memory, -2 past TOK_MAX_NORM_BYTES. */
int			mms_tok_buf_append(TokBuf *b, const char *s, size_t n);

/*
 * Normalizer::Normalize with escape_whitespaces on (T5 has no way to say
 * otherwise), done a slice at a time so that the caller can poll for cancel
 * and run Viterbi over what is already final between slices.
 */
typedef struct TokNormState
{
	const uint8_t *s;			/* input not consumed yet; done when len is 0 */
	size_t		len;
	int			started;		/* leading whitespace skipped, prefix written */
	int			prev_space;
	size_t		scanned;		/* see mms_tok_norm_final_len */
	size_t		final;
} TokNormState;

/*
 * Normalizes until budget input bytes were consumed, or the rules' work
 * reached budget; *units gets the work done (bytes consumed plus the rules'
 * work), for the cancel guard. Appends to norm; the trailing whitespace is
 * the caller's to strip once ns->len is 0. Returns 0, -1 when out of memory,
 * -2 past TOK_MAX_NORM_BYTES.
 */
int			mms_tok_normalize_some(const MmsTokenizer *t, TokNormState *ns, TokBuf *norm,
								   size_t budget, size_t *units);

/* How much of norm is final while normalization goes on. */
size_t		mms_tok_norm_final_len(const MmsTokenizer *t, const TokBuf *norm, TokNormState *ns);

/* ---- limits and cancel (shared by encode and decode) ---- */

/* The caller's cancel callback, and how much work is left before polling it. */
typedef struct TokGuard
{
	int			(*cancel) (void *arg);
	void	   *arg;
	size_t		left;
} TokGuard;

static inline void
tok_guard_init(TokGuard *g, const MmsTokLimits *lim)
{
	g->cancel = lim != NULL ? lim->cancel : NULL;
	g->arg = lim != NULL ? lim->cancel_arg : NULL;
	g->left = TOK_POLL_INTERVAL;
}

/* Polls now; nonzero when the caller wants us to stop. */
static inline int
tok_guard_poll(TokGuard *g)
{
	g->left = TOK_POLL_INTERVAL;
	return g->cancel != NULL && g->cancel(g->arg) != 0;
}

/* Counts units of work done, polling once per TOK_POLL_INTERVAL of them. */
static inline int
tok_guard_tick(TokGuard *g, size_t units)
{
	if (units < g->left)
	{
		g->left -= units;
		return 0;
	}
	return tok_guard_poll(g);
}

static inline MmsStatus
tok_fail_cancelled(MmsError *err)
{
	return mms_fail(err, MMS_ERR_CANCELLED, "tokenization was cancelled");
}

#endif
