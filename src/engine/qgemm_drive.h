/*
 * qgemm_drive.h — the part of the int8 kernel templates (qgemm_256.h,
 * qgemm_512.h) that does not depend on the vector width: the walk over
 * tiles of rows, pairs of weight rows and passes of 1-4 rows (each a
 * constant, so QNAME_pass unrolls), and the entry point, specialized per
 * weight type. Included at the end of each template, with its QNAME,
 * QTARGET and QCAT.
 */

QTARGET static inline __attribute__((always_inline)) void
QCAT(QNAME, _impl) (float *y, int64_t ldy, const int8_t *xq, const float *xd, const uint8_t *w,
					int64_t rows, int64_t k, int64_t o0, int64_t o1, int accumulate, const int wtype)
{
	const int64_t nb = k / MMS_QK;
	const int64_t bb = wtype == MMS_T_Q8_0 ? 34 : 18;

	for (int64_t mt = 0; mt < rows; mt += QGEMM_MTILE)
	{
		int64_t		me = mt + QGEMM_MTILE < rows ? mt + QGEMM_MTILE : rows;

		for (int64_t o = o0; o < o1; o += 2)
		{
			int			nw = o + 1 < o1 ? 2 : 1;
			const uint8_t *w0 = w + o * nb * bb;
			const uint8_t *w1 = nw == 2 ? w0 + nb * bb : w0;
			int64_t		m = mt;

			for (; m + 4 <= me; m += 4)
				QCAT(QNAME, _pass) (y, ldy, xq, xd, w0, w1, nw, m, k, o, accumulate, wtype, 4);
			switch (me - m)
			{
				case 3:
					QCAT(QNAME, _pass) (y, ldy, xq, xd, w0, w1, nw, m, k, o, accumulate, wtype, 3);
					break;
				case 2:
					QCAT(QNAME, _pass) (y, ldy, xq, xd, w0, w1, nw, m, k, o, accumulate, wtype, 2);
					break;
				case 1:
					QCAT(QNAME, _pass) (y, ldy, xq, xd, w0, w1, nw, m, k, o, accumulate, wtype, 1);
					break;
			}
		}
	}
}

QTARGET static void
QNAME(float *y, int64_t ldy, const int8_t *xq, const float *xd, const uint8_t *w, int wtype,
	  int64_t rows, int64_t k, int64_t o0, int64_t o1, int accumulate)
{
	if (wtype == MMS_T_Q8_0)
		QCAT(QNAME, _impl) (y, ldy, xq, xd, w, rows, k, o0, o1, accumulate, MMS_T_Q8_0);
	else
		QCAT(QNAME, _impl) (y, ldy, xq, xd, w, rows, k, o0, o1, accumulate, MMS_T_Q4_0);
}

