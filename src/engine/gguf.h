/*
 * gguf.h — GGUF v3 reader over a caller-owned memory buffer (an mmap, or a
 * buffer in shared memory). Parsing validates every length, count, offset,
 * type, dimension and alignment; all views point into the buffer, so the
 * buffer must outlive the MmsGguf. Also dequantization of tensor data to f32.
 * Does not know about T5: see t5_meta.h for what a model needs.
 */
#ifndef MMS_GGUF_H
#define MMS_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include "mms_error.h"

/* Metadata value types, numbered as in the GGUF specification. */
typedef enum MmsGgufType
{
	MMS_GGUF_U8 = 0,
	MMS_GGUF_I8 = 1,
	MMS_GGUF_U16 = 2,
	MMS_GGUF_I16 = 3,
	MMS_GGUF_U32 = 4,
	MMS_GGUF_I32 = 5,
	MMS_GGUF_F32 = 6,
	MMS_GGUF_BOOL = 7,
	MMS_GGUF_STRING = 8,
	MMS_GGUF_ARRAY = 9,
	MMS_GGUF_U64 = 10,
	MMS_GGUF_I64 = 11,
	MMS_GGUF_F64 = 12
} MmsGgufType;

/* Tensor element types we accept, numbered as ggml numbers them. */
typedef enum MmsTensorType
{
	MMS_T_F32 = 0,
	MMS_T_F16 = 1,
	MMS_T_Q4_0 = 2,
	MMS_T_Q8_0 = 8,
	MMS_T_BF16 = 30
} MmsTensorType;

#define MMS_GGUF_MAX_DIMS 4
#define MMS_GGUF_DEFAULT_ALIGNMENT 32

/* A string inside the buffer: not NUL-terminated. */
typedef struct MmsGgufStr
{
	const char *ptr;
	uint64_t	len;
} MmsGgufStr;

typedef struct MmsGgufKV
{
	MmsGgufStr	key;
	MmsGgufType type;
	/* scalar value (type != ARRAY); integers are stored widened */
	union
	{
		uint64_t	u;			/* U8, U16, U32, U64, BOOL (0/1) */
		int64_t		i;			/* I8, I16, I32, I64 */
		double		f;			/* F32, F64 */
		MmsGgufStr	s;			/* STRING */
	}			v;
	/* array value (type == ARRAY) */
	MmsGgufType arr_type;		/* element type; nested arrays are rejected */
	uint64_t	arr_n;			/* element count */
	const uint8_t *arr_data;	/* first element, little-endian, in the buffer */
	MmsGgufStr *arr_str;		/* STRING arrays only: arr_n views (owned by MmsGguf) */
} MmsGgufKV;

typedef struct MmsGgufTensor
{
	MmsGgufStr	name;
	uint32_t	n_dims;
	uint64_t	ne[MMS_GGUF_MAX_DIMS];	/* ne[0] contiguous; unused dims are 1 */
	MmsTensorType type;
	uint64_t	offset;			/* relative to the data section */
	uint64_t	n_elems;
	uint64_t	n_bytes;
	const uint8_t *data;		/* into the buffer, bounds-checked */
} MmsGgufTensor;

typedef struct MmsGguf
{
	const uint8_t *buf;
	size_t		size;
	uint32_t	version;
	uint64_t	n_kv;
	MmsGgufKV  *kv;
	uint64_t	n_tensors;
	MmsGgufTensor *tensors;
	uint64_t	alignment;
	uint64_t	data_offset;	/* aligned start of the tensor data section */
	uint64_t	file_size;		/* size of the whole file (= size unless a prefix parse) */
} MmsGguf;

/*
 * Parses buf[0..size). On success *out owns heap arrays (free with
 * mms_gguf_free) that point into buf. On failure *out is zeroed and nothing
 * is allocated.
 */
MmsStatus	mms_gguf_parse(const void *buf, size_t size, MmsGguf *out, MmsError *err);
void		mms_gguf_free(MmsGguf *g);

/*
 * Parses the header (metadata and tensor infos) from the first avail bytes of
 * a file of file_size bytes, checking tensor ranges against file_size.
 * Tensors not wholly inside the prefix get data = NULL. MMS_ERR_LIMIT means
 * the header runs past the prefix: read more and retry. For readers that need
 * only metadata (tokenizer, registry) without reading gigabytes of weights.
 */
MmsStatus	mms_gguf_parse_prefix(const void *buf, size_t avail, uint64_t file_size,
								  MmsGguf *out, MmsError *err);

const MmsGgufKV *mms_gguf_find_kv(const MmsGguf *g, const char *key);
const MmsGgufTensor *mms_gguf_find_tensor(const MmsGguf *g, const char *name);

/*
 * Typed getters. Return 1 if found with a usable type, 0 if absent, and -1
 * (with err set, MMS_ERR_MODEL) if present with a wrong type or out of range.
 * get_int accepts any integer width (and bool); get_float accepts F32/F64.
 */
int			mms_gguf_get_int(const MmsGguf *g, const char *key, int64_t *out, MmsError *err);
int			mms_gguf_get_float(const MmsGguf *g, const char *key, double *out, MmsError *err);
int			mms_gguf_get_bool(const MmsGguf *g, const char *key, int *out, MmsError *err);
int			mms_gguf_get_str(const MmsGguf *g, const char *key, MmsGgufStr *out, MmsError *err);
/* A string view equals a C string. */
int			mms_gguf_str_eq(MmsGgufStr s, const char *cstr);

/* Tensor types. */
const char *mms_tensor_type_name(MmsTensorType t);
int			mms_tensor_type_supported(uint32_t t);
/* Bytes for n elements of type t (n must be a multiple of the block size); 0 if invalid. */
uint64_t	mms_tensor_type_bytes(MmsTensorType t, uint64_t n_elems);
/* Elements per block: 1 for float types, 32 for Q8_0 and Q4_0. */
uint32_t	mms_tensor_type_block(MmsTensorType t);

/* Dequantizes the whole tensor into dst (t->n_elems floats). */
MmsStatus	mms_gguf_dequantize(const MmsGgufTensor *t, float *dst, MmsError *err);
/* Dequantizes n elements (a multiple of the block size) that start at src. */
MmsStatus	mms_dequantize(MmsTensorType type, const uint8_t *src, uint64_t n, float *dst, MmsError *err);

/* Half-precision helpers (exact conversions). */
float		mms_f16_to_f32(uint16_t h);
float		mms_bf16_to_f32(uint16_t h);

#endif
