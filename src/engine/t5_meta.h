/*
 * t5_meta.h — what a T5-family GGUF must hold: hyperparameters read from the
 * metadata, and the table of tensors (names and shapes) the model needs.
 * Validates a file without building the model; no BLAS here, so the registry
 * can describe files inside the preloaded library. Forward pass: t5.h.
 */
#ifndef MMS_T5_META_H
#define MMS_T5_META_H

#include <stdint.h>

#include "gguf.h"
#include "mms_error.h"

/* HF's relative_attention_max_distance; GGUF has no key for it (llama.cpp fixes it too). */
#define MMS_T5_MAX_DISTANCE 128
/* Upper bounds that keep size arithmetic far from overflow. */
#define MMS_T5_MAX_DIM      (1 << 16)
#define MMS_T5_MAX_LAYERS   256
#define MMS_T5_MAX_VOCAB    (1 << 22)

typedef struct MmsT5Config
{
	int			encoder_only;	/* arch "t5encoder": no decoder tensors */
	int64_t		d_model;		/* t5.embedding_length */
	int64_t		d_ff;			/* t5.feed_forward_length */
	int64_t		n_head;			/* t5.attention.head_count */
	int64_t		d_kv;			/* t5.attention.key_length (= value_length) */
	int64_t		inner;			/* n_head * d_kv; may differ from d_model */
	int64_t		n_enc_layer;	/* t5.block_count */
	int64_t		n_dec_layer;	/* t5.decoder_block_count, else block_count */
	int64_t		vocab;			/* rows of token_embd */
	int64_t		n_buckets;		/* t5.attention.relative_buckets_count */
	int64_t		context_length; /* t5.context_length (informational) */
	float		eps;			/* t5.attention.layer_norm_rms_epsilon */
	int32_t		decoder_start_id;	/* t5.decoder_start_token_id, default 0 */
	int32_t		eos_id;			/* tokenizer.ggml.eos_token_id, default 1 */
	int			gated;			/* ffn_gate present: gated GELU, else ReLU */
	int			tied;			/* no output tensor, or an exact copy of token_embd: head scaled */
} MmsT5Config;

/* What the registry shows about a file. */
typedef struct MmsT5Info
{
	MmsT5Config cfg;
	uint64_t	n_params;		/* elements over all tensors */
	uint32_t	type_mask;		/* bit (1 << MmsTensorType) for each type present */
	char		arch[16];		/* "t5" or "t5encoder" */
	char		tokenizer[16];	/* tokenizer.ggml.model, "" if absent */
} MmsT5Info;

/* Weight slots of one transformer block (encoder blocks use a subset). */
typedef enum MmsT5Slot
{
	MMS_W_ATTN_NORM,
	MMS_W_ATTN_Q,
	MMS_W_ATTN_K,
	MMS_W_ATTN_V,
	MMS_W_ATTN_O,
	MMS_W_ATTN_REL_B,
	MMS_W_CROSS_NORM,
	MMS_W_CROSS_Q,
	MMS_W_CROSS_K,
	MMS_W_CROSS_V,
	MMS_W_CROSS_O,
	MMS_W_FFN_NORM,
	MMS_W_FFN_GATE,
	MMS_W_FFN_UP,
	MMS_W_FFN_DOWN,
	MMS_W_N_LAYER_SLOTS,
	/* model-wide weights */
	MMS_W_TOKEN_EMBD = MMS_W_N_LAYER_SLOTS,
	MMS_W_OUTPUT,
	MMS_W_ENC_NORM,
	MMS_W_DEC_NORM
} MmsT5Slot;

typedef enum MmsT5Part
{
	MMS_PART_MODEL,				/* model-wide */
	MMS_PART_ENC,				/* encoder block `layer` */
	MMS_PART_DEC				/* decoder block `layer` */
} MmsT5Part;

/* One tensor the model uses, with the shape it must have. */
typedef struct MmsT5TensorSpec
{
	char		name[64];
	MmsT5Part	part;
	int			layer;
	MmsT5Slot	slot;
	int64_t		ne0;			/* contiguous dim */
	int64_t		ne1;			/* rows; 0 for a 1-D tensor */
	int			required;
} MmsT5TensorSpec;

/* Called for each tensor spec with the tensor found (NULL if optional and absent). */
typedef MmsStatus (*MmsT5Visit) (void *ctx, const MmsT5TensorSpec *spec,
								 const MmsGgufTensor *t, MmsError *err);

/*
 * The single list of the tensors a T5 model uses: walks it in order, finding
 * and shape-checking each tensor, and calls visit (may be NULL).
 */
MmsStatus	mms_t5_walk_tensors(const MmsGguf *g, const MmsT5Config *cfg,
								MmsT5Visit visit, void *ctx, MmsError *err);

/* Reads and range-checks the hyperparameters. */
MmsStatus	mms_t5_read_config(const MmsGguf *g, MmsT5Config *cfg, MmsError *err);

/*
 * Finds a weight by name and checks its shape (ne0 = contiguous dim,
 * ne1 = rows; ne1 == 0 for 1-D). *t = NULL and MMS_OK when absent and not
 * required.
 */
MmsStatus	mms_t5_find_weight(const MmsGguf *g, const char *name, int64_t ne0, int64_t ne1,
							   int required, const MmsGgufTensor **t, MmsError *err);

/*
 * Full validation: config, every tensor the model needs present with the
 * right shape and a supported type, and a "t5" tokenizer consistent with the
 * vocabulary. Fills *info (may be NULL).
 */
MmsStatus	mms_t5_validate(const MmsGguf *g, MmsT5Info *info, MmsError *err);

/* "f32,q8_0"-style list of the types in a mask; buf of at least 64 bytes. */
void		mms_t5_type_list(uint32_t type_mask, char *buf, size_t buflen);

#endif
