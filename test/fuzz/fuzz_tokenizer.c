/*
 * fuzz_tokenizer.c — libFuzzer target for the tokenizer (tokenizer.c and the
 * tok_*.c files). The first input byte picks a mode: 0 encodes the rest with
 * the fixture tokenizer (test/fixtures/tok_nfkc.gguf, read once; run from the
 * repository root or set MMS_TOK_FIXTURE; its <pad>, </s>, <unk>, <sep> and
 * SELECT are split out of the text) and decodes the result; 1 uses the rest
 * as a precompiled_charsmap for a small fixed vocabulary and encodes fixed
 * text and the blob itself; 2 decodes the rest as 16-bit ids; 3 encodes the
 * rest with a converted T5 tokenizer that has byte fallback and [PADn]
 * sentinels (test/fixtures/tok_t5_bytes.gguf, or MMS_TOK_FIXTURE_BYTES).
 * Every decode is done with and without special tokens; every encode and
 * decode is repeated through the _limited functions: with max_tokens or
 * max_bytes below, at and above the real size (at or above must give the same
 * result, below MMS_ERR_LIMIT) and with a cancel at one of the polls
 * (MMS_ERR_CANCELLED, nothing returned, nothing leaked). The input's last
 * byte picks the limits. Seeds: test/fuzz/corpus_tokenizer (written by
 * tools/make_tokenizer_fixture.py).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "tokenizer.h"

static uint8_t *fixture_buf[2];
static MmsGguf fixture_gguf[2];
static MmsTokenizer *fixture_tok;	/* tok_nfkc.gguf */
static MmsTokenizer *bytes_tok;		/* tok_t5_bytes.gguf */

/* picks the limits of this input's limited calls */
static unsigned limit_seed;

typedef struct Polls
{
	int			count;
	int			cancel_at;		/* 0: never */
} Polls;

static int
poll_cb(void *arg)
{
	Polls	   *p = arg;

	return ++p->count == p->cancel_at;
}

/* A limit near n: 1 .. n + 1, so below, at and above all occur. */
static size_t
limit_near(size_t n)
{
	size_t		r = limit_seed % 4;

	if (r == 0 || n <= 1)
		return 1 + limit_seed % 3;
	return r == 1 ? n - 1 : r == 2 ? n : n + 1;
}

static MmsTokenizer *
load_fixture(int k, const char *env, const char *path)
{
	FILE	   *f;
	long		n;
	MmsError	err = {0};
	MmsTokenizer *tok = NULL;

	if (getenv(env) != NULL)
		path = getenv(env);
	f = fopen(path, "rb");
	if (f == NULL)
	{
		fprintf(stderr, "fuzz_tokenizer: cannot open %s (run from the repository root)\n", path);
		abort();
	}
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	fixture_buf[k] = malloc((size_t) n);
	if (fixture_buf[k] == NULL || fread(fixture_buf[k], 1, (size_t) n, f) != (size_t) n)
		abort();
	fclose(f);
	if (mms_gguf_parse(fixture_buf[k], (size_t) n, &fixture_gguf[k], &err) != MMS_OK ||
		mms_tok_load_gguf(&fixture_gguf[k], &tok, &err) != MMS_OK)
	{
		fprintf(stderr, "fuzz_tokenizer: %s\n", err.msg);
		abort();
	}
	return tok;
}

/*
 * The limited decode agrees with the plain one (want, want_len): max_bytes
 * at or above the length gives the same text, below it MMS_ERR_LIMIT; a
 * cancel at a poll that happens gives MMS_ERR_CANCELLED and nothing else.
 */
static void
decode_limited(const MmsTokenizer *tok, const int32_t *ids, size_t n, int flags,
			   const char *want, size_t want_len)
{
	MmsTokLimits lim;
	Polls		polls = {0, 0};
	MmsError	err = {0};
	char	   *text;
	size_t		len;
	MmsStatus	st;
	int			total;

	/* count the polls of a whole run: at least one unless there are no ids */
	memset(&lim, 0, sizeof(lim));
	lim.cancel = poll_cb;
	lim.cancel_arg = &polls;
	st = mms_tok_decode_opts(tok, ids, n, flags, &lim, &text, &len, &err);
	if (st != MMS_OK || len != want_len || memcmp(text, want, len + 1) != 0)
		__builtin_trap();
	free(text);
	total = polls.count;
	if (total == 0 && n > 0)
		__builtin_trap();

	lim.max_bytes = limit_near(want_len);
	st = mms_tok_decode_opts(tok, ids, n, flags, &lim, &text, &len, &err);
	if (lim.max_bytes >= want_len)
	{
		if (st != MMS_OK || len != want_len || memcmp(text, want, len + 1) != 0)
			__builtin_trap();
		free(text);
	}
	else if (st != MMS_ERR_LIMIT || text != NULL || len != 0)
		__builtin_trap();

	polls.count = 0;
	polls.cancel_at = 1 + (int) (limit_seed % (unsigned) (total + 1));
	lim.max_bytes = 0;
	st = mms_tok_decode_opts(tok, ids, n, flags, &lim, &text, &len, &err);
	if (polls.cancel_at <= total)
	{
		if (st != MMS_ERR_CANCELLED || text != NULL || len != 0)
			__builtin_trap();
	}
	else
	{
		if (st != MMS_OK || len != want_len || memcmp(text, want, len + 1) != 0)
			__builtin_trap();
		free(text);
	}
}

/*
 * Every id in range; decoding, without and with the special tokens, gives a
 * NUL-terminated string of the stated length, the first no longer.
 */
static void
check_round(const MmsTokenizer *tok, const int32_t *ids, size_t n)
{
	MmsError	err = {0};
	char	   *plain;
	char	   *text;
	size_t		plain_len;
	size_t		len;
	size_t		i;

	for (i = 0; i < n; i++)
		if (ids[i] < 0 || ids[i] >= mms_tok_n_pieces(tok))
			__builtin_trap();
	if (mms_tok_decode(tok, ids, n, &plain, &plain_len, &err) != MMS_OK || plain[plain_len] != '\0')
		__builtin_trap();
	decode_limited(tok, ids, n, 0, plain, plain_len);
	if (mms_tok_decode_opts(tok, ids, n, MMS_TOK_DECODE_KEEP_SPECIAL, NULL, &text, &len, &err) != MMS_OK ||
		text[len] != '\0' || len < plain_len)
		__builtin_trap();
	decode_limited(tok, ids, n, MMS_TOK_DECODE_KEEP_SPECIAL, text, len);
	free(text);
	free(plain);
}

/*
 * The limited encode agrees with the plain one (want, n_want): max_tokens at
 * or above the count gives the same ids, below it MMS_ERR_LIMIT with a count
 * past the limit and no more than the real one; a cancel at a poll that
 * happens gives MMS_ERR_CANCELLED and nothing else.
 */
static void
encode_limited(const MmsTokenizer *tok, const char *text, size_t len, int add_eos,
			   const int32_t *want, size_t n_want)
{
	MmsTokLimits lim;
	Polls		polls = {0, 0};
	MmsError	err = {0};
	int32_t    *ids;
	size_t		n;
	MmsStatus	st;
	int			total;

	/* count the polls of a whole run: every call polls at least once */
	memset(&lim, 0, sizeof(lim));
	lim.cancel = poll_cb;
	lim.cancel_arg = &polls;
	st = mms_tok_encode_limited(tok, text, len, add_eos, &lim, &ids, &n, &err);
	if (st != MMS_OK || n != n_want || (n > 0 && memcmp(ids, want, n * sizeof(int32_t)) != 0))
		__builtin_trap();
	free(ids);
	total = polls.count;
	if (total == 0)
		__builtin_trap();

	lim.max_tokens = limit_near(n_want);
	st = mms_tok_encode_limited(tok, text, len, add_eos, &lim, &ids, &n, &err);
	if (lim.max_tokens >= n_want)
	{
		if (st != MMS_OK || n != n_want || (n > 0 && memcmp(ids, want, n * sizeof(int32_t)) != 0))
			__builtin_trap();
		free(ids);
	}
	else if (st != MMS_ERR_LIMIT || ids != NULL || n <= lim.max_tokens || n > n_want)
		__builtin_trap();

	/* cancel at one of the polls, or after the last */
	polls.count = 0;
	polls.cancel_at = 1 + (int) (limit_seed % (unsigned) (total + 1));
	lim.max_tokens = 0;
	st = mms_tok_encode_limited(tok, text, len, add_eos, &lim, &ids, &n, &err);
	if (polls.cancel_at <= total)
	{
		if (st != MMS_ERR_CANCELLED || ids != NULL || n != 0 || polls.count != polls.cancel_at)
			__builtin_trap();
	}
	else
	{
		if (st != MMS_OK || n != n_want || (n > 0 && memcmp(ids, want, n * sizeof(int32_t)) != 0))
			__builtin_trap();
		free(ids);
	}
}

static void
encode_round(const MmsTokenizer *tok, const char *text, size_t len, int add_eos)
{
	MmsError	err = {0};
	int32_t    *ids;
	size_t		n;

	if (mms_tok_encode(tok, text, len, add_eos, &ids, &n, &err) != MMS_OK)
	{
		if (err.code != MMS_ERR_LIMIT)
			__builtin_trap();
		return;
	}
	/* non-empty text after stripping yields ids; empty yields only eos */
	if (add_eos && (n == 0 || ids[n - 1] != mms_tok_eos_id(tok)))
		__builtin_trap();
	check_round(tok, ids, n);
	encode_limited(tok, text, len, add_eos, ids, n);
	free(ids);
}

static MmsGgufStr
S(const char *s)
{
	MmsGgufStr	r = {s, strlen(s)};

	return r;
}

static void
charsmap_mode(const uint8_t *data, size_t size)
{
	static const char probe[] = "  Hello ＡＢＣ fi\xe3\x80\x80 world\xe2\x80\x8b <u>x \xff\xc3 \xe2\x96\x81 ";
	MmsGgufStr	pieces[] = {
		S("<pad>"), S("</s>"), S("<unk>"), S("\xe2\x96\x81"), S("a"), S("b"), S("l"), S("o"),
		S("\xe2\x96\x81" "H"), S("ll"), S("<u>"), S("<0x41>"), S(" "), S("fi"), S("[PAD]"),
	};
	float		scores[] = {0, 0, 0, -1, -2, -2, -3, -3, -2.5f, -2, 0, 0, -4, -1, -1};
	int32_t		types[] = {3, 3, 2, 1, 1, 1, 1, 1, 1, 1, 4, 6, 1, 1, 5};
	MmsTokenizerSpec spec;
	MmsTokenizer *tok = NULL;
	MmsError	err = {0};

	memset(&spec, 0, sizeof(spec));
	spec.n_pieces = (int32_t) (sizeof(pieces) / sizeof(pieces[0]));
	spec.pieces = pieces;
	spec.scores = scores;
	spec.types = types;
	spec.add_space_prefix = size > 0 ? data[0] & 1 : 1;
	spec.remove_extra_whitespaces = size > 0 ? (data[0] >> 1) & 1 : 1;
	spec.charsmap = data;
	spec.charsmap_len = size;
	spec.eos_id = 1;
	spec.unk_id = 2;
	spec.pad_id = 0;
	if (mms_tok_create(&spec, &tok, &err) != MMS_OK)
	{
		if (tok != NULL || err.code != MMS_ERR_MODEL)
			__builtin_trap();
		return;
	}
	encode_round(tok, probe, sizeof(probe) - 1, 1);
	encode_round(tok, (const char *) data, size, 0);
	mms_tok_free(tok);
}

static void
decode_mode(const uint8_t *data, size_t size)
{
	size_t		n = size / 2;
	int32_t    *ids = malloc((n ? n : 1) * sizeof(int32_t));
	MmsError	err = {0};
	char	   *text;
	size_t		len;
	size_t		i;
	int			bad = 0;

	if (ids == NULL)
		return;
	for (i = 0; i < n; i++)
	{
		/* mostly in range, sometimes just past it or negative */
		ids[i] = (int16_t) (data[2 * i] | data[2 * i + 1] << 8) % 1003;
		bad |= ids[i] < 0 || ids[i] >= mms_tok_n_pieces(fixture_tok);
	}
	if (mms_tok_decode(fixture_tok, ids, n, &text, &len, &err) == MMS_OK)
	{
		if (bad)
			__builtin_trap();
		free(text);
		check_round(fixture_tok, ids, n);
	}
	else if (!bad || err.code != MMS_ERR_ARG)
		__builtin_trap();
	else
	{
		/* a bad id wins over any limit; ids are all checked before a poll */
		MmsTokLimits lim;
		Polls		polls = {0, 1};

		memset(&lim, 0, sizeof(lim));
		lim.max_bytes = 1;
		lim.cancel = poll_cb;
		lim.cancel_arg = &polls;
		text = (char *) 1;
		if (mms_tok_decode_limited(fixture_tok, ids, n, &lim, &text, &len, &err) != MMS_ERR_ARG ||
			text != NULL)
			__builtin_trap();
	}
	/* the same ids over the converted vocabulary: sentinels, byte runs */
	for (i = 0; i < n; i++)
		ids[i] = (int32_t) ((uint16_t) (data[2 * i] | data[2 * i + 1] << 8) % mms_tok_n_pieces(bytes_tok));
	check_round(bytes_tok, ids, n);
	free(ids);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (fixture_tok == NULL)
	{
		fixture_tok = load_fixture(0, "MMS_TOK_FIXTURE", "test/fixtures/tok_nfkc.gguf");
		bytes_tok = load_fixture(1, "MMS_TOK_FIXTURE_BYTES", "test/fixtures/tok_t5_bytes.gguf");
	}
	if (size == 0)
		return 0;
	limit_seed = data[size - 1] ^ (unsigned) size;
	switch (data[0] % 4)
	{
		case 3:
			encode_round(bytes_tok, (const char *) data + 1, size - 1, data[0] & 4);
			break;
		case 0:
			encode_round(fixture_tok, (const char *) data + 1, size - 1, data[0] & 4);
			break;
		case 1:
			charsmap_mode(data + 1, size - 1);
			break;
		default:
			decode_mode(data + 1, size - 1);
			break;
	}
	return 0;
}
