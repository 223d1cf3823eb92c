/*
 * bench_engine.c — the engine's side of `make bench`: the workloads of
 * bench/peers.py run through the mms engine, and the machine's limits
 * measured in the same process with the same thread count (streaming-read
 * and GEMV bandwidth, sgemm GFLOP/s). Prints one JSON object per line.
 * Never used by tests: speed is measured here, behaviour in test/.
 *
 *   mms-bench --model F.gguf --inputs F.txt [--name MODEL] [--engine NAME]
 *             [--threads N] [--quick] [--no-limits] [--reps N] [--mixed N]
 *             [--workloads decode_b1,decode_b8,decode_b32,encode_b32,mixed_1000]
 *             [--ids OUT.json]
 *
 * --engine names the engine in the JSON lines (default "mms"; bench/run.sh
 * gives "mms-f32" and "mms-q8_0"); --reps: timed repetitions per workload, the
 * best kept (default 3, --quick 1; mixed always 1); --mixed: how many of the
 * mixed inputs (default all, --quick 200); --ids: the greedy ids of the decode
 * workloads (last repetition) as one JSON object, to compare with the peers'.
 */
#include <cblas.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "generate.h"
#include "gguf.h"
#include "ops.h"
#include "scheduler.h"
#include "t5.h"

static double
now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double) ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double
peak_rss_mb(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return ru.ru_maxrss / 1024.0;
}

/* ---------------------------------------------------------------- limits */

typedef struct ReadArg
{
	const float *p;
	size_t		n;
	double		sum;
} ReadArg;

static void *
read_slice(void *v)
{
	ReadArg    *a = v;
	float		s0 = 0,
				s1 = 0,
				s2 = 0,
				s3 = 0,
				s4 = 0,
				s5 = 0,
				s6 = 0,
				s7 = 0;

	for (size_t i = 0; i + 8 <= a->n; i += 8)
	{
		s0 += a->p[i];
		s1 += a->p[i + 1];
		s2 += a->p[i + 2];
		s3 += a->p[i + 3];
		s4 += a->p[i + 4];
		s5 += a->p[i + 5];
		s6 += a->p[i + 6];
		s7 += a->p[i + 7];
	}
	a->sum = s0 + s1 + s2 + s3 + s4 + s5 + s6 + s7;
	return NULL;
}

/* Streaming read of a buffer far larger than the caches, over `threads` threads. */
static double
stream_read_gbs(int threads)
{
	size_t		n = (size_t) 256 << 20;	/* 1 GiB of floats */
	float	   *buf = malloc(n * sizeof(float));
	double		best = 0;
	pthread_t	th[64];
	ReadArg		args[64];

	if (buf == NULL)
		return 0;
	for (size_t i = 0; i < n; i++)
		buf[i] = (float) (i & 1023);
	for (int rep = 0; rep < 3; rep++)
	{
		double		t0 = now();

		for (int t = 0; t < threads; t++)
		{
			args[t].p = buf + n / threads * t;
			args[t].n = n / threads;
			pthread_create(&th[t], NULL, read_slice, &args[t]);
		}
		for (int t = 0; t < threads; t++)
			pthread_join(th[t], NULL);
		best = fmax(best, n * sizeof(float) / (now() - t0) / 1e9);
	}
	free(buf);
	return best;
}

/* GEMV over a 256 MiB matrix: what batch-1 decoding does. */
static double
gemv_gbs(void)
{
	int			rows = 8192,
				cols = 8192;
	float	   *a = malloc((size_t) rows * cols * sizeof(float));
	float	   *x = malloc(cols * sizeof(float));
	float	   *y = malloc(rows * sizeof(float));
	double		best = 0;

	for (size_t i = 0; i < (size_t) rows * cols; i++)
		a[i] = (float) (i % 7) * 0.1f;
	for (int i = 0; i < cols; i++)
		x[i] = 1.0f;
	for (int rep = 0; rep < 5; rep++)
	{
		double		t0 = now();

		cblas_sgemv(CblasRowMajor, CblasNoTrans, rows, cols, 1.0f, a, cols, x, 1, 0.0f, y, 1);
		best = fmax(best, (double) rows * cols * sizeof(float) / (now() - t0) / 1e9);
	}
	free(a);
	free(x);
	free(y);
	return best;
}

static double
sgemm_gflops(void)
{
	int			n = 2048;
	float	   *a = malloc((size_t) n * n * sizeof(float));
	float	   *b = malloc((size_t) n * n * sizeof(float));
	float	   *c = malloc((size_t) n * n * sizeof(float));
	double		best = 0;

	for (size_t i = 0; i < (size_t) n * n; i++)
	{
		a[i] = (float) (i % 13) * 0.01f;
		b[i] = (float) (i % 11) * 0.01f;
	}
	for (int rep = 0; rep < 3; rep++)
	{
		double		t0 = now();

		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
		best = fmax(best, 2.0 * n * n * n / (now() - t0) / 1e9);
	}
	free(a);
	free(b);
	free(c);
	return best;
}

/* ---------------------------------------------------------------- inputs */

typedef struct Inputs
{
	int			n;
	int32_t   **ids;
	int32_t    *len;
} Inputs;

static int
read_inputs(const char *path, Inputs *in)
{
	FILE	   *f = fopen(path, "r");
	char	   *line = NULL;
	size_t		cap = 0;

	memset(in, 0, sizeof(*in));
	if (f == NULL)
		return -1;
	while (getline(&line, &cap, f) > 0)
	{
		int32_t    *ids = malloc(4096 * sizeof(int32_t));
		int			n = 0;
		char	   *save = NULL;

		for (char *t = strtok_r(line, " \n", &save); t && n < 4096; t = strtok_r(NULL, " \n", &save))
			ids[n++] = atoi(t);
		in->ids = realloc(in->ids, (size_t) (in->n + 1) * sizeof(*in->ids));
		in->len = realloc(in->len, (size_t) (in->n + 1) * sizeof(*in->len));
		in->ids[in->n] = ids;
		in->len[in->n] = n;
		in->n++;
	}
	free(line);
	fclose(f);
	return 0;
}

/* ---------------------------------------------------------------- workloads */

static MmsT5 *model;
static const char *model_name = "small";
static const char *engine_name = "mms";
static int n_threads = 2;

static const char *const all_workloads[] = {"decode_b1", "decode_b8", "decode_b32", "encode_b32", "mixed_1000"};
#define N_WORKLOADS ((int) (sizeof(all_workloads) / sizeof(all_workloads[0])))
static int	wanted[N_WORKLOADS];

/* --workloads: a comma list of names from all_workloads; 0 on an unknown one */
static int
parse_workloads(const char *list)
{
	char	   *copy = strdup(list),
			   *save = NULL;

	memset(wanted, 0, sizeof(wanted));
	for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save))
	{
		int			k;

		for (k = 0; k < N_WORKLOADS && strcmp(t, all_workloads[k]) != 0; k++)
			;
		if (k == N_WORKLOADS)
		{
			fprintf(stderr, "mms-bench: unknown workload \"%s\"\n", t);
			free(copy);
			return 0;
		}
		wanted[k] = 1;
	}
	free(copy);
	return 1;
}

static int
want(const char *w)
{
	for (int k = 0; k < N_WORKLOADS; k++)
		if (strcmp(w, all_workloads[k]) == 0)
			return wanted[k];
	return 0;
}

/* the decode workloads' ids, for --ids */
static FILE *ids_file;
static int	ids_first = 1;

static void
write_ids(const char *workload, const int32_t *ids, int count, int new_tokens)
{
	if (ids_file == NULL)
		return;
	fprintf(ids_file, "%s\"%s\": ", ids_first ? "{" : ", ", workload);
	ids_first = 0;
	if (count > 1)
		fputc('[', ids_file);
	for (int i = 0; i < count; i++)
	{
		fprintf(ids_file, "%s[", i ? ", " : "");
		for (int j = 0; j < new_tokens; j++)
			fprintf(ids_file, "%s%d", j ? ", " : "", ids[(size_t) i * new_tokens + j]);
		fputc(']', ids_file);
	}
	if (count > 1)
		fputc(']', ids_file);
}

static void
emit(const char *workload, double secs, long in_tok, long out_tok, int inputs, const char *extra)
{
	printf("{\"engine\": \"%s\", \"model\": \"%s\", \"workload\": \"%s\", \"seconds\": %.6f, "
		   "\"in_tokens\": %ld, \"out_tokens\": %ld, \"inputs\": %d, \"threads\": %d, "
		   "\"peak_rss_mb\": %.1f%s%s}\n",
		   engine_name, model_name, workload, secs, in_tok, out_tok, inputs, n_threads, peak_rss_mb(),
		   extra ? ", " : "", extra ? extra : "");
	fflush(stdout);
}

/* Greedy, forced length, through the scheduler; returns seconds. ids_out
 * (count x new_tokens), if not NULL, receives the generated ids. */
static double
run_generate(Inputs *in, int first, int count, int new_tokens, int max_running, long *in_tok,
			 size_t *peak_cache, int32_t *ids_out)
{
	MmsSchedConfig cfg = {0};
	MmsSched   *s;
	MmsGenRequest **reqs = calloc((size_t) count, sizeof(*reqs));
	MmsGenOptions o;
	MmsError	err;
	MmsSchedStats st;
	int			held = 0;
	double		t0;

	mms_gen_options_default(&o);
	o.max_new_tokens = new_tokens;
	o.min_new_tokens = new_tokens;
	cfg.max_running = max_running;
	*in_tok = 0;
	if (mms_sched_create(model, &cfg, &s, &err) != MMS_OK)
		exit(1);
	t0 = now();
	for (int i = 0; i < count; i++)
	{
		if (mms_gen_request_create(model, in->ids[first + i], in->len[first + i], &o, &reqs[i], &err) != MMS_OK ||
			mms_sched_submit(s, reqs[i], &err) != MMS_OK)
		{
			fprintf(stderr, "bench: %s\n", err.msg);
			exit(1);
		}
		*in_tok += in->len[first + i];
	}
	if (peak_cache)
		*peak_cache = 0;
	do
	{
		if (mms_sched_step(s, &held, &err) != MMS_OK)
		{
			fprintf(stderr, "bench: %s\n", err.msg);
			exit(1);
		}
		mms_sched_stats(s, &st);
		if (peak_cache && st.bytes > *peak_cache)
			*peak_cache = st.bytes;
		while (mms_sched_collect(s))
			;
	} while (held > 0);
	t0 = now() - t0;
	for (int i = 0; i < count; i++)
	{
		const MmsGenResult *r = mms_gen_request_result(reqs[i]);

		if (r == NULL || r->n_ids != new_tokens)
		{
			fprintf(stderr, "bench: request %d did not produce %d tokens\n", i, new_tokens);
			exit(1);
		}
		if (ids_out)
			memcpy(ids_out + (size_t) i * new_tokens, r->ids, (size_t) new_tokens * sizeof(int32_t));
		mms_gen_request_free(reqs[i]);
	}
	mms_sched_free(s);
	free(reqs);
	return t0;
}

static double
best_of(int reps, Inputs *in, int first, int count, int new_tokens, long *in_tok, int32_t *ids_out)
{
	double		best = 1e30;

	for (int r = 0; r < reps; r++)
		best = fmin(best, run_generate(in, first, count, new_tokens, 0, in_tok, NULL, ids_out));
	return best;
}

/* decode_bN: lines 0..count-1, 64 new tokens each */
static void
decode_workload(const char *name, int reps, Inputs *in, int count)
{
	long		in_tok;
	int32_t    *ids = malloc((size_t) count * 64 * sizeof(int32_t));
	double		secs;

	if (!want(name))
	{
		free(ids);
		return;
	}
	secs = best_of(reps, in, 0, count, 64, &in_tok, ids);
	emit(name, secs, in_tok, (long) count * 64, count, NULL);
	write_ids(name, ids, count, 64);
	free(ids);
}

int
main(int argc, char **argv)
{
	const char *model_path = NULL,
			   *inputs_path = NULL;
	int			quick = 0,
				limits = 1,
				reps = -1,
				mixed_max = -1,
				opt;
	const char *ids_path = NULL;
	static const struct option longopts[] = {
		{"model", required_argument, NULL, 'm'},
		{"name", required_argument, NULL, 'n'},
		{"inputs", required_argument, NULL, 'i'},
		{"threads", required_argument, NULL, 't'},
		{"quick", no_argument, NULL, 'q'},
		{"no-limits", no_argument, NULL, 'L'},
		{"engine", required_argument, NULL, 'e'},
		{"workloads", required_argument, NULL, 'w'},
		{"reps", required_argument, NULL, 'r'},
		{"mixed", required_argument, NULL, 'x'},
		{"ids", required_argument, NULL, 'I'},
		{NULL, 0, NULL, 0}
	};
	int			fd;
	struct stat sb;
	void	   *map;
	MmsGguf		g;
	MmsError	err;
	Inputs		in;
	long		in_tok;
	double		secs;
	char		extra[512];
	double		n_params = 0;
	const MmsT5Config *c;
	int			n_mixed;
	size_t		peak_cache;

	while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1)
	{
		switch (opt)
		{
			case 'm':
				model_path = optarg;
				break;
			case 'n':
				model_name = optarg;
				break;
			case 'i':
				inputs_path = optarg;
				break;
			case 't':
				n_threads = atoi(optarg);
				break;
			case 'q':
				quick = 1;
				break;
			case 'L':
				limits = 0;
				break;
			case 'e':
				engine_name = optarg;
				break;
			case 'w':
				if (!parse_workloads(optarg))
					return 2;
				break;
			case 'r':
				reps = atoi(optarg);
				break;
			case 'x':
				mixed_max = atoi(optarg);
				break;
			case 'I':
				ids_path = optarg;
				break;
			default:
				fprintf(stderr, "usage: mms-bench --model F --inputs F [--name N] [--engine NAME] [--threads N] [--quick]\n"
						"       [--no-limits] [--reps N] [--mixed N] [--workloads W,W,...] [--ids OUT.json]\n");
				return 2;
		}
	}
	if (model_path == NULL || inputs_path == NULL || read_inputs(inputs_path, &in) != 0 || in.n < 64)
	{
		fprintf(stderr, "mms-bench: need --model and --inputs with at least 64 lines\n");
		return 2;
	}
	{
		int			any = 0;

		for (int k = 0; k < N_WORKLOADS; k++)
			any |= wanted[k];
		if (!any)				/* no --workloads: all of them */
			for (int k = 0; k < N_WORKLOADS; k++)
				wanted[k] = 1;
	}
	if (reps < 1)
		reps = quick ? 1 : 3;
	if (ids_path && (ids_file = fopen(ids_path, "w")) == NULL)
	{
		perror(ids_path);
		return 1;
	}
	mms_blas_set_threads(n_threads);

	fd = open(model_path, O_RDONLY);
	if (fd < 0 || fstat(fd, &sb) != 0)
	{
		perror(model_path);
		return 1;
	}
	map = mmap(NULL, (size_t) sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	close(fd);
	if (mms_gguf_parse(map, (size_t) sb.st_size, &g, &err) != MMS_OK || mms_t5_load(&g, &model, &err) != MMS_OK)
	{
		fprintf(stderr, "mms-bench: %s\n", err.msg);
		return 1;
	}
	c = mms_t5_config(model);
	for (uint64_t i = 0; i < g.n_tensors; i++)
		n_params += (double) g.tensors[i].n_elems;
	{
		/* FLOPs per token: 2 x linear parameters (+ attention, reported separately) */
		double		enc_lin = (double) c->n_enc_layer * (4.0 * c->d_model * c->inner + (c->gated ? 3.0 : 2.0) * c->d_model * c->d_ff);
		double		dec_lin = (double) c->n_dec_layer * (6.0 * c->d_model * c->inner + (c->gated ? 3.0 : 2.0) * c->d_model * c->d_ff)
			+ (double) c->vocab * c->d_model;

		printf("{\"engine\": \"%s\", \"model\": \"%s\", \"workload\": \"model\", \"file_bytes\": %lld, "
			   "\"decoder_bytes_per_step\": %zu, \"enc_linear_params\": %.0f, \"dec_linear_params\": %.0f, "
			   "\"d_model\": %lld, \"inner\": %lld, \"n_dec_layer\": %lld, \"owned_bytes\": %zu, "
			   "\"n_enc_layer\": %lld, \"d_ff\": %lld, \"vocab\": %lld, \"gated\": %d, \"params\": %.0f, "
			   "\"load_rss_mb\": %.1f}\n",
			   engine_name, model_name, (long long) sb.st_size, mms_t5_decoder_weight_bytes(model), enc_lin, dec_lin,
			   (long long) c->d_model, (long long) c->inner, (long long) c->n_dec_layer,
			   mms_t5_owned_bytes(model), (long long) c->n_enc_layer, (long long) c->d_ff,
			   (long long) c->vocab, c->gated, n_params, peak_rss_mb());
		fflush(stdout);
	}

	/* warm-up */
	run_generate(&in, 0, 1, 4, 0, &in_tok, NULL, NULL);

	decode_workload("decode_b1", reps, &in, 1);
	decode_workload("decode_b8", reps, &in, 8);
	decode_workload("decode_b32", reps, &in, 32);

	/* encoder only: 32 inputs of 128 tokens, one batch */
	if (want("encode_b32"))
	{
		const int32_t *ids[32];
		int32_t		lens[32];
		long		T = 0;
		float	   *out;
		MmsT5Work  *w = mms_t5_work_create();
		double		best = 1e30;

		for (int i = 0; i < 32; i++)
		{
			ids[i] = in.ids[32 + i];
			lens[i] = in.len[32 + i];
			T += lens[i];
		}
		out = malloc((size_t) T * (size_t) c->d_model * sizeof(float));
		for (int r = 0; r < reps; r++)
		{
			double		t0 = now();

			mms_t5_encode(model, w, 32, ids, lens, out, &err);
			best = fmin(best, now() - t0);
		}
		emit("encode_b32", best, T, 0, 32, NULL);
		free(out);
		mms_t5_work_free(w);
	}

	/* 1,000 mixed inputs through continuous batching */
	if (want("mixed_1000"))
	{
		n_mixed = in.n - 64;
		if (mixed_max < 0 && quick)
			mixed_max = 200;
		if (mixed_max > 0 && n_mixed > mixed_max)
			n_mixed = mixed_max;
		secs = run_generate(&in, 64, n_mixed, 32, 64, &in_tok, &peak_cache, NULL);
		snprintf(extra, sizeof(extra), "\"peak_cache_bytes\": %zu, \"max_running\": 64, \"new_tokens_each\": 32",
				 peak_cache);
		emit("mixed_1000", secs, in_tok, (long) n_mixed * 32, n_mixed, extra);
	}
	if (ids_file)
	{
		fputs(ids_first ? "{}\n" : "}\n", ids_file);
		fclose(ids_file);
	}

	mms_t5_free(model);
	mms_gguf_free(&g);
	munmap(map, (size_t) sb.st_size);

	/* last, so the 1 GiB read buffer stays out of the workloads' peak RSS */
	if (limits)
	{
		double		bw,
					gv,
					gf;

		/* the engine keeps OpenBLAS single-threaded inside its pool: limits use n threads */
		openblas_set_num_threads(n_threads);
		bw = stream_read_gbs(n_threads);
		gv = gemv_gbs();
		gf = sgemm_gflops();
		printf("{\"engine\": \"machine\", \"workload\": \"limits\", \"threads\": %d, \"stream_read_gbs\": %.2f, "
			   "\"gemv_gbs\": %.2f, \"sgemm_gflops\": %.2f, \"measured_by\": \"%s\", \"after_model\": \"%s\"}\n",
			   n_threads, bw, gv, gf, engine_name, model_name);
	}
	return 0;
}
