/*
 * gen_process.c — the logits processors of generation, each a pure function
 * over one row of vocabulary scores, in transformers' terms (repetition
 * penalty, temperature, top-k, top-p warpers; argmax), and the request's
 * random-number generator. The requests that call them: generate.c.
 */
#include "gen_process.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"

/* ---------------------------------------------------------------- random numbers */

/* xoshiro256** seeded by splitmix64: fast, and the same on every platform. */
uint64_t
mms_gen_splitmix64(uint64_t *x)
{
	uint64_t	z = (*x += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static uint64_t
rotl(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

double
mms_gen_rng_uniform(uint64_t *s)
{
	uint64_t	r = rotl(s[1] * 5, 7) * 9;
	uint64_t	t = s[1] << 17;

	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = rotl(s[3], 45);
	return (double) (r >> 11) * (1.0 / 9007199254740992.0);
}

/* ---------------------------------------------------------------- processors */

/*
 * HF RepetitionPenaltyLogitsProcessor over the decoder tokens (start
 * included): each distinct id once. mark (vocab bytes, all zero) finds
 * repeats in one pass and is left all zero again.
 */
void
mms_gen_repetition_penalty(float *x, const int32_t *hist, int32_t n, float penalty, uint8_t *mark)
{
	if (penalty == 1.0f)
		return;
	for (int32_t i = 0; i < n; i++)
	{
		int32_t		id = hist[i];

		if (mark[id])
			continue;
		mark[id] = 1;
		x[id] = x[id] < 0 ? x[id] * penalty : x[id] / penalty;
	}
	for (int32_t i = 0; i < n; i++)
		mark[hist[i]] = 0;
}


/* HF TopKLogitsWarper: drop scores below the k-th largest (ties kept). */
void
mms_gen_top_k(float *x, int64_t V, int32_t k, float *tmp)
{
	float		kth;

	if (k <= 0 || k >= V)
		return;
	/* the k-th largest by quickselect over a copy */
	memcpy(tmp, x, (size_t) V * sizeof(float));
	{
		int64_t		lo = 0,
					hi = V - 1,
					want = k - 1;

		/* quickselect for descending order */
		while (lo < hi)
		{
			float		pivot = tmp[(lo + hi) / 2];
			int64_t		i = lo,
						j = hi;

			while (i <= j)
			{
				while (tmp[i] > pivot)
					i++;
				while (tmp[j] < pivot)
					j--;
				if (i <= j)
				{
					float		s = tmp[i];

					tmp[i] = tmp[j];
					tmp[j] = s;
					i++;
					j--;
				}
			}
			if (want <= j)
				hi = j;
			else if (want >= i)
				lo = i;
			else
				break;
		}
		kth = tmp[want];
	}
	for (int64_t i = 0; i < V; i++)
		if (x[i] < kth)
			x[i] = -INFINITY;
}

typedef struct IdxVal
{
	float		v;
	int32_t		i;
} IdxVal;

static int
cmp_idxval_asc(const void *a, const void *b)
{
	const IdxVal *x = a,
			   *y = b;

	if (x->v < y->v)
		return -1;
	if (x->v > y->v)
		return 1;
	return (x->i > y->i) - (x->i < y->i);
}

/*
 * HF TopPLogitsWarper: sort ascending, drop the tokens whose cumulative
 * probability is <= 1 - top_p, always keeping the most likely one.
 */
MmsStatus
mms_gen_top_p(float *x, int64_t V, float top_p, MmsError *err)
{
	IdxVal	   *s;
	int64_t		n = 0;
	double		lse,
				cum = 0.0;

	if (top_p >= 1.0f)
		return MMS_OK;
	s = malloc((size_t) V * sizeof(IdxVal));
	if (s == NULL)
		return mms_fail(err, MMS_ERR_NOMEM, "out of memory in top_p");
	for (int64_t i = 0; i < V; i++)
		if (x[i] != -INFINITY)
		{
			s[n].v = x[i];
			s[n].i = (int32_t) i;
			n++;
		}
	qsort(s, (size_t) n, sizeof(IdxVal), cmp_idxval_asc);
	lse = mms_logsumexp(x, V);
	for (int64_t j = 0; j < n - 1; j++)
	{
		cum += exp((double) s[j].v - lse);
		if (cum <= 1.0 - (double) top_p)
			x[s[j].i] = -INFINITY;
		else
			break;
	}
	free(s);
	return MMS_OK;
}

int32_t
mms_gen_argmax(const float *x, int64_t V)
{
	int64_t		best = 0;

	for (int64_t i = 1; i < V; i++)
		if (x[i] > x[best])
			best = i;
	return (int32_t) best;
}

/*
 * Largest element of a row without NaN. Eight independent chains: a single
 * one is bound by the latency of each compare, three times slower.
 */
float
mms_gen_row_max(const float *x, int64_t V)
{
	float		m[8];
	int64_t		i = 0;

	for (int j = 0; j < 8; j++)
		m[j] = -INFINITY;
	for (; i + 8 <= V; i += 8)
		for (int j = 0; j < 8; j++)
			m[j] = x[i + j] > m[j] ? x[i + j] : m[j];
	for (; i < V; i++)
		m[0] = x[i] > m[0] ? x[i] : m[0];
	for (int j = 1; j < 8; j++)
		m[0] = m[j] > m[0] ? m[j] : m[0];
	return m[0];
}

/*
 * HF TemperatureLogitsWarper, safe for every positive finite temperature.
 * x / T overflows once |x| > T * FLT_MAX (almost every logit for a denormal
 * T): +inf values make the softmax inf - inf = NaN, and a max sent to -inf
 * leaves nothing to draw. Subtracting the row max mx first makes every
 * scaled value <= 0 with the best at exactly 0, so a tiny T only sends the
 * others to -inf: greedy in the limit.
 * Softmax is shift invariant, so for ordinary temperatures this differs from
 * HF's x / T by float rounding only. An +inf max (a repetition penalty < 1
 * overflowing a large positive logit) leaves just the +inf tokens, equally
 * likely, which is the limit too; it is normalised even at T = 1 because
 * the top-p and draw softmaxes would otherwise meet inf - inf.
 */
void
mms_gen_temperature(float *x, int64_t V, float mx, float temperature)
{
	if (mx == INFINITY)
	{
		for (int64_t i = 0; i < V; i++)
			x[i] = x[i] == INFINITY ? 0.0f : -INFINITY;
		return;
	}
	if (temperature == 1.0f)
		return;
	for (int64_t i = 0; i < V; i++)
		x[i] = (x[i] - mx) / temperature;
}


