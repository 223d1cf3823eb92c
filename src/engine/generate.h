/*
 * generate.h — text generation and scoring with HF generate() semantics:
 * greedy, sampling (repetition penalty -> temperature -> top-k -> top-p) and
 * beam search (length_penalty, early_stopping), min/max new tokens, and
 * teacher-forced scoring. A request is a small state machine, stepped in
 * batches with other requests.
 * scheduler.h drives them: mms_gen_run for a fixed set, MmsSched for a stream.
 */
#ifndef MMS_GENERATE_H
#define MMS_GENERATE_H

#include <stdint.h>

#include "mms_error.h"
#include "t5.h"

#define MMS_GEN_MAX_BEAMS 64
#define MMS_GEN_MAX_NEW_TOKENS 4096

typedef enum MmsEarlyStopping
{
	MMS_EARLY_STOP_FALSE = 0,	/* HF default heuristic */
	MMS_EARLY_STOP_TRUE = 1,	/* stop once num_beams hypotheses are finished */
	MMS_EARLY_STOP_NEVER = 2	/* canonical beam search */
} MmsEarlyStopping;

typedef struct MmsGenOptions
{
	int32_t		max_new_tokens; /* default 64 */
	int32_t		min_new_tokens; /* eos is forbidden before this many; default 0 */
	int32_t		num_beams;		/* 1 = greedy or sampling */
	float		length_penalty; /* beam score = sum logprob / len^length_penalty */
	MmsEarlyStopping early_stopping;
	int			do_sample;		/* draw instead of argmax (num_beams must be 1) */
	float		temperature;	/* > 0; 1 = off */
	int32_t		top_k;			/* 0 = off; HF's default 50 */
	float		top_p;			/* (0, 1]; 1 = off */
	uint64_t	seed;			/* same seed, same draws, whatever else is batched */
	float		repetition_penalty; /* > 0; 1 = off (CTRL-style, over decoder tokens) */
} MmsGenOptions;

typedef struct MmsGenResult
{
	int32_t    *ids;			/* generated ids, decoder start excluded, eos kept */
	int32_t		n_ids;
	double		logprob;		/* sum of the model's log-probabilities of ids (no processors) */
	double		score;			/* beam: HF sequences_scores; else = logprob */
} MmsGenResult;

typedef struct MmsGenRequest MmsGenRequest;

void		mms_gen_options_default(MmsGenOptions *o);
/* Checks every option; the message names the offending option. */
MmsStatus	mms_gen_options_validate(const MmsGenOptions *o, MmsError *err);

/* A generation request for encoder input ids[0..n) (eos included by the caller). */
MmsStatus	mms_gen_request_create(const MmsT5 *m, const int32_t *ids, int32_t n,
								   const MmsGenOptions *o, MmsGenRequest **out, MmsError *err);
/* A scoring request: log P(target | input) by teacher forcing, over every target id. */
MmsStatus	mms_gen_score_request_create(const MmsT5 *m, const int32_t *ids, int32_t n,
										 const int32_t *target, int32_t n_target,
										 MmsGenRequest **out, MmsError *err);
void		mms_gen_request_free(MmsGenRequest *r);

int			mms_gen_request_done(const MmsGenRequest *r);
/* Result of a finished request; NULL while running or after a failure. */
const MmsGenResult *mms_gen_request_result(const MmsGenRequest *r);
/* MMS_OK, or the error that ended the request (message in *err when not NULL). */
MmsStatus	mms_gen_request_error(const MmsGenRequest *r, MmsError *err);
/* Bytes of decoder caches the request holds or will hold (for memory accounting). */
size_t		mms_gen_request_bytes(const MmsGenRequest *r);

/* ---- the pieces a scheduler drives ---- */

/* Input ids of a not-yet-started request. */
const int32_t *mms_gen_request_input(const MmsGenRequest *r, int32_t *n);
/* Starts a request with its encoded input's cross K/V (retained). */
MmsStatus	mms_gen_request_start(MmsGenRequest *r, MmsT5Cross *cross, MmsError *err);
/* Rows the request feeds to the next decoder step: fills st[] and tok[]; returns the count. */
int			mms_gen_request_rows(MmsGenRequest *r, MmsT5State **st, int32_t *tok);
/*
 * Consumes the logits of those rows (same order) and advances. A row holding
 * NaN or +/-inf (broken weights) ends the request with MMS_ERR_NUMERIC.
 */
MmsStatus	mms_gen_request_advance(MmsGenRequest *r, const float *logits, MmsError *err);
/* Upper bound on rows a request ever feeds at once. */
int			mms_gen_request_max_rows(const MmsGenRequest *r);

/* Cancels a request: frees its caches, and it ends failed with MMS_ERR_CANCELLED. */
void		mms_gen_request_cancel(MmsGenRequest *r);
/* Ends a request as failed with the given error (e.g. its batch ran out of memory). */
void		mms_gen_request_fail(MmsGenRequest *r, const MmsError *e);
/* Not yet started (waiting to be encoded). */
int			mms_gen_request_pending(const MmsGenRequest *r);
/* Decoder steps done: tokens generated (per beam), or target ids scored, so far. */
int32_t		mms_gen_request_generated(const MmsGenRequest *r);
/*
 * Greedy and sampling while running: the tokens chosen so far (decoder start
 * excluded) in *ids, and their count; 0 for beam search (the best beam is only
 * known at the end) and scoring.
 */
int32_t		mms_gen_request_prefix(const MmsGenRequest *r, const int32_t **ids);

#endif
