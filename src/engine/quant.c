/*
 * quant.c — tensor element types (names, block and byte sizes) and exact
 * conversion of their data (f32, f16, bf16, q8_0, q4_0) to f32. Runs once per
 * model load over all weights, so the inner loops are branch-free for the
 * compiler to vectorize. The file layout itself is gguf.c's.
 */
#include "gguf.h"

#include <inttypes.h>
#include <string.h>

#include "half.h"

#define QK 32					/* elements per q8_0 / q4_0 block */
#define Q8_0_BYTES 34			/* f16 d; int8 q[32] */
#define Q4_0_BYTES 18			/* f16 d; uint8 qs[16] */
#define CHUNK 1024				/* halves converted per staging copy */

float
mms_f16_to_f32(uint16_t h)
{
	return mms_half_to_float(h);
}

float
mms_bf16_to_f32(uint16_t h)
{
	return mms_bits_to_f32((uint32_t) h << 16);
}

/* f16 or bf16: copy a chunk into an aligned local array, then convert it. */
static void
dequant_halves(int is_bf16, const uint8_t *src, uint64_t n, float *restrict dst)
{
	uint16_t	tmp[CHUNK];

	while (n > 0)
	{
		size_t		m = n < CHUNK ? (size_t) n : CHUNK;
		size_t		i;

		memcpy(tmp, src, m * 2);
		if (is_bf16)
		{
			for (i = 0; i < m; i++)
				dst[i] = mms_bits_to_f32((uint32_t) tmp[i] << 16);
		}
		else
		{
			for (i = 0; i < m; i++)
				dst[i] = mms_half_to_float(tmp[i]);
		}
		src += m * 2;
		dst += m;
		n -= m;
	}
}

static void
dequant_q8_0(const uint8_t *src, uint64_t n_blocks, float *restrict dst)
{
	uint64_t	b;

	for (b = 0; b < n_blocks; b++)
	{
		const uint8_t *blk = src + b * Q8_0_BYTES;
		float		d = mms_half_to_float(mms_load_u16(blk));
		int8_t		q[QK];
		int			j;

		memcpy(q, blk + 2, QK);
		for (j = 0; j < QK; j++)
			dst[j] = (float) q[j] * d;
		dst += QK;
	}
}

static void
dequant_q4_0(const uint8_t *src, uint64_t n_blocks, float *restrict dst)
{
	uint64_t	b;

	for (b = 0; b < n_blocks; b++)
	{
		const uint8_t *blk = src + b * Q4_0_BYTES;
		float		d = mms_half_to_float(mms_load_u16(blk));
		uint8_t		qs[QK / 2];
		int			j;

		memcpy(qs, blk + 2, QK / 2);
		for (j = 0; j < QK / 2; j++)
		{
			dst[j] = (float) ((int) (qs[j] & 0x0f) - 8) * d;
			dst[j + QK / 2] = (float) ((int) (qs[j] >> 4) - 8) * d;
		}
		dst += QK;
	}
}

MmsStatus
mms_dequantize(MmsTensorType type, const uint8_t *src, uint64_t n, float *dst, MmsError *err)
{
	uint32_t	block;

	if (!mms_tensor_type_supported((uint32_t) type))
		return mms_fail(err, MMS_ERR_ARG, "cannot dequantize tensor type %d", (int) type);
	block = mms_tensor_type_block(type);
	if (n % block != 0)
		return mms_fail(err, MMS_ERR_ARG,
						"cannot dequantize %" PRIu64 " elements of type %s: not a "
						"multiple of the block size %" PRIu32,
						n, mms_tensor_type_name(type), block);
	if (n == 0)
		return MMS_OK;
	if (src == NULL || dst == NULL)
		return mms_fail(err, MMS_ERR_ARG, "cannot dequantize: NULL buffer");
	if (n > SIZE_MAX / sizeof(float))
		return mms_fail(err, MMS_ERR_NOMEM,
						"cannot dequantize %" PRIu64 " elements: too large", n);

	switch (type)
	{
		case MMS_T_F32:
			memcpy(dst, src, (size_t) n * sizeof(float));
			break;
		case MMS_T_F16:
			dequant_halves(0, src, n, dst);
			break;
		case MMS_T_BF16:
			dequant_halves(1, src, n, dst);
			break;
		case MMS_T_Q8_0:
			dequant_q8_0(src, n / QK, dst);
			break;
		case MMS_T_Q4_0:
			dequant_q4_0(src, n / QK, dst);
			break;
	}
	return MMS_OK;
}

MmsStatus
mms_gguf_dequantize(const MmsGgufTensor *t, float *dst, MmsError *err)
{
	if (t == NULL || (t->data == NULL && t->n_elems > 0))
		return mms_fail(err, MMS_ERR_ARG, "cannot dequantize: tensor has no data");
	return mms_dequantize(t->type, t->data, t->n_elems, dst, err);
}

/* ---- tensor types ------------------------------------------------------- */

const char *
mms_tensor_type_name(MmsTensorType t)
{
	switch (t)
	{
		case MMS_T_F32:
			return "f32";
		case MMS_T_F16:
			return "f16";
		case MMS_T_Q4_0:
			return "q4_0";
		case MMS_T_Q8_0:
			return "q8_0";
		case MMS_T_BF16:
			return "bf16";
	}
	return "unknown";
}

int
mms_tensor_type_supported(uint32_t t)
{
	return t == MMS_T_F32 || t == MMS_T_F16 || t == MMS_T_Q4_0 ||
		t == MMS_T_Q8_0 || t == MMS_T_BF16;
}

uint32_t
mms_tensor_type_block(MmsTensorType t)
{
	switch (t)
	{
		case MMS_T_F32:
		case MMS_T_F16:
		case MMS_T_BF16:
			return 1;
		case MMS_T_Q4_0:
		case MMS_T_Q8_0:
			return 32;
	}
	return 0;
}

uint64_t
mms_tensor_type_bytes(MmsTensorType t, uint64_t n_elems)
{
	switch (t)
	{
		case MMS_T_F32:
			return n_elems > UINT64_MAX / 4 ? 0 : n_elems * 4;
		case MMS_T_F16:
		case MMS_T_BF16:
			return n_elems > UINT64_MAX / 2 ? 0 : n_elems * 2;
		case MMS_T_Q4_0:
			return n_elems % 32 != 0 ? 0 : n_elems / 32 * 18;
		case MMS_T_Q8_0:
			return n_elems % 32 != 0 ? 0 : n_elems / 32 * 34;
	}
	return 0;
}
