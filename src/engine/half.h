/*
 * half.h — IEEE half to single precision, exact, inline: quant.c converts
 * whole tensors with it and the int8 kernels' portable path reads block
 * scales with it.
 */
#ifndef MMS_HALF_H
#define MMS_HALF_H

#include <stdint.h>
#include <string.h>

static inline float
mms_bits_to_f32(uint32_t u)
{
	float		f;

	memcpy(&f, &u, sizeof(f));
	return f;
}

static inline uint32_t
mms_f32_to_bits(float f)
{
	uint32_t	u;

	memcpy(&u, &f, sizeof(u));
	return u;
}

/*
 * Normal numbers, infinities and NaNs (payload kept) are a re-bias of the
 * exponent; subnormals and zeros are mantissa * 2^-24, which single precision
 * represents exactly. Written with selects rather than branches so loops over
 * it vectorize.
 */
static inline float
mms_half_to_float(uint16_t h)
{
	uint32_t	sign = (uint32_t) (h & 0x8000) << 16;
	int32_t		em = h & 0x7fff;
	uint32_t	bits = ((uint32_t) em << 13) + (UINT32_C(112) << 23);
	uint32_t	sub = mms_f32_to_bits((float) em * 0x1p-24f);

	uint32_t	inf_nan = 0u - (uint32_t) (em >= 0x7c00);	/* all ones or zero */
	uint32_t	subnormal = 0u - (uint32_t) (em < 0x0400);

	bits += inf_nan & (UINT32_C(112) << 23);
	bits = (sub & subnormal) | (bits & ~subnormal);
	return mms_bits_to_f32(sign | bits);
}

/* A little-endian u16 at any address. */
static inline uint16_t
mms_load_u16(const uint8_t *p)
{
	return (uint16_t) (p[0] | p[1] << 8);
}

#endif
