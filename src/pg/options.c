/*
 * options.c — the options jsonb of mms_generate turned into the final
 * MmsGenOptions the worker runs (the engine's defaults under the given
 * options, checked by the engine's own validator — no BLAS needed): every key known, every value of the right type and range, or
 * an ERROR naming the option. Meanings are HF generate()'s (generate.h); the
 * sampling rule is mms-run's.
 */
#include "postgres.h"

#include <errno.h>
#include <float.h>
#include <math.h>

#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"

#include "serve.h"

/* Options the caller gave (bits), kept apart from the defaults until the end. */
#define MMS_OPT_MAX_NEW_TOKENS		(1 << 0)
#define MMS_OPT_MIN_NEW_TOKENS		(1 << 1)
#define MMS_OPT_NUM_BEAMS			(1 << 2)
#define MMS_OPT_LENGTH_PENALTY		(1 << 3)
#define MMS_OPT_EARLY_STOPPING		(1 << 4)
#define MMS_OPT_DO_SAMPLE			(1 << 5)
#define MMS_OPT_TEMPERATURE			(1 << 6)
#define MMS_OPT_TOP_K				(1 << 7)
#define MMS_OPT_TOP_P				(1 << 8)
#define MMS_OPT_SEED				(1 << 9)
#define MMS_OPT_REPETITION_PENALTY	(1 << 10)

typedef struct MmsOptionSet
{
	uint32		given;
	int32		max_new_cap;	/* mms.max_new_tokens: bounds the default max_new_tokens */
	MmsGenOptions v;
} MmsOptionSet;

#define VALID_OPTIONS "max_new_tokens, min_new_tokens, num_beams, length_penalty, early_stopping, " \
	"do_sample, temperature, top_k, top_p, seed, repetition_penalty"

static void
bad_value(const char *key, const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("option \"%s\" must be %s", key, what)));
}

static int64
get_int(const char *key, const JsonbValue *v, int64 lo, int64 hi, const char *range)
{
	char	   *s;
	char	   *end;
	long long	x;

	if (v->type != jbvNumeric)
		bad_value(key, "an integer");
	s = numeric_normalize(v->val.numeric);
	errno = 0;
	x = strtoll(s, &end, 10);
	if (*end == '.' || (*end != '\0' && *end != 'e' && *end != 'E'))
		bad_value(key, "an integer");
	if (errno == ERANGE || *end != '\0' || x < lo || x > hi)
		bad_value(key, range);
	return (int64) x;
}

/*
 * A number the engine can hold: options are single-precision floats there, so
 * a value must be 0 or a normal float. numeric_float8_no_overflow turns
 * 1e309 into infinity instead of raising a generic out-of-range error that
 * names no option.
 */
static double
get_float(const char *key, const JsonbValue *v)
{
	double		d;

	if (v->type != jbvNumeric)
		bad_value(key, "a number");
	d = DatumGetFloat8(DirectFunctionCall1(numeric_float8_no_overflow,
										   NumericGetDatum(v->val.numeric)));
	if (!isfinite(d) || fabs(d) > FLT_MAX || (d != 0 && fabs(d) < FLT_MIN))
		bad_value(key, "a finite number, 0 or between 1.2e-38 and 3.4e38 in magnitude");
	return d;
}

static bool
get_bool(const char *key, const JsonbValue *v)
{
	if (v->type != jbvBool)
		bad_value(key, "true or false");
	return v->val.boolean;
}

static void
parse_given(Jsonb *opts, MmsOptionSet *set)
{
	MmsGenOptions *o = &set->v;
	JsonbIterator *it;
	JsonbValue	k;
	JsonbValue	v;
	JsonbIteratorToken r;
	bool		sample_requested = false;
	int			do_sample = -1; /* -1 = not given */
	double		temperature = 1.0;
	char		range[64];

	memset(set, 0, sizeof(*set));
	set->max_new_cap = mms_max_new_tokens;
	/* mms-run's defaults for these two, which the sampling rule always sets */
	set->given = MMS_OPT_DO_SAMPLE | MMS_OPT_TEMPERATURE;
	o->temperature = 1.0f;
	if (opts == NULL)
		return;
	if (!JB_ROOT_IS_OBJECT(opts) || JB_ROOT_IS_SCALAR(opts))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("options must be a jsonb object"),
				 errhint("For example '{\"num_beams\": 4, \"max_new_tokens\": 32}'.")));

	it = JsonbIteratorInit(&opts->root);
	while ((r = JsonbIteratorNext(&it, &k, false)) != WJB_DONE)
	{
		char	   *key;

		if (r != WJB_KEY)
			continue;
		key = pnstrdup(k.val.string.val, k.val.string.len);
		r = JsonbIteratorNext(&it, &v, true);
		if (v.type == jbvNull)
			bad_value(key, "a value, not null");

		if (strcmp(key, "max_new_tokens") == 0)
		{
			snprintf(range, sizeof(range), "between 1 and %d (mms.max_new_tokens)", mms_max_new_tokens);
			o->max_new_tokens = (int32) get_int(key, &v, 1, mms_max_new_tokens, range);
			set->given |= MMS_OPT_MAX_NEW_TOKENS;
		}
		else if (strcmp(key, "min_new_tokens") == 0)
		{
			snprintf(range, sizeof(range), "between 0 and %d (mms.max_new_tokens)", mms_max_new_tokens);
			o->min_new_tokens = (int32) get_int(key, &v, 0, mms_max_new_tokens, range);
			set->given |= MMS_OPT_MIN_NEW_TOKENS;
		}
		else if (strcmp(key, "num_beams") == 0)
		{
			snprintf(range, sizeof(range), "between 1 and %d", MMS_GEN_MAX_BEAMS);
			o->num_beams = (int32) get_int(key, &v, 1, MMS_GEN_MAX_BEAMS, range);
			set->given |= MMS_OPT_NUM_BEAMS;
		}
		else if (strcmp(key, "length_penalty") == 0)
		{
			o->length_penalty = (float) get_float(key, &v);
			set->given |= MMS_OPT_LENGTH_PENALTY;
		}
		else if (strcmp(key, "early_stopping") == 0)
		{
			if (v.type == jbvBool)
				o->early_stopping = v.val.boolean ? MMS_EARLY_STOP_TRUE : MMS_EARLY_STOP_FALSE;
			else if (v.type == jbvString && v.val.string.len == 5 &&
					 strncmp(v.val.string.val, "never", 5) == 0)
				o->early_stopping = MMS_EARLY_STOP_NEVER;
			else
				bad_value(key, "true, false or \"never\"");
			set->given |= MMS_OPT_EARLY_STOPPING;
		}
		else if (strcmp(key, "do_sample") == 0)
			do_sample = get_bool(key, &v) ? 1 : 0;
		else if (strcmp(key, "temperature") == 0)
		{
			temperature = get_float(key, &v);
			if (temperature < 0)
				bad_value(key, "zero (greedy) or positive");
			sample_requested = true;
		}
		else if (strcmp(key, "top_k") == 0)
		{
			o->top_k = (int32) get_int(key, &v, 0, PG_INT32_MAX, "a non-negative integer (0 = off)");
			set->given |= MMS_OPT_TOP_K;
			sample_requested = true;
		}
		else if (strcmp(key, "top_p") == 0)
		{
			double		p = get_float(key, &v);

			if (!(p > 0 && p <= 1))
				bad_value(key, "greater than 0 and at most 1");
			o->top_p = (float) p;
			set->given |= MMS_OPT_TOP_P;
			sample_requested = true;
		}
		else if (strcmp(key, "seed") == 0)
		{
			o->seed = (uint64) get_int(key, &v, 0, PG_INT64_MAX, "a non-negative integer");
			set->given |= MMS_OPT_SEED;
		}
		else if (strcmp(key, "repetition_penalty") == 0)
		{
			double		p = get_float(key, &v);

			if (!(p > 0))
				bad_value(key, "positive (1 = off)");
			o->repetition_penalty = (float) p;
			set->given |= MMS_OPT_REPETITION_PENALTY;
		}
		else
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("unknown option \"%s\"", key),
					 errhint("Valid options are " VALID_OPTIONS ".")));
		pfree(key);
	}

	/*
	 * mms-run's rule: sampling is on when do_sample is true or a sampling
	 * parameter is given, and temperature 0 means greedy. An explicit
	 * do_sample false wins, as in HF.
	 */
	if (do_sample >= 0)
		sample_requested = do_sample == 1;
	o->do_sample = sample_requested && temperature > 0.0;
	o->temperature = temperature > 0.0 ? (float) temperature : 1.0f;

	/*
	 * The two rules that span options, checked here so that the error comes
	 * before any work; the engine validates the final options below.
	 */
	if (o->do_sample && (set->given & MMS_OPT_NUM_BEAMS) && o->num_beams > 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("option \"num_beams\" must be 1 when sampling"),
				 errhint("Sampling is on when do_sample is true or temperature, top_k or top_p is given.")));
	if ((set->given & MMS_OPT_MIN_NEW_TOKENS) && (set->given & MMS_OPT_MAX_NEW_TOKENS) &&
		o->min_new_tokens > o->max_new_tokens)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("option \"min_new_tokens\" must not exceed max_new_tokens (%d)", o->max_new_tokens)));
}

/* The given options over the engine's defaults, validated by the engine. */
void
mms_parse_options(Jsonb *opts, MmsGenOptions *o)
{
	MmsOptionSet set;
	MmsError	err;

	parse_given(opts, &set);
	mms_gen_options_default(o);
	if (!(set.given & MMS_OPT_MAX_NEW_TOKENS) && set.max_new_cap > 0)
		o->max_new_tokens = Min(o->max_new_tokens, set.max_new_cap);
#define TAKE(bit, field) if (set.given & (bit)) o->field = set.v.field
	TAKE(MMS_OPT_MAX_NEW_TOKENS, max_new_tokens);
	TAKE(MMS_OPT_MIN_NEW_TOKENS, min_new_tokens);
	TAKE(MMS_OPT_NUM_BEAMS, num_beams);
	TAKE(MMS_OPT_LENGTH_PENALTY, length_penalty);
	TAKE(MMS_OPT_EARLY_STOPPING, early_stopping);
	TAKE(MMS_OPT_DO_SAMPLE, do_sample);
	TAKE(MMS_OPT_TEMPERATURE, temperature);
	TAKE(MMS_OPT_TOP_K, top_k);
	TAKE(MMS_OPT_TOP_P, top_p);
	TAKE(MMS_OPT_SEED, seed);
	TAKE(MMS_OPT_REPETITION_PENALTY, repetition_penalty);
#undef TAKE
	if (mms_gen_options_validate(o, &err) != MMS_OK)
		ereport(ERROR,
				(errcode(mms_engine_sqlstate(err.code)),
				 errmsg("%s", err.msg)));
}
