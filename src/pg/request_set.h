/*
 * request_set.h — the inside of a request set (serve.h's asynchronous
 * request API), shared by its two halves: request.c (submission,
 * collection, streaming, cleanup) and request_admit.c (the role's quota,
 * charged in the calling backend before a request is queued). No other file
 * includes it.
 */
#ifndef MMS_REQUEST_SET_H
#define MMS_REQUEST_SET_H

#include "postgres.h"

#include "lib/ilist.h"
#include "utils/resowner.h"

#include "serve.h"

typedef struct Req
{
	MmsReqKind	kind;
	const MmsGenOptions *opts;
	const int32 *input;
	int32		n_input;
	const int32 *target;
	int32		n_target;
	int			slot;			/* -1 waiting for a slot; -2 finished */
	int32		charge;			/* output tokens charged up front (refunded as unused) */
	bool		stream;			/* its worker publishes tokens as they come */
	int32	   *partial;		/* streaming: the tokens read so far (NULL until some come) */
	int32		n_partial;		/* ... how many */
	int32		partial_cap;	/* ... room in partial, grown as they come */
	MmsResult	res;
	/* its times and progress, copied from the slot once it is DONE */
	TimestampTz t_queued;
	TimestampTz t_started;
	TimestampTz t_first;
	TimestampTz t_done;
	int32		n_generated;
} Req;

/*
 * A request holding a slot. Kept in TopMemoryContext, with what its release
 * must give back, because the cleanup after an ERROR cannot read the Reqs.
 */
typedef struct Track
{
	int			req;
	int			slot;
	int32		charge;
	bool		entered;		/* counted against the role's max_concurrent */
} Track;

struct MmsRequestSet
{
	dlist_node	node;			/* in open_sets */
	ResourceOwner owner;
	MemoryContext cxt;			/* requests and results */
	MmsModel	model;
	int			served;
	uint32		served_gen;
	Req		   *reqs;
	int			n;
	int			cap;
	int			next_unsubmitted;
	int			next_unadmitted;
	int			n_open;
	Track	   *inflight;		/* TopMemoryContext */
	int			n_inflight;
	int			inflight_cap;
	int64		charged_waiting;	/* output tokens charged to admitted requests without a slot */
	bool		exempt;			/* superuser: no quota */
	Oid			roleid;			/* the caller when the set began: charged and metered */
	MmsQuotaLimits limits;
	MmsQuotaKey qkey;
	TimestampTz t0;
	MmsStatCounts counts;
};

/* request_admit.c */
/* Charges the requests added since the last admission, all or nothing; false (and *refused) if over quota. */
extern bool mms_req_admit(MmsRequestSet *rs, MmsDeferredError *refused);
/* Counted against the role's max_concurrent; false to wait for this backend's own requests (or ERROR). */
extern bool mms_req_enter_concurrency(MmsRequestSet *rs);
/* Does the set's quota count requests or tokens (so that a call must be admitted whole)? */
extern bool mms_req_rate_limited(const MmsRequestSet *rs);

/* request.c */
/* Slots this backend holds, all its sets together (mms.backend_request_share). */
extern int	mms_req_backend_inflight(void);

#endif
