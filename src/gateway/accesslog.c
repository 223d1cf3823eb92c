/*
 * accesslog.c — one logfmt line per request (time, request id, role, method,
 * path, model, status, ms, tokens), written with a single write() so lines of
 * concurrent requests never interleave. SIGHUP reopens the file (rotation).
 */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "gateway.h"

static atomic_int log_fd = -1;
static char *log_path;

bool
gw_access_log_open(const char *target)
{
	int			fd;
	int			old;

	if (target == NULL || target[0] == '\0')
		return true;
	if (strcmp(target, "-") == 0)
		fd = dup(STDOUT_FILENO);
	else
		fd = open(target, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
	if (fd < 0)
		return false;
	if (log_path == NULL)
		log_path = strdup(target);
	old = atomic_exchange(&log_fd, fd);
	if (old >= 0)
		close(old);
	return true;
}

void
gw_access_log_reopen(void)
{
	if (log_path && strcmp(log_path, "-") != 0 && !gw_access_log_open(log_path))
		gw_log("could not reopen the access log %s", log_path);
}

/* Bytes of the valid UTF-8 sequence at p (1 to 4), or 0 if none starts there. */
static int
utf8_length(const unsigned char *p)
{
	int			n;
	unsigned	cp;

	if (p[0] < 0x80)
		return 1;
	if (p[0] >= 0xc2 && p[0] <= 0xdf)
		n = 2, cp = p[0] & 0x1f;
	else if (p[0] >= 0xe0 && p[0] <= 0xef)
		n = 3, cp = p[0] & 0x0f;
	else if (p[0] >= 0xf0 && p[0] <= 0xf4)
		n = 4, cp = p[0] & 0x07;
	else
		return 0;
	for (int i = 1; i < n; i++)
	{
		if ((p[i] & 0xc0) != 0x80)	/* the NUL terminator stops here too */
			return 0;
		cp = cp << 6 | (p[i] & 0x3f);
	}
	/* overlong forms, UTF-16 surrogates, beyond U+10FFFF */
	if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
		(cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return n;
}

/*
 * A value safe for logfmt: quoted when it holds spaces, control bytes and
 * bytes that are not UTF-8 escaped (the path and model come from clients: a
 * line must stay one valid UTF-8 line whatever they send).
 */
static void
put_value(GwBuf *b, const char *v)
{
	bool		quote;

	if (v == NULL || v[0] == '\0')
	{
		gw_buf_puts(b, "-");
		return;
	}
	quote = strpbrk(v, " \"=") != NULL;
	if (quote)
		gw_buf_puts(b, "\"");
	for (const unsigned char *p = (const unsigned char *) v; *p;)
	{
		int			n = utf8_length(p);

		if (n == 0 || *p < 0x20 || *p == 0x7f)
		{
			gw_buf_printf(b, "\\x%02x", *p);
			n = 1;
		}
		else if (*p == '"' || *p == '\\')
			gw_buf_printf(b, "\\%c", *p);
		else
			gw_buf_append(b, p, (size_t) n);
		p += n;
	}
	if (quote)
		gw_buf_puts(b, "\"");
}

void
gw_access_log(const GwLogLine *l)
{
	int			fd = atomic_load(&log_fd);
	char		stamp[40];
	struct timespec ts;
	struct tm	tm;
	GwBuf		b = {.limit = 4096};

	if (fd < 0)
		return;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
	gw_buf_printf(&b, "time=%s.%03ldZ request_id=", stamp, ts.tv_nsec / 1000000);
	put_value(&b, l->request_id);
	gw_buf_puts(&b, " role=");
	put_value(&b, l->role);
	gw_buf_puts(&b, " method=");
	put_value(&b, l->method);
	gw_buf_puts(&b, " path=");
	put_value(&b, l->path);
	gw_buf_puts(&b, " model=");
	put_value(&b, l->model);
	gw_buf_printf(&b, " status=%d ms=%.3f tokens=", l->status, l->ms);
	if (l->tokens >= 0)
		gw_buf_printf(&b, "%lld\n", l->tokens);
	else
		gw_buf_puts(&b, "-\n");
	if (!b.failed && write(fd, b.data, b.len) < 0)
	{
		/* a full disk must not stop the service */
	}
	gw_buf_free(&b);
}
