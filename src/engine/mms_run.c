/*
 * mms_run.c — the engine's command-line front end: loads a GGUF file
 * (mmap), then generates, tokenizes or scores each INPUT. All inputs of one
 * call run as one batch. Owns argument parsing and printing only.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "generate.h"
#include "scheduler.h"
#include "gguf.h"
#include "ops.h"
#include "qgemm.h"
#include "t5.h"
#include "t5_meta.h"
#include "tokenizer.h"

static const char usage[] =
"usage: mms-run --model FILE [--max-new-tokens N] [--min-new-tokens N] [--num-beams K]\n"
"               [--length-penalty X] [--early-stopping true|false|never]\n"
"               [--temperature T] [--top-k K] [--top-p P] [--seed S] [--sample]\n"
"               [--repetition-penalty R] [--threads N] [--ids] [--input-ids \"i j k\"]\n"
"               [--tokenize] [--score TARGET] [--latency N] INPUT...\n"
"       mms-run --model FILE --info\n"
"Prints one line per INPUT: the generated text (--ids: token ids; --tokenize:\n"
"the input's token ids; --score: log P(TARGET | INPUT)). Sampling is on when\n"
"--sample, --temperature, --top-k or --top-p is given (temperature 0 = greedy).\n"
"--info prints the model's shape, how its weights are computed on this CPU\n"
"(f32, or Q8_0/Q4_0 in place with which int8 kernel) and the memory they take.\n";

/* --info: shape, weight type and kernels, memory. */
static void
print_info(const MmsT5 *model, size_t file_bytes)
{
	const MmsT5Config *c = mms_t5_config(model);
	int			wt = mms_t5_weight_type(model);

	printf("shape: d_model %lld, d_ff %lld (%s), %lld + %lld layers, %lld heads x %lld, vocabulary %lld, %s head\n",
		   (long long) c->d_model, (long long) c->d_ff, c->gated ? "gated-GELU" : "ReLU",
		   (long long) c->n_enc_layer, (long long) c->n_dec_layer, (long long) c->n_head,
		   (long long) c->d_kv, (long long) c->vocab, c->tied ? "tied" : "untied");
	if (wt == MMS_T_F32)
		printf("weights: f32 (F16/BF16 converted at load)\n");
	else
		printf("weights: %s computed in place; decoder steps: int8 kernel %s; encoder: %s\n",
			   mms_tensor_type_name(wt), mms_qpath_name(mms_qpath_best()),
			   mms_qtile_available() ? "int8 tile kernel (AVX-512 VNNI)" : "sgemm on tiles dequantized per call");
	printf("memory: file %.1f MB, converted to f32 at load %.1f MB, decoder reads %.1f MB a step\n",
		   file_bytes / 1e6, mms_t5_owned_bytes(model) / 1e6, mms_t5_decoder_weight_bytes(model) / 1e6);
}

static void
die(int code, const char *fmt,...)
{
	va_list		ap;

	fputs("mms-run: error: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(code);
}

static long long
parse_int(const char *opt, const char *s, long long lo, long long hi)
{
	char	   *end;
	long long	v;

	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno || end == s || *end != '\0' || v < lo || v > hi)
		die(2, "%s expects an integer between %lld and %lld, got \"%s\"", opt, lo, hi, s);
	return v;
}

static double
parse_float(const char *opt, const char *s)
{
	char	   *end;
	double		v;

	errno = 0;
	v = strtod(s, &end);
	if (errno || end == s || *end != '\0' || !isfinite(v))
		die(2, "%s expects a number, got \"%s\"", opt, s);
	return v;
}

/* Space-separated ids, as given to --input-ids. */
static int32_t *
parse_ids(const char *s, int32_t *n)
{
	size_t		cap = 16;
	int32_t    *ids = malloc(cap * sizeof(int32_t));
	char	   *copy = strdup(s);
	char	   *save = NULL;

	*n = 0;
	if (ids == NULL || copy == NULL)
		die(1, "out of memory");
	for (char *tok = strtok_r(copy, " \t,", &save); tok; tok = strtok_r(NULL, " \t,", &save))
	{
		if ((size_t) *n == cap)
		{
			cap *= 2;
			ids = realloc(ids, cap * sizeof(int32_t));
			if (ids == NULL)
				die(1, "out of memory");
		}
		ids[(*n)++] = (int32_t) parse_int("--input-ids", tok, 0, INT32_MAX);
	}
	free(copy);
	if (*n == 0)
		die(2, "--input-ids needs at least one id");
	return ids;
}

static void
print_ids(const int32_t *ids, size_t n)
{
	for (size_t i = 0; i < n; i++)
		printf(i ? " %d" : "%d", ids[i]);
	putchar('\n');
}

/*
 * --latency N: the first INPUT N times, one request at a time, model loaded
 * once; prints each call's milliseconds (tokenize + generate + detokenize).
 * The baseline the SQL path's latency is compared with (bench/pg_bench.sh).
 */
static int
run_latency(MmsT5 *model, MmsTokenizer *tok, const char *input, const MmsGenOptions *gopt, int runs)
{
	for (int r = 0; r < runs; r++)
	{
		struct timespec t0,
					t1;
		int32_t    *ids;
		size_t		n,
					len;
		char	   *text;
		MmsGenRequest *req;
		MmsError	err;

		clock_gettime(CLOCK_MONOTONIC, &t0);
		if (mms_tok_encode(tok, input, strlen(input), 1, &ids, &n, &err) != MMS_OK ||
			mms_gen_request_create(model, ids, (int32_t) n, gopt, &req, &err) != MMS_OK ||
			mms_gen_run(model, NULL, 1, &req, &err) != MMS_OK ||
			mms_gen_request_result(req) == NULL ||
			mms_tok_decode(tok, mms_gen_request_result(req)->ids,
						   (size_t) mms_gen_request_result(req)->n_ids, &text, &len, &err) != MMS_OK)
			die(1, "%s", err.msg);
		clock_gettime(CLOCK_MONOTONIC, &t1);
		printf("%.3f\n", (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) * 1e-6);
		free(ids);
		free(text);
		mms_gen_request_free(req);
	}
	return 0;
}

int
main(int argc, char **argv)
{
	enum
	{
		O_MAXNEW = 256, O_MINNEW, O_BEAMS, O_LP, O_ES, O_TEMP, O_TOPK, O_TOPP, O_SEED, O_SAMPLE,
		O_REP, O_THREADS, O_IDS, O_INIDS, O_TOK, O_SCORE, O_LATENCY, O_HELP, O_INFO
	};
	static const struct option longopts[] = {
		{"model", required_argument, NULL, 'm'},
		{"max-new-tokens", required_argument, NULL, O_MAXNEW},
		{"min-new-tokens", required_argument, NULL, O_MINNEW},
		{"num-beams", required_argument, NULL, O_BEAMS},
		{"length-penalty", required_argument, NULL, O_LP},
		{"early-stopping", required_argument, NULL, O_ES},
		{"temperature", required_argument, NULL, O_TEMP},
		{"top-k", required_argument, NULL, O_TOPK},
		{"top-p", required_argument, NULL, O_TOPP},
		{"seed", required_argument, NULL, O_SEED},
		{"sample", no_argument, NULL, O_SAMPLE},
		{"repetition-penalty", required_argument, NULL, O_REP},
		{"threads", required_argument, NULL, O_THREADS},
		{"ids", no_argument, NULL, O_IDS},
		{"input-ids", required_argument, NULL, O_INIDS},
		{"tokenize", no_argument, NULL, O_TOK},
		{"score", required_argument, NULL, O_SCORE},
		{"latency", required_argument, NULL, O_LATENCY},
		{"help", no_argument, NULL, O_HELP},
		{"info", no_argument, NULL, O_INFO},
		{NULL, 0, NULL, 0}
	};
	const char *model_path = NULL,
			   *input_ids = NULL,
			   *score_target = NULL;
	int			want_ids = 0,
				want_tok = 0,
				want_info = 0,
				threads = 0,
				opt,
				n_inputs;
	int			sample_requested = 0;
	int			latency_runs = 0;
	double		temperature = 1.0;
	MmsGenOptions gopt;
	MmsError	err;
	int			fd;
	struct stat sb;
	void	   *map;
	MmsGguf		g;
	MmsTokenizer *tok = NULL;
	MmsT5	   *model = NULL;
	MmsT5Work  *work;
	MmsGenRequest **reqs;
	int			exit_code = 0;

	mms_gen_options_default(&gopt);
	while ((opt = getopt_long(argc, argv, "m:h", longopts, NULL)) != -1)
	{
		switch (opt)
		{
			case 'm':
				model_path = optarg;
				break;
			case O_MAXNEW:
				gopt.max_new_tokens = (int32_t) parse_int("--max-new-tokens", optarg, 1, MMS_GEN_MAX_NEW_TOKENS);
				break;
			case O_MINNEW:
				gopt.min_new_tokens = (int32_t) parse_int("--min-new-tokens", optarg, 0, MMS_GEN_MAX_NEW_TOKENS);
				break;
			case O_BEAMS:
				gopt.num_beams = (int32_t) parse_int("--num-beams", optarg, 1, MMS_GEN_MAX_BEAMS);
				break;
			case O_LP:
				gopt.length_penalty = (float) parse_float("--length-penalty", optarg);
				break;
			case O_ES:
				if (strcmp(optarg, "true") == 0 || strcmp(optarg, "1") == 0)
					gopt.early_stopping = MMS_EARLY_STOP_TRUE;
				else if (strcmp(optarg, "false") == 0 || strcmp(optarg, "0") == 0)
					gopt.early_stopping = MMS_EARLY_STOP_FALSE;
				else if (strcmp(optarg, "never") == 0)
					gopt.early_stopping = MMS_EARLY_STOP_NEVER;
				else
					die(2, "--early-stopping expects true, false or never, got \"%s\"", optarg);
				break;
			case O_TEMP:
				temperature = parse_float("--temperature", optarg);
				if (temperature < 0)
					die(2, "--temperature must not be negative");
				sample_requested = 1;
				break;
			case O_TOPK:
				gopt.top_k = (int32_t) parse_int("--top-k", optarg, 0, INT32_MAX);
				sample_requested = 1;
				break;
			case O_TOPP:
				gopt.top_p = (float) parse_float("--top-p", optarg);
				sample_requested = 1;
				break;
			case O_SEED:
				gopt.seed = (uint64_t) parse_int("--seed", optarg, 0, LLONG_MAX);
				break;
			case O_SAMPLE:
				sample_requested = 1;
				break;
			case O_REP:
				gopt.repetition_penalty = (float) parse_float("--repetition-penalty", optarg);
				break;
			case O_THREADS:
				threads = (int) parse_int("--threads", optarg, 1, 1024);
				break;
			case O_IDS:
				want_ids = 1;
				break;
			case O_INIDS:
				input_ids = optarg;
				break;
			case O_TOK:
				want_tok = 1;
				break;
			case O_SCORE:
				score_target = optarg;
				break;
			case O_LATENCY:
				latency_runs = (int) parse_int("--latency", optarg, 1, 1000000);
				break;
			case O_INFO:
				want_info = 1;
				break;
			case 'h':
			case O_HELP:
				fputs(usage, stdout);
				return 0;
			default:
				fputs(usage, stderr);
				return 2;
		}
	}
	if (model_path == NULL)
		die(2, "--model FILE is required (see --help)");
	n_inputs = input_ids ? 1 : argc - optind;
	if (input_ids && argc - optind > 0)
		die(2, "give either --input-ids or INPUT arguments, not both");
	if (n_inputs == 0 && !want_info)
		die(2, "no INPUT given (see --help)");
	/* temperature 0 means greedy, as most serving APIs read it */
	gopt.do_sample = sample_requested && temperature > 0.0;
	gopt.temperature = temperature > 0.0 ? (float) temperature : 1.0f;
	if (mms_gen_options_validate(&gopt, &err) != MMS_OK)
		die(2, "%s", err.msg);

	fd = open(model_path, O_RDONLY);
	if (fd < 0 || fstat(fd, &sb) != 0)
		die(1, "cannot open model \"%s\": %s", model_path, strerror(errno));
	if (sb.st_size == 0)
		die(1, "model \"%s\": file is empty", model_path);
	map = mmap(NULL, (size_t) sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	if (map == MAP_FAILED)
		die(1, "cannot map model \"%s\": %s", model_path, strerror(errno));
	close(fd);
	if (mms_gguf_parse(map, (size_t) sb.st_size, &g, &err) != MMS_OK ||
		mms_t5_validate(&g, NULL, &err) != MMS_OK ||
		mms_tok_load_gguf(&g, &tok, &err) != MMS_OK)
		die(1, "model \"%s\": %s", model_path, err.msg);

	if (want_tok)
	{
		for (int i = 0; i < n_inputs; i++)
		{
			int32_t    *ids;
			size_t		n;

			if (input_ids)
				die(2, "--tokenize takes INPUT text, not --input-ids");
			if (mms_tok_encode(tok, argv[optind + i], strlen(argv[optind + i]), 1, &ids, &n, &err) != MMS_OK)
				die(1, "%s", err.msg);
			print_ids(ids, n);
			free(ids);
		}
		mms_tok_free(tok);
		mms_gguf_free(&g);
		return 0;
	}

	if (mms_t5_load(&g, &model, &err) != MMS_OK)
		die(1, "model \"%s\": %s", model_path, err.msg);
	if (want_info)
	{
		print_info(model, (size_t) sb.st_size);
		return 0;
	}
	mms_blas_set_threads(threads > 0 ? threads : (int) sysconf(_SC_NPROCESSORS_ONLN));
	work = mms_t5_work_create();
	if (latency_runs > 0)
		return run_latency(model, tok, argv[optind], &gopt, latency_runs);
	reqs = calloc((size_t) n_inputs, sizeof(*reqs));
	if (work == NULL || reqs == NULL)
		die(1, "out of memory");
	for (int i = 0; i < n_inputs; i++)
	{
		int32_t    *ids;
		size_t		n;
		int32_t		n32;
		MmsStatus	st;

		if (input_ids)
		{
			ids = parse_ids(input_ids, &n32);
			n = (size_t) n32;
		}
		else if (mms_tok_encode(tok, argv[optind + i], strlen(argv[optind + i]), 1, &ids, &n, &err) != MMS_OK)
			die(1, "%s", err.msg);
		if (score_target)
		{
			int32_t    *tids;
			size_t		tn;

			if (mms_tok_encode(tok, score_target, strlen(score_target), 1, &tids, &tn, &err) != MMS_OK)
				die(1, "%s", err.msg);
			st = mms_gen_score_request_create(model, ids, (int32_t) n, tids, (int32_t) tn, &reqs[i], &err);
			free(tids);
		}
		else
			st = mms_gen_request_create(model, ids, (int32_t) n, &gopt, &reqs[i], &err);
		free(ids);
		if (st != MMS_OK)
			die(1, "input %d: %s", i + 1, err.msg);
	}
	if (mms_gen_run(model, work, n_inputs, reqs, &err) != MMS_OK)
		die(1, "%s", err.msg);
	for (int i = 0; i < n_inputs; i++)
	{
		const MmsGenResult *res = mms_gen_request_result(reqs[i]);

		if (res == NULL)
		{
			mms_gen_request_error(reqs[i], &err);
			fprintf(stderr, "mms-run: error: input %d: %s\n", i + 1, err.msg);
			exit_code = 1;
			putchar('\n');
		}
		else if (score_target)
			printf("%.6f\n", res->logprob);
		else if (want_ids)
			print_ids(res->ids, (size_t) res->n_ids);
		else
		{
			char	   *text;
			size_t		len;

			if (mms_tok_decode(tok, res->ids, (size_t) res->n_ids, &text, &len, &err) != MMS_OK)
				die(1, "%s", err.msg);
			fwrite(text, 1, len, stdout);
			putchar('\n');
			free(text);
		}
		mms_gen_request_free(reqs[i]);
	}
	free(reqs);
	mms_t5_work_free(work);
	mms_t5_free(model);
	mms_tok_free(tok);
	mms_gguf_free(&g);
	munmap(map, (size_t) sb.st_size);
	return exit_code;
}
