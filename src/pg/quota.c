/* quota.c — token buckets (being written). */
#include "postgres.h"

#include "serve.h"

Size
mms_quota_shmem_size(void)
{
	return 0;
}

void
mms_quota_shmem_init(void)
{
}
