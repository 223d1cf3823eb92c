/*
 * tokenizer.c — encoding: transformers' split of the text on special and
 * added tokens, then SentencePiece's unigram Viterbi (unigram_model.cc
 * EncodeOptimized) over each stretch between them, id for id; byte fallback;
 * the max_tokens and cancel limits. Not the vocabulary (tok_vocab.c), the
 * normalizer (tok_normalize.c) nor decoding (tok_decode.c).
 */
#include "tok_internal.h"

#include <stdlib.h>
#include <string.h>

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
	LAT_OK, LAT_NOMEM, LAT_TOO_LONG, LAT_TOO_MANY, LAT_CANCELLED
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
	size_t		block_start;

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

		block_start = pos;
		while (pos < block_end)
		{
			const float till_here = ring[pos & mask].score;
			size_t		mblen = tok_one_char_len(s[pos]);
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

				node = tok_trie_child(&tok->pieces, node, s[k]);
				if (node == 0)
					break;
				id = tok->pieces.value[node];
				if (id < 0)
					continue;
				target = &ring[(k + 1) & mask];
				length = k + 1 - pos;
				if (tok->flags[id] & TOK_F_ADDED_SCORE)
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
		if (tok_guard_tick(g, (pos - block_start) * (tok->max_piece_len + 1)))
			return LAT_CANCELLED;
	}
	return LAT_OK;
}

/*
 * Walks the best path back from n, fusing consecutive unknowns into one as
 * the processor does, and writes the ids into ends itself, text order, in
 * ends[n - count + 1 .. n]: the j-th id from the end goes to n - j, while
 * every read still to come is below n - j (each step covers at least a byte),
 * so the lattice is its own output buffer. With byte fallback an unknown step
 * becomes the pieces of its bytes of norm, one id per byte, so that still
 * holds (and fusing changes nothing: the bytes of a fused run are those of
 * its parts). Returns the count, or SIZE_MAX when cancelled.
 */
static size_t
lattice_backtrack(const MmsTokenizer *tok, Lattice *lat, const uint8_t *norm, size_t n, TokGuard *g)
{
	size_t		pos = n;
	size_t		n_out = 0;
	int			prev_unknown = 0;

	while (pos > 0)
	{
		size_t		len;
		int32_t		id = lattice_step(tok, lat->ends[pos], &len);
		int			unknown = is_unknown(tok, id);

		pos -= len;
		if (unknown && tok->byte_fallback)
		{
			size_t		k;

			for (k = len; k > 0; k--)
				lat->ends[n - n_out++] = tok->byte_id[norm[pos + k - 1]];
		}
		else if (!(prev_unknown && unknown))
		{
			lat->ends[n - n_out] = id;
			n_out++;
			prev_unknown = unknown;
		}
		if (tok_guard_tick(g, 1))
			return SIZE_MAX;
	}
	return n_out;
}

/* ----------------------------------------------------- one stretch of text */

/*
 * What an encode carries from one stretch of text (between special tokens) to
 * the next: the buffers, reused, and the guard.
 */
typedef struct EncodeRun
{
	TokBuf		norm;			/* the stretch, normalized */
	TokGuard	g;
	int32_t    *out;			/* ids so far, unless the text is one stretch */
	size_t		n_out;
	size_t		cap_out;
	Lattice		lat;			/* last: its local ring need not be cleared */
} EncodeRun;

/*
 * Encodes s[0..len) as SentencePiece encodes a whole text: normalize a slice,
 * then expand every character start whose piece walk (at most max_piece_len
 * + 1 bytes, and 4 for the character itself) lies in text that is final: the
 * same lattice as after normalizing everything, but a cancel or a too-long
 * input is noticed a slice in. On LAT_OK the *count ids are
 * r->lat.ends[*n + 1 - *count .. *n].
 */
static LatticeResult
encode_stretch(const MmsTokenizer *tok, EncodeRun *r, const uint8_t *s, size_t len,
			   size_t known_max, size_t *n, size_t *count)
{
	Lattice    *lat = &r->lat;
	TokNormState ns;
	const size_t window = tok->max_piece_len + 1 > 4 ? tok->max_piece_len + 1 : 4;
	LatticeResult lr;

	memset(&ns, 0, sizeof(ns));
	ns.s = s;
	ns.len = len;
	r->norm.len = 0;
	lat->pos = 0;
	lat->known = 0;
	/* positions restart at 0: slots left by the last stretch must not read as reached */
	if (lat->ring != NULL)
		memset(lat->ring, 0, (lat->ring_mask + 1) * sizeof(LatticeSlot));
	while (ns.len > 0)
	{
		size_t		units;
		size_t		stable;
		int			rc = mms_tok_normalize_some(tok, &ns, &r->norm, TOK_POLL_INTERVAL, &units);

		if (rc != 0)
			return rc == -2 ? LAT_TOO_LONG : LAT_NOMEM;
		if (tok_guard_tick(&r->g, units))
			return LAT_CANCELLED;
		if (ns.len == 0)
			break;
		stable = mms_tok_norm_final_len(tok, &r->norm, &ns);
		lat->cap_hint = r->norm.cap;
		if (stable >= window &&
			(lr = lattice_advance(tok, lat, (const uint8_t *) r->norm.p, stable,
								  stable - window + 1, known_max, &r->g)) != LAT_OK)
			return lr;
	}
	/* strips U+2581 from the end, whether it came from a space or the input */
	if (tok->remove_extra_whitespaces)
	{
		while (r->norm.len >= 3 && memcmp(r->norm.p + r->norm.len - 3, TOK_SPACE_SYMBOL, 3) == 0)
		{
			r->norm.len -= 3;
			if (tok_guard_tick(&r->g, 3))
				return LAT_CANCELLED;
		}
	}
	*n = r->norm.len;
	lat->cap_hint = *n;
	if ((lr = lattice_advance(tok, lat, (const uint8_t *) r->norm.p, *n, *n, known_max, &r->g)) != LAT_OK)
		return lr;
	*count = lattice_backtrack(tok, lat, (const uint8_t *) r->norm.p, *n, &r->g);
	return *count == SIZE_MAX ? LAT_CANCELLED : LAT_OK;
}

/* ------------------------------------------------- special and added tokens */

/*
 * transformers' split: the leftmost special or added token in s[from..len),
 * the longest one at that position. Returns 1 and its place, 0 if there is
 * none, -1 if cancelled. A byte-table lookup per byte of text that starts no
 * token (for T5, any byte but '<').
 */
static int
find_added(const MmsTokenizer *tok, const uint8_t *s, size_t len, size_t from,
		   size_t *at, size_t *mlen, int32_t *id, TokGuard *g)
{
	size_t		i = from;

	if (!tok->has_added)
		return 0;
	while (i < len)
	{
		const size_t block_end = len - i > TOK_POLL_INTERVAL ? i + TOK_POLL_INTERVAL : len;
		const size_t block_start = i;
		size_t		walked = 0;

		for (; i < block_end; i++)
		{
			uint32_t	node = tok->added.root_child[s[i]];
			size_t		best = 0;
			size_t		k;

			if (node == 0)
				continue;
			for (k = i;;)
			{
				if (tok->added.value[node] >= 0)
				{
					best = k + 1 - i;
					*id = tok->added.value[node];
				}
				if (++k >= len || (node = tok_trie_child(&tok->added, node, s[k])) == 0)
					break;
			}
			walked += k - i;
			if (best > 0)
			{
				*at = i;
				*mlen = best;
				return tok_guard_tick(g, i - block_start + walked) ? -1 : 1;
			}
		}
		if (tok_guard_tick(g, i - block_start + walked))
			return -1;
	}
	return 0;
}

static int
out_push(EncodeRun *r, const int32_t *ids, size_t n)
{
	if (n == 0)
		return 0;
	if (n > r->cap_out - r->n_out)
	{
		size_t		ncap = r->cap_out ? r->cap_out : 256;
		int32_t    *no;

		while (n > ncap - r->n_out)
		{
			if (ncap > SIZE_MAX / 2 / sizeof(int32_t))
				return -1;
			ncap *= 2;
		}
		no = realloc(r->out, ncap * sizeof(int32_t));
		if (no == NULL)
			return -1;
		r->out = no;
		r->cap_out = ncap;
	}
	memcpy(r->out + r->n_out, ids, n * sizeof(int32_t));
	r->n_out += n;
	return 0;
}

static void
run_free(EncodeRun *r)
{
	free(r->norm.p);
	free(r->lat.ends);
	lattice_free_ring(&r->lat);
	free(r->out);
}

/* ------------------------------------------------------------- encoding */

MmsStatus
mms_tok_encode(const MmsTokenizer *tok, const char *text, size_t len,
			   int add_eos, int32_t **ids, size_t *n_ids, MmsError *err)
{
	return mms_tok_encode_limited(tok, text, len, add_eos, NULL, ids, n_ids, err);
}

/*
 * The text is cut at every special or added token, as transformers'
 * tokenizer does before its model runs; each stretch between them is then
 * tokenized as SentencePiece tokenizes a whole text (its own dummy prefix,
 * whitespace at its ends dropped), and each token is its id. A text with no
 * such token is one stretch, whose ids are handed back in the lattice's own
 * buffer.
 */
MmsStatus
mms_tok_encode_limited(const MmsTokenizer *tok, const char *text, size_t len,
					   int add_eos, const MmsTokLimits *lim,
					   int32_t **ids, size_t *n_ids, MmsError *err)
{
	const uint8_t *s = (const uint8_t *) text;
	const size_t n_eos = (add_eos && tok->eos_id >= 0) ? 1 : 0;
	const size_t max_tokens = lim != NULL ? lim->max_tokens : 0;
	EncodeRun	r;
	size_t		pos = 0;
	size_t		total = 0;
	int32_t    *out;
	LatticeResult lr = LAT_OK;
	int			found;

	*ids = NULL;
	*n_ids = 0;
	if (text == NULL && len > 0)
		return mms_fail(err, MMS_ERR_ARG, "text is NULL");
	if (len > TOK_MAX_NORM_BYTES)
		return mms_fail(err, MMS_ERR_LIMIT, "text of %zu bytes is too long to tokenize", len);
	memset(&r, 0, offsetof(EncodeRun, lat) + offsetof(Lattice, local));
	tok_guard_init(&r.g, lim);
	/* every encode polls at least once, so a caller can always stop */
	if (tok_guard_poll(&r.g))
		return tok_fail_cancelled(err);

	/* NFKC rarely grows text by half; the buffer doubles when it does */
	r.norm.cap = len + len / 2 + 16;
	r.norm.p = malloc(r.norm.cap);
	if (r.norm.p == NULL)
		return mms_fail(err, MMS_ERR_NOMEM, "out of memory tokenizing");

	do
	{
		size_t		at = len;
		size_t		mlen = 0;
		int32_t		id = -1;
		size_t		known_max = SIZE_MAX;
		size_t		n = 0;
		size_t		count = 0;

		found = find_added(tok, s, len, pos, &at, &mlen, &id, &r.g);
		if (found < 0)
		{
			lr = LAT_CANCELLED;
			goto failed;
		}
		if (!found)
			at = len;

		/*
		 * A lower bound on the token count, so a huge input is refused after
		 * a prefix rather than after all of it. Counting bytes or characters
		 * is not sound: whitespace runs collapse, rules may map text to
		 * nothing, and any run of characters no piece covers fuses into one
		 * <unk>. But a character that has a single-character piece never
		 * gets an unknown candidate, so whatever path wins covers it with a
		 * matched piece; those are never unknown (unless a forged vocabulary
		 * makes unk_id matchable) and so never fuse, and each spans at most
		 * max_piece_len bytes. Hence a stretch has at least
		 * ceil(known / max_piece_len) tokens, and the bound passes the room
		 * left exactly when known > room * max_piece_len.
		 */
		if (max_tokens > 0 && !tok->unk_matchable && tok->max_piece_len > 0)
		{
			size_t		room = max_tokens >= n_eos + total ? max_tokens - n_eos - total : 0;

			if (room <= SIZE_MAX / tok->max_piece_len)
				known_max = room * tok->max_piece_len;
		}
		if (at > pos)
		{
			lr = encode_stretch(tok, &r, s + pos, at - pos, known_max, &n, &count);
			if (lr != LAT_OK)
				goto failed;
			total += count;
			if (pos == 0 && !found)
				break;			/* the whole text: its ids stay in the lattice */
			if (count > 0 && out_push(&r, r.lat.ends + n + 1 - count, count) != 0)
			{
				lr = LAT_NOMEM;
				goto failed;
			}
		}
		if (found)
		{
			if (out_push(&r, &id, 1) != 0)
			{
				lr = LAT_NOMEM;
				goto failed;
			}
			total++;
			pos = at + mlen;
		}
		/* past the limit with text left: a lower bound, not the count */
		if (max_tokens > 0 && total + n_eos > max_tokens && found && pos < len)
		{
			run_free(&r);
			*n_ids = total + n_eos;
			return mms_fail(err, MMS_ERR_LIMIT, "input has more than %zu tokens", max_tokens);
		}
	} while (found);

	if (max_tokens > 0 && total + n_eos > max_tokens)
	{
		run_free(&r);
		*n_ids = total + n_eos;
		return mms_fail(err, MMS_ERR_LIMIT, "input has %zu tokens, more than %zu",
						total + n_eos, max_tokens);
	}
	free(r.norm.p);
	lattice_free_ring(&r.lat);
	if (r.out == NULL)
	{
		/* one stretch (or none): count <= n, and ends has n + 1 entries, so eos fits */
		size_t		n = r.norm.len;

		if (r.lat.ends == NULL)
		{
			/* empty text: nothing was expanded, so there is no lattice to reuse */
			r.lat.ends = malloc(sizeof(int32_t));
			if (r.lat.ends == NULL)
				return mms_fail(err, MMS_ERR_NOMEM, "out of memory tokenizing");
		}
		memmove(r.lat.ends, r.lat.ends + n + 1 - total, total * sizeof(int32_t));
		if (n_eos)
			r.lat.ends[total] = tok->eos_id;
		out = r.lat.ends;
		r.cap_out = r.lat.cap;
	}
	else
	{
		free(r.lat.ends);
		if (n_eos && out_push(&r, &tok->eos_id, 1) != 0)
		{
			free(r.out);
			return mms_fail(err, MMS_ERR_NOMEM, "out of memory tokenizing");
		}
		out = r.out;
	}
	/* hand back only what is used (if worth a call: a long text has about
	 * one id per 4 bytes); if shrinking fails the block still works */
	if (r.cap_out - (total + n_eos) >= 1024)
	{
		int32_t    *shrunk = realloc(out, (total + n_eos > 0 ? total + n_eos : 1) * sizeof(int32_t));

		if (shrunk != NULL)
			out = shrunk;
	}
	*ids = out;
	*n_ids = total + n_eos;
	return MMS_OK;

failed:
	run_free(&r);
	switch (lr)
	{
		case LAT_TOO_MANY:
			/* ceil(known / max_piece_len) past what the room allowed */
			*n_ids = total + (r.lat.known + tok->max_piece_len - 1) / tok->max_piece_len + n_eos;
			return mms_fail(err, MMS_ERR_LIMIT, "input has more than %zu tokens", max_tokens);
		case LAT_CANCELLED:
			return tok_fail_cancelled(err);
		case LAT_TOO_LONG:
			return mms_fail(err, MMS_ERR_LIMIT, "normalized text is too long to tokenize");
		default:
			return mms_fail(err, MMS_ERR_NOMEM, "out of memory tokenizing");
	}
}
