/*
 * t5_meta.c — T5 hyperparameters and the tensor table, read and checked from
 * GGUF metadata (llama.cpp's "t5"/"t5encoder" conventions). Does not load or
 * dequantize weights (t5.c does) and never touches BLAS.
 */
#include "t5_meta.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer.h"

/* Reads a required (or defaulted) integer key and checks its range. */
static MmsStatus
read_int(const MmsGguf *g, const char *key, int required, int64_t dflt,
		 int64_t lo, int64_t hi, int64_t *out, MmsError *err)
{
	int			rc = mms_gguf_get_int(g, key, out, err);

	if (rc < 0)
		return err ? err->code : MMS_ERR_MODEL;
	if (rc == 0)
	{
		if (required)
			return mms_fail(err, MMS_ERR_MODEL, "missing metadata key \"%s\"", key);
		*out = dflt;
	}
	if (*out < lo || *out > hi)
		return mms_fail(err, MMS_ERR_MODEL, "metadata key \"%s\" = %lld is out of range [%lld, %lld]",
						key, (long long) *out, (long long) lo, (long long) hi);
	return MMS_OK;
}

/*
 * Cosine similarity of two tensors of the same shape, dequantized row by row;
 * -1 when they cannot be read.
 */
#define COSINE_PEEK_ROWS 64
#define COSINE_PEEK_MIN 0.5

static double
tensor_cosine(const MmsGgufTensor *a, const MmsGgufTensor *b)
{
	uint64_t	ne0 = a->ne[0];
	uint64_t	rows = a->n_elems / (ne0 ? ne0 : 1);
	uint64_t	row_a = mms_tensor_type_bytes(a->type, ne0);
	uint64_t	row_b = mms_tensor_type_bytes(b->type, ne0);
	float	   *x = malloc(sizeof(float) * ne0);
	float	   *y = malloc(sizeof(float) * ne0);
	double		xy = 0,
				xx = 0,
				yy = 0;
	int			ok = x != NULL && y != NULL && row_a > 0 && row_b > 0;

	for (uint64_t r = 0; ok && r < rows; r++)
	{
		ok = mms_dequantize(a->type, a->data + r * row_a, ne0, x, NULL) == MMS_OK &&
			mms_dequantize(b->type, b->data + r * row_b, ne0, y, NULL) == MMS_OK;
		for (uint64_t i = 0; ok && i < ne0; i++)
		{
			xy += (double) x[i] * y[i];
			xx += (double) x[i] * x[i];
			yy += (double) y[i] * y[i];
		}
		/*
		 * An untied head (the common case, and every load calls this) is far
		 * from the embedding after a few rows already: stop reading there.
		 */
		if (ok && r + 1 == COSINE_PEEK_ROWS && r + 1 < rows && xx > 0 && yy > 0 &&
			xy / sqrt(xx * yy) < COSINE_PEEK_MIN)
			break;
	}
	free(x);
	free(y);
	return ok && xx > 0 && yy > 0 ? xy / sqrt(xx * yy) : -1.0;
}

/*
 * Is the LM head the embedding? Yes without an output tensor, and also when
 * output.weight is a copy of it: llama.cpp's converter writes the
 * lm_head.weight that older tied t5 v1.0 checkpoints store, with no key
 * saying the head is tied, and transformers still rescales by d_model^-0.5
 * for those (tie_word_embeddings). Of the same type a copy is byte-identical;
 * llama-quantize may store the two in different types (say Q8_0 and Q4_0),
 * and then they agree up to quantization error: a cosine similarity above
 * 0.95 (Q4_0 of a tensor keeps about 0.995; an untied head trained apart
 * from the embedding is near 0). A header-only parse has no data to compare:
 * untied, as the file says.
 */
#define TIED_MIN_COSINE 0.95

static int
head_is_embedding(const MmsGgufTensor *emb, const MmsGgufTensor *out)
{
	if (out == NULL)
		return 1;
	if (out->n_dims != emb->n_dims || out->ne[0] != emb->ne[0] || out->ne[1] != emb->ne[1] ||
		out->data == NULL || emb->data == NULL)
		return 0;
	if (out->type == emb->type)
		return out->n_bytes == emb->n_bytes && memcmp(out->data, emb->data, out->n_bytes) == 0;
	return tensor_cosine(emb, out) > TIED_MIN_COSINE;
}

MmsStatus
mms_t5_read_config(const MmsGguf *g, MmsT5Config *cfg, MmsError *err)
{
	MmsGgufStr	arch;
	const char *p;
	char		key[96];
	double		eps;
	int64_t		v;
	int			rc;
	const MmsGgufTensor *emb;
	MmsStatus	st;

	memset(cfg, 0, sizeof(*cfg));
	rc = mms_gguf_get_str(g, "general.architecture", &arch, err);
	if (rc < 0)
		return err ? err->code : MMS_ERR_MODEL;
	if (rc == 0)
		return mms_fail(err, MMS_ERR_MODEL, "missing metadata key \"general.architecture\"");
	if (mms_gguf_str_eq(arch, "t5"))
		p = "t5";
	else if (mms_gguf_str_eq(arch, "t5encoder"))
	{
		p = "t5encoder";
		cfg->encoder_only = 1;
	}
	else
		return mms_fail(err, MMS_ERR_UNSUPPORTED,
						"unsupported architecture \"%.*s\" (supported: t5, t5encoder)",
						(int) (arch.len > 64 ? 64 : arch.len), arch.ptr);

#define KEY(suffix) (snprintf(key, sizeof(key), "%s.%s", p, suffix), key)
	if ((st = read_int(g, KEY("embedding_length"), 1, 0, 1, MMS_T5_MAX_DIM, &cfg->d_model, err)))
		return st;
	if ((st = read_int(g, KEY("feed_forward_length"), 1, 0, 1, 4 * MMS_T5_MAX_DIM, &cfg->d_ff, err)))
		return st;
	if ((st = read_int(g, KEY("attention.head_count"), 1, 0, 1, 1024, &cfg->n_head, err)))
		return st;
	if ((st = read_int(g, KEY("attention.key_length"), 1, 0, 1, MMS_T5_MAX_DIM, &cfg->d_kv, err)))
		return st;
	if ((st = read_int(g, KEY("attention.value_length"), 0, cfg->d_kv, 1, MMS_T5_MAX_DIM, &v, err)))
		return st;
	if (v != cfg->d_kv)
		return mms_fail(err, MMS_ERR_UNSUPPORTED, "attention key length %lld differs from value length %lld",
						(long long) cfg->d_kv, (long long) v);
	cfg->inner = cfg->n_head * cfg->d_kv;
	if (cfg->inner > 4 * MMS_T5_MAX_DIM)
		return mms_fail(err, MMS_ERR_MODEL, "attention width %lld (heads x key length) is too large",
						(long long) cfg->inner);
	if ((st = read_int(g, KEY("block_count"), 1, 0, 1, MMS_T5_MAX_LAYERS, &cfg->n_enc_layer, err)))
		return st;
	if ((st = read_int(g, KEY("decoder_block_count"), 0, cfg->n_enc_layer, 1, MMS_T5_MAX_LAYERS,
					   &cfg->n_dec_layer, err)))
		return st;
	if (cfg->encoder_only)
		cfg->n_dec_layer = 0;
	if ((st = read_int(g, KEY("attention.relative_buckets_count"), 0, 32, 2, 128, &cfg->n_buckets, err)))
		return st;
	if ((st = read_int(g, KEY("context_length"), 0, 512, 1, INT32_MAX, &cfg->context_length, err)))
		return st;
	if ((st = read_int(g, KEY("decoder_start_token_id"), 0, 0, 0, MMS_T5_MAX_VOCAB, &v, err)))
		return st;
	cfg->decoder_start_id = (int32_t) v;
	rc = mms_gguf_get_float(g, KEY("attention.layer_norm_rms_epsilon"), &eps, err);
	if (rc < 0)
		return err ? err->code : MMS_ERR_MODEL;
	if (rc == 0)
		eps = 1e-6;
	if (!(eps > 0.0 && eps < 1.0))
		return mms_fail(err, MMS_ERR_MODEL, "metadata key \"%s\" = %g is out of range (0, 1)", key, eps);
	cfg->eps = (float) eps;
#undef KEY
	if ((st = read_int(g, "tokenizer.ggml.eos_token_id", 0, 1, 0, MMS_T5_MAX_VOCAB, &v, err)))
		return st;
	cfg->eos_id = (int32_t) v;

	/* Vocabulary and the two structural variants come from which tensors exist. */
	emb = mms_gguf_find_tensor(g, "token_embd.weight");
	if (emb == NULL)
		return mms_fail(err, MMS_ERR_MODEL, "missing tensor \"token_embd.weight\"");
	if (emb->n_dims != 2 || emb->ne[1] < 2 || emb->ne[1] > MMS_T5_MAX_VOCAB)
		return mms_fail(err, MMS_ERR_MODEL, "tensor \"token_embd.weight\" must be 2-D with 2 to %d rows",
						MMS_T5_MAX_VOCAB);
	cfg->vocab = (int64_t) emb->ne[1];
	if (cfg->decoder_start_id >= cfg->vocab || cfg->eos_id >= cfg->vocab)
		return mms_fail(err, MMS_ERR_MODEL, "decoder start id %d or eos id %d is outside the vocabulary (%lld)",
						cfg->decoder_start_id, cfg->eos_id, (long long) cfg->vocab);
	cfg->gated = mms_gguf_find_tensor(g, "enc.blk.0.ffn_gate.weight") != NULL;
	cfg->tied = head_is_embedding(emb, mms_gguf_find_tensor(g, "output.weight"));
	return MMS_OK;
}

MmsStatus
mms_t5_find_weight(const MmsGguf *g, const char *name, int64_t ne0, int64_t ne1,
				   int required, const MmsGgufTensor **out, MmsError *err)
{
	const MmsGgufTensor *t = mms_gguf_find_tensor(g, name);
	uint32_t	want_dims = ne1 > 0 ? 2 : 1;

	*out = NULL;
	if (t == NULL)
		return required ? mms_fail(err, MMS_ERR_MODEL, "missing tensor \"%s\"", name) : MMS_OK;
	if (t->n_dims != want_dims || (int64_t) t->ne[0] != ne0 || (ne1 > 0 && (int64_t) t->ne[1] != ne1))
	{
		if (ne1 > 0)
			return mms_fail(err, MMS_ERR_MODEL,
							"tensor \"%s\" has shape [%llu, %llu, %llu], expected [%lld, %lld]",
							name, (unsigned long long) t->ne[0], (unsigned long long) t->ne[1],
							(unsigned long long) t->ne[2], (long long) ne0, (long long) ne1);
		return mms_fail(err, MMS_ERR_MODEL, "tensor \"%s\" has shape [%llu, %llu], expected [%lld]",
						name, (unsigned long long) t->ne[0], (unsigned long long) t->ne[1],
						(long long) ne0);
	}
	if (!mms_tensor_type_supported(t->type))
		return mms_fail(err, MMS_ERR_UNSUPPORTED, "tensor \"%s\" has unsupported type %u", name,
						(unsigned) t->type);
	*out = t;
	return MMS_OK;
}

/* Per-block tensors: suffix, slot, shape codes and which stacks have them. */
enum
{
	D_MODEL = -1, D_FF = -2, D_INNER = -3, D_HEADS = -4, D_BUCKETS = -5, D_NONE = 0
};

typedef struct BlockTensor
{
	const char *suffix;
	MmsT5Slot	slot;
	int			ne0;
	int			ne1;
	int			in_enc;
	int			in_dec;
} BlockTensor;

static const BlockTensor block_tensors[] = {
	{"attn_norm", MMS_W_ATTN_NORM, D_MODEL, D_NONE, 1, 1},
	{"attn_q", MMS_W_ATTN_Q, D_MODEL, D_INNER, 1, 1},
	{"attn_k", MMS_W_ATTN_K, D_MODEL, D_INNER, 1, 1},
	{"attn_v", MMS_W_ATTN_V, D_MODEL, D_INNER, 1, 1},
	{"attn_o", MMS_W_ATTN_O, D_INNER, D_MODEL, 1, 1},
	{"attn_rel_b", MMS_W_ATTN_REL_B, D_HEADS, D_BUCKETS, 1, 1},
	{"cross_attn_norm", MMS_W_CROSS_NORM, D_MODEL, D_NONE, 0, 1},
	{"cross_attn_q", MMS_W_CROSS_Q, D_MODEL, D_INNER, 0, 1},
	{"cross_attn_k", MMS_W_CROSS_K, D_MODEL, D_INNER, 0, 1},
	{"cross_attn_v", MMS_W_CROSS_V, D_MODEL, D_INNER, 0, 1},
	{"cross_attn_o", MMS_W_CROSS_O, D_INNER, D_MODEL, 0, 1},
	{"ffn_norm", MMS_W_FFN_NORM, D_MODEL, D_NONE, 1, 1},
	{"ffn_gate", MMS_W_FFN_GATE, D_MODEL, D_FF, 1, 1},
	{"ffn_up", MMS_W_FFN_UP, D_MODEL, D_FF, 1, 1},
	{"ffn_down", MMS_W_FFN_DOWN, D_FF, D_MODEL, 1, 1},
};

static int64_t
dim_value(const MmsT5Config *cfg, int code)
{
	switch (code)
	{
		case D_MODEL:
			return cfg->d_model;
		case D_FF:
			return cfg->d_ff;
		case D_INNER:
			return cfg->inner;
		case D_HEADS:
			return cfg->n_head;
		case D_BUCKETS:
			return cfg->n_buckets;
		default:
			return 0;
	}
}

static MmsStatus
visit_one(const MmsGguf *g, MmsT5TensorSpec *spec, MmsT5Visit visit, void *ctx, MmsError *err)
{
	const MmsGgufTensor *t;
	MmsStatus	st = mms_t5_find_weight(g, spec->name, spec->ne0, spec->ne1, spec->required, &t, err);

	if (st != MMS_OK)
		return st;
	return visit ? visit(ctx, spec, t, err) : MMS_OK;
}

static MmsStatus
walk_stack(const MmsGguf *g, const MmsT5Config *cfg, MmsT5Part part,
		   MmsT5Visit visit, void *ctx, MmsError *err)
{
	int64_t		n_layer = part == MMS_PART_ENC ? cfg->n_enc_layer : cfg->n_dec_layer;
	const char *prefix = part == MMS_PART_ENC ? "enc" : "dec";

	for (int layer = 0; layer < n_layer; layer++)
	{
		for (size_t i = 0; i < sizeof(block_tensors) / sizeof(block_tensors[0]); i++)
		{
			const BlockTensor *bt = &block_tensors[i];
			MmsT5TensorSpec spec;
			MmsStatus	st;

			if (part == MMS_PART_ENC ? !bt->in_enc : !bt->in_dec)
				continue;
			if (bt->slot == MMS_W_FFN_GATE && !cfg->gated)
			{
				char		name[64];

				/* A gate in a later block of a ReLU model would be silently ignored: refuse it. */
				snprintf(name, sizeof(name), "%s.blk.%d.ffn_gate.weight", prefix, layer);
				if (mms_gguf_find_tensor(g, name) != NULL)
					return mms_fail(err, MMS_ERR_MODEL,
									"tensor \"%s\" present but block 0 of the encoder has no gate", name);
				continue;
			}
			memset(&spec, 0, sizeof(spec));
			snprintf(spec.name, sizeof(spec.name), "%s.blk.%d.%s.weight", prefix, layer, bt->suffix);
			spec.part = part;
			spec.layer = layer;
			spec.slot = bt->slot;
			spec.ne0 = dim_value(cfg, bt->ne0);
			spec.ne1 = dim_value(cfg, bt->ne1);
			/* Relative bias: HF keeps it in block 0 only; later blocks share it. */
			spec.required = !(bt->slot == MMS_W_ATTN_REL_B && layer > 0);
			if ((st = visit_one(g, &spec, visit, ctx, err)) != MMS_OK)
				return st;
		}
	}
	return MMS_OK;
}

static MmsStatus
walk_model_tensor(const MmsGguf *g, const char *name, MmsT5Slot slot, int64_t ne0, int64_t ne1,
				  int required, MmsT5Visit visit, void *ctx, MmsError *err)
{
	MmsT5TensorSpec spec;

	memset(&spec, 0, sizeof(spec));
	snprintf(spec.name, sizeof(spec.name), "%s", name);
	spec.part = MMS_PART_MODEL;
	spec.slot = slot;
	spec.ne0 = ne0;
	spec.ne1 = ne1;
	spec.required = required;
	return visit_one(g, &spec, visit, ctx, err);
}

MmsStatus
mms_t5_walk_tensors(const MmsGguf *g, const MmsT5Config *cfg, MmsT5Visit visit, void *ctx,
					MmsError *err)
{
	MmsStatus	st;

	if ((st = walk_model_tensor(g, "token_embd.weight", MMS_W_TOKEN_EMBD, cfg->d_model, cfg->vocab,
								1, visit, ctx, err)))
		return st;
	if ((st = walk_stack(g, cfg, MMS_PART_ENC, visit, ctx, err)))
		return st;
	if ((st = walk_model_tensor(g, "enc.output_norm.weight", MMS_W_ENC_NORM, cfg->d_model, 0,
								1, visit, ctx, err)))
		return st;
	if (cfg->encoder_only)
		return MMS_OK;
	if ((st = walk_stack(g, cfg, MMS_PART_DEC, visit, ctx, err)))
		return st;
	if ((st = walk_model_tensor(g, "dec.output_norm.weight", MMS_W_DEC_NORM, cfg->d_model, 0,
								1, visit, ctx, err)))
		return st;
	return walk_model_tensor(g, "output.weight", MMS_W_OUTPUT, cfg->d_model, cfg->vocab,
							 0, visit, ctx, err);
}

MmsStatus
mms_t5_validate(const MmsGguf *g, MmsT5Info *info, MmsError *err)
{
	MmsT5Info	local;
	MmsT5Info  *inf = info ? info : &local;
	MmsTokenizer *tok = NULL;
	MmsGgufStr	tmodel;
	MmsStatus	st;
	int			rc;

	memset(inf, 0, sizeof(*inf));
	if ((st = mms_t5_read_config(g, &inf->cfg, err)) != MMS_OK)
		return st;
	snprintf(inf->arch, sizeof(inf->arch), "%s", inf->cfg.encoder_only ? "t5encoder" : "t5");
	if ((st = mms_t5_walk_tensors(g, &inf->cfg, NULL, NULL, err)) != MMS_OK)
		return st;
	for (uint64_t i = 0; i < g->n_tensors; i++)
	{
		inf->n_params += g->tensors[i].n_elems;
		inf->type_mask |= 1u << (g->tensors[i].type & 31);
	}

	rc = mms_gguf_get_str(g, "tokenizer.ggml.model", &tmodel, err);
	if (rc < 0)
		return err ? err->code : MMS_ERR_MODEL;
	if (rc == 0)
		return mms_fail(err, MMS_ERR_MODEL, "file has no tokenizer (metadata key \"tokenizer.ggml.model\" is missing)");
	snprintf(inf->tokenizer, sizeof(inf->tokenizer), "%.*s",
			 (int) (tmodel.len > 15 ? 15 : tmodel.len), tmodel.ptr);
	if ((st = mms_tok_load_gguf(g, &tok, err)) != MMS_OK)
		return st;
	if (mms_tok_n_pieces(tok) != inf->cfg.vocab)
	{
		int32_t		n = mms_tok_n_pieces(tok);

		mms_tok_free(tok);
		return mms_fail(err, MMS_ERR_MODEL, "tokenizer has %d pieces but the model vocabulary has %lld",
						n, (long long) inf->cfg.vocab);
	}
	mms_tok_free(tok);
	return MMS_OK;
}

void
mms_t5_type_list(uint32_t type_mask, char *buf, size_t buflen)
{
	static const MmsTensorType order[] = {MMS_T_F32, MMS_T_F16, MMS_T_BF16, MMS_T_Q8_0, MMS_T_Q4_0};
	size_t		used = 0;

	if (buflen == 0)
		return;
	buf[0] = '\0';
	for (size_t i = 0; i < sizeof(order) / sizeof(order[0]); i++)
	{
		if (type_mask & (1u << order[i]))
		{
			int			n = snprintf(buf + used, buflen - used, "%s%s", used ? "," : "",
									 mms_tensor_type_name(order[i]));

			if (n < 0 || (size_t) n >= buflen - used)
				return;
			used += (size_t) n;
		}
	}
}
