/*
 * tokenizer.h — T5's tokenizer as transformers' T5Tokenizer runs it: special
 * and added tokens split out of the text, then SentencePiece unigram on each
 * stretch between them (precompiled-charsmap normalization, U+2581 whitespace
 * handling, Viterbi over piece scores, unknown handling and byte fallback as
 * SentencePiece does); and detokenization. Built from GGUF metadata ("t5"
 * tokenizer model) or from plain arrays; no BLAS, no PostgreSQL.
 */
#ifndef MMS_TOKENIZER_H
#define MMS_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "gguf.h"
#include "mms_error.h"

/* Piece types, numbered as llama.cpp's token_type array numbers them. */
typedef enum MmsPieceType
{
	MMS_PIECE_NORMAL = 1,
	MMS_PIECE_UNKNOWN = 2,
	MMS_PIECE_CONTROL = 3,
	MMS_PIECE_USER_DEFINED = 4,
	MMS_PIECE_UNUSED = 5,
	MMS_PIECE_BYTE = 6
} MmsPieceType;

typedef struct MmsTokenizer MmsTokenizer;

/* Everything the tokenizer is built from; arrays are copied. */
typedef struct MmsTokenizerSpec
{
	int32_t		n_pieces;
	const MmsGgufStr *pieces;	/* UTF-8 piece strings */
	const float *scores;		/* n_pieces; may be NULL (all 0) */
	const int32_t *types;		/* n_pieces; may be NULL (all NORMAL) */
	int			add_space_prefix;	/* SentencePiece add_dummy_prefix */
	int			remove_extra_whitespaces;
	const uint8_t *charsmap;	/* precompiled_charsmap blob; may be NULL */
	size_t		charsmap_len;
	int32_t		eos_id;			/* -1 if none */
	int32_t		unk_id;
	int32_t		pad_id;			/* -1 if none */
} MmsTokenizerSpec;

MmsStatus	mms_tok_create(const MmsTokenizerSpec *spec, MmsTokenizer **out, MmsError *err);

/*
 * Reads tokenizer.ggml.* keys: model must be "t5"; tokens, scores, token_type,
 * add_space_prefix, remove_extra_whitespaces, precompiled_charsmap (u8 or i8
 * array), eos/unknown/padding token ids.
 */
MmsStatus	mms_tok_load_gguf(const MmsGguf *g, MmsTokenizer **out, MmsError *err);
void		mms_tok_free(MmsTokenizer *tok);

/*
 * Bounds on one encode or decode call, for callers that cannot let a hostile
 * input run unbounded (a database backend must be able to cancel and must
 * refuse work it would throw away). Zero fields mean "no limit"; a NULL
 * MmsTokLimits pointer means no limits at all.
 */
typedef struct MmsTokLimits
{
	size_t		max_tokens;		/* encode: most ids returned, eos included */
	size_t		max_bytes;		/* decode: most output bytes, NUL excluded */
	/*
	 * Polled at least once per 64 Ki units of work (bytes read, ids), and at
	 * least once by every encode and by every decode of one id or more;
	 * nonzero means stop. It must not longjmp: the engine frees what it
	 * built and returns MMS_ERR_CANCELLED instead.
	 */
	int			(*cancel) (void *arg);
	void	   *cancel_arg;
} MmsTokLimits;

/*
 * Tokenizes text[0..len) (any bytes; invalid UTF-8 is handled as SentencePiece
 * does, by mapping the bad byte to U+FFFD). Appends eos when add_eos and the
 * tokenizer has one. *ids is malloc'd (caller frees); *n_ids its length.
 * Same as mms_tok_encode_limited with no limits.
 *
 * As transformers' T5Tokenizer (5.x) does, the special and added tokens typed
 * in the text are matched first, on the raw bytes (leftmost, then longest):
 * the CONTROL, UNKNOWN and USER_DEFINED pieces ("<pad>", "</s>", "<unk>", and
 * the "<extra_id_N>" sentinels llama.cpp's converter writes from
 * added_tokens.json), and in a file that has "[PADn]" UNUSED pieces where the
 * sentinels go, "<extra_id_N>" (0 <= N < 100) as id T - N, T being the 100th
 * piece of the trailing run of UNUSED pieces. Each becomes its id, whitespace
 * next to it staying with the text around; each stretch of text between them
 * is tokenized on its own, as SentencePiece tokenizes a whole text (so it gets
 * the dummy-prefix U+2581, and loses the whitespace at its ends). Inside a
 * stretch, CONTROL pieces and sentinels are also pieces Viterbi can match
 * (text that normalizes to "</s>"), as in transformers' Unigram model.
 * An unknown character becomes the pieces of its UTF-8 bytes when the
 * vocabulary has all 256 "<0xNN>" BYTE pieces (SentencePiece's byte_fallback).
 */
MmsStatus	mms_tok_encode(const MmsTokenizer *tok, const char *text, size_t len,
						   int add_eos, int32_t **ids, size_t *n_ids, MmsError *err);

/*
 * mms_tok_encode under lim (may be NULL). On success the ids are those
 * mms_tok_encode returns. Besides its errors:
 *  - MMS_ERR_LIMIT when the ids (eos included) would be more than
 *    lim->max_tokens. *n_ids is then a count greater than max_tokens: the
 *    exact count when the whole input was tokenized ("input has N tokens,
 *    more than M"), else a lower bound proven part way ("input has more than
 *    M tokens"), which is how a huge input is refused early;
 *  - MMS_ERR_CANCELLED ("tokenization was cancelled") when lim->cancel
 *    returned nonzero.
 * On any error *ids is NULL and nothing is left allocated; *n_ids is 0 except
 * for the max_tokens case above.
 */
MmsStatus	mms_tok_encode_limited(const MmsTokenizer *tok, const char *text, size_t len,
								   int add_eos, const MmsTokLimits *lim,
								   int32_t **ids, size_t *n_ids, MmsError *err);

/*
 * Turns ids back into text as transformers' decode(ids,
 * skip_special_tokens=True) does: special tokens (CONTROL and UNKNOWN pieces,
 * sentinels) and UNUSED pieces skipped, pieces joined with U+2581 as space,
 * the first token printed losing its U+2581; byte pieces reassembled as
 * SentencePiece does (an invalid or incomplete UTF-8 sequence becomes U+FFFD
 * per bad byte, never a split character). *text is malloc'd and
 * NUL-terminated. Out-of-range id -> MMS_ERR_ARG. Same as
 * mms_tok_decode_opts with no flags and no limits.
 */
MmsStatus	mms_tok_decode(const MmsTokenizer *tok, const int32_t *ids, size_t n_ids,
						   char **text, size_t *len, MmsError *err);

/*
 * mms_tok_decode under lim (may be NULL). All ids are checked first (so a bad
 * id is MMS_ERR_ARG whatever max_bytes is; over 64 Ki ids, a cancel may come
 * first), then:
 *  - MMS_ERR_LIMIT ("decoded text is longer than M bytes") as soon as the
 *    output would pass lim->max_bytes; no more than max_bytes + 1 bytes are
 *    ever allocated for it;
 *  - MMS_ERR_CANCELLED ("tokenization was cancelled") when lim->cancel
 *    returned nonzero.
 * On any error *text is NULL and *len 0.
 */
MmsStatus	mms_tok_decode_limited(const MmsTokenizer *tok, const int32_t *ids, size_t n_ids,
								   const MmsTokLimits *lim, char **text, size_t *len,
								   MmsError *err);

/* Flags of mms_tok_decode_opts */
typedef enum MmsTokDecodeFlags
{
	/*
	 * Print special tokens too, as transformers' skip_special_tokens=False:
	 * each as its piece ("<pad>", "</s>", "<unk>", "<extra_id_N>", also for a
	 * sentinel written as a "[PADn]" piece). UNUSED pieces stay skipped.
	 */
	MMS_TOK_DECODE_KEEP_SPECIAL = 1
} MmsTokDecodeFlags;

/* mms_tok_decode_limited with MmsTokDecodeFlags (0: as mms_tok_decode). */
MmsStatus	mms_tok_decode_opts(const MmsTokenizer *tok, const int32_t *ids, size_t n_ids,
								int flags, const MmsTokLimits *lim, char **text, size_t *len,
								MmsError *err);

int32_t		mms_tok_n_pieces(const MmsTokenizer *tok);
int32_t		mms_tok_eos_id(const MmsTokenizer *tok);
int32_t		mms_tok_unk_id(const MmsTokenizer *tok);
int32_t		mms_tok_pad_id(const MmsTokenizer *tok);

#endif
