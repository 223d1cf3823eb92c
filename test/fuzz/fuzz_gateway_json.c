/*
 * fuzz_gateway_json.c — libFuzzer target for the gateway's JSON member lookup
 * (src/gateway/json.c): it reads request bodies from any client, so any input
 * must be safe. Built by `make fuzz` (build-fuzz/fuzz_gateway_json).
 */
#include <stdlib.h>
#include <string.h>

#include "gateway.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *json = (const char *) data;
	const char *v;
	size_t		n;
	char		out[64];
	long long	x;
	static const char *const keys[] = {"model", "stream", "usage", "\xc3\xa9", ""};

	for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++)
		if (gw_json_member(json, size, keys[k], &v, &n))
		{
			if (v < json || v + n > json + size)
				abort();
			(void) gw_json_string(v, n, out, sizeof(out));
			(void) gw_json_is_true(v, n);
			(void) gw_json_int64(v, n, &x);
		}
	(void) gw_json_total_tokens(json, size);
	(void) gw_json_string(json, size, out, sizeof(out));
	return 0;
}
