/*
 * auth.c — API keys to roles. A key is checked by mms.api_authenticate (as
 * mms_gateway, on whichever node the request goes to) and the answer, valid or
 * not, is cached for --key-ttl seconds under the key's sha256: a revoked or
 * expired key stops working within that time (counted from when the
 * database was asked), and a flood of bad keys costs the databases one lookup
 * per well-formed key and TTL, malformed ones none. The cache is a fixed table
 * (no growth whatever the traffic); a full probe window evicts an expired
 * entry first, then the oldest "invalid", and a working key only for another.
 */
#include <stdlib.h>
#include <string.h>

#include "gateway.h"

#define CACHE_SLOTS 4096		/* a power of two */
#define CACHE_PROBE 8
#define KEY_TAG "mms-"
#define KEY_TAG_BYTES 4
#define KEY_HEX_DIGITS 64

typedef struct CacheEntry
{
	uint8_t		hash[32];
	bool		used;
	bool		valid;
	GwIdentity	id;
	int64_t		stored_ms;
} CacheEntry;

static CacheEntry cache[CACHE_SLOTS];
static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;

void
gw_auth_init(void)
{
	memset(cache, 0, sizeof(cache));
}

/*
 * Keys are what mms_create_api_key makes: "mms-" and 64 lower-case hex
 * digits, as mms.api_authenticate checks too. Anything else is refused here,
 * unasked and uncached: a flood of junk keys costs no database round trip, no
 * pool connection and no cache slot.
 */
static bool
key_plausible(const char *key)
{
	if (strncmp(key, KEY_TAG, KEY_TAG_BYTES) != 0)
		return false;
	for (int i = 0; i < KEY_HEX_DIGITS; i++)
	{
		char		c = key[KEY_TAG_BYTES + i];

		if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
			return false;
	}
	return key[KEY_TAG_BYTES + KEY_HEX_DIGITS] == '\0';
}

static size_t
slot_of(const uint8_t hash[32])
{
	return ((size_t) hash[0] | (size_t) hash[1] << 8 | (size_t) hash[2] << 16) & (CACHE_SLOTS - 1);
}

GwAuthResult
gw_auth_cached(const char *key, GwIdentity *id)
{
	uint8_t		hash[32];
	size_t		first;
	int64_t		now = gw_now_ms();
	GwAuthResult r = GW_AUTH_MISS;

	if (!key_plausible(key))
		return GW_AUTH_INVALID;
	if (gw_config.key_ttl_s <= 0)
		return GW_AUTH_MISS;
	gw_sha256(key, strlen(key), hash);
	first = slot_of(hash);
	pthread_mutex_lock(&cache_lock);
	for (int i = 0; i < CACHE_PROBE; i++)
	{
		CacheEntry *e = &cache[(first + (size_t) i) & (CACHE_SLOTS - 1)];

		if (!e->used || memcmp(e->hash, hash, 32) != 0)
			continue;
		if (now - e->stored_ms < (int64_t) gw_config.key_ttl_s * 1000)
		{
			r = e->valid ? GW_AUTH_OK : GW_AUTH_INVALID;
			if (e->valid)
				*id = e->id;
		}
		break;
	}
	pthread_mutex_unlock(&cache_lock);
	return r;
}

/*
 * The victim in a full probe window: an expired entry, else the oldest
 * answer "invalid", else the oldest. A flood of well-formed bad keys never
 * pushes out a key that works: with only those left, "invalid" is not kept.
 */
static int
victim_rank(const CacheEntry *e, int64_t now)
{
	if (!e->used)
		return 0;
	if (now - e->stored_ms >= (int64_t) gw_config.key_ttl_s * 1000)
		return 1;
	return e->valid ? 3 : 2;
}

/* asked_ms: when the database was asked; the answer is as old as that */
static void
cache_store(const char *key, bool valid, const GwIdentity *id, int64_t asked_ms)
{
	uint8_t		hash[32];
	size_t		first;
	CacheEntry *victim = NULL;
	int			best = 4;
	int64_t		now = gw_now_ms();

	if (gw_config.key_ttl_s <= 0)
		return;
	gw_sha256(key, strlen(key), hash);
	first = slot_of(hash);
	pthread_mutex_lock(&cache_lock);
	for (int i = 0; i < CACHE_PROBE; i++)
	{
		CacheEntry *e = &cache[(first + (size_t) i) & (CACHE_SLOTS - 1)];
		int			rank = victim_rank(e, now);

		if (e->used && memcmp(e->hash, hash, 32) == 0)
		{
			victim = e;
			break;
		}
		if (rank < best ||
			(rank == best && rank > 0 && e->stored_ms < victim->stored_ms))
		{
			victim = e;
			best = rank;
		}
	}
	/* an answer "invalid" never evicts a key that works */
	if (!valid && best == 3 && memcmp(victim->hash, hash, 32) != 0)
	{
		pthread_mutex_unlock(&cache_lock);
		return;
	}
	memcpy(victim->hash, hash, 32);
	victim->used = true;
	victim->valid = valid;
	if (valid)
		victim->id = *id;
	else
		memset(&victim->id, 0, sizeof(victim->id));
	victim->stored_ms = asked_ms;
	pthread_mutex_unlock(&cache_lock);
}

/*
 * Asks the node behind conn. The single value is "key_id,is_admin,role"
 * (the role last: a name may hold commas).
 */
GwAuthResult
gw_auth_lookup(GwConn *conn, const char *key, GwIdentity *id, int client_fd,
			   int64_t deadline_ms, GwPgError *err, bool *reusable)
{
	int64_t		asked_ms = gw_now_ms();
	GwStep		step = {.stmt = GW_STMT_AUTH, .n_params = 1, .params = {key}};
	GwBuf		out = {.limit = 256};
	GwCallResult r;
	char	   *comma1;
	char	   *comma2;

	*reusable = true;
	if (!key_plausible(key))
		return GW_AUTH_INVALID;
	r = gw_call_run(conn, &step, 1, 0, client_fd, deadline_ms, &out, err, reusable);
	if (r != GW_CALL_DONE)
	{
		gw_buf_free(&out);
		if (r == GW_CALL_HANGUP)
			return GW_AUTH_CLIENT_GONE;
		if (r == GW_CALL_TIMEOUT)
			gw_error_set(err, "57014", "the key check timed out");
		return GW_AUTH_ERROR;
	}
	if (out.len == 0)
	{
		gw_buf_free(&out);
		cache_store(key, false, NULL, asked_ms);
		return GW_AUTH_INVALID;
	}
	comma1 = strchr(out.data, ',');
	comma2 = comma1 ? strchr(comma1 + 1, ',') : NULL;
	if (comma2 == NULL || strlen(comma2 + 1) >= sizeof(id->role))
	{
		gw_buf_free(&out);
		gw_error_set(err, "", "mms.api_authenticate returned an unexpected value");
		return GW_AUTH_ERROR;
	}
	id->key_id = strtoll(out.data, NULL, 10);
	id->is_admin = comma1[1] == 't';
	strcpy(id->role, comma2 + 1);
	gw_buf_free(&out);
	cache_store(key, true, id, asked_ms);
	return GW_AUTH_OK;
}
