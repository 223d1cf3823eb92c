/*
 * options.c — the command line and the config file (--config FILE: `name =
 * value` lines with the long options' names, # comments). The file is read
 * first, the command line overrides it; --db on the command line replaces the
 * file's list of nodes.
 */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "gateway.h"

GwConfig	gw_config = {
	.listen = "127.0.0.1:8080",
	.pool_size = 16,
	.max_body_bytes = 1 << 20,
	.max_upload_bytes = (uint64_t) 8 << 30,
	.request_timeout_s = 60,
	.key_ttl_s = 10,
	.max_inflight = 256,
	.max_connections = 1024,
	.pool_timeout_s = 5,
	.client_timeout_s = 30,
	.shutdown_timeout_s = 5,
	.upload_timeout_s = 3600,
	.access_log = "-",
};

enum
{
	OPT_LISTEN = 1000, OPT_DB, OPT_POOL, OPT_TLS_CERT, OPT_TLS_KEY, OPT_MAX_BODY,
	OPT_MAX_UPLOAD, OPT_REQUEST_TIMEOUT, OPT_KEY_TTL, OPT_MAX_INFLIGHT,
	OPT_MAX_CONNECTIONS, OPT_POOL_TIMEOUT, OPT_CLIENT_TIMEOUT, OPT_SHUTDOWN_TIMEOUT,
	OPT_UPLOAD_TIMEOUT, OPT_ACCESS_LOG, OPT_CONFIG, OPT_HELP, OPT_VERSION
};

static const struct option long_options[] = {
	{"listen", required_argument, NULL, OPT_LISTEN},
	{"db", required_argument, NULL, OPT_DB},
	{"pool", required_argument, NULL, OPT_POOL},
	{"tls-cert", required_argument, NULL, OPT_TLS_CERT},
	{"tls-key", required_argument, NULL, OPT_TLS_KEY},
	{"max-body", required_argument, NULL, OPT_MAX_BODY},
	{"max-upload", required_argument, NULL, OPT_MAX_UPLOAD},
	{"request-timeout", required_argument, NULL, OPT_REQUEST_TIMEOUT},
	{"key-ttl", required_argument, NULL, OPT_KEY_TTL},
	{"max-inflight", required_argument, NULL, OPT_MAX_INFLIGHT},
	{"max-connections", required_argument, NULL, OPT_MAX_CONNECTIONS},
	{"pool-timeout", required_argument, NULL, OPT_POOL_TIMEOUT},
	{"client-timeout", required_argument, NULL, OPT_CLIENT_TIMEOUT},
	{"shutdown-timeout", required_argument, NULL, OPT_SHUTDOWN_TIMEOUT},
	{"upload-timeout", required_argument, NULL, OPT_UPLOAD_TIMEOUT},
	{"access-log", required_argument, NULL, OPT_ACCESS_LOG},
	{"config", required_argument, NULL, OPT_CONFIG},
	{"help", no_argument, NULL, OPT_HELP},
	{"version", no_argument, NULL, OPT_VERSION},
	{NULL, 0, NULL, 0}
};

static void
usage(FILE *out)
{
	fprintf(out,
			"mms-gateway — HTTP API (OpenAI-compatible and REST) in front of PostgreSQL servers running mms\n"
			"\n"
			"Usage: mms-gateway --db CONNINFO [--db CONNINFO ...] [options]\n"
			"\n"
			"  --listen HOST:PORT       address to listen on (default 127.0.0.1:8080; [::1]:8080 for IPv6,\n"
			"                           port 0 picks a free port, printed at startup)\n"
			"  --db CONNINFO            a node: libpq connection string or URI, logging in as the gateway's\n"
			"                           role (member of mms_gateway); repeat for a primary and its standbys\n"
			"  --pool N                 database connections per node (default 16)\n"
			"  --tls-cert FILE          serve HTTPS with this PEM certificate (chain)\n"
			"  --tls-key FILE           and this PEM private key\n"
			"  --max-body BYTES         largest JSON request body (default 1M; suffixes k, M, G)\n"
			"  --max-upload BYTES       largest model upload (default 8G)\n"
			"  --request-timeout S      limit of one request, also its statement_timeout (default 60)\n"
			"  --key-ttl S              how long a key's check is cached: a revoked key stops working\n"
			"                           within S seconds (default 10; 0 checks every request)\n"
			"  --max-inflight N         requests served at once; beyond, 503 with Retry-After (default 256)\n"
			"  --max-connections N      client connections at once (default 1024)\n"
			"  --pool-timeout S         wait for a free database connection, then 503 (default 5)\n"
			"  --client-timeout S       close client connections idle this long (default 30)\n"
			"  --shutdown-timeout S     on SIGTERM/SIGINT, time given to requests in flight (default 5)\n"
			"  --upload-timeout S       limit of a model upload's registration, its statement_timeout\n"
			"                           (default 3600; the body's transfer is bounded by --client-timeout)\n"
			"  --access-log FILE|-      one line per request to FILE, or - for stdout (default -; \"\" for none);\n"
			"                           SIGHUP reopens FILE\n"
			"  --config FILE            read options from FILE: `name = value` lines (names as above,\n"
			"                           without --; # starts a comment); the command line wins\n"
			"  --help, --version\n");
}

static bool
parse_long(const char *name, const char *s, long long lo, long long hi, long long *out)
{
	char	   *end;
	long long	v;

	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno || end == s || *end != '\0' || v < lo || v > hi)
	{
		fprintf(stderr, "mms-gateway: --%s must be an integer between %lld and %lld, not \"%s\"\n", name, lo, hi, s);
		return false;
	}
	*out = v;
	return true;
}

/* BYTES with an optional k, M or G (powers of 1024) */
static bool
parse_bytes(const char *name, const char *s, unsigned long long hi, unsigned long long *out)
{
	char	   *end;
	unsigned long long v;
	unsigned long long mult = 1;

	errno = 0;
	if (!isdigit((unsigned char) s[0]))
		goto bad;
	v = strtoull(s, &end, 10);
	if (errno)
		goto bad;
	if (*end == 'k' || *end == 'K')
		mult = 1ULL << 10;
	else if (*end == 'M')
		mult = 1ULL << 20;
	else if (*end == 'G')
		mult = 1ULL << 30;
	if (mult > 1)
		end++;
	if (*end == 'B')
		end++;
	if (*end != '\0' || v == 0 || v > hi / mult)
		goto bad;
	*out = v * mult;
	return true;
bad:
	fprintf(stderr, "mms-gateway: --%s must be a size in bytes (suffix k, M or G allowed) between 1 and %llu, not \"%s\"\n",
			name, hi, s);
	return false;
}

static bool
set_option(GwConfig *cfg, int opt, const char *name, const char *val, bool from_file, bool *cli_db)
{
	long long	n;
	unsigned long long b;

	switch (opt)
	{
		case OPT_LISTEN:
			cfg->listen = strdup(val);
			return true;
		case OPT_DB:
			if (!from_file && !*cli_db)
			{
				cfg->n_db = 0;	/* the command line's nodes replace the file's */
				*cli_db = true;
			}
			if (cfg->n_db >= GW_MAX_NODES)
			{
				fprintf(stderr, "mms-gateway: at most %d --db\n", GW_MAX_NODES);
				return false;
			}
			cfg->db[cfg->n_db++] = strdup(val);
			return true;
		case OPT_POOL:
			if (!parse_long(name, val, 1, 1000, &n))
				return false;
			cfg->pool_size = (int) n;
			return true;
		case OPT_TLS_CERT:
			cfg->tls_cert = strdup(val);
			return true;
		case OPT_TLS_KEY:
			cfg->tls_key = strdup(val);
			return true;
		case OPT_MAX_BODY:
			if (!parse_bytes(name, val, 1ULL << 30, &b))
				return false;
			cfg->max_body_bytes = (size_t) b;
			return true;
		case OPT_MAX_UPLOAD:
			if (!parse_bytes(name, val, 1ULL << 42, &b))
				return false;
			cfg->max_upload_bytes = b;
			return true;
		case OPT_REQUEST_TIMEOUT:
			if (!parse_long(name, val, 1, 86400, &n))
				return false;
			cfg->request_timeout_s = (int) n;
			return true;
		case OPT_KEY_TTL:
			if (!parse_long(name, val, 0, 86400, &n))
				return false;
			cfg->key_ttl_s = (int) n;
			return true;
		case OPT_MAX_INFLIGHT:
			if (!parse_long(name, val, 1, 100000, &n))
				return false;
			cfg->max_inflight = (int) n;
			return true;
		case OPT_MAX_CONNECTIONS:
			if (!parse_long(name, val, 1, 100000, &n))
				return false;
			cfg->max_connections = (int) n;
			return true;
		case OPT_POOL_TIMEOUT:
			if (!parse_long(name, val, 1, 3600, &n))
				return false;
			cfg->pool_timeout_s = (int) n;
			return true;
		case OPT_CLIENT_TIMEOUT:
			if (!parse_long(name, val, 1, 86400, &n))
				return false;
			cfg->client_timeout_s = (int) n;
			return true;
		case OPT_SHUTDOWN_TIMEOUT:
			if (!parse_long(name, val, 0, 3600, &n))
				return false;
			cfg->shutdown_timeout_s = (int) n;
			return true;
		case OPT_UPLOAD_TIMEOUT:
			if (!parse_long(name, val, 1, 86400, &n))
				return false;
			cfg->upload_timeout_s = (int) n;
			return true;
		case OPT_ACCESS_LOG:
			cfg->access_log = val[0] ? strdup(val) : NULL;
			return true;
	}
	return false;
}

static char *
trim(char *s)
{
	char	   *end;

	while (isspace((unsigned char) *s))
		s++;
	end = s + strlen(s);
	while (end > s && isspace((unsigned char) end[-1]))
		*--end = '\0';
	return s;
}

static bool
read_config(GwConfig *cfg, const char *path)
{
	FILE	   *f = fopen(path, "r");
	char		line[4096];
	int			lineno = 0;
	bool		ok = true;
	bool		cli_db = false;

	if (f == NULL)
	{
		fprintf(stderr, "mms-gateway: cannot read config file %s: %s\n", path, strerror(errno));
		return false;
	}
	while (ok && fgets(line, sizeof(line), f))
	{
		char	   *s;
		char	   *eq;
		char	   *name;
		char	   *val;
		const struct option *o;
		size_t		n;

		lineno++;
		s = trim(line);
		if (*s == '\0' || *s == '#')
			continue;
		eq = strchr(s, '=');
		if (eq == NULL)
		{
			fprintf(stderr, "mms-gateway: %s:%d: expected name = value\n", path, lineno);
			ok = false;
			break;
		}
		*eq = '\0';
		name = trim(s);
		val = trim(eq + 1);
		n = strlen(val);
		if (n >= 2 && (val[0] == '"' || val[0] == '\'') && val[n - 1] == val[0])
		{
			val[n - 1] = '\0';
			val++;
		}
		for (o = long_options; o->name; o++)
			if (strcmp(o->name, name) == 0 && o->has_arg == required_argument && o->val != OPT_CONFIG)
				break;
		if (o->name == NULL)
		{
			fprintf(stderr, "mms-gateway: %s:%d: unknown option \"%s\"\n", path, lineno, name);
			ok = false;
			break;
		}
		ok = set_option(cfg, o->val, name, val, true, &cli_db);
		if (!ok)
			fprintf(stderr, "mms-gateway: (in %s line %d)\n", path, lineno);
	}
	fclose(f);
	return ok;
}

int
gw_options_parse(int argc, char **argv, GwConfig *cfg)
{
	bool		cli_db = false;
	int			opt;
	int			index;

	/* the config file first, wherever --config stands */
	for (int i = 1; i < argc; i++)
	{
		const char *path = NULL;

		if (strcmp(argv[i], "--config") == 0 && i + 1 < argc)
			path = argv[i + 1];
		else if (strncmp(argv[i], "--config=", 9) == 0)
			path = argv[i] + 9;
		if (path && !read_config(cfg, path))
			return -1;
	}
	opterr = 1;
	while ((opt = getopt_long(argc, argv, "", long_options, &index)) != -1)
	{
		if (opt == OPT_HELP)
		{
			usage(stdout);
			return 1;
		}
		if (opt == OPT_VERSION)
		{
			printf("mms-gateway %s\n", GW_VERSION);
			return 1;
		}
		if (opt == OPT_CONFIG)
			continue;
		if (opt == '?' || !set_option(cfg, opt, long_options[index].name, optarg, false, &cli_db))
		{
			fprintf(stderr, "Try \"mms-gateway --help\".\n");
			return -1;
		}
	}
	if (optind < argc)
	{
		fprintf(stderr, "mms-gateway: unexpected argument \"%s\"\nTry \"mms-gateway --help\".\n", argv[optind]);
		return -1;
	}
	if (cfg->n_db == 0)
	{
		fprintf(stderr, "mms-gateway: at least one --db CONNINFO is required\nTry \"mms-gateway --help\".\n");
		return -1;
	}
	if ((cfg->tls_cert == NULL) != (cfg->tls_key == NULL))
	{
		fprintf(stderr, "mms-gateway: --tls-cert and --tls-key go together\n");
		return -1;
	}
	return 0;
}
