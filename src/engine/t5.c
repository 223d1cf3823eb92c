/*
 * t5.c — T5 weights and forward pass (see t5.h). The math follows HF
 * transformers' T5 in fp32: pre-norm residual blocks with RMSNorm, attention
 * without 1/sqrt(d_kv) scaling, a relative-position bias from block 0 added
 * in every block, gated-GELU or ReLU feed-forward, and the tied LM head
 * scaled by d_model^-0.5. Sampling and search live in generate.c.
 */
#include "t5.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "gemm_small.h"
#include "ops.h"
#include "pool.h"
#include "qgemm.h"

typedef struct MmsT5Block
{
	/* shapes: see t5_meta.c block_tensors; norms and the relative bias are always f32 */
	MmsWeight	w[MMS_W_N_LAYER_SLOTS];
} MmsT5Block;

struct MmsT5
{
	MmsT5Config cfg;
	MmsT5Block *enc;			/* n_enc_layer */
	MmsT5Block *dec;			/* n_dec_layer */
	MmsWeight	tok_embd;		/* (vocab, d_model) */
	MmsWeight	lm_head;		/* (vocab, d_model): output, or tok_embd when tied */
	const float *enc_norm;		/* (d_model) */
	const float *dec_norm;		/* (d_model) */
	float	   *arena;			/* dequantized / realigned weights we own */
	size_t		arena_floats;
	size_t		dec_weight_bytes;
	int			qtype;			/* a quantized type linear layers use in place, or MMS_T_F32 */
};

struct MmsT5Work
{
	float	   *buf;
	size_t		cap;			/* floats */
	int32_t    *ibuf;			/* bucket tables */
	size_t		icap;
	uint8_t    *qbuf;			/* quantized activations (models with int8 weights) */
	size_t		qcap;
};

/* ---------------------------------------------------------------- loading */

typedef struct LoadCtx
{
	MmsT5	   *m;
	const MmsGguf *g;
	int			fill;			/* 0: size the arena, 1: fill it, 2: it is filled, point into it */
	float	   *arena;
	size_t		used;			/* floats of arena used so far */
} LoadCtx;

/*
 * F32 data aligned for floats is used where it lies. Sizing the arena may
 * run on a header-only parse (data NULL): the file offset decides then, as
 * buffers (malloc'd, shared segments) start aligned.
 */
static int
usable_in_place(const MmsGguf *g, const MmsGgufTensor *t)
{
	if (t->type != MMS_T_F32)
		return 0;
	if (t->data == NULL)
		return (g->data_offset + t->offset) % sizeof(float) == 0;
	return ((uintptr_t) t->data % sizeof(float)) == 0;
}

/*
 * Q8_0 / Q4_0 matrices of the linear layers (and the embedding, read a row
 * at a time) are computed on in place by the int8 kernels; their blocks must
 * not straddle rows. Norms and the relative bias are small and read as f32.
 */
static int
quantized_in_place(const MmsT5TensorSpec *spec, const MmsGgufTensor *t)
{
	if (t->type != MMS_T_Q8_0 && t->type != MMS_T_Q4_0)
		return 0;
	if (spec->ne1 == 0 || spec->ne0 % MMS_QK != 0)
		return 0;
	if (spec->part == MMS_PART_MODEL)
		return spec->slot == MMS_W_TOKEN_EMBD || spec->slot == MMS_W_OUTPUT;
	return spec->slot != MMS_W_ATTN_NORM && spec->slot != MMS_W_ATTN_REL_B &&
		spec->slot != MMS_W_CROSS_NORM && spec->slot != MMS_W_FFN_NORM;
}

static MmsStatus
load_visit(void *vctx, const MmsT5TensorSpec *spec, const MmsGgufTensor *t, MmsError *err)
{
	LoadCtx    *ctx = vctx;
	MmsT5	   *m = ctx->m;
	MmsWeight	wt = {NULL, MMS_T_F32};
	const float *p = NULL;
	MmsStatus	st;

	if (t == NULL)
		return MMS_OK;
	if (t->data == NULL && ctx->fill)
		return mms_fail(err, MMS_ERR_ARG, "tensor \"%s\" data is not in the buffer (header-only parse)",
						spec->name);
	if (quantized_in_place(spec, t))
	{
		wt.type = t->type;
		m->qtype = t->type;
		if (ctx->fill)
			wt.data = t->data;
	}
	else if (usable_in_place(ctx->g, t))
	{
		if (ctx->fill)
			p = (const float *) t->data;
	}
	else
	{
		if (ctx->fill)
		{
			float	   *dst = ctx->arena + ctx->used;

			if (ctx->fill == 1 && (st = mms_gguf_dequantize(t, dst, err)) != MMS_OK)
				return st;
			p = dst;
		}
		ctx->used += t->n_elems;
	}
	if (!ctx->fill)
		return MMS_OK;
	if (wt.type == MMS_T_F32)
		wt.data = p;

	switch (spec->part)
	{
		case MMS_PART_ENC:
			m->enc[spec->layer].w[spec->slot] = wt;
			break;
		case MMS_PART_DEC:
			m->dec[spec->layer].w[spec->slot] = wt;
			m->dec_weight_bytes += wt.type == MMS_T_F32 ? t->n_elems * sizeof(float) : t->n_bytes;
			break;
		case MMS_PART_MODEL:
			switch (spec->slot)
			{
				case MMS_W_TOKEN_EMBD:
					m->tok_embd = wt;
					break;
				case MMS_W_OUTPUT:
					m->lm_head = wt;
					break;
				case MMS_W_ENC_NORM:
					m->enc_norm = p;
					break;
				case MMS_W_DEC_NORM:
					m->dec_norm = p;
					break;
				default:
					break;
			}
			break;
	}
	return MMS_OK;
}

/* Sizes the arena: floats of the weights that cannot be used in place. */
MmsStatus
mms_t5_arena_floats(const MmsGguf *g, size_t *n_floats, MmsError *err)
{
	MmsT5		tmp;
	LoadCtx		ctx;
	MmsStatus	st;

	memset(&tmp, 0, sizeof(tmp));
	memset(&ctx, 0, sizeof(ctx));
	ctx.m = &tmp;
	ctx.g = g;
	*n_floats = 0;
	if ((st = mms_t5_read_config(g, &tmp.cfg, err)) != MMS_OK)
		return st;
	if ((st = mms_t5_walk_tensors(g, &tmp.cfg, load_visit, &ctx, err)) != MMS_OK)
		return st;
	*n_floats = ctx.used;
	return MMS_OK;
}

MmsStatus
mms_t5_load_with_arena(const MmsGguf *g, float *arena, size_t arena_floats, int fill,
					   MmsT5 **out, MmsError *err)
{
	MmsT5	   *m;
	LoadCtx		ctx;
	MmsStatus	st;
	size_t		need;

	*out = NULL;
	if ((st = mms_t5_arena_floats(g, &need, err)) != MMS_OK)
		return st;
	m = calloc(1, sizeof(*m));
	if (m == NULL)
		return mms_fail(err, MMS_ERR_NOMEM, "out of memory allocating the model");
	if ((st = mms_t5_read_config(g, &m->cfg, err)) != MMS_OK)
		goto fail;
	m->enc = calloc((size_t) m->cfg.n_enc_layer, sizeof(MmsT5Block));
	m->dec = calloc((size_t) (m->cfg.n_dec_layer > 0 ? m->cfg.n_dec_layer : 1), sizeof(MmsT5Block));
	if (m->enc == NULL || m->dec == NULL)
	{
		st = mms_fail(err, MMS_ERR_NOMEM, "out of memory allocating the model");
		goto fail;
	}
	if (arena == NULL && need > 0)
	{
		/* a private arena: this process owns the dequantized weights */
		m->arena = malloc(need * sizeof(float));
		if (m->arena == NULL)
		{
			st = mms_fail(err, MMS_ERR_NOMEM, "out of memory dequantizing %zu weights", need);
			goto fail;
		}
		m->arena_floats = need;
		arena = m->arena;
		fill = 1;
	}
	else if (need > arena_floats)
	{
		st = mms_fail(err, MMS_ERR_ARG, "weight arena holds %zu floats, the model needs %zu",
					  arena_floats, need);
		goto fail;
	}

	memset(&ctx, 0, sizeof(ctx));
	ctx.m = m;
	ctx.g = g;
	ctx.fill = fill ? 1 : 2;
	ctx.arena = arena;
	if ((st = mms_t5_walk_tensors(g, &m->cfg, load_visit, &ctx, err)) != MMS_OK)
		goto fail;

	/* Blocks without their own relative bias share block 0's (HF layout). */
	for (int64_t l = 1; l < m->cfg.n_enc_layer; l++)
		if (m->enc[l].w[MMS_W_ATTN_REL_B].data == NULL)
			m->enc[l].w[MMS_W_ATTN_REL_B] = m->enc[0].w[MMS_W_ATTN_REL_B];
	for (int64_t l = 1; l < m->cfg.n_dec_layer; l++)
		if (m->dec[l].w[MMS_W_ATTN_REL_B].data == NULL)
			m->dec[l].w[MMS_W_ATTN_REL_B] = m->dec[0].w[MMS_W_ATTN_REL_B];
	if (m->lm_head.data == NULL)
		m->lm_head = m->tok_embd;
	m->dec_weight_bytes += m->lm_head.type == MMS_T_F32
		? (size_t) (m->cfg.vocab * m->cfg.d_model) * sizeof(float)
		: (size_t) mms_tensor_type_bytes(m->lm_head.type, (uint64_t) (m->cfg.vocab * m->cfg.d_model));
	*out = m;
	return MMS_OK;

fail:
	mms_t5_free(m);
	return st;
}

MmsStatus
mms_t5_load(const MmsGguf *g, MmsT5 **out, MmsError *err)
{
	return mms_t5_load_with_arena(g, NULL, 0, 1, out, err);
}

void
mms_t5_free(MmsT5 *m)
{
	if (m == NULL)
		return;
	free(m->arena);
	free(m->enc);
	free(m->dec);
	free(m);
}

const MmsT5Config *
mms_t5_config(const MmsT5 *m)
{
	return &m->cfg;
}

size_t
mms_t5_decoder_weight_bytes(const MmsT5 *m)
{
	return m->dec_weight_bytes;
}

int
mms_t5_weight_type(const MmsT5 *m)
{
	return m->qtype;
}

size_t
mms_t5_owned_bytes(const MmsT5 *m)
{
	return m->arena_floats * sizeof(float);
}

/* ---------------------------------------------------------------- scratch */

MmsT5Work *
mms_t5_work_create(void)
{
	return calloc(1, sizeof(MmsT5Work));
}

void
mms_t5_work_free(MmsT5Work *w)
{
	if (w == NULL)
		return;
	free(w->buf);
	free(w->ibuf);
	free(w->qbuf);
	free(w);
}

/* Grows *buf to n elements of elem bytes (contents not kept); NULL with err set on failure. */
static void *
work_grow(void **buf, size_t *cap, size_t n, size_t elem, MmsError *err)
{
	if (n > *cap)
	{
		void	   *p = realloc(*buf, n * elem);

		if (p == NULL)
		{
			mms_fail(err, MMS_ERR_NOMEM, "out of memory for %zu bytes of scratch", n * elem);
			return NULL;
		}
		*buf = p;
		*cap = n;
	}
	return *buf;
}

static float *
work_floats(MmsT5Work *w, size_t n, MmsError *err)
{
	return work_grow((void **) &w->buf, &w->cap, n, sizeof(float), err);
}

static int32_t *
work_ints(MmsT5Work *w, size_t n, MmsError *err)
{
	return work_grow((void **) &w->ibuf, &w->icap, n, sizeof(int32_t), err);
}

/*
 * Scratch for the linear layers of `rows` inputs (see MmsLinearScratch),
 * sized for the model's widest layer; none for f32 weights.
 */
static MmsStatus
work_linear(const MmsT5 *m, MmsT5Work *w, int64_t rows, int wide, MmsLinearScratch *ls, MmsError *err)
{
	const MmsT5Config *c = &m->cfg;
	int64_t		widest = c->d_model > c->inner ? c->d_model : c->inner;

	widest = c->d_ff > widest ? c->d_ff : widest;
	ls->buf = NULL;
	ls->wide = wide;
	if (m->qtype == MMS_T_F32)
		return MMS_OK;
	ls->buf = work_grow((void **) &w->qbuf, &w->qcap, mms_linear_scratch_bytes(m->qtype, wide, rows, widest),
						1, err);
	return ls->buf ? MMS_OK : (err ? err->code : MMS_ERR_NOMEM);
}

/* ---------------------------------------------------------------- shared pieces */

static MmsStatus
embed(const MmsT5 *m, const int32_t *ids, int64_t n, float *x, MmsError *err)
{
	for (int64_t i = 0; i < n; i++)
	{
		if (ids[i] < 0 || ids[i] >= m->cfg.vocab)
			return mms_fail(err, MMS_ERR_ARG, "token id %d is outside the vocabulary (0..%lld)",
							ids[i], (long long) m->cfg.vocab - 1);
		if (m->tok_embd.type == MMS_T_F32)
			memcpy(x + i * m->cfg.d_model, (const float *) m->tok_embd.data + (int64_t) ids[i] * m->cfg.d_model,
				   (size_t) m->cfg.d_model * sizeof(float));
		else
		{
			size_t		row = mms_tensor_type_bytes(m->tok_embd.type, (uint64_t) m->cfg.d_model);
			MmsStatus	st = mms_dequantize(m->tok_embd.type, (const uint8_t *) m->tok_embd.data + (size_t) ids[i] * row,
											(uint64_t) m->cfg.d_model, x + i * m->cfg.d_model, err);

			if (st != MMS_OK)
				return st;
		}
	}
	return MMS_OK;
}

/* x += FFN(rmsnorm(x)) over rows; h, f1, f2 and qs (work_linear) are scratch. */
static void
feed_forward(const MmsT5 *m, const MmsT5Block *b, float *x, int64_t rows, float *h, float *f1, float *f2,
			 const MmsLinearScratch *qs)
{
	const MmsT5Config *c = &m->cfg;

	mms_rmsnorm_rows(h, x, (const float *) b->w[MMS_W_FFN_NORM].data, rows, c->d_model, c->eps);
	if (c->gated)
	{
		mms_linear(f1, h, b->w[MMS_W_FFN_GATE], rows, c->d_model, c->d_ff, 0, qs);
		mms_linear(f2, h, b->w[MMS_W_FFN_UP], rows, c->d_model, c->d_ff, 0, qs);
		mms_gelu_mul(f1, f2, rows * c->d_ff);
	}
	else
	{
		mms_linear(f1, h, b->w[MMS_W_FFN_UP], rows, c->d_model, c->d_ff, 0, qs);
		mms_relu(f1, rows * c->d_ff);
	}
	mms_linear(x, f1, b->w[MMS_W_FFN_DOWN], rows, c->d_ff, c->d_model, 1, qs);
}

/*
 * One query row against n_keys keys of one head: out = softmax(q.K^T + bias) V.
 * k, v point at head h's first key; stride is the row stride in floats.
 * bias_row (n_keys) may be NULL. scores is scratch of n_keys floats.
 */
static void
attend_row(const float *q, const float *k, const float *v, int64_t stride, int64_t n_keys,
		   int64_t d_kv, const float *bias, float *scores, float *out)
{
	for (int64_t j = 0; j < n_keys; j++)
	{
		float		s = mms_dot(q, k + j * stride, d_kv);

		scores[j] = bias ? s + bias[j] : s;
	}
	mms_softmax(scores, n_keys);
	memset(out, 0, (size_t) d_kv * sizeof(float));
	for (int64_t j = 0; j < n_keys; j++)
	{
		const float *vj = v + j * stride;
		float		p = scores[j];

		for (int64_t d = 0; d < d_kv; d++)
			out[d] += p * vj[d];
	}
}

/* ---------------------------------------------------------------- encoder */

/* One (input, head) of encoder self-attention: two small GEMMs around a softmax. */
typedef struct EncAttnJob
{
	const MmsT5Config *c;
	const float *q,
			   *k,
			   *v;				/* (T, inner) */
	float	   *att;			/* (T, inner) */
	const float *bias;			/* (n_head, 2 Lmax): bias by rel + Lmax - 1 */
	int64_t		Lmax;
	const int32_t *offs,
			   *lens;
	float	   *scratch;		/* threads x Lmax^2 */
} EncAttnJob;

static void
enc_attn_task(void *arg, int task, int thread)
{
	const EncAttnJob *j = arg;
	const MmsT5Config *c = j->c;
	int			s = task / (int) c->n_head;
	int64_t		hd = task % c->n_head;
	int64_t		L = j->lens[s],
				off = j->offs[s],
				in = c->inner,
				dk = c->d_kv;
	float	   *S = j->scratch + (size_t) thread * (size_t) (j->Lmax * j->Lmax);
	const float *Q = j->q + off * in + hd * dk;
	const float *K = j->k + off * in + hd * dk;
	const float *V = j->v + off * in + hd * dk;

	/* scores = Q K^T (no 1/sqrt(d_kv): T5 folds it into the weights) */
	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int) L, (int) L, (int) dk, 1.0f,
				Q, (int) in, K, (int) in, 0.0f, S, (int) L);
	for (int64_t i = 0; i < L; i++)
	{
		float	   *row = S + i * L;
		const float *bi = j->bias + hd * 2 * j->Lmax + (j->Lmax - 1 - i);	/* key j: rel j - i */

		for (int64_t jj = 0; jj < L; jj++)
			row[jj] += bi[jj];
		mms_softmax(row, L);
	}
	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int) L, (int) dk, (int) L, 1.0f,
				S, (int) L, V, (int) in, 0.0f, j->att + off * in + hd * dk, (int) in);
}

MmsStatus
mms_t5_encode(const MmsT5 *m, MmsT5Work *w, int n_seq, const int32_t *const *ids,
			  const int32_t *lens, float *out, MmsError *err)
{
	const MmsT5Config *c = &m->cfg;
	int64_t		T = 0,
				Lmax = 0;
	int64_t		d = c->d_model,
				in = c->inner,
				ff = c->d_ff;
	float	   *base,
			   *x,
			   *h,
			   *q,
			   *k,
			   *v,
			   *att,
			   *f1,
			   *f2,
			   *bias;
	int32_t    *bucket;
	int32_t    *offs;
	MmsLinearScratch lin,
			   *qs = &lin;
	MmsStatus	st;

	for (int s = 0; s < n_seq; s++)
	{
		if (lens[s] < 1)
			return mms_fail(err, MMS_ERR_ARG, "encoder input %d is empty", s);
		T += lens[s];
		Lmax = lens[s] > Lmax ? lens[s] : Lmax;
	}
	if (T == 0)
		return MMS_OK;
	/* x lives in out; scratch: h, q, k, v, att (T x inner), f1, f2 (T x d_ff), bias (heads x 2L) */
	base = work_floats(w, (size_t) (T * d + 4 * T * in + 2 * T * ff + c->n_head * 2 * Lmax) +
					   (size_t) mms_threads() * (size_t) (Lmax * Lmax), err);
	if (base == NULL || (st = work_linear(m, w, T, 1, &lin, err)) != MMS_OK)
		return err ? err->code : MMS_ERR_NOMEM;
	offs = malloc((size_t) n_seq * sizeof(int32_t));
	if (offs == NULL)
		return mms_fail(err, MMS_ERR_NOMEM, "out of memory encoding %d inputs", n_seq);
	bucket = work_ints(w, (size_t) (2 * Lmax), err);
	if (base == NULL || bucket == NULL)
	{
		free(offs);
		return err ? err->code : MMS_ERR_NOMEM;
	}
	h = base;
	q = h + T * d;
	k = q + T * in;
	v = k + T * in;
	att = v + T * in;
	f1 = att + T * in;
	f2 = f1 + T * ff;
	bias = f2 + T * ff;
	x = out;

	for (int s = 0, off = 0; s < n_seq; off += lens[s], s++)
	{
		offs[s] = off;
		if ((st = embed(m, ids[s], lens[s], x + (int64_t) off * d, err)) != MMS_OK)
		{
			free(offs);
			return st;
		}
	}
	/* bucket[rel + Lmax - 1] for rel in [-(Lmax-1), Lmax-1]: same for every block */
	for (int64_t r = -(Lmax - 1); r <= Lmax - 1; r++)
		bucket[r + Lmax - 1] = mms_t5_rel_bucket(r, 1, (int) c->n_buckets, MMS_T5_MAX_DISTANCE);

	for (int64_t l = 0; l < c->n_enc_layer; l++)
	{
		const MmsT5Block *b = &m->enc[l];
		const float *rel_b = b->w[MMS_W_ATTN_REL_B].data;	/* (n_buckets, n_head) */

		mms_rmsnorm_rows(h, x, (const float *) b->w[MMS_W_ATTN_NORM].data, T, d, c->eps);
		mms_linear(q, h, b->w[MMS_W_ATTN_Q], T, d, in, 0, qs);
		mms_linear(k, h, b->w[MMS_W_ATTN_K], T, d, in, 0, qs);
		mms_linear(v, h, b->w[MMS_W_ATTN_V], T, d, in, 0, qs);
		/* bias[hd][rel + Lmax - 1], gathered once per block */
		for (int64_t hd = 0; hd < c->n_head; hd++)
			for (int64_t r = 0; r < 2 * Lmax - 1; r++)
				bias[hd * 2 * Lmax + r] = rel_b[(int64_t) bucket[r] * c->n_head + hd];

		{
			EncAttnJob	job = {c, q, k, v, att, bias, Lmax, offs, lens, bias + c->n_head * 2 * Lmax};

			mms_parallel(n_seq * (int) c->n_head, enc_attn_task, &job);
		}
		mms_linear(x, att, b->w[MMS_W_ATTN_O], T, in, d, 1, qs);
		feed_forward(m, b, x, T, h, f1, f2, qs);
	}
	mms_rmsnorm_rows(x, x, m->enc_norm, T, d, c->eps);
	free(offs);
	return MMS_OK;
}

/* ---------------------------------------------------------------- decoder state */

MmsStatus
mms_t5_cross_create(const MmsT5 *m, MmsT5Work *w, int n_seq, const float *enc_out,
					const int32_t *lens, MmsT5Cross **out, MmsError *err)
{
	const MmsT5Config *c = &m->cfg;
	int64_t		T = 0,
				in = c->inner;
	float	   *tk,
			   *tv;
	MmsLinearScratch lin,
			   *qs = &lin;

	for (int s = 0; s < n_seq; s++)
		out[s] = NULL;
	for (int s = 0; s < n_seq; s++)
	{
		MmsT5Cross *cr = calloc(1, sizeof(MmsT5Cross));
		size_t		n = (size_t) (c->n_dec_layer * lens[s] * in);

		if (cr == NULL || (cr->k = malloc(n * sizeof(float))) == NULL ||
			(cr->v = malloc(n * sizeof(float))) == NULL)
		{
			if (cr)
			{
				free(cr->k);
				free(cr);
			}
			for (int i = 0; i < s; i++)
			{
				mms_t5_cross_release(out[i]);
				out[i] = NULL;
			}
			return mms_fail(err, MMS_ERR_NOMEM, "out of memory for cross-attention keys and values");
		}
		cr->enc_len = lens[s];
		cr->refcount = 1;
		out[s] = cr;
		T += lens[s];
	}
	tk = work_floats(w, (size_t) (2 * T * in), err);
	if (tk == NULL || work_linear(m, w, T, 1, &lin, err) != MMS_OK)
	{
		for (int s = 0; s < n_seq; s++)
		{
			mms_t5_cross_release(out[s]);
			out[s] = NULL;
		}
		return err ? err->code : MMS_ERR_NOMEM;
	}
	tv = tk + T * in;
	/* One GEMM per block over every input's rows, then scatter per input. */
	for (int64_t l = 0; l < c->n_dec_layer; l++)
	{
		mms_linear(tk, enc_out, m->dec[l].w[MMS_W_CROSS_K], T, c->d_model, in, 0, qs);
		mms_linear(tv, enc_out, m->dec[l].w[MMS_W_CROSS_V], T, c->d_model, in, 0, qs);
		for (int s = 0, off = 0; s < n_seq; off += lens[s], s++)
		{
			size_t		n = (size_t) (lens[s] * in);

			memcpy(out[s]->k + l * n, tk + (int64_t) off * in, n * sizeof(float));
			memcpy(out[s]->v + l * n, tv + (int64_t) off * in, n * sizeof(float));
		}
	}
	return MMS_OK;
}

void
mms_t5_cross_retain(MmsT5Cross *c)
{
	c->refcount++;
}

void
mms_t5_cross_release(MmsT5Cross *c)
{
	if (c == NULL || --c->refcount > 0)
		return;
	free(c->k);
	free(c->v);
	free(c);
}

size_t
mms_t5_state_bytes(const MmsT5 *m, int32_t cap)
{
	return 2 * (size_t) m->cfg.n_dec_layer * (size_t) cap * (size_t) m->cfg.inner * sizeof(float);
}

MmsStatus
mms_t5_state_init(const MmsT5 *m, MmsT5State *st, MmsT5Cross *cross, int32_t cap, MmsError *err)
{
	size_t		n = (size_t) m->cfg.n_dec_layer * (size_t) cap * (size_t) m->cfg.inner;

	memset(st, 0, sizeof(*st));
	if (cap < 1)
		return mms_fail(err, MMS_ERR_ARG, "decoder cache capacity must be positive");
	st->k = malloc(n * sizeof(float));
	st->v = malloc(n * sizeof(float));
	if (st->k == NULL || st->v == NULL)
	{
		free(st->k);
		free(st->v);
		memset(st, 0, sizeof(*st));
		return mms_fail(err, MMS_ERR_NOMEM, "out of memory for a %zu-byte decoder cache",
						2 * n * sizeof(float));
	}
	st->cap = cap;
	st->cross = cross;
	mms_t5_cross_retain(cross);
	return MMS_OK;
}

void
mms_t5_state_free(MmsT5State *st)
{
	if (st == NULL)
		return;
	free(st->k);
	free(st->v);
	if (st->cross)
		mms_t5_cross_release(st->cross);
	memset(st, 0, sizeof(*st));
}

void
mms_t5_state_copy(const MmsT5 *m, MmsT5State *dst, const MmsT5State *src)
{
	size_t		row = (size_t) m->cfg.inner;

	if (dst == src)
		return;
	for (int64_t l = 0; l < m->cfg.n_dec_layer; l++)
	{
		size_t		base = (size_t) l * (size_t) src->cap * row;

		memcpy(dst->k + base, src->k + base, (size_t) src->pos * row * sizeof(float));
		memcpy(dst->v + base, src->v + base, (size_t) src->pos * row * sizeof(float));
	}
	if (dst->cross != src->cross)
	{
		mms_t5_cross_retain(src->cross);
		mms_t5_cross_release(dst->cross);
		dst->cross = src->cross;
	}
	dst->pos = src->pos;
}

/* ---------------------------------------------------------------- decoder step */

/* One decoder row's self- (cross = 0) or cross-attention (cross = 1), all heads. */
typedef struct DecAttnJob
{
	const MmsT5Config *c;
	MmsT5State *const *st;
	int64_t		layer;
	const float *q;				/* (n, inner) */
	const float *k,
			   *v;				/* self: the new token's (n, inner), appended to the cache */
	float	   *att;			/* (n, inner) */
	const float *rel_b;			/* (n_buckets, n_head) */
	const int32_t *bucket;		/* (n, max_keys) */
	int64_t		max_keys;
	float	   *scratch;		/* threads x 2 max_keys */
	int			cross;
} DecAttnJob;

static void
dec_attn_task(void *arg, int i, int thread)
{
	const DecAttnJob *j = arg;
	const MmsT5Config *c = j->c;
	int64_t		in = c->inner,
				dk = c->d_kv,
				l = j->layer;
	float	   *scores = j->scratch + (size_t) thread * 2 * (size_t) j->max_keys;
	float	   *bias = scores + j->max_keys;
	MmsT5State *s = j->st[i];

	if (j->cross)
	{
		const MmsT5Cross *cr = s->cross;
		int64_t		L = cr->enc_len;

		for (int64_t hd = 0; hd < c->n_head; hd++)
			attend_row(j->q + i * in + hd * dk, cr->k + l * L * in + hd * dk,
					   cr->v + l * L * in + hd * dk, in, L, dk, NULL, scores,
					   j->att + i * in + hd * dk);
	}
	else
	{
		int64_t		p = s->pos;
		float	   *kc = s->k + (l * s->cap) * in;
		float	   *vc = s->v + (l * s->cap) * in;

		memcpy(kc + p * in, j->k + i * in, (size_t) in * sizeof(float));
		memcpy(vc + p * in, j->v + i * in, (size_t) in * sizeof(float));
		for (int64_t hd = 0; hd < c->n_head; hd++)
		{
			for (int64_t jj = 0; jj <= p; jj++)
				bias[jj] = j->rel_b[(int64_t) j->bucket[i * j->max_keys + jj] * c->n_head + hd];
			attend_row(j->q + i * in + hd * dk, kc + hd * dk, vc + hd * dk, in, p + 1, dk,
					   bias, scores, j->att + i * in + hd * dk);
		}
	}
}

MmsStatus
mms_t5_decode_step(const MmsT5 *m, MmsT5Work *w, int n, MmsT5State *const *st,
				   const int32_t *tokens, float *logits, MmsError *err)
{
	const MmsT5Config *c = &m->cfg;
	int64_t		d = c->d_model,
				in = c->inner,
				ff = c->d_ff;
	int64_t		max_keys = 1;
	float	   *x,
			   *h,
			   *q,
			   *k,
			   *v,
			   *att,
			   *f1,
			   *f2,
			   *scores;
	int32_t    *bucket;
	MmsLinearScratch lin,
			   *qs = &lin;
	MmsStatus	rc;

	if (c->encoder_only)
		return mms_fail(err, MMS_ERR_UNSUPPORTED, "model is encoder-only and cannot generate");
	for (int i = 0; i < n; i++)
	{
		if (st[i]->pos >= st[i]->cap)
			return mms_fail(err, MMS_ERR_LIMIT, "decoder cache full (%d tokens)", st[i]->cap);
		max_keys = st[i]->pos + 1 > max_keys ? st[i]->pos + 1 : max_keys;
		max_keys = st[i]->cross->enc_len > max_keys ? st[i]->cross->enc_len : max_keys;
	}
	x = work_floats(w, (size_t) (2 * n * d + 4 * n * in + 2 * n * ff) +
					(size_t) (2 * max_keys) * (size_t) mms_threads(), err);
	/* bucket of every (row, key) pair, the same in every block: computed once per step */
	bucket = work_ints(w, (size_t) n * (size_t) max_keys, err);
	if (x == NULL || bucket == NULL || work_linear(m, w, n, 0, &lin, err) != MMS_OK)
		return err ? err->code : MMS_ERR_NOMEM;
	for (int i = 0; i < n; i++)
		for (int64_t j = 0; j <= st[i]->pos; j++)
			bucket[i * max_keys + j] = mms_t5_rel_bucket(j - st[i]->pos, 0, (int) c->n_buckets,
														  MMS_T5_MAX_DISTANCE);
	h = x + n * d;
	q = h + n * d;
	k = q + n * in;
	v = k + n * in;
	att = v + n * in;
	f1 = att + n * in;
	f2 = f1 + n * ff;
	scores = f2 + n * ff;		/* threads x (scores, bias) of max_keys each */
	if ((rc = embed(m, tokens, n, x, err)) != MMS_OK)
		return rc;

	for (int64_t l = 0; l < c->n_dec_layer; l++)
	{
		const MmsT5Block *b = &m->dec[l];
		const float *rel_b = b->w[MMS_W_ATTN_REL_B].data;

		/* causal self-attention over the cache plus the new token */
		mms_rmsnorm_rows(h, x, (const float *) b->w[MMS_W_ATTN_NORM].data, n, d, c->eps);
		mms_linear(q, h, b->w[MMS_W_ATTN_Q], n, d, in, 0, qs);
		mms_linear(k, h, b->w[MMS_W_ATTN_K], n, d, in, 0, qs);
		mms_linear(v, h, b->w[MMS_W_ATTN_V], n, d, in, 0, qs);
		{
			DecAttnJob	job = {c, st, l, q, k, v, att, rel_b, bucket, max_keys, scores, 0};

			mms_parallel(n, dec_attn_task, &job);
		}
		mms_linear(x, att, b->w[MMS_W_ATTN_O], n, in, d, 1, qs);

		/* cross-attention over the encoder output, no position bias */
		mms_rmsnorm_rows(h, x, (const float *) b->w[MMS_W_CROSS_NORM].data, n, d, c->eps);
		mms_linear(q, h, b->w[MMS_W_CROSS_Q], n, d, in, 0, qs);
		{
			DecAttnJob	job = {c, st, l, q, NULL, NULL, att, NULL, NULL, max_keys, scores, 1};

			mms_parallel(n, dec_attn_task, &job);
		}
		mms_linear(x, att, b->w[MMS_W_CROSS_O], n, in, d, 1, qs);
		feed_forward(m, b, x, n, h, f1, f2, qs);
	}
	mms_rmsnorm_rows(h, x, m->dec_norm, n, d, c->eps);
	if (c->tied)
	{
		/* HF rescales before a tied LM head (llama.cpp does not; HF is the reference) */
		float		scale = 1.0f / sqrtf((float) d);

		for (int64_t i = 0; i < n * d; i++)
			h[i] *= scale;
	}
	mms_linear(logits, h, m->lm_head, n, d, c->vocab, 0, qs);
	for (int i = 0; i < n; i++)
		st[i]->pos++;
	return MMS_OK;
}
