/*
 * events.c — the ring of serving decisions (load, load_failed, evict,
 * scale_up, scale_down, worker_exit) behind mms.events; each is also a LOG
 * line. Owns MmsShared.events under events_lock; the oldest event is
 * overwritten when the ring is full, the counts per kind (mms_metrics) never.
 */
#include "postgres.h"

#include "utils/timestamp.h"

#include "serve.h"

const char *const mms_event_kinds[MMS_EVENT_KINDS] = {
	"load", "load_failed", "evict", "scale_up", "scale_down", "worker_exit"
};

void
mms_event(const char *kind, const MmsServed *s, const char *fmt,...)
{
	MmsEvent	ev;
	va_list		ap;

	memset(&ev, 0, sizeof(ev));
	ev.at = GetCurrentTimestamp();
	strlcpy(ev.kind, kind, sizeof(ev.kind));
	if (s != NULL)
	{
		if (s->n_users > 0)
			snprintf(ev.model, sizeof(ev.model), "%s:%d", s->users[0].name, s->users[0].version);
		strlcpy(ev.sha256, s->sha256, sizeof(ev.sha256));
	}
	va_start(ap, fmt);
	vsnprintf(ev.detail, sizeof(ev.detail), fmt, ap);
	va_end(ap);
	ereport(LOG,
			(errmsg("mms %s: model %s: %s", ev.kind, ev.model[0] ? ev.model : "-", ev.detail)));

	LWLockAcquire(mms_shared->events_lock, LW_EXCLUSIVE);
	mms_shared->events[mms_shared->event_next] = ev;
	mms_shared->event_next = (mms_shared->event_next + 1) % MMS_MAX_EVENTS;
	mms_shared->event_count++;
	for (int k = 0; k < MMS_EVENT_KINDS; k++)
		if (strcmp(kind, mms_event_kinds[k]) == 0)
			mms_shared->event_kind_counts[k]++;
	LWLockRelease(mms_shared->events_lock);
}

int
mms_events_snapshot(MmsEvent *out)
{
	int			n;

	LWLockAcquire(mms_shared->events_lock, LW_SHARED);
	n = (int) Min(mms_shared->event_count, (uint64) MMS_MAX_EVENTS);
	/* oldest first */
	for (int j = 0; j < n; j++)
	{
		int			k = (mms_shared->event_next - n + j + MMS_MAX_EVENTS) % MMS_MAX_EVENTS;

		out[j] = mms_shared->events[k];
	}
	LWLockRelease(mms_shared->events_lock);
	return n;
}

void
mms_events_counts(uint64 *out)
{
	LWLockAcquire(mms_shared->events_lock, LW_SHARED);
	memcpy(out, mms_shared->event_kind_counts, sizeof(uint64) * MMS_EVENT_KINDS);
	LWLockRelease(mms_shared->events_lock);
}
