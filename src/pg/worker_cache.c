/*
 * worker_cache.c — an inference worker maps its served model's segment and
 * builds the engine's model over it: the GGUF bytes at offset 0, the
 * dequantized arena after them, both filled once by the loader
 * (worker_loader.c). Nothing is copied: every worker of every pool shares
 * the one copy. Part of mms_worker.so.
 */
#include "postgres.h"

#include "storage/dsm.h"

#include "serve.h"
#include "t5.h"
#include "worker.h"

static void
engine_error(const MmsServed *s, const MmsError *err)
{
	ereport(ERROR,
			(errcode(mms_engine_sqlstate(err->code)),
			 errmsg("could not use the weights of model %s:%d: %s",
					s->users[0].name, s->users[0].version, err->msg)));
}

bool
mms_worker_attach(int i, uint32 generation, MmsLoaded *out, bool *attached)
{
	MmsServed	s;
	dsm_segment *seg;
	MmsError	err;
	char	   *base;

	if (!mms_served_attach(i, generation, &s))
		return false;
	*attached = true;
	seg = dsm_attach(s.handle);
	if (seg == NULL)
		return false;			/* cannot happen while we hold a reference; the exit drops it */
	dsm_pin_mapping(seg);
	base = dsm_segment_address(seg);
	if (mms_gguf_parse(base, s.gguf_bytes, &out->g, &err) != MMS_OK)
		engine_error(&s, &err);
	/* fill = 0: the loader dequantized into the arena already */
	if (mms_t5_load_with_arena(&out->g, (float *) (base + s.arena_off), s.arena_floats, 0,
							   &out->model, &err) != MMS_OK)
	{
		mms_gguf_free(&out->g);
		engine_error(&s, &err);
	}
	out->seg = seg;
	return true;
}
