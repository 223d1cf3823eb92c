/*
 * scheduler.c — continuous batching (see scheduler.h) and mms_gen_run, the
 * fixed-set driver built on it. Requests are kept in submission order, so a
 * step's rows, and hence every result, do not depend on timing.
 */
#include "scheduler.h"

#include <stdlib.h>
#include <string.h>

#include "ops.h"
#include "pool.h"

typedef struct Held
{
	MmsGenRequest *r;
	size_t		bytes;			/* accounted at submit */
	int			cancel;
	int			row;			/* first row of its logits in the current step */
} Held;

struct MmsSched
{
	const MmsT5 *m;
	MmsSchedConfig cfg;
	MmsT5Work  *w;
	Held	   *held;			/* waiting and running, submission order */
	int			n_held,
				cap_held;
	MmsGenRequest **done;		/* ring of collectable requests */
	int			done_head,
				n_done,
				cap_done;
	MmsSchedStats stats;
	/* step buffers, grown on demand */
	MmsT5State **st;
	int32_t    *tok;
	float	   *logits;
	int			cap_rows;
	float	   *enc;
	size_t		cap_enc;
	const int32_t **enc_ids;
	int32_t    *enc_lens;
	MmsGenRequest **enc_reqs;
	MmsT5Cross **enc_cross;
	int			cap_enc_reqs;
	int			cap_enc_ids;	/* enc_ids, enc_lens, enc_cross: as many as enc_reqs */
	int			cap_enc_lens;
	int			cap_enc_cross;
};

MmsStatus
mms_sched_create(const MmsT5 *m, const MmsSchedConfig *cfg, MmsSched **out, MmsError *err)
{
	MmsSched   *s = calloc(1, sizeof(*s));

	*out = NULL;
	if (s == NULL || (s->w = mms_t5_work_create()) == NULL)
	{
		free(s);
		return mms_fail(err, MMS_ERR_NOMEM, "out of memory creating a scheduler");
	}
	s->m = m;
	if (cfg)
		s->cfg = *cfg;
	if (s->cfg.threads > 0)
		mms_blas_set_threads(s->cfg.threads);
	*out = s;
	return MMS_OK;
}

void
mms_sched_free(MmsSched *s)
{
	if (s == NULL)
		return;
	for (int i = 0; i < s->n_held; i++)
		mms_gen_request_cancel(s->held[i].r);
	mms_t5_work_free(s->w);
	free(s->held);
	free(s->done);
	free(s->st);
	free(s->tok);
	free(s->logits);
	free(s->enc);
	free(s->enc_ids);
	free(s->enc_lens);
	free(s->enc_reqs);
	free(s->enc_cross);
	free(s);
}

static int
grow(void **p, int *cap, int need, size_t elem)
{
	if (need <= *cap)
		return 1;
	{
		int			nc = *cap ? *cap : 16;
		void	   *np;

		while (nc < need)
			nc *= 2;
		np = realloc(*p, (size_t) nc * elem);
		if (np == NULL)
			return 0;
		*p = np;
		*cap = nc;
	}
	return 1;
}

MmsStatus
mms_sched_submit(MmsSched *s, MmsGenRequest *r, MmsError *err)
{
	size_t		bytes = mms_gen_request_bytes(r);

	if (!mms_gen_request_pending(r))
		return mms_fail(err, MMS_ERR_ARG, "request was already started");
	if (s->cfg.max_requests > 0 && s->n_held >= s->cfg.max_requests)
	{
		s->stats.refused++;
		return mms_fail(err, MMS_ERR_LIMIT, "scheduler is full (%d requests)", s->cfg.max_requests);
	}
	if (s->cfg.max_bytes > 0 && bytes > s->cfg.max_bytes - (s->stats.bytes < s->cfg.max_bytes ? s->stats.bytes : s->cfg.max_bytes))
	{
		s->stats.refused++;
		return mms_fail(err, MMS_ERR_LIMIT,
						"request needs %zu bytes of decoder cache but only %zu of %zu are free",
						bytes, s->cfg.max_bytes - s->stats.bytes, s->cfg.max_bytes);
	}
	if (!grow((void **) &s->held, &s->cap_held, s->n_held + 1, sizeof(Held)))
		return mms_fail(err, MMS_ERR_NOMEM, "out of memory queueing a request");
	s->held[s->n_held].r = r;
	s->held[s->n_held].bytes = bytes;
	s->held[s->n_held].cancel = 0;
	s->n_held++;
	s->stats.bytes += bytes;
	s->stats.waiting++;
	return MMS_OK;
}

void
mms_sched_cancel(MmsSched *s, MmsGenRequest *r)
{
	for (int i = 0; i < s->n_held; i++)
		if (s->held[i].r == r)
			s->held[i].cancel = 1;
}

MmsGenRequest *
mms_sched_collect(MmsSched *s)
{
	MmsGenRequest *r;

	if (s->n_done == 0)
		return NULL;
	r = s->done[s->done_head];
	s->done_head = (s->done_head + 1) % s->cap_done;
	s->n_done--;
	return r;
}

void
mms_sched_stats(const MmsSched *s, MmsSchedStats *out)
{
	*out = s->stats;
}

/* Moves ended requests from held to the done ring, keeping held's order. */
static MmsStatus
retire(MmsSched *s, MmsError *err)
{
	int			k = 0;

	for (int i = 0; i < s->n_held; i++)
	{
		Held	   *h = &s->held[i];

		if (!mms_gen_request_done(h->r))
		{
			s->held[k++] = *h;
			continue;
		}
		if (s->n_done == s->cap_done)
		{
			/* grow the ring, unrolling it */
			int			nc = s->cap_done ? 2 * s->cap_done : 16;
			MmsGenRequest **nd = malloc((size_t) nc * sizeof(*nd));

			if (nd == NULL)
			{
				/* keep the rest held; they retire next step */
				for (int j = i; j < s->n_held; j++)
					s->held[k++] = s->held[j];
				s->n_held = k;
				return mms_fail(err, MMS_ERR_NOMEM, "out of memory retiring requests");
			}
			for (int j = 0; j < s->n_done; j++)
				nd[j] = s->done[(s->done_head + j) % s->cap_done];
			free(s->done);
			s->done = nd;
			s->done_head = 0;
			s->cap_done = nc;
		}
		s->done[(s->done_head + s->n_done) % s->cap_done] = h->r;
		s->n_done++;
		s->stats.bytes -= h->bytes;
		{
			MmsStatus	e = mms_gen_request_error(h->r, NULL);

			if (e == MMS_OK)
				s->stats.finished++;
			else if (e == MMS_ERR_CANCELLED)
				s->stats.cancelled++;
			else
				s->stats.failed++;
		}
	}
	s->n_held = k;
	return MMS_OK;
}

static void
fail_with(MmsGenRequest *r, const MmsError *e)
{
	mms_gen_request_fail(r, e);
}

/* Encodes waiting requests (one batch) and starts them. */
static void
admit(MmsSched *s)
{
	const MmsT5Config *c = mms_t5_config(s->m);
	int			n = 0;
	int64_t		T = 0;
	MmsError	e;
	int			ok;
	int			running = 0;

	for (int i = 0; i < s->n_held; i++)
		running += !mms_gen_request_pending(s->held[i].r) && !mms_gen_request_done(s->held[i].r);
	for (int i = 0; i < s->n_held; i++)
	{
		MmsGenRequest *r = s->held[i].r;
		int32_t		len;

		if (!mms_gen_request_pending(r))
			continue;
		if (s->cfg.max_running > 0 && running + n >= s->cfg.max_running)
			break;
		mms_gen_request_input(r, &len);
		if (n > 0 && s->cfg.max_encode_tokens > 0 && T + len > s->cfg.max_encode_tokens)
			break;
		if (!grow((void **) &s->enc_reqs, &s->cap_enc_reqs, n + 1, sizeof(*s->enc_reqs)))
			break;
		s->enc_reqs[n++] = r;
		T += len;
	}
	if (n == 0)
		return;
	/* the parallel arrays follow enc_reqs' capacity; a failed grow keeps the old buffer */
	ok = grow((void **) &s->enc_ids, &s->cap_enc_ids, s->cap_enc_reqs, sizeof(*s->enc_ids)) &&
		grow((void **) &s->enc_lens, &s->cap_enc_lens, s->cap_enc_reqs, sizeof(*s->enc_lens)) &&
		grow((void **) &s->enc_cross, &s->cap_enc_cross, s->cap_enc_reqs, sizeof(*s->enc_cross));
	if (ok && (size_t) (T * c->d_model) > s->cap_enc)
	{
		free(s->enc);
		s->enc = malloc((size_t) (T * c->d_model) * sizeof(float));
		s->cap_enc = s->enc ? (size_t) (T * c->d_model) : 0;
	}
	if (!ok || !s->enc)
	{
		mms_fail(&e, MMS_ERR_NOMEM, "out of memory encoding %lld tokens", (long long) T);
		for (int i = 0; i < n; i++)
			fail_with(s->enc_reqs[i], &e);
		return;
	}
	for (int i = 0; i < n; i++)
		s->enc_ids[i] = mms_gen_request_input(s->enc_reqs[i], &s->enc_lens[i]);
	if (mms_t5_encode(s->m, s->w, n, s->enc_ids, s->enc_lens, s->enc, &e) != MMS_OK ||
		mms_t5_cross_create(s->m, s->w, n, s->enc, s->enc_lens, s->enc_cross, &e) != MMS_OK)
	{
		for (int i = 0; i < n; i++)
			fail_with(s->enc_reqs[i], &e);
		return;
	}
	for (int i = 0; i < n; i++)
	{
		if (mms_gen_request_start(s->enc_reqs[i], s->enc_cross[i], &e) != MMS_OK)
			fail_with(s->enc_reqs[i], &e);
		mms_t5_cross_release(s->enc_cross[i]);
	}
	s->stats.encoded += (uint64_t) n;
	s->stats.encoded_tokens += (uint64_t) T;
}

typedef struct AdvanceJob
{
	MmsSched   *s;
	int64_t		vocab;
} AdvanceJob;

static void
advance_task(void *arg, int i, int thread)
{
	const AdvanceJob *j = arg;
	Held	   *h = &j->s->held[i];

	if (!mms_gen_request_done(h->r))
		mms_gen_request_advance(h->r, j->s->logits + (size_t) h->row * (size_t) j->vocab, NULL);
}

MmsStatus
mms_sched_step(MmsSched *s, int *n_held, MmsError *err)
{
	const MmsT5Config *c = mms_t5_config(s->m);
	int			rows = 0,
				max_rows = 0;
	MmsError	e;
	MmsStatus	rc = MMS_OK;

	/* cancellations take effect at the step boundary */
	for (int i = 0; i < s->n_held; i++)
		if (s->held[i].cancel)
			mms_gen_request_cancel(s->held[i].r);
	admit(s);

	for (int i = 0; i < s->n_held; i++)
		if (!mms_gen_request_done(s->held[i].r))
			max_rows += mms_gen_request_max_rows(s->held[i].r);
	if (max_rows > s->cap_rows)
	{
		free(s->st);
		free(s->tok);
		free(s->logits);
		s->st = malloc((size_t) max_rows * sizeof(*s->st));
		s->tok = malloc((size_t) max_rows * sizeof(*s->tok));
		s->logits = malloc((size_t) max_rows * (size_t) c->vocab * sizeof(float));
		s->cap_rows = (s->st && s->tok && s->logits) ? max_rows : 0;
		if (s->cap_rows == 0)
			max_rows = -1;
	}
	if (max_rows < 0)
	{
		mms_fail(&e, MMS_ERR_NOMEM, "out of memory for a decoder batch");
		for (int i = 0; i < s->n_held; i++)
			fail_with(s->held[i].r, &e);
	}
	else
	{
		for (int i = 0; i < s->n_held; i++)
		{
			/* each request later reads its own rows of logits, from here */
			s->held[i].row = rows;
			rows += mms_gen_request_rows(s->held[i].r, s->st + rows, s->tok + rows);
		}
		if (rows > 0)
		{
			if (mms_t5_decode_step(s->m, s->w, rows, s->st, s->tok, s->logits, &e) != MMS_OK)
			{
				for (int i = 0; i < s->n_held; i++)
					fail_with(s->held[i].r, &e);
			}
			else
			{
				AdvanceJob	job = {s, c->vocab};

				/* requests are independent: advance them in parallel */
				mms_parallel(s->n_held, advance_task, &job);
				s->stats.steps++;
				s->stats.rows += (uint64_t) rows;
			}
		}
	}
	s->stats.last_batch = rows;
	rc = retire(s, err);
	s->stats.waiting = 0;
	s->stats.running = 0;
	for (int i = 0; i < s->n_held; i++)
	{
		if (mms_gen_request_pending(s->held[i].r))
			s->stats.waiting++;
		else
			s->stats.running++;
	}
	if (n_held)
		*n_held = s->n_held;
	return rc;
}

MmsStatus
mms_gen_run(const MmsT5 *m, MmsT5Work *w, int n, MmsGenRequest **reqs, MmsError *err)
{
	MmsSched   *s;
	MmsStatus	rc;
	int			held = 0;

	(void) w;					/* the scheduler keeps its own scratch */
	if ((rc = mms_sched_create(m, NULL, &s, err)) != MMS_OK)
		return rc;
	for (int i = 0; i < n; i++)
		if (mms_gen_request_pending(reqs[i]) && (rc = mms_sched_submit(s, reqs[i], err)) != MMS_OK)
			goto done;
	do
	{
		if ((rc = mms_sched_step(s, &held, err)) != MMS_OK)
			goto done;
		while (mms_sched_collect(s) != NULL)
			;
	} while (held > 0);
done:
	mms_sched_free(s);
	return rc;
}
