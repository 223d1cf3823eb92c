/*
 * at_commit.c — registry changes reach the serving side when their
 * transaction commits, never before (a rollback changes nothing):
 *   - unregistering a model (or dropping the extension or the database): its
 *     registrations leave their served models (served.c), which drain and
 *     free their weights once nothing uses them, and its statistics go;
 *   - mms_configure: the new pool settings reach the model's served entries
 *     (a pinned model is loaded at once; pools resize on the next pass).
 */
#include "postgres.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "nodes/pg_list.h"
#include "utils/memutils.h"

#include "serve.h"

/*
 * Forgetting before commit would race: a call arriving between the forget and
 * the commit still sees the model and registers itself as a user of the
 * served entry again. After commit, a loader can no longer read the weights
 * (its snapshot sees them deleted); a rollback keeps everything.
 */
typedef struct PendingForget
{
	Oid			dboid;
	int64		model_id;		/* forget; 0 with a name = new pool settings */
	char		name[NAMEDATALEN];
	MmsPoolConfig pool;
	MmsModel	pinned;			/* pinned: the version to load now (id 0 = none) */
	int			nest_level;		/* subtransaction that asked */
} PendingForget;

static List *pending_forget = NIL;	/* in TopTransactionContext */
static bool forget_callbacks_registered = false;

static void
forget_at_end_of_xact(XactEvent event, void *arg)
{
	ListCell   *lc;

	/* a prepared transaction commits in another process: nothing would run */
	if (event == XACT_EVENT_PRE_PREPARE && pending_forget != NIL)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot PREPARE a transaction that unregistered mms models")));
	if (event == XACT_EVENT_COMMIT)
		foreach(lc, pending_forget)
		{
			PendingForget *f = lfirst(lc);

			if (f->pinned.id != 0)
			{
				uint32		gen;
				int			i = mms_served_try_acquire(&f->pinned, f->dboid, &gen);

				/* a full directory: loaded at its first call or the next start instead */
				if (i >= 0)
					mms_served_want(i, gen);
			}
			if (f->name[0] != '\0')
				mms_served_set_pool(f->dboid, f->name, &f->pool);
			else
				mms_forget_models(f->dboid, f->model_id);
		}
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT || event == XACT_EVENT_PREPARE ||
		event == XACT_EVENT_PARALLEL_COMMIT || event == XACT_EVENT_PARALLEL_ABORT)
		pending_forget = NIL;
}

/* A rolled-back savepoint takes its unregisters back; a released one hands them up. */
static void
forget_at_end_of_subxact(SubXactEvent event, SubTransactionId mySubid,
						 SubTransactionId parentSubid, void *arg)
{
	int			level = GetCurrentTransactionNestLevel();
	ListCell   *lc;

	if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		foreach(lc, pending_forget)
			if (((PendingForget *) lfirst(lc))->nest_level >= level)
				pending_forget = foreach_delete_current(pending_forget, lc);
	}
	else if (event == SUBXACT_EVENT_COMMIT_SUB)
	{
		foreach(lc, pending_forget)
		{
			PendingForget *f = lfirst(lc);

			if (f->nest_level >= level)
				f->nest_level = level - 1;
		}
	}
}

static PendingForget *
pending(void)
{
	MemoryContext old;
	PendingForget *f;

	if (!forget_callbacks_registered)
	{
		RegisterXactCallback(forget_at_end_of_xact, NULL);
		RegisterSubXactCallback(forget_at_end_of_subxact, NULL);
		forget_callbacks_registered = true;
	}
	old = MemoryContextSwitchTo(TopTransactionContext);
	f = palloc0(sizeof(PendingForget));
	f->nest_level = GetCurrentTransactionNestLevel();
	pending_forget = lappend(pending_forget, f);
	MemoryContextSwitchTo(old);
	return f;
}

void
mms_forget_models_at_commit(Oid dboid, int64 model_id)
{
	PendingForget *f;

	if (mms_shared == NULL)
		return;
	f = pending();
	f->dboid = dboid;
	f->model_id = model_id;
}

void
mms_pool_config_at_commit(const char *name, const MmsPoolConfig *pool)
{
	PendingForget *f;

	if (mms_shared == NULL)
		return;
	f = pending();
	f->dboid = MyDatabaseId;
	strlcpy(f->name, name, sizeof(f->name));
	f->pool = *pool;
	/* resolved now: at commit the catalog can no longer be read */
	if (pool->pinned)
	{
		mms_resolve_model(name, false, &f->pinned);
		f->pinned.pool = *pool;
	}
}
