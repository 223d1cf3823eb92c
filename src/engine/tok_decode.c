/*
 * tok_decode.c — ids back to text, as transformers' T5Tokenizer decodes
 * (decode with skip_special_tokens true, or false with
 * MMS_TOK_DECODE_KEEP_SPECIAL), byte pieces reassembled as SentencePiece does.
 * Not encoding (tokenizer.c).
 */
#include "tok_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------- decoding */

/* Bytes a piece prints: each U+2581 becomes one space, or none. */
static size_t
piece_text_len(const char *p, size_t plen, int drop_space)
{
	size_t		w = 0;
	size_t		k;

	for (k = 0; k < plen; k++, w++)
		if (k + 3 <= plen && memcmp(p + k, TOK_SPACE_SYMBOL, 3) == 0)
		{
			k += 2;
			w -= drop_space;
		}
	return w;
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
	size_t		k = mms_tok_utf8_valid_len(r->b, r->n);
	const char *src = (const char *) r->b;
	size_t		w = k;

	if (k == 0)
	{
		src = TOK_REPLACEMENT;
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
	return mms_tok_decode_opts(tok, ids, n_ids, 0, NULL, text, len, err);
}

MmsStatus
mms_tok_decode_limited(const MmsTokenizer *tok, const int32_t *ids, size_t n_ids,
					   const MmsTokLimits *lim, char **text, size_t *len, MmsError *err)
{
	return mms_tok_decode_opts(tok, ids, n_ids, 0, lim, text, len, err);
}

/*
 * What id prints as a token, at *p for *plen bytes; 0 if it prints nothing
 * (skipped as transformers skips it). A sentinel written as a [PADn] piece
 * prints as <extra_id_N>, in name (16 bytes).
 */
static inline int
token_text(const MmsTokenizer *tok, int32_t id, int keep_special, char *name,
		   const char **p, size_t *plen)
{
	const uint8_t flags = tok->flags[id];

	if ((flags & TOK_F_SPECIAL) && !keep_special)
		return 0;
	if (tok->types[id] == MMS_PIECE_UNUSED)
	{
		/* past transformers' vocabulary, which holds only the sentinels */
		if (!(flags & TOK_F_SENTINEL))
			return 0;
		*plen = (size_t) snprintf(name, 16, "<extra_id_%d>", (int) (tok->sentinel_top - id));
		*p = name;
		return 1;
	}
	*p = tok->piece_bytes + tok->piece_off[id];
	*plen = (size_t) (tok->piece_off[id + 1] - tok->piece_off[id]);
	return 1;
}

/*
 * transformers' decode: the tokens' text joined, each U+2581 a space, except
 * in the first token printed, which loses every U+2581 (its Metaspace decoder
 * with prepend_scheme "always"; SentencePiece's own decoder would also strip
 * the U+2581 of further pieces while nothing else is printed, and prints
 * <unk> as " \u2047 "). Runs of byte pieces are reassembled as SentencePiece
 * does (transformers would print "<0xNN>"): valid UTF-8 passes, each bad byte
 * becomes U+FFFD.
 */
MmsStatus
mms_tok_decode_opts(const MmsTokenizer *tok, const int32_t *ids, size_t n_ids, int flags,
					const MmsTokLimits *lim, char **text, size_t *len, MmsError *err)
{
	TokBuf		o = {NULL, 0, 0};
	ByteRun		run = {{0}, 0};
	TokGuard	g;
	const size_t max = (lim != NULL && lim->max_bytes > 0) ? lim->max_bytes : SIZE_MAX - 1;
	const int	keep_special = (flags & MMS_TOK_DECODE_KEEP_SPECIAL) != 0;
	const int	strip_first = tok->add_space_prefix || tok->remove_extra_whitespaces;
	size_t		bound = 0;
	size_t		i;
	size_t		w;
	int			first = 1;
	char		name[16];

	*text = NULL;
	*len = 0;
	if (ids == NULL && n_ids > 0)
		return mms_fail(err, MMS_ERR_ARG, "ids is NULL");
	tok_guard_init(&g, lim);
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
			/* no piece prints more than its own bytes, but a [PADn] sentinel */
			plen = (tok->flags[id] & TOK_F_SENTINEL) ? sizeof(name) :
				(size_t) (tok->piece_off[id + 1] - tok->piece_off[id]);
			bound = plen > SIZE_MAX - bound ? SIZE_MAX : bound + plen;
		}
		if (tok_guard_poll(&g))
			return tok_fail_cancelled(err);
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
			const char *p;
			size_t		plen;
			size_t		k;
			int			drop_space;

			if (tok->types[id] == MMS_PIECE_BYTE)
			{
				w = run_push(&run, (uint8_t) tok->byte_val[id], o.p + o.len, max - o.len);
				if (w == SIZE_MAX)
					goto too_long;
				o.len += w;
				first = 0;
				continue;
			}
			if (run.n > 0)
			{
				w = run_flush(&run, o.p + o.len, max - o.len);
				if (w == SIZE_MAX)
					goto too_long;
				o.len += w;
			}
			if (!token_text(tok, id, keep_special, name, &p, &plen))
				continue;
			drop_space = first && strip_first;
			first = 0;
			/* it prints at most plen bytes, so only near the limit count them */
			if (plen > max - o.len && piece_text_len(p, plen, drop_space) > max - o.len)
				goto too_long;
			for (k = 0; k < plen; k++)
			{
				if (k + 3 <= plen && memcmp(p + k, TOK_SPACE_SYMBOL, 3) == 0)
				{
					if (!drop_space)
						o.p[o.len++] = ' ';
					k += 2;
				}
				else
					o.p[o.len++] = p[k];
			}
		}
		if (tok_guard_poll(&g))
		{
			free(o.p);
			return tok_fail_cancelled(err);
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
