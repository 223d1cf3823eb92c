/*
 * tok_normalize.c — SentencePiece's normalizer (normalizer.cc): the
 * precompiled charsmap (a Darts-clone double array with a replacement pool),
 * UTF-8 validation as SentencePiece does it, and the whitespace handling that
 * turns text into what Viterbi reads. Not the pieces (tok_vocab.c) nor the
 * split on special tokens (tokenizer.c).
 */
#include "tok_internal.h"

#include <stdlib.h>
#include <string.h>

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

MmsStatus
mms_tok_charsmap_load(MmsTokenizer *t, const uint8_t *blob, size_t len, MmsError *err)
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

static inline int
is_trail(uint8_t b)
{
	return (b & 0xC0) == 0x80;
}

/*
 * SentencePiece's IsValidDecodeUTF8: length of the valid character at s, or 0
 * (malformed: overlong, surrogate, > U+10FFFF, truncated, stray byte).
 */
size_t
mms_tok_utf8_valid_len(const uint8_t *s, size_t len)
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
/* ---------------------------------------------------------- normalizing */

int
mms_tok_buf_append(TokBuf *b, const char *s, size_t n)
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
 * bytes it consumed. The longest charsmap rule applies; otherwise one
 * character is copied, a malformed byte becoming U+FFFD. Adds the bytes its
 * trie walk looked at to *walked, which can exceed what it consumes when
 * rules share long prefixes. (SentencePiece would first match user-defined
 * pieces here; their raw occurrences are split out before normalization.)
 */
static size_t
normalize_prefix(const MmsTokenizer *t, const uint8_t *s, size_t len,
				 const char **out, size_t *out_len, size_t *walked)
{
	size_t		n;

	n = charsmap_match(t, s, len, out, walked);
	if (n > 0)
	{
		*out_len = strlen(*out);
		return n;
	}
	n = mms_tok_utf8_valid_len(s, len);
	if (n == 0)
	{
		*out = TOK_REPLACEMENT;
		*out_len = 3;
		return 1;
	}
	*out = (const char *) s;
	*out_len = n;
	return n;
}

/*
 * The rules' work counted against budget is the bytes their trie walks looked
 * at plus the bytes they wrote: large only with forged rules.
 */
int
mms_tok_normalize_some(const MmsTokenizer *t, TokNormState *ns, TokBuf *norm, size_t budget,
					   size_t *units)
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
		if (t->add_space_prefix && (rc = mms_tok_buf_append(norm, TOK_SPACE_SYMBOL, 3)) != 0)
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
			if ((rc = mms_tok_buf_append(norm, (const char *) s, used)) != 0)
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
				if ((rc = mms_tok_buf_append(norm, piece + run, k - run)) != 0 ||
					(rc = mms_tok_buf_append(norm, TOK_SPACE_SYMBOL, 3)) != 0)
					goto out;
				run = k + 1;
			}
			if ((rc = mms_tok_buf_append(norm, piece + run, plen - run)) != 0)
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
	*units = (size_t) (s - ns->s) + work;
	ns->s = s;
	ns->len = len;
	ns->prev_space = prev_space;
	return rc;
}

/*
 * Appends never touch earlier bytes, but the end is stripped of U+2581
 * (E2 96 81) once the input is done, so with remove_extra_whitespaces only the
 * text up to the last byte that is none of E2, 96, 81 is sure to stay.
 * ns->scanned remembers how far the search got, so each byte is looked at once.
 */
size_t
mms_tok_norm_final_len(const MmsTokenizer *t, const TokBuf *norm, TokNormState *ns)
{
	size_t		i;

	if (!t->remove_extra_whitespaces)
		return ns->final = norm->len;
	for (i = ns->scanned; i < norm->len; i++)
	{
		uint8_t		b = (uint8_t) norm->p[i];

		if (b != 0xE2 && b != 0x96 && b != 0x81)
			ns->final = i + 1;
	}
	ns->scanned = norm->len;
	return ns->final;
}

void
mms_tok_plain_init(MmsTokenizer *t)
{
	int			i;

	for (i = 1; i < 0x80; i++)
	{
		uint32_t	child = t->n_units ? dunit_offset(t->units[0]) ^ (uint32_t) i : 0;
		int			in_charsmap = child < t->n_units && dunit_label(t->units[child]) == (uint32_t) i;

		t->plain[i] = i != ' ' && !in_charsmap;
	}
}
