/*
 * routes.c — the endpoint table: which method and path run which SQL call,
 * with what key and on which node. Path matching only; the handlers are in
 * api.c, stream.c and upload.c. Keep openapi.json in step with this table.
 */
#include <string.h>

#include "gateway.h"

/*  endpoint             method    pattern                          label                                stmt                 auth   admin  write  json   stream */
static const GwRoute routes[] = {
	{GW_EP_COMPLETIONS, "POST", "/v1/completions", "/v1/completions", GW_STMT_COMPLETIONS, true, false, false, true, true},
	{GW_EP_CHAT, "POST", "/v1/chat/completions", "/v1/chat/completions", GW_STMT_CHAT, true, false, false, true, true},
	{GW_EP_MODELS, "GET", "/v1/models", "/v1/models", GW_STMT_MODELS, true, false, false, false, false},
	{GW_EP_UPLOAD, "POST", "/v1/models", "/v1/models", GW_STMT_REGISTER, true, true, true, false, false},
	{GW_EP_MODEL, "GET", "/v1/models/{}", "/v1/models/{ref}", GW_STMT_MODEL, true, false, false, false, false},
	{GW_EP_DELETE_MODEL, "DELETE", "/v1/models/{}", "/v1/models/{ref}", GW_STMT_UNREGISTER, true, true, true, false, false},
	{GW_EP_GENERATE, "POST", "/v1/models/{}/generate", "/v1/models/{ref}/generate", GW_STMT_GENERATE, true, false, false, true, false},
	{GW_EP_SCORE, "POST", "/v1/models/{}/score", "/v1/models/{ref}/score", GW_STMT_SCORE, true, false, false, true, false},
	{GW_EP_TOKENIZE, "POST", "/v1/models/{}/tokenize", "/v1/models/{ref}/tokenize", GW_STMT_TOKENIZE, true, false, false, true, false},
	{GW_EP_SET_ALIAS, "PUT", "/v1/models/{}/aliases/{}", "/v1/models/{name}/aliases/{alias}", GW_STMT_SET_ALIAS, true, true, true, true, false},
	{GW_EP_DROP_ALIAS, "DELETE", "/v1/models/{}/aliases/{}", "/v1/models/{name}/aliases/{alias}", GW_STMT_DROP_ALIAS, true, true, true, false, false},
	{GW_EP_NODES, "GET", "/v1/nodes", "/v1/nodes", -1, true, true, false, false, false},
	{GW_EP_HEALTHZ, "GET", "/healthz", "/healthz", -1, false, false, false, false, false},
	{GW_EP_READYZ, "GET", "/readyz", "/readyz", -1, false, false, false, false, false},
	{GW_EP_METRICS, "GET", "/metrics", "/metrics", -1, false, false, false, false, false},
	{GW_EP_OPENAPI, "GET", "/openapi.json", "/openapi.json", -1, false, false, false, false, false},
};

#define N_ROUTES (sizeof(routes) / sizeof(routes[0]))

/*
 * Does url match pattern? Each "{}" takes one non-empty segment, copied into
 * the next of params (at most GW_PATH_PARAM_BYTES - 1 bytes: longer never
 * matches, no model reference is that long).
 */
static bool
path_matches(const char *pattern, const char *url, char *params[2])
{
	const char *p = pattern;
	const char *u = url;
	int			n_param = 0;

	while (*p)
	{
		if (p[0] == '{' && p[1] == '}')
		{
			size_t		n = strcspn(u, "/");

			if (n == 0 || n >= GW_PATH_PARAM_BYTES || n_param >= 2)
				return false;
			if (params[n_param])
			{
				memcpy(params[n_param], u, n);
				params[n_param][n] = '\0';
			}
			n_param++;
			u += n;
			p += 2;
			continue;
		}
		if (*p != *u)
			return false;
		p++;
		u++;
	}
	return *u == '\0';
}

const GwRoute *
gw_route_match(const char *method, const char *url, char *p1, char *p2,
			   char *allow, size_t allow_size, int *status)
{
	char	   *params[2] = {p1, p2};
	size_t		allow_len = 0;

	allow[0] = '\0';
	for (size_t i = 0; i < N_ROUTES; i++)
	{
		char	   *none[2] = {NULL, NULL};

		if (!path_matches(routes[i].pattern, url, none))
			continue;
		/* HEAD is GET without the body (libmicrohttpd leaves it out): load balancers' checks */
		if (strcmp(routes[i].method, method) == 0 ||
			(strcmp(method, "HEAD") == 0 && strcmp(routes[i].method, "GET") == 0))
		{
			path_matches(routes[i].pattern, url, params);
			return &routes[i];
		}
		/* the path exists with another method: 405 lists them */
		if (allow_len + strlen(routes[i].method) + 3 < allow_size)
		{
			if (allow_len > 0)
			{
				memcpy(allow + allow_len, ", ", 2);
				allow_len += 2;
			}
			strcpy(allow + allow_len, routes[i].method);
			allow_len += strlen(routes[i].method);
		}
	}
	*status = allow_len > 0 ? 405 : 404;
	return NULL;
}

const char *
gw_endpoint_label(int endpoint)
{
	for (size_t i = 0; i < N_ROUTES; i++)
		if ((int) routes[i].endpoint == endpoint)
			return routes[i].label;
	return "other";
}

const char *
gw_endpoint_method(int endpoint)
{
	for (size_t i = 0; i < N_ROUTES; i++)
		if ((int) routes[i].endpoint == endpoint)
			return routes[i].method;
	return "other";
}
