/* usage.c — usage metering (being written). */
#include "postgres.h"

#include "serve.h"

Size
mms_usage_shmem_size(void)
{
	return 0;
}

void
mms_usage_shmem_init(void)
{
}

void
mms_usage_add(Oid dboid, Oid roleid, const MmsModel *m, const MmsStatCounts *add)
{
}
