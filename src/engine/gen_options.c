/*
 * gen_options.c — generation options: defaults and validation. Kept apart
 * from generate.c because it needs no BLAS: the preloaded extension library
 * validates options in the calling backend with the same code the engine uses.
 */
#include <math.h>
#include <string.h>

#include "generate.h"

void
mms_gen_options_default(MmsGenOptions *o)
{
	memset(o, 0, sizeof(*o));
	o->max_new_tokens = 64;
	o->min_new_tokens = 0;
	o->num_beams = 1;
	o->length_penalty = 1.0f;
	o->early_stopping = MMS_EARLY_STOP_FALSE;
	o->do_sample = 0;
	o->temperature = 1.0f;
	o->top_k = 50;
	o->top_p = 1.0f;
	o->seed = 0;
	o->repetition_penalty = 1.0f;
}

MmsStatus
mms_gen_options_validate(const MmsGenOptions *o, MmsError *err)
{
	if (o->max_new_tokens < 1 || o->max_new_tokens > MMS_GEN_MAX_NEW_TOKENS)
		return mms_fail(err, MMS_ERR_ARG, "max_new_tokens must be between 1 and %d", MMS_GEN_MAX_NEW_TOKENS);
	if (o->min_new_tokens < 0 || o->min_new_tokens > o->max_new_tokens)
		return mms_fail(err, MMS_ERR_ARG, "min_new_tokens must be between 0 and max_new_tokens (%d)",
						o->max_new_tokens);
	if (o->num_beams < 1 || o->num_beams > MMS_GEN_MAX_BEAMS)
		return mms_fail(err, MMS_ERR_ARG, "num_beams must be between 1 and %d", MMS_GEN_MAX_BEAMS);
	if (!isfinite(o->length_penalty))
		return mms_fail(err, MMS_ERR_ARG, "length_penalty must be a finite number");
	if (o->early_stopping < MMS_EARLY_STOP_FALSE || o->early_stopping > MMS_EARLY_STOP_NEVER)
		return mms_fail(err, MMS_ERR_ARG, "early_stopping must be true, false or \"never\"");
	/* any positive finite value, denormals too: generate.c scales overflow-free */
	if (!(o->temperature > 0.0f) || !isfinite(o->temperature))
		return mms_fail(err, MMS_ERR_ARG, "temperature must be a positive number");
	if (o->top_k < 0)
		return mms_fail(err, MMS_ERR_ARG, "top_k must be zero (off) or positive");
	if (!(o->top_p > 0.0f && o->top_p <= 1.0f))
		return mms_fail(err, MMS_ERR_ARG, "top_p must be in (0, 1]");
	if (!(o->repetition_penalty > 0.0f) || !isfinite(o->repetition_penalty))
		return mms_fail(err, MMS_ERR_ARG, "repetition_penalty must be a positive number");
	if (o->do_sample && o->num_beams > 1)
		return mms_fail(err, MMS_ERR_ARG, "sampling with num_beams > 1 is not supported");
	return MMS_OK;
}

