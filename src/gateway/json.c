/*
 * json.c — finds a member of a top-level JSON object without building a tree:
 * the gateway reads "model" and "stream" of a request body and
 * usage.total_tokens of a response, nothing else. Validation is the SQL
 * layer's (the body reaches it as a jsonb parameter): on text that is not
 * JSON these functions simply find nothing. Every step checks the end of the
 * input and nothing recurses, so any input is safe.
 */
#include <stdlib.h>
#include <string.h>

#include "gateway.h"

static const char *
skip_ws(const char *p, const char *end)
{
	while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
		p++;
	return p;
}

/* p at the opening quote; returns just past the closing one, or NULL */
static const char *
skip_string(const char *p, const char *end)
{
	for (p++; p < end; p++)
	{
		if (*p == '\\')
		{
			p++;
			continue;
		}
		if (*p == '"')
			return p + 1;
	}
	return NULL;
}

/* Past one value; containers are skipped by counting brackets (not checked). */
static const char *
skip_value(const char *p, const char *end)
{
	int			depth = 0;

	if (p >= end)
		return NULL;
	if (*p == '"')
		return skip_string(p, end);
	if (*p != '{' && *p != '[')
	{
		const char *start = p;

		while (p < end && !strchr(",}] \t\r\n", *p) && *p != '\0')
			p++;
		return p > start ? p : NULL;
	}
	while (p < end)
	{
		switch (*p)
		{
			case '"':
				p = skip_string(p, end);
				if (p == NULL)
					return NULL;
				continue;
			case '{':
			case '[':
				depth++;
				break;
			case '}':
			case ']':
				if (--depth == 0)
					return p + 1;
				break;
		}
		p++;
	}
	return NULL;
}

static int
hex4(const char *p, const char *end)
{
	int			v = 0;

	if (end - p < 4)
		return -1;
	for (int i = 0; i < 4; i++)
	{
		char		c = p[i];

		v <<= 4;
		if (c >= '0' && c <= '9')
			v |= c - '0';
		else if (c >= 'a' && c <= 'f')
			v |= c - 'a' + 10;
		else if (c >= 'A' && c <= 'F')
			v |= c - 'A' + 10;
		else
			return -1;
	}
	return v;
}

static bool
put_byte(char *out, size_t out_size, size_t *n, unsigned char c)
{
	if (*n + 1 >= out_size)
		return false;
	out[(*n)++] = (char) c;
	return true;
}

static bool
put_utf8(char *out, size_t out_size, size_t *n, unsigned cp)
{
	if (cp < 0x80)
		return put_byte(out, out_size, n, cp);
	if (cp < 0x800)
		return put_byte(out, out_size, n, 0xC0 | (cp >> 6)) &&
			put_byte(out, out_size, n, 0x80 | (cp & 0x3F));
	if (cp < 0x10000)
		return put_byte(out, out_size, n, 0xE0 | (cp >> 12)) &&
			put_byte(out, out_size, n, 0x80 | ((cp >> 6) & 0x3F)) &&
			put_byte(out, out_size, n, 0x80 | (cp & 0x3F));
	return put_byte(out, out_size, n, 0xF0 | (cp >> 18)) &&
		put_byte(out, out_size, n, 0x80 | ((cp >> 12) & 0x3F)) &&
		put_byte(out, out_size, n, 0x80 | ((cp >> 6) & 0x3F)) &&
		put_byte(out, out_size, n, 0x80 | (cp & 0x3F));
}

bool
gw_json_string(const char *val, size_t len, char *out, size_t out_size)
{
	const char *p = val;
	const char *end = val + len;
	size_t		n = 0;

	if (out_size == 0 || len < 2 || *p != '"')
		return false;
	for (p++; p < end; p++)
	{
		unsigned char c = (unsigned char) *p;

		if (c == '"')
		{
			out[n] = '\0';
			return true;
		}
		if (c < 0x20)
			return false;
		if (c != '\\')
		{
			if (!put_byte(out, out_size, &n, c))
				return false;
			continue;
		}
		if (++p >= end)
			return false;
		switch (*p)
		{
			case '"':
			case '\\':
			case '/':
				c = (unsigned char) *p;
				break;
			case 'b':
				c = '\b';
				break;
			case 'f':
				c = '\f';
				break;
			case 'n':
				c = '\n';
				break;
			case 'r':
				c = '\r';
				break;
			case 't':
				c = '\t';
				break;
			case 'u':
				{
					int			cp = hex4(p + 1, end);

					if (cp < 0)
						return false;
					p += 4;
					if (cp >= 0xD800 && cp <= 0xDBFF)
					{
						int			lo = (end - p > 2 && p[1] == '\\' && p[2] == 'u') ? hex4(p + 3, end) : -1;

						if (lo < 0xDC00 || lo > 0xDFFF)
							return false;
						cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
						p += 6;
					}
					else if (cp >= 0xDC00 && cp <= 0xDFFF)
						return false;
					/* a NUL cannot be passed on as text */
					if (cp == 0 || !put_utf8(out, out_size, &n, (unsigned) cp))
						return false;
					continue;
				}
			default:
				return false;
		}
		if (!put_byte(out, out_size, &n, c))
			return false;
	}
	return false;
}

bool
gw_json_member(const char *json, size_t len, const char *key,
			   const char **val, size_t *val_len)
{
	const char *end = json + len;
	const char *p = skip_ws(json, end);
	bool		found = false;
	size_t		key_len = strlen(key);

	if (p >= end || *p != '{')
		return false;
	p = skip_ws(p + 1, end);
	if (p < end && *p == '}')
		return false;
	while (p < end)
	{
		const char *k = p;
		const char *k_end;
		const char *v;
		bool		match;

		if (*p != '"' || (k_end = skip_string(p, end)) == NULL)
			return false;
		/* a key spelled with escapes means the same as its decoded text */
		if (memchr(k, '\\', (size_t) (k_end - k)) != NULL)
		{
			char		decoded[64];

			match = gw_json_string(k, (size_t) (k_end - k), decoded, sizeof(decoded)) &&
				strcmp(decoded, key) == 0;
		}
		else
			match = (size_t) (k_end - k) == key_len + 2 && memcmp(k + 1, key, key_len) == 0;
		p = skip_ws(k_end, end);
		if (p >= end || *p != ':')
			return false;
		v = skip_ws(p + 1, end);
		p = skip_value(v, end);
		if (p == NULL)
			return false;
		if (match)
		{
			/* duplicate keys: jsonb keeps the last, and so do we */
			*val = v;
			*val_len = (size_t) (p - v);
			found = true;
		}
		p = skip_ws(p, end);
		if (p < end && *p == ',')
		{
			p = skip_ws(p + 1, end);
			continue;
		}
		if (p < end && *p == '}')
			return found;
		return false;
	}
	return false;
}

bool
gw_json_is_true(const char *val, size_t len)
{
	return len == 4 && memcmp(val, "true", 4) == 0;
}

bool
gw_json_int64(const char *val, size_t len, long long *out)
{
	char		digits[24];
	char	   *end;

	if (len == 0 || len >= sizeof(digits))
		return false;
	memcpy(digits, val, len);
	digits[len] = '\0';
	if (strspn(digits + (digits[0] == '-'), "0123456789") != len - (digits[0] == '-'))
		return false;
	*out = strtoll(digits, &end, 10);
	return *end == '\0';
}

long long
gw_json_total_tokens(const char *json, size_t len)
{
	const char *usage;
	const char *total;
	size_t		usage_len;
	size_t		total_len;
	long long	n;

	if (!gw_json_member(json, len, "usage", &usage, &usage_len) ||
		!gw_json_member(usage, usage_len, "total_tokens", &total, &total_len) ||
		!gw_json_int64(total, total_len, &n))
		return -1;
	return n;
}
