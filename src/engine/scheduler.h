/*
 * scheduler.h — continuous batching for one model. Callers submit requests
 * at any time; each mms_sched_step() admits the waiting ones (one encoder
 * batch), runs ONE decoder step over every live sequence of every request
 * (one GEMM per linear layer, beams and mixed options included), and moves
 * finished, failed and cancelled requests to the collect list. No threads of
 * its own besides BLAS's; the caller owns the requests and frees them after
 * collecting. Memory for caches is accounted at submit and bounded.
 */
#ifndef MMS_SCHEDULER_H
#define MMS_SCHEDULER_H

#include <stddef.h>

#include "generate.h"
#include "t5.h"

typedef struct MmsSchedConfig
{
	size_t		max_bytes;		/* bound on decoder caches of admitted requests; 0 = none */
	int			max_requests;	/* bound on requests held (waiting + running); 0 = none */
	int			max_encode_tokens;	/* encoder tokens admitted per step; 0 = no cap */
	int			max_running;	/* requests decoding at once; the rest wait; 0 = no cap */
	int			threads;		/* BLAS threads for this instance; 0 = leave as is */
} MmsSchedConfig;

typedef struct MmsSched MmsSched;

typedef struct MmsSchedStats
{
	uint64_t	steps;			/* decoder steps run */
	uint64_t	rows;			/* sequence-steps run (sum of batch sizes) */
	uint64_t	encoded;		/* requests encoded */
	uint64_t	encoded_tokens;
	uint64_t	finished;
	uint64_t	failed;
	uint64_t	cancelled;
	uint64_t	refused;
	int			waiting;		/* submitted, not yet encoded */
	int			running;
	size_t		bytes;			/* accounted cache bytes now */
	int			last_batch;		/* rows of the last decoder step */
} MmsSchedStats;

MmsStatus	mms_sched_create(const MmsT5 *m, const MmsSchedConfig *cfg, MmsSched **out, MmsError *err);
/* Frees the scheduler; requests still held are cancelled but not freed (the caller owns them). */
void		mms_sched_free(MmsSched *s);

/* Queues r (not started). MMS_ERR_LIMIT, and r untouched, when it would exceed a bound. */
MmsStatus	mms_sched_submit(MmsSched *s, MmsGenRequest *r, MmsError *err);
/* Marks r cancelled; it is dropped at the next step boundary and then collected. */
void		mms_sched_cancel(MmsSched *s, MmsGenRequest *r);
/* Admits waiting requests and runs one decoder step. Returns requests still held. */
MmsStatus	mms_sched_step(MmsSched *s, int *n_held, MmsError *err);
/* A finished / failed / cancelled request, or NULL if none is ready. */
MmsGenRequest *mms_sched_collect(MmsSched *s);
void		mms_sched_stats(const MmsSched *s, MmsSchedStats *out);

/*
 * Runs a fixed set of requests to completion together (a scheduler with no
 * bounds). A request that fails is marked failed and the others go on;
 * returns an error only when the whole batch cannot run. w is unused (kept
 * for callers that hold one).
 */
MmsStatus	mms_gen_run(const MmsT5 *m, MmsT5Work *w, int n, MmsGenRequest **reqs, MmsError *err);

#endif
