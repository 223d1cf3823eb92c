/*
 * t5.h — the T5 encoder-decoder forward pass over a batch of sequences of
 * different lengths: each linear layer is one GEMM over all rows of the batch,
 * attention runs per sequence. Weights are built once from a parsed GGUF
 * (F32 used in place, other types dequantized once); the model is immutable
 * after load, so any number of callers can share it. Generation: generate.h.
 */
#ifndef MMS_T5_H
#define MMS_T5_H

#include <stddef.h>
#include <stdint.h>

#include "gguf.h"
#include "mms_error.h"
#include "t5_meta.h"

typedef struct MmsT5 MmsT5;

/* Per-caller scratch memory, grown on demand and reused across calls. */
typedef struct MmsT5Work MmsT5Work;

/*
 * Cross-attention keys and values of one encoded input, computed once and
 * shared (refcounted) by every decoder sequence of that input (beams).
 */
typedef struct MmsT5Cross
{
	int32_t		enc_len;
	int32_t		refcount;
	float	   *k;				/* (n_dec_layer, enc_len, inner) */
	float	   *v;				/* (n_dec_layer, enc_len, inner) */
} MmsT5Cross;

/* One decoder sequence: its self-attention cache and position. */
typedef struct MmsT5State
{
	MmsT5Cross *cross;			/* retained */
	int32_t		pos;			/* tokens fed so far = next query position */
	int32_t		cap;			/* cache capacity in tokens */
	float	   *k;				/* (n_dec_layer, cap, inner) */
	float	   *v;				/* (n_dec_layer, cap, inner) */
} MmsT5State;

/*
 * Builds the model from a parsed file. The GGUF buffer must outlive the model
 * (F32 tensors are used in place when suitably aligned).
 */
MmsStatus	mms_t5_load(const MmsGguf *g, MmsT5 **out, MmsError *err);

/*
 * For weights shared between processes: the f32 floats a model needs besides
 * its in-place F32 tensors (dequantized or realigned ones), and a load that
 * puts them in a caller-provided arena (e.g. shared memory). With fill = 1
 * the arena is written; with fill = 0 it is taken as already written by an
 * earlier fill of the same file, and only pointers are set up (cheap).
 * arena = NULL allocates a private one (= mms_t5_load).
 */
MmsStatus	mms_t5_arena_floats(const MmsGguf *g, size_t *n_floats, MmsError *err);
MmsStatus	mms_t5_load_with_arena(const MmsGguf *g, float *arena, size_t arena_floats, int fill,
								   MmsT5 **out, MmsError *err);
void		mms_t5_free(MmsT5 *m);
const MmsT5Config *mms_t5_config(const MmsT5 *m);
/* Bytes of f32 weights the decoder reads per step (for bandwidth accounting). */
size_t		mms_t5_decoder_weight_bytes(const MmsT5 *m);
/*
 * MMS_T_F32 when every linear layer computes in f32; else the quantized type
 * (Q8_0, Q4_0) whose blocks the int8 kernels read in place.
 */
int			mms_t5_weight_type(const MmsT5 *m);
/* Bytes of weights this process holds (dequantized copies; in-place ones not counted). */
size_t		mms_t5_owned_bytes(const MmsT5 *m);

MmsT5Work  *mms_t5_work_create(void);
void		mms_t5_work_free(MmsT5Work *w);

/*
 * Encodes n_seq sequences; ids[s] has lens[s] tokens (>= 1). out receives the
 * final-norm hidden states packed row after row: (sum(lens), d_model).
 */
MmsStatus	mms_t5_encode(const MmsT5 *m, MmsT5Work *w, int n_seq, const int32_t *const *ids,
						  const int32_t *lens, float *out, MmsError *err);

/*
 * Cross-attention K/V for n_seq encoded inputs (enc_out packed as above).
 * out[s] gets refcount 1.
 */
MmsStatus	mms_t5_cross_create(const MmsT5 *m, MmsT5Work *w, int n_seq, const float *enc_out,
								const int32_t *lens, MmsT5Cross **out, MmsError *err);
void		mms_t5_cross_retain(MmsT5Cross *c);
void		mms_t5_cross_release(MmsT5Cross *c);

size_t		mms_t5_state_bytes(const MmsT5 *m, int32_t cap);
MmsStatus	mms_t5_state_init(const MmsT5 *m, MmsT5State *st, MmsT5Cross *cross, int32_t cap,
							  MmsError *err);
void		mms_t5_state_free(MmsT5State *st);
/* dst becomes a copy of src (same cross, cache rows, position); both initialised with equal cap. */
void		mms_t5_state_copy(const MmsT5 *m, MmsT5State *dst, const MmsT5State *src);

/*
 * One decoder step for n sequences: feeds tokens[i] to st[i] at its position
 * (which then advances) and writes logits (n, vocab). A sequence whose cache
 * is full gets MMS_ERR_LIMIT before anything changes.
 */
MmsStatus	mms_t5_decode_step(const MmsT5 *m, MmsT5Work *w, int n, MmsT5State *const *st,
							   const int32_t *tokens, float *logits, MmsError *err);

#endif
