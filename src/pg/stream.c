/*
 * stream.c — generation that returns text as it is decoded:
 * mms_generate_stream (one row per new piece of text) and mms.api_run, the
 * core of the OpenAI-compatible completions behind the HTTP gateway (one row:
 * the response; or, streaming, one row per event of the stream).
 *
 * Both are value-per-call set-returning functions: each call returns what is
 * new and the rows leave for the client while generation goes on. The worker
 * publishes the tokens of a streamed request after every decoder step and
 * wakes this backend (request.c, mms_requests_partial); before sleeping, the
 * rows already produced are flushed to the client, which PostgreSQL would
 * otherwise hold back until its send buffer fills or the query ends. A
 * client that went away is noticed by the flush, or, while there is nothing
 * to send, by a look at its connection once a second.
 *
 * Text is emitted only once it is final: the decoding of the tokens so far,
 * less an incomplete UTF-8 sequence at its end (a byte-fallback piece) and,
 * when stop sequences are asked for, less the tail that could still become
 * one. A stop sequence ends the request there: the rest is not generated,
 * and the call is counted and charged for the tokens it had.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "funcapi.h"
#include "libpq/libpq.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/latch.h"
#include "tcop/dest.h"
#include "tcop/tcopprot.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "serve.h"

#define MAX_STOPS 4

/* One input of the call. */
typedef struct Seq
{
	int			req;			/* request index in the set; -1: a NULL input */
	int32		n_prompt;		/* input tokens, eos included */
	int			sent;			/* bytes of its text emitted */
	int32		n_tokens;		/* output tokens when it ended */
	const char *finish;			/* "stop" / "length" once it ended, else NULL */
	bool		reported;		/* its final event was emitted */
	char	   *text;			/* non-streaming: the final text */
	bool		role_sent;		/* chat stream: the first delta carries the role */
} Seq;

typedef struct StreamCall
{
	MmsModel	model;
	char	   *ref;			/* the model as the caller named it */
	MmsGenOptions opts;
	MmsRequestSet *rs;
	int			n;
	Seq		   *seqs;
	int			n_ended;
	/* api_run only */
	bool		api;
	bool		stream;
	bool		include_usage;
	bool		chat;
	char	   *stops[MAX_STOPS];
	int			n_stops;
	int			max_stop;		/* longest stop sequence, bytes */
	char		id[48];
	int64		created;
	bool		usage_sent;
	List	   *out;			/* rows ready to return (varlena pointers) */
	MemoryContext scratch;		/* decoded text of one look at the requests */
	ExprContext *econtext;		/* end_call is registered there */
	bool		flush_before_wait;
	TimestampTz client_checked;	/* when the client's connection was last looked at */
} StreamCall;

static void
end_call(Datum arg)
{
	StreamCall *c = (StreamCall *) DatumGetPointer(arg);

	/* the query stopped reading (LIMIT, an ERROR, the end): drop what is left */
	if (c->rs != NULL)
		mms_requests_end(c->rs);
	c->rs = NULL;
}

/*
 * Bytes of s (UTF-8) that are final: a trailing byte-fallback piece may be a
 * partial character, which a later token completes.
 */
static int
complete_prefix(const char *s, int len)
{
	int			i = len;
	int			back = 0;

	while (i > 0 && back < 4 && (((unsigned char) s[i - 1]) & 0xC0) == 0x80)
	{
		i--;
		back++;
	}
	if (i > 0)
	{
		unsigned char b = (unsigned char) s[i - 1];
		int			need = b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : b >= 0xC0 ? 2 : 1;

		if (need > 1 && back + 1 < need)
			return i - 1;
	}
	/*
	 * The decoder turns each byte of a character still incomplete at the end
	 * (up to 3) into U+FFFD, which a later byte piece replaces: hold them back.
	 */
	for (int k = 0; k < 3 && len >= 3 && memcmp(s + len - 3, "\xEF\xBF\xBD", 3) == 0; k++)
		len -= 3;
	return len;
}

/* Where the first stop sequence starts in s[from..len), or -1. */
static int
find_stop(const StreamCall *c, const char *s, int len, int from)
{
	int			best = -1;

	if (from >= len)
		return -1;
	for (int k = 0; k < c->n_stops; k++)
	{
		const char *p;
		int			sl = strlen(c->stops[k]);

		if (sl == 0 || sl > len)
			continue;
		p = memmem(s + from, len - from, c->stops[k], sl);
		if (p != NULL && (best < 0 || p - s < best))
			best = p - s;
	}
	return best;
}

/* ---------------------------------------------------------------- JSON rows */

static void
json_str(StringInfo b, const char *s, int len)
{
	char	   *z = pnstrdup(s, len);

	escape_json(b, z);
	pfree(z);
}

static void
head(StreamCall *c, StringInfo b, const char *object)
{
	appendStringInfo(b, "{\"id\": ");
	escape_json(b, c->id);
	appendStringInfo(b, ", \"object\": \"%s\", \"created\": " INT64_FORMAT ", \"model\": ",
					 object, c->created);
	escape_json(b, c->ref);
}

static void
usage_json(StreamCall *c, StringInfo b)
{
	int64		p = 0;
	int64		g = 0;

	for (int i = 0; i < c->n; i++)
	{
		p += c->seqs[i].n_prompt;
		g += c->seqs[i].n_tokens;
	}
	appendStringInfo(b, "{\"prompt_tokens\": " INT64_FORMAT ", \"completion_tokens\": " INT64_FORMAT
					 ", \"total_tokens\": " INT64_FORMAT "}", p, g, p + g);
}


/*
 * Queues a row (text or jsonb, built in short-lived memory) in the call's
 * memory until it is returned.
 */
static void
push_row(StreamCall *c, void *row)
{
	MemoryContext old = MemoryContextSwitchTo(GetMemoryChunkContext(c));
	struct varlena *copy = palloc(VARSIZE(row));

	memcpy(copy, row, VARSIZE(row));
	c->out = lappend(c->out, copy);
	MemoryContextSwitchTo(old);
}

/* Starts an API row: a stream's chunk, or the whole response. */
static void
begin_row(StreamCall *c, StringInfo b, bool chunk)
{
	initStringInfo(b);
	head(c, b, !c->chat ? "text_completion" : chunk ? "chat.completion.chunk" : "chat.completion");
}

/* Closes the row's object and queues it as jsonb. */
static void
end_row(StreamCall *c, StringInfo b)
{
	appendStringInfoChar(b, '}');
	push_row(c, DatumGetPointer(DirectFunctionCall1(jsonb_in, CStringGetDatum(b->data))));
}

/* A stream event: a piece of input i's text, or (finish set) its end. */
static void
emit_event(StreamCall *c, int i, const char *piece, int len, const char *finish)
{
	StringInfoData b;

	if (!c->api)
	{
		push_row(c, cstring_to_text_with_len(piece, len));
		return;
	}
	begin_row(c, &b, true);
	appendStringInfo(&b, ", \"choices\": [{\"index\": %d, ", i);
	if (c->chat)
	{
		appendStringInfoString(&b, "\"delta\": {");
		if (!c->seqs[i].role_sent)
			appendStringInfoString(&b, "\"role\": \"assistant\"");
		if (finish == NULL || len > 0)
		{
			appendStringInfoString(&b, c->seqs[i].role_sent ? "\"content\": " : ", \"content\": ");
			json_str(&b, piece, len);
		}
		c->seqs[i].role_sent = true;
		appendStringInfoString(&b, "}");
	}
	else
	{
		appendStringInfoString(&b, "\"text\": ");
		json_str(&b, piece, len);
	}
	appendStringInfoString(&b, ", \"logprobs\": null, \"finish_reason\": ");
	if (finish)
		appendStringInfo(&b, "\"%s\"", finish);
	else
		appendStringInfoString(&b, "null");
	appendStringInfoString(&b, "}]");
	if (c->include_usage)
		appendStringInfoString(&b, ", \"usage\": null");
	end_row(c, &b);
}

/* The whole response of a call that does not stream. */
static void
emit_response(StreamCall *c)
{
	StringInfoData b;

	begin_row(c, &b, false);
	appendStringInfoString(&b, ", \"choices\": [");
	for (int i = 0; i < c->n; i++)
	{
		Seq		   *s = &c->seqs[i];

		appendStringInfo(&b, "%s{\"index\": %d, ", i ? ", " : "", i);
		if (c->chat)
		{
			appendStringInfoString(&b, "\"message\": {\"role\": \"assistant\", \"content\": ");
			escape_json(&b, s->text ? s->text : "");
			appendStringInfoString(&b, "}");
		}
		else
		{
			appendStringInfoString(&b, "\"text\": ");
			escape_json(&b, s->text ? s->text : "");
		}
		appendStringInfo(&b, ", \"logprobs\": null, \"finish_reason\": \"%s\"}", s->finish ? s->finish : "stop");
	}
	appendStringInfoString(&b, "], \"usage\": ");
	usage_json(c, &b);
	end_row(c, &b);
}

static void
emit_usage(StreamCall *c)
{
	StringInfoData b;

	begin_row(c, &b, true);
	appendStringInfoString(&b, ", \"choices\": [], \"usage\": ");
	usage_json(c, &b);
	end_row(c, &b);
}

/* ---------------------------------------------------------------- progress */

/*
 * Looks at input i: emits the text that became final since the last look
 * (streaming), and its end once its request ended or a stop sequence showed.
 */
static void
advance(StreamCall *c, MmsTokenizer *tok, int i)
{
	Seq		   *s = &c->seqs[i];
	const MmsResult *res;
	const int32 *ids;
	int32		n;
	int32		n_text;
	bool		done;
	text	   *t;
	char	   *str;
	int			len;
	int			upto;
	int			stop;

	if (s->finish != NULL || s->req < 0)
		return;
	res = mms_requests_result(c->rs, s->req);
	done = res->done;
	if (done)
		mms_raise_call_error(&c->model, res->err);
	n = mms_requests_partial(c->rs, s->req, &ids);
	if (!done && (!c->stream || n == 0))
		return;					/* nothing to show before the end */

	/* the text of what is final; the eos is no text */
	n_text = n;
	if (n_text > 0 && ids[n_text - 1] == mms_tok_eos_id(tok))
		n_text--;
	t = mms_decode_ids(tok, ids, n_text);
	str = VARDATA_ANY(t);
	len = VARSIZE_ANY_EXHDR(t);
	upto = done || GetDatabaseEncoding() != PG_UTF8 ? len : complete_prefix(str, len);
	stop = c->n_stops > 0 ? find_stop(c, str, upto, Max(0, s->sent - c->max_stop + 1)) : -1;
	if (stop >= 0)
	{
		upto = stop;
		done = true;
		s->finish = "stop";
		if (!res->done)
			mms_requests_stop(c->rs, s->req, n);
	}
	else if (!done && c->n_stops > 0)
	{
		/* may yet become a stop; and a piece ends on a character boundary */
		upto = Max(s->sent, upto - (c->max_stop - 1));
		upto = s->sent + pg_mbcliplen(str + s->sent, len - s->sent, upto - s->sent);
	}
	else if (done)
		s->finish = n > n_text ? "stop" : "length";
	if (upto > s->sent)
	{
		if (c->stream)
			emit_event(c, i, str + s->sent, upto - s->sent, NULL);
		s->sent = upto;
	}
	if (!done)
		return;
	s->n_tokens = n;
	c->n_ended++;
	if (!c->stream)
		s->text = MemoryContextStrdup(GetMemoryChunkContext(c), pnstrdup(str, upto));
	else if (c->api)
		emit_event(c, i, "", 0, s->finish);
}

/*
 * With nothing to send for a while (text held back for a stop sequence, a
 * beam search, a response that comes whole), a flush would never find the
 * client gone: look at its connection once a second, as
 * client_connection_check_interval does, so that a dead client's requests
 * stop rather than run to max_new_tokens.
 */
static void
check_client(StreamCall *c)
{
	TimestampTz now = GetCurrentTimestamp();

	if (!WaitEventSetCanReportClosed() ||
		!TimestampDifferenceExceeds(c->client_checked, now, 1000))
		return;
	c->client_checked = now;
	if (!pq_check_connection())
	{
		ClientConnectionLost = 1;
		InterruptPending = 1;
		CHECK_FOR_INTERRUPTS();
	}
	/* the check resets the latch: a wake-up it took must not be lost */
	SetLatch(MyLatch);
}

/* Works until a row is ready or everything ended; false when nothing more will come. */
static bool
produce(StreamCall *c)
{
	while (c->out == NIL)
	{
		MemoryContext old;
		MmsTokenizer *tok;

		/* each look decodes every request's text so far: keep only the last */
		MemoryContextReset(c->scratch);
		old = MemoryContextSwitchTo(c->scratch);
		tok = mms_tokenizer_of(&c->model);
		for (int i = 0; i < c->n; i++)
			advance(c, tok, i);
		MemoryContextSwitchTo(old);
		if (c->out != NIL)
			break;
		if (c->n_ended == c->n)
		{
			if (c->rs != NULL)
			{
				mms_requests_end(c->rs);
				c->rs = NULL;
				if (c->api && !c->stream)
					emit_response(c);
				else if (c->api && c->include_usage)
					emit_usage(c);
				continue;
			}
			return false;
		}
		/* what was returned so far goes to the client before the wait */
		if (whereToSendOutput == DestRemote)
		{
			if (c->flush_before_wait)
				pq_flush();
			else
				check_client(c);
		}
		c->flush_before_wait = false;
		mms_requests_wait_any(c->rs);
	}
	return true;
}

/* ---------------------------------------------------------------- calls */

/* Resolves, tokenizes and submits; the call's state lives in fn_mcxt's child. */
static StreamCall *
start(FunctionCallInfo fcinfo, text *ref, Datum *inputs, bool *nulls, int n, Jsonb *options,
	  bool stream)
{
	StreamCall *c = palloc0(sizeof(StreamCall));
	MmsTokenizer *tok;
	ReturnSetInfo *rsi = (ReturnSetInfo *) fcinfo->resultinfo;

	mms_require_serving();
	c->ref = text_to_cstring(ref);
	mms_resolve_model(c->ref, true, &c->model);
	mms_require_decoder(&c->model);
	mms_parse_options(options, &c->opts);
	tok = mms_tokenizer_of(&c->model);
	c->n = n;
	c->stream = stream;
	c->seqs = palloc0(sizeof(Seq) * Max(n, 1));
	c->scratch = AllocSetContextCreate(CurrentMemoryContext, "mms stream text",
									   ALLOCSET_DEFAULT_SIZES);
	c->rs = mms_requests_begin(&c->model);
	c->econtext = rsi->econtext;
	RegisterExprContextCallback(rsi->econtext, end_call, PointerGetDatum(c));
	for (int i = 0; i < n; i++)
	{
		int32	   *ids;
		int32		n_ids;

		CHECK_FOR_INTERRUPTS();
		c->seqs[i].req = -1;
		if (nulls[i])
		{
			c->seqs[i].finish = "stop";
			c->n_ended++;
			continue;
		}
		ids = mms_encode_text(tok, DatumGetTextPP(inputs[i]), mms_input_bound(), &n_ids);
		c->seqs[i].n_prompt = n_ids;
		c->seqs[i].req = mms_requests_add(c->rs, MMS_REQ_GENERATE, &c->opts, ids, n_ids, NULL, 0);
		if (stream && c->opts.num_beams <= 1)
			mms_requests_stream(c->rs, c->seqs[i].req);
	}
	return c;
}

static Datum
next_row(StreamCall *c, bool *has)
{
	Datum		d;
	struct varlena *row;

	*has = produce(c);
	if (!*has)
	{
		/* the call's memory goes with SRF_RETURN_DONE: so must the callback */
		UnregisterExprContextCallback(c->econtext, end_call, PointerGetDatum(c));
		return (Datum) 0;
	}
	/*
	 * The row moves to the call's memory, which is reset once the row is
	 * used: a stream of many rows must not keep them all until it ends.
	 */
	row = linitial(c->out);
	c->out = list_delete_first(c->out);
	d = PointerGetDatum(palloc(VARSIZE(row)));
	memcpy(DatumGetPointer(d), row, VARSIZE(row));
	pfree(row);
	c->flush_before_wait = true;
	return d;
}

PG_FUNCTION_INFO_V1(mms_generate_stream);

/*
 * mms_generate_stream(model text, input text, options jsonb) RETURNS SETOF
 * text: the pieces of the output, each as soon as it is decoded; together
 * they are what mms_generate returns.
 */
Datum
mms_generate_stream(PG_FUNCTION_ARGS)
{
	FuncCallContext *fc;
	StreamCall *c;
	Datum		d;
	bool		has;

	if (SRF_IS_FIRSTCALL())
	{
		MemoryContext old;
		Datum		in = PG_GETARG_DATUM(1);
		bool		null = false;

		fc = SRF_FIRSTCALL_INIT();
		old = MemoryContextSwitchTo(fc->multi_call_memory_ctx);
		c = start(fcinfo, PG_GETARG_TEXT_PP(0), &in, &null, 1,
				  PG_ARGISNULL(2) ? NULL : PG_GETARG_JSONB_P_COPY(2), true);
		fc->user_fctx = c;
		MemoryContextSwitchTo(old);
	}
	fc = SRF_PERCALL_SETUP();
	c = fc->user_fctx;
	d = next_row(c, &has);
	if (!has)
		SRF_RETURN_DONE(fc);
	SRF_RETURN_NEXT(fc, d);
}

PG_FUNCTION_INFO_V1(mms_api_run);

/*
 * mms.api_run(model text, inputs text[], options jsonb, stop text[], stream
 * boolean, include_usage boolean, chat boolean) RETURNS SETOF jsonb: the
 * OpenAI completion (or chat completion) of each input, all submitted at once;
 * one row, the response, or streaming, one row per event (the text of each
 * choice as it comes, its end, then the usage when asked). mms.api_plan
 * validated the request and mapped it to these arguments.
 */
Datum
mms_api_run(PG_FUNCTION_ARGS)
{
	FuncCallContext *fc;
	StreamCall *c;
	Datum		d;
	bool		has;

	if (SRF_IS_FIRSTCALL())
	{
		MemoryContext old;
		Datum	   *elems;
		bool	   *nulls;
		int			n;
		uint8		rnd[12];

		for (int a = 0; a < 7; a++)
			if (a != 3 && PG_ARGISNULL(a))
				ereport(ERROR,
						(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
						 errmsg("argument %d of mms.api_run must not be null", a + 1)));
		fc = SRF_FIRSTCALL_INIT();
		old = MemoryContextSwitchTo(fc->multi_call_memory_ctx);
		deconstruct_array(PG_GETARG_ARRAYTYPE_P_COPY(1), TEXTOID, -1, false, TYPALIGN_INT,
						  &elems, &nulls, &n);
		c = start(fcinfo, PG_GETARG_TEXT_PP(0), elems, nulls, n, PG_GETARG_JSONB_P_COPY(2),
				  PG_GETARG_BOOL(4));
		c->api = true;
		c->include_usage = PG_GETARG_BOOL(5);
		c->chat = PG_GETARG_BOOL(6);
		if (!PG_ARGISNULL(3))
		{
			Datum	   *st;
			bool	   *st_nulls;
			int			n_st;

			deconstruct_array(PG_GETARG_ARRAYTYPE_P_COPY(3), TEXTOID, -1, false, TYPALIGN_INT,
							  &st, &st_nulls, &n_st);
			if (n_st > MAX_STOPS)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("at most %d stop sequences are allowed", MAX_STOPS)));
			for (int k = 0; k < n_st; k++)
				if (!st_nulls[k] && VARSIZE_ANY_EXHDR(DatumGetTextPP(st[k])) > 0)
				{
					c->stops[c->n_stops] = TextDatumGetCString(st[k]);
					c->max_stop = Max(c->max_stop, (int) strlen(c->stops[c->n_stops]));
					c->n_stops++;
				}
		}
		if (!pg_strong_random(rnd, sizeof(rnd)))
			memset(rnd, 0, sizeof(rnd));
		snprintf(c->id, sizeof(c->id), "%s", c->chat ? "chatcmpl-" : "cmpl-");
		for (int k = 0; k < (int) sizeof(rnd); k++)
			snprintf(c->id + strlen(c->id), 3, "%02x", rnd[k]);
		c->created = (int64) (GetCurrentTimestamp() / USECS_PER_SEC) +
			(POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY;
		fc->user_fctx = c;
		MemoryContextSwitchTo(old);
	}
	fc = SRF_PERCALL_SETUP();
	c = fc->user_fctx;
	d = next_row(c, &has);
	if (!has)
		SRF_RETURN_DONE(fc);
	SRF_RETURN_NEXT(fc, d);
}
