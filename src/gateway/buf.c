/*
 * buf.c — bounded growable buffers, clocks and the daemon's own log lines
 * (stderr). Every allocation the gateway makes for request data goes through
 * a GwBuf with a limit, so no input can make it grow without bound.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "gateway.h"

static bool
buf_reserve(GwBuf *b, size_t extra)
{
	size_t		limit = b->limit ? b->limit : GW_BUF_DEFAULT_LIMIT;
	size_t		need;
	size_t		cap;
	char	   *p;

	if (b->failed)
		return false;
	if (extra >= limit || b->len >= limit - extra)
	{
		b->failed = true;
		return false;
	}
	need = b->len + extra + 1;
	if (need <= b->cap)
		return true;
	cap = b->cap ? b->cap : 256;
	while (cap < need)
		cap = cap > limit / 2 ? limit + 1 : cap * 2;
	p = realloc(b->data, cap);
	if (p == NULL)
	{
		b->failed = true;
		return false;
	}
	b->data = p;
	b->cap = cap;
	return true;
}

bool
gw_buf_append(GwBuf *b, const void *p, size_t n)
{
	if (!buf_reserve(b, n))
		return false;
	if (n > 0)
		memcpy(b->data + b->len, p, n);
	b->len += n;
	b->data[b->len] = '\0';
	return true;
}

bool
gw_buf_puts(GwBuf *b, const char *s)
{
	return gw_buf_append(b, s, strlen(s));
}

bool
gw_buf_printf(GwBuf *b, const char *fmt,...)
{
	va_list		ap;
	char		small[256];
	int			n;

	va_start(ap, fmt);
	n = vsnprintf(small, sizeof(small), fmt, ap);
	va_end(ap);
	if (n < 0)
	{
		b->failed = true;
		return false;
	}
	if ((size_t) n < sizeof(small))
		return gw_buf_append(b, small, (size_t) n);
	if (!buf_reserve(b, (size_t) n))
		return false;
	va_start(ap, fmt);
	vsnprintf(b->data + b->len, (size_t) n + 1, fmt, ap);
	va_end(ap);
	b->len += (size_t) n;
	return true;
}

/* s as a JSON string literal; invalid UTF-8 passes through (PostgreSQL sends valid text) */
bool
gw_buf_json_string(GwBuf *b, const char *s, size_t n)
{
	static const char hex[] = "0123456789abcdef";

	if (!gw_buf_append(b, "\"", 1))
		return false;
	for (size_t i = 0; i < n; i++)
	{
		unsigned char c = (unsigned char) s[i];
		size_t		run = i;

		/* copy runs of plain bytes at once */
		while (run < n && (unsigned char) s[run] >= 0x20 && s[run] != '"' && s[run] != '\\')
			run++;
		if (run > i)
		{
			if (!gw_buf_append(b, s + i, run - i))
				return false;
			i = run - 1;
			continue;
		}
		switch (c)
		{
			case '"':
				gw_buf_append(b, "\\\"", 2);
				break;
			case '\\':
				gw_buf_append(b, "\\\\", 2);
				break;
			case '\n':
				gw_buf_append(b, "\\n", 2);
				break;
			case '\r':
				gw_buf_append(b, "\\r", 2);
				break;
			case '\t':
				gw_buf_append(b, "\\t", 2);
				break;
			default:
				{
					char		esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};

					gw_buf_append(b, esc, 6);
				}
		}
	}
	return gw_buf_append(b, "\"", 1);
}

void
gw_buf_reset(GwBuf *b)
{
	b->len = 0;
	b->failed = false;
	if (b->data)
		b->data[0] = '\0';
}

void
gw_buf_free(GwBuf *b)
{
	free(b->data);
	b->data = NULL;
	b->len = b->cap = 0;
	b->failed = false;
}

/* The contents, now the caller's to free; the buffer is left empty. */
char *
gw_buf_steal(GwBuf *b, size_t *len)
{
	char	   *p = b->data;

	*len = b->len;
	b->data = NULL;
	b->len = b->cap = 0;
	return p;
}

int64_t
gw_now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t
gw_now_ms(void)
{
	return gw_now_us() / 1000;
}

/* A timestamped line on stderr, written at once (threads do not interleave). */
void
gw_log(const char *fmt,...)
{
	char		line[1024];
	struct timespec ts;
	struct tm	tm;
	size_t		n;
	va_list		ap;
	int			m;

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	n = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%SZ mms-gateway: ", &tm);
	va_start(ap, fmt);
	m = vsnprintf(line + n, sizeof(line) - n - 1, fmt, ap);
	va_end(ap);
	if (m < 0)
		return;
	n += (size_t) m < sizeof(line) - n - 1 ? (size_t) m : sizeof(line) - n - 2;
	line[n++] = '\n';
	if (write(STDERR_FILENO, line, n) < 0)
		return;
}
