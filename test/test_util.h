/*
 * test_util.h — helpers shared by the cmocka unit tests: locating fixtures and
 * reading whole files. Header-only so each test stays one file.
 */
#ifndef MMS_TEST_UTIL_H
#define MMS_TEST_UTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <math.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

/* Fixtures live in test/fixtures; tests run from the repository root. */
#define MMS_FIXTURE_DIR "test/fixtures/"

/* Reads a whole file into a malloc'd buffer; fails the test if it cannot. */
static inline uint8_t *
mms_test_read_file(const char *path, size_t *size)
{
	FILE	   *f = fopen(path, "rb");
	uint8_t    *buf;
	long		n;

	if (f == NULL)
		fail_msg("cannot open %s", path);
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	buf = malloc(n > 0 ? (size_t) n : 1);
	assert_non_null(buf);
	if (n > 0 && fread(buf, 1, (size_t) n, f) != (size_t) n)
		fail_msg("cannot read %s", path);
	fclose(f);
	*size = (size_t) n;
	return buf;
}

/* Largest |a[i] - b[i]| over n floats, in double. */
static inline double
mms_test_max_abs_diff(const float *a, const float *b, int64_t n)
{
	double		m = 0;

	for (int64_t i = 0; i < n; i++)
		m = fmax(m, fabs((double) a[i] - b[i]));
	return m;
}

/*
 * Models with Q8_0 / Q4_0 weights compute on int8-quantized activations, so
 * they are compared with transformers run on the dequantized weights by the
 * largest difference relative to the largest value (see docs/engine.md).
 */
#define MMS_TEST_QTOL 0.03

static inline double
mms_test_rel_max_diff(const float *a, const float *b, int64_t n)
{
	double		m = 0,
				scale = 0;

	for (int64_t i = 0; i < n; i++)
	{
		m = fmax(m, fabs((double) a[i] - b[i]));
		scale = fmax(scale, fabs((double) b[i]));
	}
	return scale > 0 ? m / scale : m;
}

static inline int
mms_test_quantized_type(const char *type)
{
	return strcmp(type, "q8_0") == 0 || strcmp(type, "q4_0") == 0;
}

/*
 * Fails unless got[n] matches transformers' want[n]: within tol absolute, or
 * for int8 compute (quant) within MMS_TEST_QTOL of want's largest value.
 */
static inline void
mms_test_check_close(const char *what, const char *model, int k, const float *got, const float *want,
					 int64_t n, int quant, double tol)
{
	double		d;

	if (quant)
	{
		d = mms_test_rel_max_diff(got, want, n);
		print_message("%s case %d: %s within %.4f of the largest value\n", model, k, what, d);
		if (d > MMS_TEST_QTOL)
			fail_msg("%s case %d: %s differ from transformers by %g of the largest value", model, k, what, d);
	}
	else if ((d = mms_test_max_abs_diff(got, want, n)) > tol)
		fail_msg("%s case %d: %s differ from transformers by %g", model, k, what, d);
}

#endif
