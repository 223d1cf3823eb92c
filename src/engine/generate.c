/*
 * generate.c — requests (greedy, sampling, beam search, scoring) and the
 * batch driver. Semantics follow transformers' generate(): processors run in
 * HF's order (repetition penalty, min_new_tokens, temperature, top-k, top-p);
 * beam search is HF's vectorised algorithm (2*num_beams candidates a step,
 * finished hypotheses scored sum_logprobs / len^length_penalty with len
 * counting the eos, HF's early-stopping heuristic). Float32 where HF is.
 * Where HF would overflow into NaN (a denormal temperature, penalties at the
 * ends of their range) we take the limit instead; a model whose logits are
 * not finite fails the request with MMS_ERR_NUMERIC.
 */
#include "generate.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gen_process.h"
#include "ops.h"

typedef enum ReqKind
{
	REQ_GREEDY,
	REQ_SAMPLE,
	REQ_BEAM,
	REQ_SCORE
} ReqKind;

typedef enum ReqPhase
{
	PHASE_PENDING,
	PHASE_RUNNING,
	PHASE_DONE,
	PHASE_FAILED
} ReqPhase;

/* A finished beam hypothesis. */
typedef struct Hyp
{
	float		score;			/* length-normalised */
	double		raw;			/* model log-prob sum */
	int32_t		n;
	int32_t    *ids;			/* max_new_tokens */
} Hyp;

/* A beam candidate of one step. */
typedef struct Cand
{
	float		acc;			/* running score + processed log-prob */
	double		raw;			/* running model log-prob */
	int32_t		beam;
	int32_t		tok;
} Cand;

struct MmsGenRequest
{
	const MmsT5 *m;
	MmsGenOptions opt;
	ReqKind		kind;
	ReqPhase	phase;
	MmsError	err;

	int32_t    *input;
	int32_t		n_input;
	int32_t    *target;			/* REQ_SCORE */
	int32_t		n_target;

	int32_t		cap;			/* decoder positions needed */
	int			n_slots;		/* states allocated (num_beams, else 1) */
	int			n_live;			/* rows fed next step */
	MmsT5State *cur;			/* n_slots */
	MmsT5State *spare;			/* n_slots (beams: reorder target) */
	int32_t    *hist;			/* n_slots x (cap + 1): decoder tokens incl. start */
	int32_t    *hist_spare;
	int32_t		t;				/* tokens generated (or target ids scored) so far */
	float	   *run_score;		/* beams: running processed score */
	double	   *run_raw;		/* model log-prob per slot */

	Hyp		   *fin;			/* num_beams finished hypotheses */
	int			n_fin;
	int			heuristic_open; /* HF is_early_stop_heuristic_unsatisfied */

	float	   *work;			/* vocab floats */
	float	   *work2;			/* vocab floats (sampling: top-k's copy) */
	uint8_t    *mark;			/* vocab bytes, zero (repetition penalty) */
	Cand	   *cand;			/* 2 x num_beams */
	uint64_t	rng[4];

	MmsGenResult result;
};

/* ---------------------------------------------------------------- requests */

static void
req_free_states(MmsGenRequest *r)
{
	for (int i = 0; i < r->n_slots; i++)
	{
		if (r->cur)
			mms_t5_state_free(&r->cur[i]);
		if (r->spare)
			mms_t5_state_free(&r->spare[i]);
	}
}

void
mms_gen_request_free(MmsGenRequest *r)
{
	if (r == NULL)
		return;
	req_free_states(r);
	free(r->cur);
	free(r->spare);
	free(r->hist);
	free(r->hist_spare);
	free(r->run_score);
	free(r->run_raw);
	if (r->fin)
		for (int i = 0; i < r->opt.num_beams; i++)
			free(r->fin[i].ids);
	free(r->fin);
	free(r->work);
	free(r->work2);
	free(r->mark);
	free(r->cand);
	free(r->input);
	free(r->target);
	free(r->result.ids);
	free(r);
}

static MmsStatus
req_alloc(const MmsT5 *m, const int32_t *ids, int32_t n, MmsGenRequest **out, MmsError *err)
{
	MmsGenRequest *r;
	const MmsT5Config *c = mms_t5_config(m);

	*out = NULL;
	if (c->encoder_only)
		return mms_fail(err, MMS_ERR_UNSUPPORTED, "model is encoder-only and cannot generate or score");
	if (n < 1)
		return mms_fail(err, MMS_ERR_ARG, "input has no tokens");
	for (int32_t i = 0; i < n; i++)
		if (ids[i] < 0 || ids[i] >= c->vocab)
			return mms_fail(err, MMS_ERR_ARG, "input token id %d is outside the vocabulary (0..%lld)",
							ids[i], (long long) c->vocab - 1);
	r = calloc(1, sizeof(*r));
	if (r == NULL || (r->input = malloc((size_t) n * sizeof(int32_t))) == NULL)
	{
		free(r);
		return mms_fail(err, MMS_ERR_NOMEM, "out of memory for a request");
	}
	memcpy(r->input, ids, (size_t) n * sizeof(int32_t));
	r->n_input = n;
	r->m = m;
	r->phase = PHASE_PENDING;
	*out = r;
	return MMS_OK;
}

/* Per-slot buffers, once the number of slots and cap are known. */
static MmsStatus
req_alloc_slots(MmsGenRequest *r, MmsError *err)
{
	size_t		V = (size_t) mms_t5_config(r->m)->vocab;
	size_t		H = (size_t) r->n_slots * (size_t) (r->cap + 1);

	r->cur = calloc((size_t) r->n_slots, sizeof(MmsT5State));
	r->hist = calloc(H, sizeof(int32_t));
	r->run_score = calloc((size_t) r->n_slots, sizeof(float));
	r->run_raw = calloc((size_t) r->n_slots, sizeof(double));
	r->work = malloc(V * sizeof(float));
	r->mark = calloc(V, 1);
	if (r->kind == REQ_SAMPLE)
		r->work2 = malloc(V * sizeof(float));
	if (!r->cur || !r->hist || !r->run_score || !r->run_raw || !r->work || !r->mark ||
		(r->kind == REQ_SAMPLE && !r->work2))
		return mms_fail(err, MMS_ERR_NOMEM, "out of memory for a request");
	if (r->kind == REQ_BEAM)
	{
		int			nb = r->opt.num_beams;

		r->spare = calloc((size_t) nb, sizeof(MmsT5State));
		r->hist_spare = calloc(H, sizeof(int32_t));
		r->fin = calloc((size_t) nb, sizeof(Hyp));
		r->cand = calloc((size_t) (2 * nb), sizeof(Cand));
		if (!r->spare || !r->hist_spare || !r->fin || !r->cand)
			return mms_fail(err, MMS_ERR_NOMEM, "out of memory for a request");
		for (int i = 0; i < nb; i++)
			if ((r->fin[i].ids = malloc((size_t) r->cap * sizeof(int32_t))) == NULL)
				return mms_fail(err, MMS_ERR_NOMEM, "out of memory for a request");
	}
	return MMS_OK;
}

MmsStatus
mms_gen_request_create(const MmsT5 *m, const int32_t *ids, int32_t n, const MmsGenOptions *o,
					   MmsGenRequest **out, MmsError *err)
{
	MmsGenRequest *r;
	MmsStatus	st;
	uint64_t	seed;

	if ((st = mms_gen_options_validate(o, err)) != MMS_OK)
		return st;
	if ((st = req_alloc(m, ids, n, &r, err)) != MMS_OK)
		return st;
	r->opt = *o;
	r->kind = o->num_beams > 1 ? REQ_BEAM : (o->do_sample ? REQ_SAMPLE : REQ_GREEDY);
	r->n_slots = o->num_beams;
	r->cap = o->max_new_tokens;
	seed = o->seed;
	for (int i = 0; i < 4; i++)
		r->rng[i] = mms_gen_splitmix64(&seed);
	if ((st = req_alloc_slots(r, err)) != MMS_OK)
	{
		mms_gen_request_free(r);
		return st;
	}
	*out = r;
	return MMS_OK;
}

MmsStatus
mms_gen_score_request_create(const MmsT5 *m, const int32_t *ids, int32_t n, const int32_t *target,
							 int32_t n_target, MmsGenRequest **out, MmsError *err)
{
	MmsGenRequest *r;
	MmsStatus	st;
	const MmsT5Config *c = mms_t5_config(m);

	if (n_target < 1 || n_target > MMS_GEN_MAX_NEW_TOKENS)
		return mms_fail(err, MMS_ERR_ARG, "target must have between 1 and %d tokens", MMS_GEN_MAX_NEW_TOKENS);
	for (int32_t i = 0; i < n_target; i++)
		if (target[i] < 0 || target[i] >= c->vocab)
			return mms_fail(err, MMS_ERR_ARG, "target token id %d is outside the vocabulary", target[i]);
	if ((st = req_alloc(m, ids, n, &r, err)) != MMS_OK)
		return st;
	mms_gen_options_default(&r->opt);
	r->kind = REQ_SCORE;
	r->n_slots = 1;
	r->cap = n_target;
	r->target = malloc((size_t) n_target * sizeof(int32_t));
	if (r->target == NULL || (st = req_alloc_slots(r, err)) != MMS_OK)
	{
		mms_gen_request_free(r);
		return r->target ? st : mms_fail(err, MMS_ERR_NOMEM, "out of memory for a request");
	}
	memcpy(r->target, target, (size_t) n_target * sizeof(int32_t));
	r->n_target = n_target;
	*out = r;
	return MMS_OK;
}

int
mms_gen_request_done(const MmsGenRequest *r)
{
	return r->phase == PHASE_DONE || r->phase == PHASE_FAILED;
}

const MmsGenResult *
mms_gen_request_result(const MmsGenRequest *r)
{
	return r->phase == PHASE_DONE ? &r->result : NULL;
}

MmsStatus
mms_gen_request_error(const MmsGenRequest *r, MmsError *err)
{
	if (r->phase != PHASE_FAILED)
		return MMS_OK;
	if (err)
		*err = r->err;
	return r->err.code;
}

size_t
mms_gen_request_bytes(const MmsGenRequest *r)
{
	const MmsT5Config *c = mms_t5_config(r->m);
	int			states = r->kind == REQ_BEAM ? 2 * r->n_slots : r->n_slots;
	size_t		cross = 2 * (size_t) c->n_dec_layer * (size_t) r->n_input * (size_t) c->inner * sizeof(float);

	return (size_t) states * mms_t5_state_bytes(r->m, r->cap) + cross;
}

const int32_t *
mms_gen_request_input(const MmsGenRequest *r, int32_t *n)
{
	*n = r->n_input;
	return r->input;
}

int
mms_gen_request_max_rows(const MmsGenRequest *r)
{
	return r->n_slots;
}

static int32_t *
hist_of(const MmsGenRequest *r, int32_t *hist, int slot)
{
	return hist + (size_t) slot * (size_t) (r->cap + 1);
}

static MmsStatus
req_finish(MmsGenRequest *r, const int32_t *ids, int32_t n, double raw, double score, MmsError *err)
{
	r->result.ids = malloc((size_t) (n > 0 ? n : 1) * sizeof(int32_t));
	if (r->result.ids == NULL)
		return mms_fail(err, MMS_ERR_NOMEM, "out of memory for a result");
	if (n > 0)
		memcpy(r->result.ids, ids, (size_t) n * sizeof(int32_t));
	r->result.n_ids = n;
	r->result.logprob = raw;
	r->result.score = score;
	r->phase = PHASE_DONE;
	/* caches are no longer needed: give the memory back now, not at free */
	req_free_states(r);
	r->n_live = 0;
	return MMS_OK;
}

MmsStatus
mms_gen_request_start(MmsGenRequest *r, MmsT5Cross *cross, MmsError *err)
{
	MmsStatus	st;
	int32_t		start = mms_t5_config(r->m)->decoder_start_id;

	for (int i = 0; i < r->n_slots; i++)
	{
		if ((st = mms_t5_state_init(r->m, &r->cur[i], cross, r->cap, err)) != MMS_OK)
			return st;
		if (r->spare && (st = mms_t5_state_init(r->m, &r->spare[i], cross, r->cap, err)) != MMS_OK)
			return st;
		hist_of(r, r->hist, i)[0] = start;
	}
	r->t = 0;
	r->n_live = 1;				/* beams: all beams equal at step 0, so run one */
	r->heuristic_open = 1;
	r->phase = PHASE_RUNNING;
	return MMS_OK;
}

int
mms_gen_request_rows(MmsGenRequest *r, MmsT5State **st, int32_t *tok)
{
	if (r->phase != PHASE_RUNNING)
		return 0;
	for (int i = 0; i < r->n_live; i++)
	{
		st[i] = &r->cur[i];
		tok[i] = hist_of(r, r->hist, i)[r->t];
	}
	return r->n_live;
}

/* ---------------------------------------------------------------- request-level checks */

static void
apply_min_new_tokens(const MmsGenRequest *r, float *x)
{
	if (r->t < r->opt.min_new_tokens)
		x[mms_t5_config(r->m)->eos_id] = -INFINITY;
}

/*
 * Ends a request whose raw logits row holds NaN or +/-inf (found by the max
 * pass of mms_logsumexp_checked, the first read of every row). NaN or inf in
 * any weight the request uses, or in the encoder output or cross K/V
 * computed from them, is carried by the forward pass into the logits (the
 * softmax and ReLU let NaN through, as torch's do), so checking the row is
 * enough. Failure path only: it may rescan the row to name the value.
 */
static MmsStatus
fail_nonfinite(const MmsGenRequest *r, const float *row, int64_t V, MmsError *err)
{
	const char *what = "-inf";

	for (int64_t i = 0; i < V; i++)
	{
		if (isnan(row[i]))
		{
			what = "NaN";
			break;
		}
		if (row[i] == INFINITY)
			what = "+inf";
	}
	/* steps count from 1: step k produces the k-th new (or target) token */
	return mms_fail(err, MMS_ERR_NUMERIC, "the model produced non-finite logits (%s) at step %d",
					what, r->t + 1);
}

/* ---------------------------------------------------------------- stepping */

/* Greedy and sampling: appends the chosen token and finishes on eos or length. */
static MmsStatus
advance_take(MmsGenRequest *r, const float *logits, double lse, int32_t tok, MmsError *err)
{
	const MmsT5Config *c = mms_t5_config(r->m);
	int32_t    *hist = hist_of(r, r->hist, 0);

	r->run_raw[0] += (double) logits[tok] - lse;
	hist[r->t + 1] = tok;
	r->t++;
	if (tok == c->eos_id || r->t >= r->opt.max_new_tokens)
		return req_finish(r, hist + 1, r->t, r->run_raw[0], r->run_raw[0], err);
	return MMS_OK;
}

static MmsStatus
advance_single(MmsGenRequest *r, const float *logits, MmsError *err)
{
	const MmsT5Config *c = mms_t5_config(r->m);
	int64_t		V = c->vocab;
	float	   *x = r->work;
	int32_t    *hist = hist_of(r, r->hist, 0);
	int			nonfinite;
	double		lse = mms_logsumexp_checked(logits, V, &nonfinite);
	int32_t		tok;
	MmsStatus	st;

	if (nonfinite)
		return fail_nonfinite(r, logits, V, err);
	if (r->kind == REQ_SCORE)
	{
		tok = r->target[r->t];
		r->run_raw[0] += (double) logits[tok] - lse;
		hist[r->t + 1] = tok;
		r->t++;
		if (r->t >= r->n_target)
			return req_finish(r, r->target, r->n_target, r->run_raw[0], r->run_raw[0], err);
		return MMS_OK;
	}

	memcpy(x, logits, (size_t) V * sizeof(float));
	mms_gen_repetition_penalty(x, hist, r->t + 1, r->opt.repetition_penalty, r->mark);
	apply_min_new_tokens(r, x);
	if (r->kind == REQ_GREEDY)
		tok = mms_gen_argmax(x, V);
	else
	{
		double		u,
					acc = 0.0,
					lse2;
		float		mx = mms_gen_row_max(x, V);

		/*
		 * Every token ruled out (-inf) can only come from a repetition
		 * penalty overflowing huge negative logits: pick as greedy does
		 * rather than draw from an empty distribution.
		 */
		if (mx == -INFINITY)
			return advance_take(r, logits, lse, mms_gen_argmax(x, V), err);
		mms_gen_temperature(x, V, mx, r->opt.temperature);
		mms_gen_top_k(x, V, r->opt.top_k, r->work2);
		if ((st = mms_gen_top_p(x, V, r->opt.top_p, err)) != MMS_OK)
			return st;
		lse2 = mms_logsumexp(x, V);
		u = mms_gen_rng_uniform(r->rng);
		tok = -1;
		for (int64_t i = 0; i < V; i++)
		{
			if (x[i] == -INFINITY)
				continue;
			acc += exp((double) x[i] - lse2);
			tok = (int32_t) i;
			if (u < acc)
				break;
		}
		if (tok < 0)
			tok = mms_gen_argmax(x, V);
	}
	return advance_take(r, logits, lse, tok, err);
}

/* Candidates sorted by accumulated score, descending; ties to the lower flat index. */
static int
cmp_cand_desc(const void *a, const void *b)
{
	const Cand *x = a,
			   *y = b;

	if (x->acc > y->acc)
		return -1;
	if (x->acc < y->acc)
		return 1;
	if (x->beam != y->beam)
		return x->beam - y->beam;
	return x->tok - y->tok;
}

/*
 * HF's hypothesis score acc / len^length_penalty. An extreme (but finite)
 * length_penalty makes the denominator inf or 0, and -inf / inf or 0 / 0 is
 * NaN, which no comparison would ever rank; count such a hypothesis as the
 * worst instead, so that no NaN score is ever returned.
 */
static float
beam_score(float acc, float denom)
{
	float		s = acc / denom;

	return isnan(s) ? -INFINITY : s;
}

/* Adds a finished hypothesis, keeping the num_beams best (HF's merge + top-k). */
static void
add_finished(MmsGenRequest *r, const int32_t *hist, int32_t tok, float score, double raw)
{
	int			nb = r->opt.num_beams;
	int			slot;
	Hyp		   *h;

	if (r->n_fin < nb)
		slot = r->n_fin++;
	else
	{
		slot = 0;
		for (int i = 1; i < nb; i++)
			if (r->fin[i].score < r->fin[slot].score)
				slot = i;
		if (!(score > r->fin[slot].score))
			return;
	}
	h = &r->fin[slot];
	h->score = score;
	h->raw = raw;
	h->n = r->t + 1;
	memcpy(h->ids, hist + 1, (size_t) r->t * sizeof(int32_t));
	h->ids[r->t] = tok;
}

static MmsStatus
advance_beam(MmsGenRequest *r, const float *logits, MmsError *err)
{
	const MmsT5Config *c = mms_t5_config(r->m);
	int64_t		V = c->vocab;
	int			nb = r->opt.num_beams;
	int			K = 2 * nb;
	int			n_cand = 0;
	int			all_hit = 1;
	int			n_next = 0;
	int			full_before = r->n_fin == nb;
	float		denom = (float) pow((double) (r->t + 1), (double) r->opt.length_penalty);

	/* Collect the top K candidates over every live beam's processed log-probs. */
	for (int b = 0; b < r->n_live; b++)
	{
		const float *lg = logits + (size_t) b * (size_t) V;
		float	   *x = r->work;
		int32_t    *hist = hist_of(r, r->hist, b);
		int			nonfinite;
		double		lse = mms_logsumexp_checked(lg, V, &nonfinite);

		if (nonfinite)
			return fail_nonfinite(r, lg, V, err);
		for (int64_t i = 0; i < V; i++)
			x[i] = (float) ((double) lg[i] - lse);
		mms_gen_repetition_penalty(x, hist, r->t + 1, r->opt.repetition_penalty, r->mark);
		apply_min_new_tokens(r, x);
		for (int64_t i = 0; i < V; i++)
		{
			float		acc = x[i] + r->run_score[b];
			Cand		cd;

			if (n_cand == K && !(acc > r->cand[K - 1].acc))
				continue;
			cd.acc = acc;
			cd.raw = r->run_raw[b] + ((double) lg[i] - lse);
			cd.beam = b;
			cd.tok = (int32_t) i;
			/* insertion into the sorted top-K list */
			{
				int			pos = n_cand < K ? n_cand++ : K - 1;

				while (pos > 0 && cmp_cand_desc(&cd, &r->cand[pos - 1]) < 0)
				{
					r->cand[pos] = r->cand[pos - 1];
					pos--;
				}
				r->cand[pos] = cd;
			}
		}
	}

	/* Finished candidates among the top num_beams; the best unfinished continue. */
	for (int k = 0; k < n_cand; k++)
	{
		Cand	   *cd = &r->cand[k];
		int			hit = cd->tok == c->eos_id || r->t + 1 >= r->opt.max_new_tokens;
		int32_t    *hist = hist_of(r, r->hist, cd->beam);

		if (!hit)
			all_hit = 0;
		if (hit)
		{
			if (k < nb && !(full_before && r->opt.early_stopping == MMS_EARLY_STOP_TRUE) &&
				r->heuristic_open)
				add_finished(r, hist, cd->tok, beam_score(cd->acc, denom), cd->raw);
			continue;
		}
		if (n_next < nb)
		{
			int32_t    *nh = hist_of(r, r->hist_spare, n_next);

			memcpy(nh, hist, (size_t) (r->t + 1) * sizeof(int32_t));
			nh[r->t + 1] = cd->tok;
			mms_t5_state_copy(r->m, &r->spare[n_next], &r->cur[cd->beam]);
			r->run_score[n_next] = cd->acc;	/* safe: beams read above are done */
			r->run_raw[n_next] = cd->raw;
			n_next++;
		}
	}
	/* run_score/run_raw were overwritten in place: fine because candidates carry acc/raw. */
	{
		MmsT5State *ts = r->cur;
		int32_t    *th = r->hist;

		r->cur = r->spare;
		r->spare = ts;
		r->hist = r->hist_spare;
		r->hist_spare = th;
	}
	r->t++;
	r->n_live = n_next;

	/* HF's stopping rules. */
	if (r->n_fin == nb && n_next > 0)
	{
		float		worst = r->fin[0].score;
		double		len = (r->opt.early_stopping == MMS_EARLY_STOP_NEVER && r->opt.length_penalty > 0.0f)
			? (double) r->opt.max_new_tokens : (double) r->t;
		float		best_possible = r->run_score[0] / (float) pow(len, (double) r->opt.length_penalty);

		for (int i = 1; i < nb; i++)
			worst = r->fin[i].score < worst ? r->fin[i].score : worst;
		if (!(best_possible > worst))
			r->heuristic_open = 0;
	}
	if (all_hit || n_next == 0 || !r->heuristic_open ||
		(r->opt.early_stopping == MMS_EARLY_STOP_TRUE && r->n_fin == nb))
	{
		int			best = 0;

		if (r->n_fin == 0)
			return mms_fail(err, MMS_ERR_LIMIT, "beam search ended without a finished hypothesis");
		for (int i = 1; i < r->n_fin; i++)
			if (r->fin[i].score > r->fin[best].score)
				best = i;
		return req_finish(r, r->fin[best].ids, r->fin[best].n, r->fin[best].raw, r->fin[best].score, err);
	}
	return MMS_OK;
}

MmsStatus
mms_gen_request_advance(MmsGenRequest *r, const float *logits, MmsError *err)
{
	MmsStatus	st;

	if (r->phase != PHASE_RUNNING)
		return MMS_OK;
	st = r->kind == REQ_BEAM ? advance_beam(r, logits, &r->err) : advance_single(r, logits, &r->err);
	if (st != MMS_OK)
	{
		r->phase = PHASE_FAILED;
		req_free_states(r);
		r->n_live = 0;
		if (err)
			*err = r->err;
	}
	return st;
}

void
mms_gen_request_cancel(MmsGenRequest *r)
{
	if (mms_gen_request_done(r))
		return;
	mms_fail(&r->err, MMS_ERR_CANCELLED, "request cancelled");
	r->phase = PHASE_FAILED;
	req_free_states(r);
	r->n_live = 0;
}

int
mms_gen_request_pending(const MmsGenRequest *r)
{
	return r->phase == PHASE_PENDING;
}

int32_t
mms_gen_request_generated(const MmsGenRequest *r)
{
	return r->phase == PHASE_PENDING ? 0 : r->t;
}

int32_t
mms_gen_request_prefix(const MmsGenRequest *r, const int32_t **ids)
{
	if ((r->kind != REQ_GREEDY && r->kind != REQ_SAMPLE) || r->phase != PHASE_RUNNING)
		return 0;
	*ids = hist_of(r, r->hist, 0) + 1;
	return r->t;
}

void
mms_gen_request_fail(MmsGenRequest *r, const MmsError *e)
{
	if (mms_gen_request_done(r))
		return;
	r->err = *e;
	r->phase = PHASE_FAILED;
	req_free_states(r);
	r->n_live = 0;
}
