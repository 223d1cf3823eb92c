/*
 * worker.h — declarations private to mms_worker.so: the inference worker
 * (worker.c), its view of a served model's segment (worker_cache.c) and the
 * loader and start-up scan processes (worker_loader.c). Only the worker
 * library includes the BLAS-using engine headers through this.
 */
#ifndef MMS_WORKER_H
#define MMS_WORKER_H

#include "storage/dsm.h"

#include "gguf.h"
#include "serve.h"
#include "t5.h"

#define MMS_ARENA_ALIGN 64

typedef struct MmsLoaded
{
	dsm_segment *seg;			/* pinned mapping: lives as long as the process */
	MmsGguf		g;				/* parsed over the segment's bytes */
	MmsT5	   *model;			/* weights in the segment (F32 in place, rest in the arena) */
} MmsLoaded;

/*
 * Attaches to served entry i's weights (refcount taken). false when the entry
 * is no longer READY with that generation; ERROR if the segment is unusable.
 * *attached says whether a reference is held (to drop at exit), even after an ERROR.
 */
extern bool mms_worker_attach(int i, uint32 generation, MmsLoaded *out, bool *attached);

extern PGDLLEXPORT void mms_worker_main(Datum arg);
extern PGDLLEXPORT void mms_loader_main(Datum arg);
extern PGDLLEXPORT void mms_scan_main(Datum arg);

#endif
