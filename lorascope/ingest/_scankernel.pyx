# cython: language_level=3, boundscheck=False, wraparound=False
"""The compiled single pass of the tensor scan (see _scankernel.h and _tensorscan.py).

Built by Cython when lorascope is installed from source; without it (no C compiler),
lorascope/ingest/_tensorscan.py scans with numpy alone, to the same statistics."""
from libc.stdint cimport int8_t, int64_t, uint32_t

cdef extern from "_scankernel.h" nogil:
    int KERNEL_RANK
    int64_t ls_scratch()
    void ls_scan_span(int code, const void *src, int64_t nt, const int64_t *start,
                      const int64_t *count, const int8_t *axis, const int64_t *rank,
                      const int64_t *goff, uint32_t *maxbits, double *abs_sum,
                      double *sq_sum, double *gram, float *wide, int wide_on,
                      float *scratch)

ABI = 1                   # scan_span's arguments and meaning; _tensorscan.py checks it
RANK = KERNEL_RANK        # Gram products up to this rank are computed here
SCRATCH = ls_scratch()    # float32 elements of scratch a call needs


def scan_span(int code, const unsigned char[::1] raw, const int64_t[::1] start,
              const int64_t[::1] count, const int8_t[::1] axis, const int64_t[::1] rank,
              const int64_t[::1] goff, uint32_t[::1] maxbits, double[::1] abs_sum,
              double[::1] sq_sum, double[::1] gram, float[::1] wide, float[::1] scratch):
    """Statistics of ``len(start)`` tensors of one span (``raw``: its bytes, dtype
    ``code`` 1 F16, 2 BF16, 3 F32; ``start``/``count`` in elements).  ``wide`` of size 0:
    no widened copy.  The GIL is released while it runs."""
    cdef int64_t nt = start.shape[0]
    cdef int64_t isz = 4 if code == 3 else 2
    cdef int64_t k, need = 0, gneed = 0
    if not (count.shape[0] == axis.shape[0] == rank.shape[0] == goff.shape[0] == nt
            and maxbits.shape[0] >= nt and abs_sum.shape[0] >= nt and sq_sum.shape[0] >= nt):
        raise ValueError("scan_span: arrays of unequal length")
    if code < 1 or code > 3 or scratch.shape[0] < SCRATCH:
        raise ValueError("scan_span: bad dtype code or scratch")
    for k in range(nt):                       # every access stays inside the buffers
        if start[k] < 0 or count[k] < 0:
            raise ValueError("scan_span: negative offset")
        need = max(need, start[k] + count[k])
        if goff[k] >= 0:
            if rank[k] <= 0 or rank[k] > KERNEL_RANK or count[k] % rank[k] or axis[k] not in (0, 1):
                raise ValueError("scan_span: bad Gram row")
            gneed = max(gneed, goff[k] + rank[k] * rank[k])
    if need * isz > raw.shape[0] or gneed > gram.shape[0]:
        raise ValueError("scan_span: offsets beyond the buffers")
    cdef int wide_on = wide.shape[0] > 0 and code != 3
    if wide_on and wide.shape[0] < need:
        raise ValueError("scan_span: widened buffer too small")
    cdef float dummy = 0
    cdef double gdummy = 0
    cdef float *wp = &wide[0] if wide.shape[0] else &dummy
    cdef double *gp = &gram[0] if gram.shape[0] else &gdummy
    if nt == 0:
        return
    with nogil:
        ls_scan_span(code, &raw[0], nt, &start[0], &count[0], &axis[0], &rank[0], &goff[0],
                     &maxbits[0], &abs_sum[0], &sq_sum[0], gp, wp, wide_on, &scratch[0])
