/*
 * test_tokenizer.c — cmocka tests for the tokenizer (tokenizer.c, tok_*.c):
 * every expectation of test/fixtures/tok_cases.txt (sentencepiece's ids with
 * the special tokens split out first, transformers' decodes; made by
 * tools/make_tokenizer_fixture.py) and of the converted T5 tokenizers
 * tok_t5_{added,pad,bytes} (transformers' T5Tokenizer; made by
 * tools/make_special_token_fixture.py), also under limits set exactly at and
 * one below each case's size; the special-token rules the fixtures do not
 * reach; malformed UTF-8, malformed charsmaps, the small-vocabulary paths
 * (byte pieces, unused pieces, no charsmap); and the limits: cancel at every
 * poll, max_tokens and max_bytes, early refusal.
 */
#include "test_util.h"

#include <time.h>

#include "gguf.h"
#include "tokenizer.h"

typedef struct Fixture
{
	uint8_t    *file;
	size_t		file_len;
	MmsGguf		gguf;
	MmsTokenizer *tok;
	const MmsGgufKV *charsmap;
} Fixture;

static double
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/*
 * A cancel callback that counts its polls and says stop at poll number
 * cancel_at (never when 0).
 */
typedef struct PollCounter
{
	int			polls;
	int			cancel_at;
} PollCounter;

static int
count_polls(void *arg)
{
	PollCounter *pc = arg;

	pc->polls++;
	return pc->cancel_at > 0 && pc->polls >= pc->cancel_at;
}

static MmsTokLimits
limits(size_t max_tokens, size_t max_bytes, PollCounter *pc)
{
	MmsTokLimits lim;

	memset(&lim, 0, sizeof(lim));
	lim.max_tokens = max_tokens;
	lim.max_bytes = max_bytes;
	if (pc != NULL)
	{
		lim.cancel = count_polls;
		lim.cancel_arg = pc;
	}
	return lim;
}

static int
setup(void **state)
{
	Fixture    *fx = calloc(1, sizeof(Fixture));
	MmsError	err = {0};
	double		t0;

	assert_non_null(fx);
	fx->file = mms_test_read_file(MMS_FIXTURE_DIR "tok_nfkc.gguf", &fx->file_len);
	assert_int_equal(mms_gguf_parse(fx->file, fx->file_len, &fx->gguf, &err), MMS_OK);
	t0 = now_ms();
	if (mms_tok_load_gguf(&fx->gguf, &fx->tok, &err) != MMS_OK)
		fail_msg("load: %s", err.msg);
	print_message("tokenizer load (1000 pieces, %zu-byte charsmap): %.2f ms\n",
				  (size_t) mms_gguf_find_kv(&fx->gguf, "tokenizer.ggml.precompiled_charsmap")->arr_n,
				  now_ms() - t0);
	fx->charsmap = mms_gguf_find_kv(&fx->gguf, "tokenizer.ggml.precompiled_charsmap");
	assert_non_null(fx->charsmap);
	*state = fx;
	return 0;
}

static int
teardown(void **state)
{
	Fixture    *fx = *state;

	mms_tok_free(fx->tok);
	mms_gguf_free(&fx->gguf);
	free(fx->file);
	free(fx);
	return 0;
}

/* A spec over the fixture's own vocabulary, with the charsmap swapped. */
static MmsTokenizerSpec
fixture_spec(Fixture *fx, float *scores, int32_t *types)
{
	const MmsGgufKV *tok = mms_gguf_find_kv(&fx->gguf, "tokenizer.ggml.tokens");
	const MmsGgufKV *sc = mms_gguf_find_kv(&fx->gguf, "tokenizer.ggml.scores");
	const MmsGgufKV *ty = mms_gguf_find_kv(&fx->gguf, "tokenizer.ggml.token_type");
	MmsTokenizerSpec spec;

	memset(&spec, 0, sizeof(spec));
	spec.n_pieces = (int32_t) tok->arr_n;
	spec.pieces = tok->arr_str;
	memcpy(scores, sc->arr_data, tok->arr_n * sizeof(float));
	memcpy(types, ty->arr_data, tok->arr_n * sizeof(int32_t));
	spec.scores = scores;
	spec.types = types;
	spec.add_space_prefix = 1;
	spec.remove_extra_whitespaces = 1;
	spec.charsmap = fx->charsmap->arr_data;
	spec.charsmap_len = fx->charsmap->arr_n;
	spec.eos_id = 1;
	spec.unk_id = 2;
	spec.pad_id = 0;
	return spec;
}

/* ---- the sentencepiece expectations --------------------------------------- */

static int
hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* Parses "x<hex>" at *p into out; returns its length. */
static size_t
parse_hex(char **p, uint8_t *out)
{
	char	   *s = *p;
	size_t		n = 0;

	assert_true(*s == 'x');
	s++;
	while (hexval(s[0]) >= 0 && hexval(s[1]) >= 0)
	{
		out[n++] = (uint8_t) (hexval(s[0]) << 4 | hexval(s[1]));
		s += 2;
	}
	*p = s;
	return n;
}

static size_t
parse_ids(char **p, int32_t *ids)
{
	long		n = strtol(*p, p, 10);
	long		i;

	for (i = 0; i < n; i++)
		ids[i] = (int32_t) strtol(*p, p, 10);
	while (**p == ' ')
		(*p)++;
	return (size_t) n;
}

static void
print_ids(const char *label, const int32_t *ids, size_t n)
{
	size_t		i;

	print_message("  %s:", label);
	for (i = 0; i < n && i < 40; i++)
		print_message(" %d", ids[i]);
	print_message(n > 40 ? " ...\n" : "\n");
}

/*
 * mms_tok_encode_limited gives sentencepiece's ids with no limits (NULL or
 * all zero), with max_tokens exactly the count and a cancel that never fires
 * (polled at least once); one token less is MMS_ERR_LIMIT with a count past
 * the limit and no more than the real one.
 */
static int
encode_limited_agrees(const MmsTokenizer *tok, const uint8_t *text, size_t len,
					  const int32_t *want, size_t n_want)
{
	PollCounter pc = {0, 0};
	MmsTokLimits none = limits(0, 0, NULL);
	MmsTokLimits at = limits(n_want, 0, &pc);
	MmsTokLimits below = limits(n_want - 1, 0, NULL);
	const MmsTokLimits *ok_lims[] = {NULL, &none, &at};
	MmsError	err = {0};
	int32_t    *got;
	size_t		n_got;
	size_t		i;

	for (i = 0; i < 3; i++)
	{
		if (mms_tok_encode_limited(tok, (const char *) text, len, 1, ok_lims[i], &got, &n_got, &err) != MMS_OK)
			return 0;
		if (n_got != n_want || memcmp(got, want, n_got * sizeof(int32_t)) != 0)
		{
			free(got);
			return 0;
		}
		free(got);
	}
	if (pc.polls < 1)
		return 0;
	if (n_want < 2)
		return 1;				/* max_tokens 0 would mean no limit */
	got = (int32_t *) 1;
	return mms_tok_encode_limited(tok, (const char *) text, len, 1, &below, &got, &n_got, &err) ==
		MMS_ERR_LIMIT && got == NULL && n_got > n_want - 1 && n_got <= n_want &&
		strncmp(err.msg, "input has ", 10) == 0;
}

/* The same for decoding: max_bytes exactly the length passes, one less fails. */
static int
decode_limited_agrees(const MmsTokenizer *tok, const int32_t *ids, size_t n_ids, int flags,
					  const uint8_t *want, size_t n_want)
{
	PollCounter pc = {0, 0};
	MmsTokLimits at = limits(0, n_want, &pc);
	MmsTokLimits below = limits(0, n_want - 1, NULL);
	MmsError	err = {0};
	char	   *text;
	size_t		len;
	char		msg[64];
	int			ok;

	if (mms_tok_decode_opts(tok, ids, n_ids, flags, NULL, &text, &len, &err) != MMS_OK)
		return 0;
	ok = len == n_want && memcmp(text, want, len) == 0;
	free(text);
	if (!ok || mms_tok_decode_opts(tok, ids, n_ids, flags, &at, &text, &len, &err) != MMS_OK)
		return 0;
	ok = len == n_want && memcmp(text, want, len) == 0 && (n_ids == 0 || pc.polls >= 1);
	free(text);
	if (!ok || n_want < 2)
		return ok;
	snprintf(msg, sizeof(msg), "decoded text is longer than %zu bytes", n_want - 1);
	text = (char *) 1;
	return mms_tok_decode_opts(tok, ids, n_ids, flags, &below, &text, &len, &err) == MMS_ERR_LIMIT &&
		text == NULL && len == 0 && strcmp(err.msg, msg) == 0;
}

/*
 * Checks tok against a golden file: "x<hex> N id..." or "e x<hex> N id..."
 * (encode with eos), "d N id... x<hex>" (decode) and "D N id... x<hex>"
 * (decode keeping special tokens); each also under limits. Returns the count
 * of encode cases in *n_enc and of decode cases in *n_dec.
 */
static void
check_goldens(const MmsTokenizer *tok, const char *path, int *n_enc_out, int *n_dec_out)
{
	FILE	   *f = fopen(path, "r");
	size_t		cap = 1 << 20;
	char	   *line = malloc(cap);
	uint8_t    *bytes = malloc(cap);
	int32_t    *want = malloc(cap * sizeof(int32_t));
	int			n_enc = 0,
				ok_enc = 0,
				n_dec = 0,
				ok_dec = 0;
	double		enc_ms = 0;
	size_t		enc_bytes = 0;

	if (f == NULL)
		fail_msg("cannot open %s", path);
	assert_true(line && bytes && want);
	while (fgets(line, (int) cap, f) != NULL)
	{
		char	   *p = line;
		MmsError	err = {0};

		if (line[0] == 'x' || line[0] == 'e')
		{
			size_t		len;
			size_t		n_want;
			int32_t    *got;
			size_t		n_got;
			double		t0;

			if (line[0] == 'e')
				p += 2;
			len = parse_hex(&p, bytes);
			n_want = parse_ids(&p, want);
			t0 = now_ms();
			assert_int_equal(mms_tok_encode(tok, (const char *) bytes, len, 1, &got, &n_got, &err), MMS_OK);
			enc_ms += now_ms() - t0;
			enc_bytes += len;
			n_enc++;
			if (n_got == n_want && memcmp(got, want, n_got * sizeof(int32_t)) == 0 &&
				encode_limited_agrees(tok, bytes, len, want, n_want))
				ok_enc++;
			else if (n_enc - ok_enc <= 5)
			{
				print_message("encode mismatch for %.200s", line);
				print_ids("want", want, n_want);
				print_ids("got ", got, n_got);
			}
			free(got);
		}
		else if (line[0] == 'd' || line[0] == 'D')
		{
			const int	flags = line[0] == 'D' ? MMS_TOK_DECODE_KEEP_SPECIAL : 0;
			size_t		n_ids,
						n_want;
			char	   *text;
			size_t		len;

			p += 2;
			n_ids = parse_ids(&p, want);
			n_want = parse_hex(&p, bytes);
			if (flags == 0)
				assert_int_equal(mms_tok_decode(tok, want, n_ids, &text, &len, &err), MMS_OK);
			else
				assert_int_equal(mms_tok_decode_opts(tok, want, n_ids, flags, NULL, &text, &len, &err), MMS_OK);
			n_dec++;
			if (len == n_want && memcmp(text, bytes, len) == 0 && text[len] == '\0' &&
				decode_limited_agrees(tok, want, n_ids, flags, bytes, n_want))
				ok_dec++;
			else if (n_dec - ok_dec <= 5)
				print_message("decode mismatch for %.200s  got \"%s\"\n", line, text);
			free(text);
		}
	}
	fclose(f);
	free(line);
	free(bytes);
	free(want);
	print_message("%s: encode %d/%d cases match (%.1f MB/s), decode %d/%d\n", path + strlen(MMS_FIXTURE_DIR),
				  ok_enc, n_enc, enc_bytes / 1e6 / (enc_ms / 1e3), ok_dec, n_dec);
	assert_int_equal(ok_enc, n_enc);
	assert_int_equal(ok_dec, n_dec);
	*n_enc_out = n_enc;
	*n_dec_out = n_dec;
}

/* The sentencepiece expectations (special tokens split out first), and transformers' decodes. */
static void
test_fixture_cases(void **state)
{
	Fixture    *fx = *state;
	int			n_enc,
				n_dec;

	check_goldens(fx->tok, MMS_FIXTURE_DIR "tok_cases.txt", &n_enc, &n_dec);
	assert_true(n_enc >= 10000);
	assert_true(n_dec >= 1000);
}

/* ---- edge behaviour -------------------------------------------------------- */

static void
expect_encode(MmsTokenizer *tok, const char *text, size_t len, int add_eos,
			  const int32_t *want, size_t n_want)
{
	MmsError	err = {0};
	int32_t    *got;
	size_t		n_got;

	assert_int_equal(mms_tok_encode(tok, text, len, add_eos, &got, &n_got, &err), MMS_OK);
	if (n_got != n_want || (n_want > 0 && memcmp(got, want, n_want * sizeof(int32_t)) != 0))
	{
		print_ids("want", want, n_want);
		print_ids("got ", got, n_got);
		fail_msg("encode of %zu bytes differs", len);
	}
	free(got);
}

static void
test_empty_and_eos(void **state)
{
	Fixture    *fx = *state;
	static const int32_t eos[] = {1};
	static const int32_t a[] = {5, 996};
	static const int32_t a_eos[] = {5, 996, 1};

	expect_encode(fx->tok, "", 0, 1, eos, 1);
	expect_encode(fx->tok, NULL, 0, 1, eos, 1);
	expect_encode(fx->tok, "", 0, 0, NULL, 0);
	expect_encode(fx->tok, " \t\n\xe3\x80\x80 ", 7, 1, eos, 1);
	expect_encode(fx->tok, "a", 1, 0, a, 2);
	expect_encode(fx->tok, "  a  ", 5, 1, a_eos, 3);
	assert_int_equal(mms_tok_n_pieces(fx->tok), 1000);
	assert_int_equal(mms_tok_eos_id(fx->tok), 1);
	assert_int_equal(mms_tok_unk_id(fx->tok), 2);
	assert_int_equal(mms_tok_pad_id(fx->tok), 0);
}

static void
test_invalid_utf8(void **state)
{
	Fixture    *fx = *state;
	static const char *const cases[] = {
		"\xff", "\xfe\xff", "\x80", "a\x80", "\xc3", "\xe2\x82", "\xf0\x9f\x98",
		"\xc0\xaf", "\xe0\x80\xaf", "\xf0\x80\x80\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80",
		"\xf8\x88\x80\x80\x80", "x\xe2\x82\xacy\xe2", "SELECT\xff", "\xff<sep>\xff",
	};
	/* sentencepiece: each bad byte is one U+FFFD, unknown here, so one fused <unk> */
	static const int32_t ff[] = {5, 2, 1};
	size_t		i;

	expect_encode(fx->tok, "\xff", 1, 1, ff, 3);
	expect_encode(fx->tok, "\xff\xfe\x80", 3, 1, ff, 3);
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
	{
		MmsError	err = {0};
		int32_t    *ids;
		size_t		n,
					k,
					len;
		char	   *text;

		assert_int_equal(mms_tok_encode(fx->tok, cases[i], strlen(cases[i]), 1, &ids, &n, &err), MMS_OK);
		assert_true(n >= 1);
		for (k = 0; k < n; k++)
			assert_true(ids[k] >= 0 && ids[k] < 1000);
		assert_int_equal(mms_tok_decode(fx->tok, ids, n, &text, &len, &err), MMS_OK);
		assert_int_equal(strlen(text), len);
		free(text);
		free(ids);
	}
}

static void
test_decode_errors(void **state)
{
	Fixture    *fx = *state;
	MmsError	err = {0};
	char	   *text = (char *) 1;
	size_t		len = 7;
	static const int32_t bad_hi[] = {5, 1000};
	static const int32_t bad_lo[] = {-1};

	assert_int_equal(mms_tok_decode(fx->tok, bad_hi, 2, &text, &len, &err), MMS_ERR_ARG);
	assert_null(text);
	assert_int_equal(err.code, MMS_ERR_ARG);
	assert_int_equal(mms_tok_decode(fx->tok, bad_lo, 1, &text, &len, &err), MMS_ERR_ARG);
	assert_int_equal(mms_tok_decode(fx->tok, NULL, 0, &text, &len, &err), MMS_OK);
	assert_string_equal(text, "");
	assert_int_equal(len, 0);
	free(text);
}

/* Loads the fixture vocabulary with the given charsmap; returns the status. */
static MmsStatus
load_with_charsmap(Fixture *fx, const uint8_t *blob, size_t len)
{
	float	   *scores = malloc(1000 * sizeof(float));
	int32_t    *types = malloc(1000 * sizeof(int32_t));
	MmsTokenizerSpec spec = fixture_spec(fx, scores, types);
	MmsTokenizer *tok = NULL;
	MmsError	err = {0};
	MmsStatus	st;

	spec.charsmap = blob;
	spec.charsmap_len = len;
	st = mms_tok_create(&spec, &tok, &err);
	if (st == MMS_OK)
	{
		static const char probe[] = " ＡＢＣ ﬁ\xe3\x80\x80 x\xff SELECT ";
		int32_t    *ids;
		size_t		n;

		assert_non_null(tok);
		assert_int_equal(mms_tok_encode(tok, probe, sizeof(probe) - 1, 1, &ids, &n, &err), MMS_OK);
		free(ids);
		mms_tok_free(tok);
	}
	else
	{
		assert_null(tok);
		assert_int_equal(err.code, st);
	}
	free(scores);
	free(types);
	return st;
}

static void
put_u32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t) v;
	p[1] = (uint8_t) (v >> 8);
	p[2] = (uint8_t) (v >> 16);
	p[3] = (uint8_t) (v >> 24);
}

static void
test_malformed_charsmap(void **state)
{
	Fixture    *fx = *state;
	const uint8_t *good = fx->charsmap->arr_data;
	size_t		n = fx->charsmap->arr_n;
	uint32_t	trie_size = (uint32_t) good[0] | (uint32_t) good[1] << 8 |
		(uint32_t) good[2] << 16 | (uint32_t) good[3] << 24;
	uint8_t    *b = malloc(n);
	size_t		i;
	uint32_t	rng = 12345;

	assert_non_null(b);
	assert_int_equal(load_with_charsmap(fx, good, n), MMS_OK);
	assert_int_equal(load_with_charsmap(fx, NULL, 0), MMS_OK);

	/* truncated: header only, or mid-trie */
	assert_int_equal(load_with_charsmap(fx, good, 3), MMS_ERR_MODEL);
	assert_int_equal(load_with_charsmap(fx, good, 4), MMS_ERR_MODEL);
	assert_int_equal(load_with_charsmap(fx, good, 100), MMS_ERR_MODEL);
	assert_int_equal(load_with_charsmap(fx, good, trie_size), MMS_ERR_MODEL);

	/* trie_size past the end, and an empty trie */
	memcpy(b, good, n);
	put_u32(b, (uint32_t) n);
	assert_int_equal(load_with_charsmap(fx, b, n), MMS_ERR_MODEL);
	put_u32(b, 0xFFFFFFFCU);
	assert_int_equal(load_with_charsmap(fx, b, n), MMS_ERR_MODEL);
	put_u32(b, 0);
	assert_int_equal(load_with_charsmap(fx, b, n), MMS_ERR_MODEL);

	/* rule offsets past the pool: the pool cut short, or missing its last NUL */
	assert_int_equal(load_with_charsmap(fx, good, 4 + trie_size + 10), MMS_ERR_MODEL);
	assert_int_equal(load_with_charsmap(fx, good, n - 1), MMS_ERR_MODEL);

	/* a smaller trie_size makes the pool start inside the trie: whatever
	 * that yields must be caught or harmless */
	memcpy(b, good, n);
	put_u32(b, trie_size / 2);
	(void) load_with_charsmap(fx, b, n);

	/* random corruption of the trie: load error or a working tokenizer */
	for (i = 0; i < 300; i++)
	{
		int			k;

		memcpy(b, good, n);
		for (k = 0; k < 1 + (int) (i % 16); k++)
		{
			rng = rng * 1103515245u + 12345u;
			b[4 + (rng >> 8) % trie_size] ^= (uint8_t) (1u << (rng % 8));
		}
		(void) load_with_charsmap(fx, b, n);
	}
	/* pure garbage */
	for (i = 0; i < 100; i++)
	{
		size_t		len = 5 + i * 13;
		size_t		k;

		for (k = 0; k < len; k++)
		{
			rng = rng * 1103515245u + 12345u;
			b[k] = (uint8_t) (rng >> 16);
		}
		put_u32(b, (uint32_t) ((len - 4) & ~3u) - (i % 3) * 4);
		(void) load_with_charsmap(fx, b, len);
	}
	free(b);
}

/* ---- a hand-made vocabulary: no charsmap, byte, unused, user pieces -------- */

static MmsGgufStr
S(const char *s)
{
	MmsGgufStr	r = {s, strlen(s)};

	return r;
}

static void
test_small_vocab(void **state)
{
	MmsGgufStr	pieces[] = {
		S("<pad>"), S("</s>"), S("<unk>"), S("\xe2\x96\x81"), S("a"), S("b"),
		S("\xe2\x96\x81" "ab"), S("<0xE2>"), S("<0x82>"), S("<0xAC>"), S("[PAD9]"), S("<x>"),
	};
	float		scores[] = {0, 0, 0, -1, -2, -2, -1.5f, 0, 0, 0, -10000, 0};
	int32_t		types[] = {3, 3, 2, 1, 1, 1, 1, 6, 6, 6, 5, 4};
	MmsTokenizerSpec spec;
	MmsTokenizer *tok;
	MmsError	err = {0};
	char	   *text;
	size_t		len;
	static const int32_t ab[] = {6, 1};
	/* a user-defined piece is split out first: the text after it gets a "▁" */
	static const int32_t user[] = {3, 4, 11, 3, 5, 1};
	static const int32_t unk[] = {3, 2, 4, 1};
	static const int32_t euro[] = {3, 7, 8, 9, 4};
	static const int32_t cut[] = {4, 7, 8, 4, 9, 7};
	static const int32_t unused[] = {3, 10, 4, 0, 1, 2};

	(void) state;
	memset(&spec, 0, sizeof(spec));
	spec.n_pieces = 12;
	spec.pieces = pieces;
	spec.scores = scores;
	spec.types = types;
	spec.add_space_prefix = 1;
	spec.remove_extra_whitespaces = 1;
	spec.eos_id = 1;
	spec.unk_id = -1;			/* found from the UNKNOWN piece */
	spec.pad_id = 0;
	assert_int_equal(mms_tok_create(&spec, &tok, &err), MMS_OK);
	assert_int_equal(mms_tok_unk_id(tok), 2);

	expect_encode(tok, "ab", 2, 1, ab, 2);
	expect_encode(tok, "a<x>b", 5, 1, user, 6);
	/* unknown run of several characters fuses into one <unk>; byte pieces and
	 * the unused piece never match text */
	expect_encode(tok, "\xe2\x82\xac" "[PAD9]a", 10, 1, unk, 4);

	assert_int_equal(mms_tok_decode(tok, euro, 5, &text, &len, &err), MMS_OK);
	assert_string_equal(text, "\xe2\x82\xac" "a");
	free(text);
	/* incomplete sequences become U+FFFD, never half a character */
	assert_int_equal(mms_tok_decode(tok, cut, 6, &text, &len, &err), MMS_OK);
	assert_string_equal(text, "a\xef\xbf\xbd\xef\xbf\xbd" "a\xef\xbf\xbd\xef\xbf\xbd");
	free(text);
	/* unused, control and unknown pieces print nothing (transformers'
	 * skip_special_tokens), the first token ("▁") loses its space */
	assert_int_equal(mms_tok_decode(tok, unused, 6, &text, &len, &err), MMS_OK);
	assert_string_equal(text, "a");
	free(text);
	assert_int_equal(mms_tok_decode_opts(tok, unused, 6, MMS_TOK_DECODE_KEEP_SPECIAL, NULL,
										 &text, &len, &err), MMS_OK);
	assert_string_equal(text, "a<pad></s><unk>");
	free(text);
	mms_tok_free(tok);

	/* without remove_extra_whitespaces only the first dummy space goes */
	{
		static const int32_t sp2[] = {3, 3, 6};

		spec.remove_extra_whitespaces = 0;
		assert_int_equal(mms_tok_create(&spec, &tok, &err), MMS_OK);
		assert_int_equal(mms_tok_decode(tok, sp2, 3, &text, &len, &err), MMS_OK);
		assert_string_equal(text, "  ab");
		free(text);
		mms_tok_free(tok);
	}

	/* invalid specs */
	types[7] = 6;
	pieces[7] = S("<0xZZ>");
	assert_int_equal(mms_tok_create(&spec, &tok, &err), MMS_ERR_MODEL);
	pieces[7] = S("<0xE2>");
	types[4] = 9;
	assert_int_equal(mms_tok_create(&spec, &tok, &err), MMS_ERR_MODEL);
	types[4] = 1;
	spec.eos_id = 12;
	assert_int_equal(mms_tok_create(&spec, &tok, &err), MMS_ERR_MODEL);
	spec.eos_id = 1;
	types[2] = 1;
	assert_int_equal(mms_tok_create(&spec, &tok, &err), MMS_ERR_MODEL);
	spec.n_pieces = 0;
	assert_int_equal(mms_tok_create(&spec, &tok, &err), MMS_ERR_MODEL);
	assert_null(tok);
}

/* ---- GGUF metadata variants, built in memory ------------------------------ */

typedef struct GBuf
{
	uint8_t		p[8192];
	size_t		n;
	uint64_t	n_kv;
} GBuf;

static void
g_put(GBuf *g, const void *v, size_t n)
{
	assert_true(g->n + n <= sizeof(g->p));
	memcpy(g->p + g->n, v, n);
	g->n += n;
}

static void
g_u32(GBuf *g, uint32_t v)
{
	uint8_t		b[4];

	put_u32(b, v);
	g_put(g, b, 4);
}

static void
g_u64(GBuf *g, uint64_t v)
{
	g_u32(g, (uint32_t) v);
	g_u32(g, (uint32_t) (v >> 32));
}

static void
g_str(GBuf *g, const char *s)
{
	g_u64(g, strlen(s));
	g_put(g, s, strlen(s));
}

static void
g_key(GBuf *g, const char *key, uint32_t type)
{
	g_str(g, key);
	g_u32(g, type);
	g->n_kv++;
}

/* Array header: element type and count; elements follow. */
static void
g_arr(GBuf *g, const char *key, uint32_t elem_type, uint64_t n)
{
	g_key(g, key, MMS_GGUF_ARRAY);
	g_u32(g, elem_type);
	g_u64(g, n);
}

enum
{
	V_OK, V_NO_MODEL, V_LLAMA, V_NO_TOKENS, V_SCORES_SHORT, V_TYPES_F32,
	V_CHARSMAP_I32, V_CHARSMAP_I8, V_EOS_RANGE, V_NO_SCORES, V_BOOL_AS_STR, N_VARIANTS
};

/* A 6-piece T5 vocabulary, broken in one way per variant. */
static size_t
build_gguf(GBuf *g, int variant)
{
	static const char *const pieces[] = {"<pad>", "</s>", "<unk>", "\xe2\x96\x81", "a", "\xe2\x96\x81" "ab"};
	static const int32_t types[] = {3, 3, 2, 1, 1, 1};
	static const float scores[] = {0, 0, 0, -1, -2, -1.5f};
	size_t		i;
	uint8_t		hdr[24];

	memset(g, 0, sizeof(*g));
	g->n = sizeof(hdr);
	if (variant != V_NO_MODEL)
	{
		g_key(g, "tokenizer.ggml.model", MMS_GGUF_STRING);
		g_str(g, variant == V_LLAMA ? "llama" : "t5");
	}
	if (variant != V_NO_TOKENS)
	{
		g_arr(g, "tokenizer.ggml.tokens", MMS_GGUF_STRING, 6);
		for (i = 0; i < 6; i++)
			g_str(g, pieces[i]);
	}
	if (variant != V_NO_SCORES)
	{
		size_t		n = variant == V_SCORES_SHORT ? 5 : 6;

		g_arr(g, "tokenizer.ggml.scores", MMS_GGUF_F32, n);
		g_put(g, scores, n * sizeof(float));
	}
	g_arr(g, "tokenizer.ggml.token_type", variant == V_TYPES_F32 ? MMS_GGUF_F32 : MMS_GGUF_I32, 6);
	g_put(g, types, sizeof(types));
	if (variant == V_BOOL_AS_STR)
	{
		g_key(g, "tokenizer.ggml.add_space_prefix", MMS_GGUF_STRING);
		g_str(g, "true");
	}
	else
	{
		g_key(g, "tokenizer.ggml.add_space_prefix", MMS_GGUF_BOOL);
		g_put(g, "\x01", 1);
	}
	if (variant == V_CHARSMAP_I32)
	{
		g_arr(g, "tokenizer.ggml.precompiled_charsmap", MMS_GGUF_I32, 2);
		g_put(g, "\x04\0\0\0\0\0\0\0", 8);
	}
	if (variant == V_CHARSMAP_I8)
	{
		/* a one-unit trie with no rules and an empty pool */
		g_arr(g, "tokenizer.ggml.precompiled_charsmap", MMS_GGUF_I8, 8);
		g_put(g, "\x04\0\0\0\0\0\0\0", 8);
	}
	g_key(g, "tokenizer.ggml.eos_token_id", MMS_GGUF_U32);
	g_u32(g, variant == V_EOS_RANGE ? 6 : 1);
	g_key(g, "tokenizer.ggml.unknown_token_id", MMS_GGUF_U32);
	g_u32(g, 2);

	memcpy(hdr, "GGUF", 4);
	put_u32(hdr + 4, 3);
	memset(hdr + 8, 0, 8);		/* no tensors */
	put_u32(hdr + 16, (uint32_t) g->n_kv);
	put_u32(hdr + 20, 0);
	memcpy(g->p, hdr, sizeof(hdr));
	return g->n;
}

static void
test_gguf_variants(void **state)
{
	static const MmsStatus want[N_VARIANTS] = {
		[V_OK] = MMS_OK, [V_NO_MODEL] = MMS_ERR_MODEL, [V_LLAMA] = MMS_ERR_UNSUPPORTED,
		[V_NO_TOKENS] = MMS_ERR_MODEL, [V_SCORES_SHORT] = MMS_ERR_MODEL,
		[V_TYPES_F32] = MMS_ERR_MODEL, [V_CHARSMAP_I32] = MMS_ERR_MODEL,
		[V_CHARSMAP_I8] = MMS_OK, [V_EOS_RANGE] = MMS_ERR_MODEL, [V_NO_SCORES] = MMS_OK,
		[V_BOOL_AS_STR] = MMS_ERR_MODEL,
	};
	static const int32_t ab[] = {5, 1};
	GBuf	   *g = malloc(sizeof(GBuf));
	int			v;

	(void) state;
	assert_non_null(g);
	for (v = 0; v < N_VARIANTS; v++)
	{
		MmsGguf		gg;
		MmsTokenizer *tok = NULL;
		MmsError	err = {0};
		size_t		n = build_gguf(g, v);
		MmsStatus	st;

		if (mms_gguf_parse(g->p, n, &gg, &err) != MMS_OK)
			fail_msg("variant %d does not parse: %s", v, err.msg);
		st = mms_tok_load_gguf(&gg, &tok, &err);
		if (st != want[v])
			fail_msg("variant %d: got %s (%s)", v, mms_status_name(st), err.msg);
		if (st == MMS_OK)
		{
			/* unscored pieces all weigh 0: "▁ab" still beats "▁" + "a" + <unk> */
			expect_encode(tok, "ab", 2, 1, ab, 2);
			mms_tok_free(tok);
		}
		else
			assert_null(tok);
		mms_gguf_free(&gg);
	}
	free(g);
}

static void
test_long_input(void **state)
{
	Fixture    *fx = *state;
	size_t		len = 4 << 20;
	char	   *text = malloc(len);
	MmsError	err = {0};
	int32_t    *ids;
	size_t		n,
				i;
	double		t0;

	assert_non_null(text);
	for (i = 0; i < len; i++)
		text[i] = "the quick brown fox SELECT 東京 "[i % 32];
	t0 = now_ms();
	assert_int_equal(mms_tok_encode(fx->tok, text, len, 1, &ids, &n, &err), MMS_OK);
	print_message("encode of 4 MB: %.1f ms, %zu ids\n", now_ms() - t0, n);
	assert_true(n > len / 16);
	free(ids);
	free(text);
}

/* ---- limits: cancel, max_tokens, max_bytes --------------------------------- */

/* len bytes of the long-input pattern: ASCII words, a rule (SELECT) and CJK. */
static char *
pattern_text(size_t len)
{
	char	   *text = malloc(len > 0 ? len : 1);
	size_t		i;

	assert_non_null(text);
	for (i = 0; i < len; i++)
		text[i] = "the quick brown fox SELECT 東京 "[i % 32];
	return text;
}

/* Appends n copies of s to buf at *len. */
static void
repeat(char *buf, size_t *len, const char *s, size_t n)
{
	size_t		k = strlen(s);

	while (n-- > 0)
	{
		memcpy(buf + *len, s, k);
		*len += k;
	}
}

/*
 * Cancels encoding at each of its polls in turn: every one must give
 * MMS_ERR_CANCELLED with nothing returned and nothing leaked (ASan checks
 * the latter); one poll later than the last, the result is the plain one.
 */
static void
check_cancel_encode(const MmsTokenizer *tok, const char *text, size_t len, int min_polls)
{
	PollCounter pc = {0, 0};
	MmsTokLimits lim = limits(0, 0, &pc);
	MmsError	err = {0};
	int32_t    *want;
	int32_t    *got;
	size_t		n_want;
	size_t		n_got;
	int			total;
	int			at;

	assert_int_equal(mms_tok_encode(tok, text, len, 1, &want, &n_want, &err), MMS_OK);
	assert_int_equal(mms_tok_encode_limited(tok, text, len, 1, &lim, &got, &n_got, &err), MMS_OK);
	assert_int_equal(n_got, n_want);
	assert_memory_equal(got, want, n_want * sizeof(int32_t));
	free(got);
	total = pc.polls;
	/* regular (a poll per 64 Ki bytes or ids at least) but not busy */
	if (total < min_polls || (size_t) total > len / 1024 + 8)
		fail_msg("%d polls for %zu bytes", total, len);
	print_message("encode of %zu bytes: %d polls, cancel at each stops cleanly\n", len, total);

	for (at = 1; at <= total + 1; at++)
	{
		MmsStatus	st;

		pc.polls = 0;
		pc.cancel_at = at;
		got = (int32_t *) 1;
		n_got = 7;
		st = mms_tok_encode_limited(tok, text, len, 1, &lim, &got, &n_got, &err);
		if (at <= total)
		{
			if (st != MMS_ERR_CANCELLED)
				fail_msg("cancel at poll %d of %d: %s", at, total, mms_status_name(st));
			assert_null(got);
			assert_int_equal(n_got, 0);
			assert_int_equal(pc.polls, at);
			assert_int_equal(err.code, MMS_ERR_CANCELLED);
			assert_string_equal(err.msg, "tokenization was cancelled");
		}
		else
		{
			assert_int_equal(st, MMS_OK);
			assert_int_equal(n_got, n_want);
			assert_memory_equal(got, want, n_want * sizeof(int32_t));
			free(got);
		}
	}
	free(want);
}

static void
test_cancel_encode(void **state)
{
	Fixture    *fx = *state;
	size_t		len = 0;
	char	   *text = malloc(1 << 20);
	char	   *pat = pattern_text(300000);
	PollCounter pc = {0, 3};
	MmsTokLimits lim = limits(0, 0, &pc);
	MmsError	err = {0};
	int32_t    *ids = (int32_t *) 1;
	size_t		n = 7;

	assert_non_null(text);
	/* the brief's case: stop at the third poll */
	assert_int_equal(mms_tok_encode_limited(fx->tok, pat, 300000, 1, &lim, &ids, &n, &err),
					 MMS_ERR_CANCELLED);
	assert_int_equal(pc.polls, 3);
	assert_null(ids);
	assert_int_equal(n, 0);

	/* normalization slices, Viterbi blocks and the backtrack (over 64 Ki ids) */
	check_cancel_encode(fx->tok, pat, 300000, 6);

	/*
	 * Leading and trailing whitespace runs longer than a slice (their loops
	 * poll too), U+2581 typed in the input (kept inside, stripped at the end)
	 * and a run of unknown characters fusing into one <unk>.
	 */
	repeat(text, &len, " ", 100000);
	repeat(text, &len, "a\xe2\x96\x81 b", 20000);
	repeat(text, &len, "\xff", 70000);
	repeat(text, &len, "\xe2\x96\x81  ", 60000);
	check_cancel_encode(fx->tok, text, len, 6);

	/* a tiny input is polled once, so a caller can always stop */
	check_cancel_encode(fx->tok, "a", 1, 1);
	free(pat);
	free(text);
}

static void
test_cancel_decode(void **state)
{
	Fixture    *fx = *state;
	char	   *pat = pattern_text(400000);
	PollCounter pc = {0, 0};
	MmsTokLimits lim = limits(0, 0, &pc);
	MmsError	err = {0};
	int32_t    *ids;
	size_t		n;
	char	   *want;
	char	   *got;
	size_t		want_len;
	size_t		got_len;
	int			total;
	int			at;

	assert_int_equal(mms_tok_encode(fx->tok, pat, 400000, 1, &ids, &n, &err), MMS_OK);
	assert_true(n > 4 * 65536);
	assert_int_equal(mms_tok_decode(fx->tok, ids, n, &want, &want_len, &err), MMS_OK);
	assert_int_equal(mms_tok_decode_limited(fx->tok, ids, n, &lim, &got, &got_len, &err), MMS_OK);
	assert_int_equal(got_len, want_len);
	assert_memory_equal(got, want, want_len + 1);
	free(got);
	total = pc.polls;
	/* both passes poll once per 64 Ki ids */
	assert_true((size_t) total >= 2 * (n / 65536));
	assert_true((size_t) total <= 2 * (n / 65536 + 1));
	print_message("decode of %zu ids: %d polls, cancel at each stops cleanly\n", n, total);

	for (at = 1; at <= total + 1; at++)
	{
		MmsStatus	st;

		pc.polls = 0;
		pc.cancel_at = at;
		got = (char *) 1;
		got_len = 7;
		st = mms_tok_decode_limited(fx->tok, ids, n, &lim, &got, &got_len, &err);
		if (at <= total)
		{
			assert_int_equal(st, MMS_ERR_CANCELLED);
			assert_null(got);
			assert_int_equal(got_len, 0);
			assert_int_equal(pc.polls, at);
			assert_string_equal(err.msg, "tokenization was cancelled");
		}
		else
		{
			assert_int_equal(st, MMS_OK);
			assert_int_equal(got_len, want_len);
			free(got);
		}
	}
	free(want);
	free(ids);
	free(pat);
}

static void
test_max_tokens(void **state)
{
	Fixture    *fx = *state;
	size_t		big = 4 << 20;
	char	   *text = pattern_text(big);
	char	   *unk = malloc(1 << 20);
	PollCounter pc = {0, 0};
	MmsTokLimits lim;
	MmsError	err = {0};
	int32_t    *ids;
	size_t		n;
	size_t		len;
	char		msg[80];
	static const int32_t a_eos[] = {5, 996, 1};
	static const int32_t unk_eos[] = {5, 2, 1};

	assert_non_null(unk);
	/* exactly at the limit passes, one below fails with the exact count */
	lim = limits(3, 0, NULL);
	assert_int_equal(mms_tok_encode_limited(fx->tok, "a", 1, 1, &lim, &ids, &n, &err), MMS_OK);
	assert_int_equal(n, 3);
	assert_memory_equal(ids, a_eos, sizeof(a_eos));
	free(ids);
	lim.max_tokens = 2;
	assert_int_equal(mms_tok_encode_limited(fx->tok, "a", 1, 1, &lim, &ids, &n, &err), MMS_ERR_LIMIT);
	assert_null(ids);
	assert_true(n == 3);
	/* eos counts: without it the same text fits */
	assert_int_equal(mms_tok_encode_limited(fx->tok, "a", 1, 0, &lim, &ids, &n, &err), MMS_OK);
	assert_int_equal(n, 2);
	free(ids);

	/* the whole text, limit at and one below its count */
	assert_int_equal(mms_tok_encode(fx->tok, text, 200000, 1, &ids, &n, &err), MMS_OK);
	free(ids);
	lim.max_tokens = n;
	assert_int_equal(mms_tok_encode_limited(fx->tok, text, 200000, 1, &lim, &ids, &len, &err), MMS_OK);
	assert_int_equal(len, n);
	free(ids);
	lim.max_tokens = n - 1;
	assert_int_equal(mms_tok_encode_limited(fx->tok, text, 200000, 1, &lim, &ids, &len, &err), MMS_ERR_LIMIT);
	assert_true(len > n - 1 && len <= n);

	/*
	 * A huge input over a small limit is refused a slice in: one poll (the
	 * first slice) at most, a lower bound past the limit in *n_ids.
	 */
	lim = limits(512, 0, &pc);
	assert_int_equal(mms_tok_encode_limited(fx->tok, text, big, 1, &lim, &ids, &n, &err), MMS_ERR_LIMIT);
	assert_null(ids);
	assert_true(n > 512);
	assert_true(pc.polls <= 2);
	assert_string_equal(err.msg, "input has more than 512 tokens");

	/*
	 * No early refusal where the bound does not hold: a megabyte of
	 * characters no piece covers is one fused <unk>, so three ids fit.
	 */
	memset(unk, 0xff, 1 << 20);
	lim = limits(3, 0, NULL);
	assert_int_equal(mms_tok_encode_limited(fx->tok, unk, 1 << 20, 1, &lim, &ids, &n, &err), MMS_OK);
	assert_int_equal(n, 3);
	assert_memory_equal(ids, unk_eos, sizeof(unk_eos));
	free(ids);
	lim.max_tokens = 2;
	assert_int_equal(mms_tok_encode_limited(fx->tok, unk, 1 << 20, 1, &lim, &ids, &n, &err), MMS_ERR_LIMIT);
	snprintf(msg, sizeof(msg), "input has 3 tokens, more than 2");
	assert_string_equal(err.msg, msg);
	assert_int_equal(n, 3);

	/* collapsed whitespace: a megabyte of spaces around one letter */
	len = 0;
	repeat(unk, &len, " ", 500000);
	repeat(unk, &len, "a", 1);
	repeat(unk, &len, " ", 500000);
	lim.max_tokens = 3;
	assert_int_equal(mms_tok_encode_limited(fx->tok, unk, len, 1, &lim, &ids, &n, &err), MMS_OK);
	assert_int_equal(n, 3);
	assert_memory_equal(ids, a_eos, sizeof(a_eos));
	free(ids);

	/* too long to tokenize at all is a limit too, with no count */
	assert_int_equal(mms_tok_encode_limited(fx->tok, text, ((size_t) 1 << 30) + 1, 1, &lim, &ids, &n, &err),
					 MMS_ERR_LIMIT);
	assert_int_equal(n, 0);
	free(unk);
	free(text);
}

static void
test_max_bytes(void **state)
{
	Fixture    *fx = *state;
	MmsGgufStr	pieces[] = {
		S("<pad>"), S("</s>"), S("<unk>"), S("\xe2\x96\x81"), S("a"), S("b"),
		S("\xe2\x96\x81" "a\xe2\x96\x81" "b"), S("<0xE2>"), S("<0x82>"), S("<0xAC>"),
	};
	float		scores[] = {0, 0, 0, -1, -2, -2, -1.5f, 0, 0, 0};
	int32_t		types[] = {3, 3, 2, 1, 1, 1, 1, 6, 6, 6};
	MmsTokenizerSpec spec;
	MmsTokenizer *tok;
	MmsError	err = {0};
	MmsTokLimits lim;
	char	   *text;
	size_t		len;
	size_t		i;
	int32_t    *many;
	/* each: ids and what they decode to */
	static const int32_t euro[] = {4, 7, 8, 9, 4};		/* "a€a" */
	static const int32_t cut[] = {4, 7, 8, 4, 9, 7};	/* "a\ufffd\ufffda\ufffd\ufffd" */
	static const int32_t unk[] = {4, 2, 5};			/* "a ⁇ b" */
	static const int32_t spaced[] = {4, 6, 6};		/* "a a b a b": U+2581 prints one byte */
	static const struct
	{
		const int32_t *ids;
		size_t		n;
	}			cases[] = {{euro, 5}, {cut, 6}, {unk, 3}, {spaced, 3}};

	(void) state;
	memset(&spec, 0, sizeof(spec));
	spec.n_pieces = 10;
	spec.pieces = pieces;
	spec.scores = scores;
	spec.types = types;
	spec.add_space_prefix = 1;
	spec.remove_extra_whitespaces = 1;
	spec.eos_id = 1;
	spec.unk_id = 2;
	spec.pad_id = 0;
	assert_int_equal(mms_tok_create(&spec, &tok, &err), MMS_OK);

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
	{
		char	   *want;
		size_t		want_len;
		size_t		max;

		assert_int_equal(mms_tok_decode(tok, cases[i].ids, cases[i].n, &want, &want_len, &err), MMS_OK);
		/* every limit from 1 up: below the length fails, from it on passes */
		for (max = 1; max <= want_len + 2; max++)
		{
			MmsStatus	st;

			lim = limits(0, max, NULL);
			st = mms_tok_decode_limited(tok, cases[i].ids, cases[i].n, &lim, &text, &len, &err);
			if (max < want_len)
			{
				assert_int_equal(st, MMS_ERR_LIMIT);
				assert_null(text);
			}
			else
			{
				assert_int_equal(st, MMS_OK);
				assert_int_equal(len, want_len);
				assert_memory_equal(text, want, want_len + 1);
				free(text);
			}
		}
		free(want);
	}
	mms_tok_free(tok);

	/* a million ids against a kilobyte: refused, with the limit named */
	many = malloc(1000000 * sizeof(int32_t));
	assert_non_null(many);
	for (i = 0; i < 1000000; i++)
		many[i] = 996;
	lim = limits(0, 1000, NULL);
	assert_int_equal(mms_tok_decode_limited(fx->tok, many, 1000000, &lim, &text, &len, &err), MMS_ERR_LIMIT);
	assert_string_equal(err.msg, "decoded text is longer than 1000 bytes");
	/* a bad id is reported whatever the limits */
	many[999999] = 1000;
	assert_int_equal(mms_tok_decode_limited(fx->tok, many, 1000000, &lim, &text, &len, &err), MMS_ERR_ARG);
	free(many);
}

/*
 * Vocabularies whose ids and piece lengths do not fit 31 bits together keep
 * bare ids in the lattice (lengths from piece_off, unknowns negated): 65537
 * pieces need 17 bits, so a piece of 20000 bytes forces that mode. The same
 * vocabulary with the long piece cut short uses packed steps; on text that
 * never meets the long piece both must agree, and on text that does, the long
 * piece must win.
 */
static void
test_unpacked_steps(void **state)
{
	const int32_t n_pieces = 65537;
	MmsGgufStr *pieces = malloc(n_pieces * sizeof(MmsGgufStr));
	float	   *scores = calloc(n_pieces, sizeof(float));
	int32_t    *types = malloc(n_pieces * sizeof(int32_t));
	char	   *names = malloc((size_t) n_pieces * 12);
	char	   *longx = malloc(20000);
	char	   *text = malloc(400000);
	static const char *const base[] = {"<pad>", "</s>", "<unk>", "\xe2\x96\x81", "a", "b", ("\xe2\x96\x81" "ab")};
	static const float base_scores[] = {0, 0, 0, -1, -2, -2, -1.5f};
	static const int32_t base_types[] = {3, 3, 2, 1, 1, 1, 1};
	MmsTokenizerSpec spec;
	MmsTokenizer *packed;
	MmsTokenizer *bare;
	MmsError	err = {0};
	int32_t    *a;
	int32_t    *b;
	size_t		na;
	size_t		nb;
	size_t		len = 0;
	int32_t		i;

	(void) state;
	assert_true(pieces && scores && types && names && longx && text);
	for (i = 0; i < n_pieces; i++)
	{
		if (i < 7)
		{
			pieces[i] = S(base[i]);
			scores[i] = base_scores[i];
			types[i] = base_types[i];
		}
		else
		{
			/* fillers: unused, so the trie stays small */
			snprintf(names + (size_t) i * 12, 12, "[f%d]", i);
			pieces[i] = S(names + (size_t) i * 12);
			types[i] = MMS_PIECE_UNUSED;
		}
	}
	memset(longx, 'x', 20000);
	pieces[7].ptr = longx;
	pieces[7].len = 20000;
	types[7] = MMS_PIECE_NORMAL;
	scores[7] = -1;

	memset(&spec, 0, sizeof(spec));
	spec.n_pieces = n_pieces;
	spec.pieces = pieces;
	spec.scores = scores;
	spec.types = types;
	spec.add_space_prefix = 1;
	spec.remove_extra_whitespaces = 1;
	spec.eos_id = 1;
	spec.unk_id = 2;
	spec.pad_id = 0;
	assert_int_equal(mms_tok_create(&spec, &bare, &err), MMS_OK);
	pieces[7].len = 7;
	assert_int_equal(mms_tok_create(&spec, &packed, &err), MMS_OK);

	/* long enough to stream, with unknown runs (negated lengths when bare) */
	repeat(text, &len, "ab ba b\xe2\x82\xac\xe2\x82\xac a\xff ", 20000);
	assert_int_equal(mms_tok_encode(bare, text, len, 1, &a, &na, &err), MMS_OK);
	assert_int_equal(mms_tok_encode(packed, text, len, 1, &b, &nb, &err), MMS_OK);
	assert_int_equal(na, nb);
	assert_memory_equal(a, b, na * sizeof(int32_t));
	assert_true(na > 100000);
	free(a);
	free(b);

	/* ▁ then the 20000-byte piece, around an unknown run */
	len = 0;
	repeat(text, &len, "x", 20000);
	repeat(text, &len, "\xe2\x82\xac", 3);
	repeat(text, &len, "x", 20000);
	assert_int_equal(mms_tok_encode(bare, text, len, 1, &a, &na, &err), MMS_OK);
	{
		static const int32_t want[] = {3, 7, 2, 7, 1};

		assert_int_equal(na, 5);
		assert_memory_equal(a, want, sizeof(want));
	}
	free(a);
	mms_tok_free(bare);
	mms_tok_free(packed);
	free(text);
	free(longx);
	free(names);
	free(types);
	free(scores);
	free(pieces);
}

/* ---- special tokens and byte fallback ------------------------------------- */

typedef struct TokFile
{
	uint8_t    *file;
	MmsGguf		gguf;
	MmsTokenizer *tok;
} TokFile;

static void
tok_file_load(TokFile *tf, const char *path)
{
	size_t		len;
	MmsError	err = {0};

	tf->file = mms_test_read_file(path, &len);
	assert_int_equal(mms_gguf_parse(tf->file, len, &tf->gguf, &err), MMS_OK);
	if (mms_tok_load_gguf(&tf->gguf, &tf->tok, &err) != MMS_OK)
		fail_msg("%s: %s", path, err.msg);
}

static void
tok_file_free(TokFile *tf)
{
	mms_tok_free(tf->tok);
	mms_gguf_free(&tf->gguf);
	free(tf->file);
}

/*
 * Files llama.cpp's converter wrote from T5 checkpoints (sentinels from
 * added_tokens.json; [PADn] pieces instead; a byte-fallback model), against
 * transformers' T5Tokenizer (tools/make_special_token_fixture.py).
 */
static void
test_special_token_fixtures(void **state)
{
	static const char *const names[] = {"tok_t5_added", "tok_t5_pad", "tok_t5_bytes"};
	size_t		i;

	(void) state;
	for (i = 0; i < sizeof(names) / sizeof(names[0]); i++)
	{
		TokFile		tf;
		char		path[256];
		int			n_enc,
					n_dec;

		snprintf(path, sizeof(path), MMS_FIXTURE_DIR "%s.gguf", names[i]);
		tok_file_load(&tf, path);
		assert_int_equal(mms_tok_n_pieces(tf.tok), 1128);
		snprintf(path, sizeof(path), MMS_FIXTURE_DIR "%s.txt", names[i]);
		check_goldens(tf.tok, path, &n_enc, &n_dec);
		assert_true(n_enc >= 100);
		assert_true(n_dec >= 300);
		tok_file_free(&tf);
	}
}

/* n pieces: the specials, "▁", x, d, ab, abc, bcd (user-defined), then unused ones. */
static MmsTokenizer *
special_vocab(int n_unused, const char *spelled)
{
	static char names[256][16];
	MmsGgufStr	pieces[256];
	float		scores[256];
	int32_t		types[256];
	const char *head[] = {"<pad>", "</s>", "<unk>", "\xe2\x96\x81", "x", "d", "ab", "abc", "bcd", "c"};
	const int32_t head_types[] = {3, 3, 2, 1, 1, 1, 4, 4, 4, 1};
	int			n = 10 + n_unused;
	int			i;
	MmsTokenizerSpec spec;
	MmsTokenizer *tok;
	MmsError	err = {0};

	assert_true(n <= 256);
	for (i = 0; i < n; i++)
	{
		if (i < 10)
		{
			pieces[i] = S(head[i]);
			types[i] = head_types[i];
		}
		else
		{
			snprintf(names[i], sizeof(names[i]), "[PAD%d]", i);
			pieces[i] = S(names[i]);
			types[i] = 5;
		}
		scores[i] = i < 3 ? 0 : -1.0f - (float) i / 8;
	}
	if (spelled != NULL)
	{
		pieces[10] = S(spelled);
		types[10] = 4;
	}
	memset(&spec, 0, sizeof(spec));
	spec.n_pieces = n;
	spec.pieces = pieces;
	spec.scores = scores;
	spec.types = types;
	spec.add_space_prefix = 1;
	spec.remove_extra_whitespaces = 1;
	spec.eos_id = 1;
	spec.unk_id = 2;
	spec.pad_id = 0;
	if (mms_tok_create(&spec, &tok, &err) != MMS_OK)
		fail_msg("%s", err.msg);
	return tok;
}

/* The rules the fixtures do not reach, on vocabularies built in memory. */
static void
test_special_token_rules(void **state)
{
	MmsTokenizer *tok;
	char	   *text;
	size_t		len;
	MmsError	err = {0};
	static const int32_t longest[] = {3, 4, 7, 3, 5, 1};
	static const int32_t specials[] = {0, 3, 4, 1, 2, 1};
	static const int32_t sentinels[] = {109, 3, 4, 10, 1};
	/* "<e", "tra_i", "_0>" have no pieces here */
	static const int32_t plain[] = {3, 2, 4, 2, 5, 2, 3, 4, 2, 4, 2, 5, 2, 1};
	static const int32_t spelled[] = {10, 3, 2, 4, 2, 5, 2, 1};

	(void) state;
	/* leftmost match, longest there: "abc" wins over "ab" and the later "bcd" */
	tok = special_vocab(0, NULL);
	expect_encode(tok, "xabcd", 5, 1, longest, 6);
	/* specials typed in the text; whitespace next to them stays with the text */
	expect_encode(tok, "<pad> x </s><unk>", 17, 1, specials, 6);
	mms_tok_free(tok);

	/* 100 or more trailing unused pieces: <extra_id_N> is the 100th of them minus N */
	tok = special_vocab(120, NULL);
	expect_encode(tok, "<extra_id_0> x<extra_id_99>", 27, 1, sentinels, 5);
	assert_int_equal(mms_tok_decode_opts(tok, sentinels, 5, MMS_TOK_DECODE_KEEP_SPECIAL, NULL,
										 &text, &len, &err), MMS_OK);
	assert_string_equal(text, "<extra_id_0> x<extra_id_99></s>");
	free(text);
	assert_int_equal(mms_tok_decode(tok, sentinels, 5, &text, &len, &err), MMS_OK);
	assert_string_equal(text, "x");
	free(text);
	mms_tok_free(tok);

	/* fewer than 100: no sentinels, the text is text (none of its pieces: <unk>) */
	tok = special_vocab(99, NULL);
	expect_encode(tok, "<extra_id_0> x<extra_id_9>", 26, 1, plain, 14);
	mms_tok_free(tok);

	/* a file that spells a sentinel spells them all: no [PADn] mapping */
	tok = special_vocab(120, "<extra_id_0>");
	expect_encode(tok, "<extra_id_0><extra_id_1>", 24, 1, spelled, 8);
	mms_tok_free(tok);
}

/*
 * Limits across many stretches: polls stay regular, a cancel at any of them
 * is clean, a small max_tokens refuses a huge input early; byte fallback
 * keeps one id per byte in the lattice's own buffer.
 */
static void
test_special_token_limits(void **state)
{
	TokFile		pad,
				bytes;
	size_t		len = 0;
	char	   *text = malloc(1 << 21);
	PollCounter pc = {0, 0};
	MmsTokLimits lim;
	MmsError	err = {0};
	int32_t    *ids;
	size_t		n,
				i;

	(void) state;
	assert_non_null(text);
	tok_file_load(&pad, MMS_FIXTURE_DIR "tok_t5_pad.gguf");
	tok_file_load(&bytes, MMS_FIXTURE_DIR "tok_t5_bytes.gguf");

	repeat(text, &len, "a <extra_id_0>", 40000);
	repeat(text, &len, "</s>", 40000);
	check_cancel_encode(pad.tok, text, len, 3);
	lim = limits(10, 0, &pc);
	assert_int_equal(mms_tok_encode_limited(pad.tok, text, len, 1, &lim, &ids, &n, &err), MMS_ERR_LIMIT);
	assert_null(ids);
	assert_true(n > 10);
	assert_true(pc.polls <= 1);
	assert_string_equal(err.msg, "input has more than 10 tokens");

	/* 300 000 Cyrillic letters the byte model lacks: two byte pieces each */
	len = 0;
	repeat(text, &len, "\xd0\x96", 300000);
	assert_int_equal(mms_tok_encode(bytes.tok, text, len, 1, &ids, &n, &err), MMS_OK);
	assert_int_equal(n, 1 + 600000 + 1);
	for (i = 1; i + 1 < n; i++)
		assert_int_equal(ids[i], (i % 2) ? 3 + 0xD0 : 3 + 0x96);
	free(ids);
	check_cancel_encode(bytes.tok, text, len, 8);

	tok_file_free(&pad);
	tok_file_free(&bytes);
	free(text);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_fixture_cases),
		cmocka_unit_test(test_empty_and_eos),
		cmocka_unit_test(test_invalid_utf8),
		cmocka_unit_test(test_decode_errors),
		cmocka_unit_test(test_malformed_charsmap),
		cmocka_unit_test(test_small_vocab),
		cmocka_unit_test(test_special_token_fixtures),
		cmocka_unit_test(test_special_token_rules),
		cmocka_unit_test(test_special_token_limits),
		cmocka_unit_test(test_gguf_variants),
		cmocka_unit_test(test_long_input),
		cmocka_unit_test(test_cancel_encode),
		cmocka_unit_test(test_cancel_decode),
		cmocka_unit_test(test_max_tokens),
		cmocka_unit_test(test_max_bytes),
		cmocka_unit_test(test_unpacked_steps),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
