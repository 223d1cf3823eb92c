/*
 * pool.c — fork-join pool (see pool.h). Workers sleep on a condition
 * variable between jobs; a job hands out tasks through an atomic counter, so
 * uneven tasks balance themselves. Threads start lazily on the first
 * parallel call, never at load time (a library that starts threads when
 * loaded would make a preloading postmaster multi-threaded).
 */
#include "pool.h"

#include <cblas.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>

#define MMS_MAX_THREADS 256

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
static pthread_cond_t done = PTHREAD_COND_INITIALIZER;
static int	n_threads = 1;		/* wanted, including the caller */
static int	n_started = 0;		/* pool threads running (excludes the caller) */
static atomic_ulong generation = 0;	/* bumped per job */
static atomic_int busy = 0;		/* pool threads still inside the current job */

/*
 * A forward pass forks and joins a hundred times a step; a thread woken by
 * a condition variable takes tens of microseconds to run. Both sides first
 * spin briefly (SPIN_ITERS pauses, tens of microseconds) on the shared
 * counters, then sleep.
 */
#define SPIN_ITERS 2000

static inline void
cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#endif
}

static MmsTaskFn job_fn;
static void *job_arg;
static int	job_tasks;
static atomic_int next_task;

static void
run_tasks(int thread)
{
	int			t;

	while ((t = atomic_fetch_add(&next_task, 1)) < job_tasks)
		job_fn(job_arg, t, thread);
}

static void *
worker_main(void *p)
{
	int			thread = (int) (long) p;
	unsigned long seen = 0;

	for (;;)
	{
		for (int i = 0; i < SPIN_ITERS && atomic_load(&generation) == seen; i++)
			cpu_relax();
		pthread_mutex_lock(&mu);
		while (atomic_load(&generation) == seen)
			pthread_cond_wait(&wake, &mu);
		seen = atomic_load(&generation);
		if (thread >= n_threads)
		{
			/* not part of this job (pool was shrunk) */
			pthread_mutex_unlock(&mu);
			continue;
		}
		pthread_mutex_unlock(&mu);
		run_tasks(thread);
		if (atomic_fetch_sub(&busy, 1) == 1)
		{
			pthread_mutex_lock(&mu);
			pthread_cond_signal(&done);
			pthread_mutex_unlock(&mu);
		}
	}
	return NULL;
}

void
mms_set_threads(int n)
{
	if (n < 1)
		n = 1;
	if (n > MMS_MAX_THREADS)
		n = MMS_MAX_THREADS;
	pthread_mutex_lock(&mu);
	n_threads = n;
	pthread_mutex_unlock(&mu);
	/* BLAS runs inside our tasks, one thread each */
	openblas_set_num_threads(1);
}

int
mms_threads(void)
{
	return n_threads;
}

void
mms_parallel(int n_tasks, MmsTaskFn fn, void *arg)
{
	int			helpers;

	if (n_tasks <= 0)
		return;
	pthread_mutex_lock(&mu);
	helpers = n_threads - 1;
	if (helpers > n_tasks - 1)
		helpers = n_tasks - 1;
	while (n_started < n_threads - 1)
	{
		pthread_t	th;
		sigset_t	all,
					old;
		int			rc;

		/*
		 * Our threads must never run a signal handler: in a PostgreSQL
		 * worker the handlers touch process state. They inherit the mask
		 * in force at creation, so block everything around it.
		 */
		sigfillset(&all);
		pthread_sigmask(SIG_SETMASK, &all, &old);
		rc = pthread_create(&th, NULL, worker_main, (void *) (long) (n_started + 1));
		pthread_sigmask(SIG_SETMASK, &old, NULL);
		if (rc != 0)
			break;				/* fewer threads: the caller still does every task */
		pthread_detach(th);
		n_started++;
	}
	if (helpers > n_started)
		helpers = n_started;
	if (helpers <= 0)
	{
		pthread_mutex_unlock(&mu);
		for (int t = 0; t < n_tasks; t++)
			fn(arg, t, 0);
		return;
	}
	job_fn = fn;
	job_arg = arg;
	job_tasks = n_tasks;
	atomic_store(&next_task, 0);
	/* every started thread wakes; those with index >= n_threads skip the job */
	{
		int			b = 0;

		for (int i = 1; i <= n_started; i++)
			b += i < n_threads;
		atomic_store(&busy, b);
	}
	atomic_fetch_add(&generation, 1);
	pthread_cond_broadcast(&wake);
	pthread_mutex_unlock(&mu);

	run_tasks(0);

	for (int i = 0; i < SPIN_ITERS && atomic_load(&busy) > 0; i++)
		cpu_relax();
	pthread_mutex_lock(&mu);
	while (atomic_load(&busy) > 0)
		pthread_cond_wait(&done, &mu);
	pthread_mutex_unlock(&mu);
}
