/*
 * batch.h — transparent batching. A planner hook (batch_plan.c) puts an
 * MmsBatch custom scan over each plan node whose target list calls
 * mms_generate or mms_score once per row with a model and options that do
 * not vary per row; the node (batch_exec.c) sends the calls of many rows at
 * once through the asynchronous request API and emits the rows in their
 * order, results in place of the calls.
 *
 * The plan the hook builds, for a node P whose target list is
 *     (id, upper(mms_generate('m', 'fix: ' || raw, '{}')))
 * is
 *     MmsBatch   tlist (#1, upper(#4))     scan tuple (P's columns, results)
 *       P        tlist (id, NULL, 'fix: ' || raw)
 * P computes every expression that holds no batched call, as before, and
 * the inputs of the calls; MmsBatch evaluates only what holds a call's result.
 *
 * custom_private is an IntList: n_calls, has_bound, then for each call its
 * kind, the column of P holding its input, the column holding its target
 * (0 for mms_generate) and the function's oid (its EXECUTE right is checked
 * when the node starts, as for any function call). custom_exprs holds each call's model and options
 * (options NULL for mms_score), then, with has_bound, the LIMIT's offset and
 * count, whose sum bounds the rows the node reads ahead.
 */
#ifndef MMS_BATCH_H
#define MMS_BATCH_H

#include "postgres.h"

#include "nodes/extensible.h"

typedef enum MmsBatchKind
{
	MMS_BATCH_GENERATE = 1,
	MMS_BATCH_SCORE = 2
} MmsBatchKind;

#define MMS_BATCH_NAME "MmsBatch"

/* GUCs (mms.c) */
extern bool mms_transparent_batching;
extern int	mms_batch_rows;

/* batch_plan.c */
extern void mms_batch_install_hook(void);

/* batch_exec.c */
extern const CustomScanMethods mms_batch_scan_methods;
extern void mms_batch_register_methods(void);

#endif
