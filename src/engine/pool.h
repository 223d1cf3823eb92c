/*
 * pool.h — a small fork-join thread pool for the forward pass. One pool per
 * process, sized by mms_set_threads(); OpenBLAS is kept single-threaded and
 * called from inside pool tasks, so only our threads run (no BLAS threads
 * spinning beside ours). Tasks never allocate or touch caller state other
 * than their own slice, and never call back into PostgreSQL.
 */
#ifndef MMS_POOL_H
#define MMS_POOL_H

/* fn(arg, task, thread) for task in [0, n_tasks); thread in [0, mms_threads()). */
typedef void (*MmsTaskFn) (void *arg, int task, int thread);

/* Sets the threads used by the engine (pool + BLAS); 1 = run on the caller only. */
void		mms_set_threads(int n);
int			mms_threads(void);

/* Runs all tasks and returns when every one is done. The caller works too. */
void		mms_parallel(int n_tasks, MmsTaskFn fn, void *arg);

#endif
