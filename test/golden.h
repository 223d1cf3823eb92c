/*
 * golden.h — reader for the golden files tools/make_fixtures.py writes from
 * transformers (test/fixtures/NAME.golden): one record per line, see the
 * script for the format. Header-only; used by the T5 unit tests.
 */
#ifndef MMS_TEST_GOLDEN_H
#define MMS_TEST_GOLDEN_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GOLDEN_MAX_CASES 16
#define GOLDEN_MAX_RUNS 8

typedef struct GoldenGen
{
	int			max_new,
				min_new,
				num_beams,
				early_stopping;
	float		rep_penalty,
				length_penalty;
	int			n;
	int			ids[512];
	double		score;			/* beams only */
} GoldenGen;

typedef struct GoldenCase
{
	int			n_input;
	int			input[512];
	int			enc_rows,
				enc_cols;
	float	   *enc;
	int			n_logits;
	float	   *logits;
	int			n_greedy;
	GoldenGen	greedy[GOLDEN_MAX_RUNS];
	int			n_beam;
	GoldenGen	beam[GOLDEN_MAX_RUNS];
	int			n_target;
	int			target[512];
	double		target_logprob;
} GoldenCase;

typedef struct Golden
{
	char		name[64];
	char		type[16];
	int			n_cases;
	GoldenCase	cases[GOLDEN_MAX_CASES];
} Golden;

static inline int
golden_ints(char **save, int *out, int n)
{
	for (int i = 0; i < n; i++)
	{
		char	   *t = strtok_r(NULL, " \t\n", save);

		if (t == NULL)
			return -1;
		out[i] = atoi(t);
	}
	return 0;
}

static inline double
golden_num(char **save)
{
	char	   *t = strtok_r(NULL, " \t\n", save);

	return t ? strtod(t, NULL) : NAN;
}

static inline float *
golden_floats(char **save, int n)
{
	float	   *f = malloc((size_t) (n > 0 ? n : 1) * sizeof(float));

	for (int i = 0; i < n; i++)
		f[i] = (float) golden_num(save);
	return f;
}

/* Parses path; returns 0 on success. */
static inline int
golden_load(const char *path, Golden *g)
{
	FILE	   *f = fopen(path, "r");
	size_t		cap = 1 << 20;
	char	   *line = malloc(cap);
	GoldenCase *c = NULL;

	memset(g, 0, sizeof(*g));
	if (f == NULL || line == NULL)
		return -1;
	while (getline(&line, &cap, f) > 0)
	{
		char	   *save = NULL;
		char	   *kw = strtok_r(line, " \t\n", &save);

		if (kw == NULL || kw[0] == '#')
			continue;
		if (strcmp(kw, "model") == 0)
		{
			char	   *t;

			snprintf(g->name, sizeof(g->name), "%s", strtok_r(NULL, " \t\n", &save));
			while ((t = strtok_r(NULL, " \t\n", &save)) != NULL)
				if (strncmp(t, "type=", 5) == 0)
					snprintf(g->type, sizeof(g->type), "%s", t + 5);
		}
		else if (strcmp(kw, "case") == 0)
		{
			if (g->n_cases == GOLDEN_MAX_CASES)
				return -1;
			c = &g->cases[g->n_cases++];
			golden_num(&save);	/* case index */
			c->n_input = (int) golden_num(&save);
			golden_ints(&save, c->input, c->n_input);
		}
		else if (c == NULL)
			return -1;
		else if (strcmp(kw, "enc") == 0)
		{
			c->enc_rows = (int) golden_num(&save);
			c->enc_cols = (int) golden_num(&save);
			c->enc = golden_floats(&save, c->enc_rows * c->enc_cols);
		}
		else if (strcmp(kw, "logits") == 0)
		{
			c->n_logits = (int) golden_num(&save);
			c->logits = golden_floats(&save, c->n_logits);
		}
		else if (strcmp(kw, "greedy") == 0 && c->n_greedy < GOLDEN_MAX_RUNS)
		{
			GoldenGen  *r = &c->greedy[c->n_greedy++];

			r->num_beams = 1;
			r->max_new = (int) golden_num(&save);
			r->min_new = (int) golden_num(&save);
			r->rep_penalty = (float) golden_num(&save);
			r->n = (int) golden_num(&save);
			golden_ints(&save, r->ids, r->n);
		}
		else if (strcmp(kw, "beam") == 0 && c->n_beam < GOLDEN_MAX_RUNS)
		{
			GoldenGen  *r = &c->beam[c->n_beam++];

			r->num_beams = (int) golden_num(&save);
			r->length_penalty = (float) golden_num(&save);
			r->early_stopping = (int) golden_num(&save);
			r->max_new = (int) golden_num(&save);
			r->min_new = (int) golden_num(&save);
			r->rep_penalty = 1.0f;
			r->n = (int) golden_num(&save);
			golden_ints(&save, r->ids, r->n);
			r->score = golden_num(&save);
		}
		else if (strcmp(kw, "score") == 0)
		{
			c->n_target = (int) golden_num(&save);
			golden_ints(&save, c->target, c->n_target);
			c->target_logprob = golden_num(&save);
		}
	}
	free(line);
	fclose(f);
	return 0;
}

static inline void
golden_free(Golden *g)
{
	for (int i = 0; i < g->n_cases; i++)
	{
		free(g->cases[i].enc);
		free(g->cases[i].logits);
	}
}

/* For the tests that run generations (generate.h and cmocka included before). */
#ifdef MMS_GENERATE_H
/* The engine request a golden generation describes. */
static inline MmsGenRequest *
golden_request(const MmsT5 *m, const GoldenCase *c, const GoldenGen *r)
{
	MmsGenOptions o;
	MmsGenRequest *req;
	MmsError	err;

	mms_gen_options_default(&o);
	o.max_new_tokens = r->max_new;
	o.min_new_tokens = r->min_new;
	o.num_beams = r->num_beams;
	o.repetition_penalty = r->rep_penalty;
	if (r->num_beams > 1)
	{
		o.length_penalty = r->length_penalty;
		o.early_stopping = r->early_stopping ? MMS_EARLY_STOP_TRUE : MMS_EARLY_STOP_FALSE;
	}
	if (mms_gen_request_create(m, c->input, c->n_input, &o, &req, &err) != MMS_OK)
		fail_msg("request: %s", err.msg);
	return req;
}

/* Fails the test, showing both, unless res has the golden's ids. */
static inline void
golden_check_ids(const char *what, const char *model, int k, const GoldenGen *r, const MmsGenResult *res)
{
	int			same = res != NULL && res->n_ids == r->n;

	for (int i = 0; same && i < r->n; i++)
		same = res->ids[i] == r->ids[i];
	if (!same)
	{
		char		got[2048] = "",
					want[2048] = "";

		for (int i = 0; res && i < res->n_ids && strlen(got) < 2000; i++)
			snprintf(got + strlen(got), sizeof(got) - strlen(got), " %d", res->ids[i]);
		for (int i = 0; i < r->n && strlen(want) < 2000; i++)
			snprintf(want + strlen(want), sizeof(want) - strlen(want), " %d", r->ids[i]);
		fail_msg("%s %s case %d (beams %d, lp %g, es %d, max %d, min %d, rep %g):\n got [%s ]\nwant [%s ]",
				 model, what, k, r->num_beams, r->length_penalty, r->early_stopping, r->max_new,
				 r->min_new, r->rep_penalty, got, want);
	}
}
#endif

#endif
