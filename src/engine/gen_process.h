/*
 * gen_process.h — engine-internal: the logits processors generate.c applies
 * to one row of vocabulary scores (V floats), in transformers' order, and the
 * per-request random numbers of sampling. Pure functions; no request state.
 */
#ifndef MMS_GEN_PROCESS_H
#define MMS_GEN_PROCESS_H

#include <stdint.h>

#include "mms_error.h"

/* xoshiro256** (state s[4]) seeded by splitmix64: the same draws on every platform. */
uint64_t	mms_gen_splitmix64(uint64_t *x);
double		mms_gen_rng_uniform(uint64_t *s);

/* HF RepetitionPenaltyLogitsProcessor over hist[0..n); mark: V zero bytes, left zero. */
void		mms_gen_repetition_penalty(float *x, const int32_t *hist, int32_t n, float penalty,
									   uint8_t *mark);
/* HF TopKLogitsWarper (ties kept); tmp: V floats. */
void		mms_gen_top_k(float *x, int64_t V, int32_t k, float *tmp);
/* HF TopPLogitsWarper. */
MmsStatus	mms_gen_top_p(float *x, int64_t V, float top_p, MmsError *err);
/* First index of the largest element. */
int32_t		mms_gen_argmax(const float *x, int64_t V);
/* Largest element, ignoring NaN. */
float		mms_gen_row_max(const float *x, int64_t V);
/* HF TemperatureLogitsWarper, safe for any positive finite temperature (mx: the row's max). */
void		mms_gen_temperature(float *x, int64_t V, float mx, float temperature);

#endif
