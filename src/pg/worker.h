/*
 * worker.h — declarations private to mms_worker.so (worker.c, worker_cache.c):
 * the inference worker's model, as attached from the shared cache. Only the
 * worker library includes the BLAS-using engine headers through this.
 */
#ifndef MMS_WORKER_H
#define MMS_WORKER_H

#include "storage/dsm.h"

#include "gguf.h"
#include "serve.h"
#include "t5.h"

typedef struct MmsLoaded
{
	dsm_segment *seg;			/* pinned mapping: lives as long as the process */
	MmsGguf		g;				/* parsed over the segment's bytes */
	MmsT5	   *model;			/* weights in the segment (F32 in place, rest in the arena) */
} MmsLoaded;

/* Attaches to k's cached weights, loading them first if nobody has. ERROR on failure. */
extern void mms_worker_cache_get(const MmsModelKey *k, MmsLoaded *out);
/*
 * Lock held: drops this process's refcount (or its unfinished load claim).
 * Returns the handle of a doomed segment this detach left unused, for the
 * caller to unpin after unlocking; 0 if none.
 */
extern dsm_handle mms_worker_cache_release(void);

extern PGDLLEXPORT void mms_worker_main(Datum arg);

#endif
