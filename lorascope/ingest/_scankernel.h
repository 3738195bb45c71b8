/* One pass over a span of a safetensors file: the statistics lorascope keeps per tensor.
 *
 * Called (without the GIL) from _scankernel.pyx; lorascope/ingest/_tensorscan.py holds the
 * reading, the planning and the numpy path this replaces when it is built.  For each
 * tensor of the span (all of one dtype: 1 F16, 2 BF16, 3 F32):
 *
 *   maxbits   largest magnitude bit pattern (sign bit cleared): the abs max, and a
 *             non-finite value when it reaches the dtype's infinity pattern;
 *   abs_sum   sum |x|, sq_sum sum x*x (float32 lanes flushed to float64 per block);
 *   gram      for a rank-r up weight [n, r] (axis 0) x^T x, for a down weight [r, n]
 *             (axis 1) x x^T, as r*r float64 at gram + goff, when goff >= 0;
 *   wide      the widened float32 values at the tensor's offsets, when wide_on (the
 *             caller's BLAS takes the Gram products of larger ranks from there).
 *
 * The sums are meaningful only for a tensor whose values are all finite and within the
 * range where float32 squares do not overflow: the caller checks maxbits and recomputes
 * any other tensor on its general path.  Widening is exact (F16 through its bits, see
 * ls_f16; BF16 a shift by 16).
 *
 * Lanes: sums run in LANES independent float32 accumulators so the compiler vectorises
 * them without reassociating; each block's lanes go into float64, so no float32 sum
 * covers more than BLOCK elements per lane.  target_clones builds the loops for AVX-512,
 * AVX2 and the baseline and picks one at load time. */
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define LS_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define LS_CLONES
#endif
#define LS_INLINE static inline __attribute__((always_inline))

#define LANES 16
#define BLOCK 4096            /* float32 values widened at a time (16 KiB: L1) */
#define COLS 512              /* columns of a down weight per block */
#define FLUSH 16384          /* values per lane sum before it goes into float64 */
#define KERNEL_RANK 64        /* Gram products up to this rank here, larger by BLAS */

/* Exact, and without float arithmetic on subnormal operands (a microcode assist each on
 * x86): a normal half gets its exponent rebased in the integer bits, a subnormal one is
 * its 10-bit integer times 2**-24.  Infinity and NaN patterns come out at 65536 or more
 * (the caller has their maxbits and does not use these sums). */
LS_INLINE float ls_f16(uint16_t h) {
    uint32_t mag = h & 0x7FFFu;
    uint32_t normal = (mag << 13) + 0x38000000u;
    float sub = (float)(int32_t)mag * 0x1p-24f;
    uint32_t subbits;
    memcpy(&subbits, &sub, 4);
    uint32_t keep = 0u - (uint32_t)(mag >= 0x400u);              /* branch-free select */
    uint32_t u = (normal & keep) | (subbits & ~keep) | ((uint32_t)(h & 0x8000u) << 16);
    float f;
    memcpy(&f, &u, 4);
    return f;
}

LS_INLINE float ls_bf16(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* the largest magnitude bits of n float32 values (16-bit values get theirs in ls_widen) */
LS_INLINE uint32_t ls_maxbits32(const void *p, int64_t n) {
    const uint32_t *s = (const uint32_t *)p;
    uint32_t m = 0;
    for (int64_t i = 0; i < n; i++) {
        uint32_t v = s[i] & 0x7FFFFFFFu;
        m = v > m ? v : m;
    }
    return m;
}

/* n values from src (element offset i0 of a span of dtype code) into dst; the largest
 * magnitude bits among them into *mx (one pass over the stored values) */
LS_INLINE void ls_widen(int code, const void *src, int64_t i0, int64_t n, float *dst,
                        uint32_t *mx) {
    if (code == 3) {
        memcpy(dst, (const float *)src + i0, (size_t)n * 4);
        uint32_t m = ls_maxbits32(dst, n);                 /* from L1 */
        if (m > *mx) *mx = m;
        return;
    }
    const uint16_t *s = (const uint16_t *)src + i0;
    uint16_t m = 0;
    if (code == 1)
        for (int64_t i = 0; i < n; i++) {
            uint16_t v = s[i] & 0x7FFFu;
            m = v > m ? v : m;
            dst[i] = ls_f16(s[i]);
        }
    else
        for (int64_t i = 0; i < n; i++) {
            uint16_t v = s[i] & 0x7FFFu;
            m = v > m ? v : m;
            dst[i] = ls_bf16(s[i]);
        }
    if (m > *mx) *mx = m;
}

/* |x| and x*x of n floats (n a multiple of LANES; padding is zero) into lanes */
/* 16 float32 lanes as one value: GCC and clang lower it to one AVX-512 register, two
 * AVX2 or four SSE ones, whichever the clone targets */
typedef float ls_v16 __attribute__((vector_size(64)));

LS_INLINE ls_v16 ls_load(const float *p) {
    ls_v16 v;
    memcpy(&v, p, sizeof v);
    return v;
}

LS_INLINE void ls_add(float *p, ls_v16 v) {
    v += ls_load(p);
    memcpy(p, &v, sizeof v);
}

LS_INLINE void ls_sums(const float *x, int64_t n, float *la, float *lq) {
    typedef int32_t ls_i16 __attribute__((vector_size(64)));
    const ls_i16 mag = {0x7FFFFFFF, 0x7FFFFFFF, 0x7FFFFFFF, 0x7FFFFFFF, 0x7FFFFFFF, 0x7FFFFFFF,
                        0x7FFFFFFF, 0x7FFFFFFF, 0x7FFFFFFF, 0x7FFFFFFF, 0x7FFFFFFF, 0x7FFFFFFF,
                        0x7FFFFFFF, 0x7FFFFFFF, 0x7FFFFFFF, 0x7FFFFFFF};
    /* four chains each: the adds' latency, not their throughput, would bound one */
    ls_v16 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, q0 = {0}, q1 = {0}, q2 = {0}, q3 = {0};
    int64_t j = 0;
    for (; j + 4 * LANES <= n; j += 4 * LANES) {
        ls_v16 v0 = ls_load(x + j), v1 = ls_load(x + j + 16), v2 = ls_load(x + j + 32), v3 = ls_load(x + j + 48);
        a0 += (ls_v16)((ls_i16)v0 & mag); q0 += v0 * v0;
        a1 += (ls_v16)((ls_i16)v1 & mag); q1 += v1 * v1;
        a2 += (ls_v16)((ls_i16)v2 & mag); q2 += v2 * v2;
        a3 += (ls_v16)((ls_i16)v3 & mag); q3 += v3 * v3;
    }
    for (; j < n; j += LANES) {
        ls_v16 v = ls_load(x + j);
        a0 += (ls_v16)((ls_i16)v & mag);
        q0 += v * v;
    }
    ls_v16 a = (a0 + a1) + (a2 + a3), q = (q0 + q1) + (q2 + q3);
    for (int l = 0; l < LANES; l++) { la[l] += a[l]; lq[l] += q[l]; }
}

LS_INLINE double ls_flush(float *lane) {
    double s = 0;
    for (int l = 0; l < LANES; l++) { s += lane[l]; lane[l] = 0; }
    return s;
}

/* CH offsets d0.. of the diagonal form at once (independent chains hide the FMA
 * latency); out[c * W + s] += sum over m of x[m + s] * x[m + s + d0 + c] */
#define LS_DIAG(W, CH)                                                                   \
    LS_INLINE void ls_diag##W##_##CH(const float *x, int64_t n, int d0, float *out) {   \
        ls_v16 a[CH][W / 16];                                                            \
        memset(a, 0, sizeof a);                                                          \
        for (int64_t m = 0; m < n; m += W)                                               \
            for (int h = 0; h < W / 16; h++) {                                           \
                ls_v16 v = ls_load(x + m + 16 * h);                                      \
                for (int c = 0; c < CH; c++)                                             \
                    a[c][h] += v * ls_load(x + m + 16 * h + d0 + c);                     \
            }                                                                            \
        for (int c = 0; c < CH; c++)                                                     \
            for (int h = 0; h < W / 16; h++)                                             \
                for (int l = 0; l < 16; l++) out[c * W + 16 * h + l] += a[c][h][l];      \
    }
LS_DIAG(16, 1)
LS_DIAG(16, 2)
LS_DIAG(16, 4)
LS_DIAG(16, 8)

/* Outer-product form for rank W = 16, 32 or 64: G rows c0..c0+CH of x^T x in registers,
 * each data row loaded once and every G row updated with a broadcast of one of its
 * values: out[c * W + s] += sum over rows of x[c0 + c] * x[s], for the columns from
 * 16 * H0 = 16 * (c0 / 16) on (the upper triangle and the rest of its 16-wide blocks;
 * the caller mirrors it) */
#define LS_OUTER(W, CH, H0)                                                              \
    LS_INLINE void ls_outer##W##_##H0(const float *x, int64_t rows, int c0, float *out) { \
        ls_v16 a[CH][W / 16];                                                            \
        for (int c = 0; c < CH; c++)                                                     \
            for (int h = H0; h < W / 16; h++) a[c][h] = (ls_v16){0};                     \
        for (int64_t m = 0; m < rows; m++) {                                             \
            const float *row = x + m * W;                                                \
            ls_v16 v[W / 16];                                                            \
            for (int h = H0; h < W / 16; h++) v[h] = ls_load(row + 16 * h);              \
            for (int c = 0; c < CH; c++)                                                 \
                for (int h = H0; h < W / 16; h++) a[c][h] += row[c0 + c] * v[h];         \
        }                                                                                \
        for (int c = 0; c < CH; c++)                                                     \
            for (int h = H0; h < W / 16; h++)                                            \
                for (int l = 0; l < 16; l++) out[c * W + 16 * h + l] += a[c][h][l];      \
    }
LS_OUTER(16, 16, 0)
LS_OUTER(32, 8, 0)
LS_OUTER(32, 16, 1)
LS_OUTER(64, 4, 0)
LS_OUTER(64, 8, 1)
LS_OUTER(64, 8, 2)
LS_OUTER(64, 16, 3)

/* Up weight [rows, r] at element i0: x^T x.  Diagonal form: for every offset d < r,
 * acc[d][s] += x[m + s] * x[m + s + d] over the flat values in steps of S (a multiple of
 * r), so lane s belongs to column s % r and products that leave the row are dropped. */
LS_INLINE void ls_gram_up(int code, const void *src, int64_t i0, int64_t rows, int r,
                          float *tmp, float *acc, double *g, float *la, float *lq,
                          double *asum, double *qsum, uint32_t *mx) {
    int S = r >= LANES ? r : r * ((LANES + r - 1) / r);
    int64_t per = (BLOCK / S) * S / r;                 /* rows per block */
    if (per < 1) per = 1;
    int64_t since = 0;
    memset(acc, 0, (size_t)r * S * 4);
    for (int64_t q = 0; q < rows; q += per) {
        int64_t nr = rows - q < per ? rows - q : per;
        int64_t n = nr * r;
        int64_t padded = (n + S - 1) / S * S;
        ls_widen(code, src, i0 + q * r, n, tmp, mx);
        memset(tmp + n, 0, (size_t)(padded - n + r + LANES) * 4);
        /* offsets outer, a few at once: their lanes stay in registers while the block
         * streams from L1 */
        if (S == 16 && r <= 8) {
            if (r == 1) ls_diag16_1(tmp, padded, 0, acc);
            else if (r == 2) ls_diag16_2(tmp, padded, 0, acc);
            else if (r == 4) ls_diag16_4(tmp, padded, 0, acc);
            else ls_diag16_8(tmp, padded, 0, acc);
        } else if (r == 16) {
            ls_outer16_0(tmp, nr, 0, acc);
        } else if (r == 32) {
            ls_outer32_0(tmp, nr, 0, acc);
            ls_outer32_0(tmp, nr, 8, acc + 8 * 32);
            ls_outer32_1(tmp, nr, 16, acc + 16 * 32);
        } else if (r == 64) {
            for (int c = 0; c < 16; c += 4) ls_outer64_0(tmp, nr, c, acc + c * 64);
            /* fewer columns to the right: more G rows per pass (16 accumulators or so) */
            for (int c = 16; c < 32; c += 8) ls_outer64_1(tmp, nr, c, acc + c * 64);
            for (int c = 32; c < 48; c += 8) ls_outer64_2(tmp, nr, c, acc + c * 64);
            ls_outer64_3(tmp, nr, 48, acc + 48 * 64);
        } else {
            for (int d = 0; d < r; d++) {
                float *a = acc + (int64_t)d * S;
                for (int64_t m = 0; m < padded; m += S)
                    for (int s = 0; s < S; s++) a[s] += tmp[m + s] * tmp[m + s + d];
            }
        }
        since += n;
        if ((since >= FLUSH || q + per >= rows) && (r == 16 || r == 32 || r == 64)) {
            for (int i = 0; i < r * r; i++) { g[i] += acc[i]; acc[i] = 0; }
            since = 0;
        } else if (since >= FLUSH || q + per >= rows) {      /* lanes into float64 */
            for (int d = 0; d < r; d++)
                for (int s = 0, i = 0; s < S; s++, i = i + 1 == r ? 0 : i + 1) {
                    if (i + d < r) g[i * r + i + d] += acc[(int64_t)d * S + s];
                    acc[(int64_t)d * S + s] = 0;
                }
            since = 0;
        }
        ls_sums(tmp, (padded + LANES - 1) / LANES * LANES, la, lq);
        *asum += ls_flush(la);
        *qsum += ls_flush(lq);
    }
}

/* Down weight [r, cols] at element i0: x x^T.  Blocks of cb columns, widened row by row
 * (rows up to a multiple of 4, the extra ones zero); the pairs of rows in tiles of 4 x 4:
 * 8 loads feed 16 dot products, whose lanes (acc, 16 per tile, tiles in loop order) go
 * into float64 every FLUSH columns and at the end. */
LS_INLINE void ls_gram_down(int code, const void *src, int64_t i0, int64_t cols, int r,
                            float *tmp, float *acc, double *g, float *la, float *lq,
                            double *asum, double *qsum, uint32_t *mx) {
    const int rp = (r + 3) & ~3;
    const int64_t cb = COLS;
    const int64_t tiles = (int64_t)(rp / 4) * (rp / 4 + 1) / 2;
    memset(acc, 0, (size_t)tiles * 16 * LANES * 4);
    for (int64_t c = 0; c < cols; c += cb) {
        int64_t w = cols - c < cb ? cols - c : cb;
        int64_t wp = (w + LANES - 1) / LANES * LANES;
        for (int i = 0; i < r; i++) {
            float *row = tmp + (int64_t)i * cb;
            ls_widen(code, src, i0 + (int64_t)i * cols + c, w, row, mx);
            for (int64_t j = w; j < wp; j++) row[j] = 0;
            ls_sums(row, wp, la, lq);
        }
        if (rp > r) memset(tmp + (int64_t)r * cb, 0, (size_t)(rp - r) * cb * 4);
        float *p = acc;
        for (int I = 0; I < rp; I += 4)
            for (int K = I; K < rp; K += 4, p += 16 * LANES) {
                const float *x0 = tmp + (int64_t)I * cb, *x1 = x0 + cb, *x2 = x1 + cb, *x3 = x2 + cb;
                const float *y0 = tmp + (int64_t)K * cb, *y1 = y0 + cb, *y2 = y1 + cb, *y3 = y2 + cb;
                ls_v16 t0 = {0}, t1 = {0}, t2 = {0}, t3 = {0}, t4 = {0}, t5 = {0}, t6 = {0}, t7 = {0};
                ls_v16 t8 = {0}, t9 = {0}, t10 = {0}, t11 = {0}, t12 = {0}, t13 = {0}, t14 = {0}, t15 = {0};
                for (int64_t j = 0; j < wp; j += LANES) {           /* named: in registers */
                    ls_v16 a0 = ls_load(x0 + j), a1 = ls_load(x1 + j), a2 = ls_load(x2 + j), a3 = ls_load(x3 + j);
                    ls_v16 b0 = ls_load(y0 + j), b1 = ls_load(y1 + j), b2 = ls_load(y2 + j), b3 = ls_load(y3 + j);
                    t0 += a0 * b0; t1 += a0 * b1; t2 += a0 * b2; t3 += a0 * b3;
                    t4 += a1 * b0; t5 += a1 * b1; t6 += a1 * b2; t7 += a1 * b3;
                    t8 += a2 * b0; t9 += a2 * b1; t10 += a2 * b2; t11 += a2 * b3;
                    t12 += a3 * b0; t13 += a3 * b1; t14 += a3 * b2; t15 += a3 * b3;
                }
                ls_v16 t[16] = {t0, t1, t2, t3, t4, t5, t6, t7, t8, t9, t10, t11, t12, t13, t14, t15};
                for (int q = 0; q < 16; q++) ls_add(p + q * LANES, t[q]);
            }
        *asum += ls_flush(la);
        *qsum += ls_flush(lq);
        if ((c + cb) % FLUSH == 0 || c + cb >= cols) {
            float *q = acc;
            for (int I = 0; I < rp; I += 4)
                for (int K = I; K < rp; K += 4)
                    for (int u = 0; u < 4; u++)
                        for (int v = 0; v < 4; v++, q += LANES) {
                            int i = I + u, k = K + v;
                            double s = 0;
                            for (int l = 0; l < LANES; l++) { s += q[l]; q[l] = 0; }
                            if (i <= k && k < r) g[i * r + k] += s;
                        }
        }
    }
}

/* Scratch floats the kernel needs: a block plus padding, and the Gram lanes */
static int64_t ls_scratch(void) {
    int64_t t = BLOCK + 2 * KERNEL_RANK + 2 * LANES;
    if ((int64_t)KERNEL_RANK * COLS > t) t = (int64_t)KERNEL_RANK * COLS;
    int64_t tiles = (int64_t)(KERNEL_RANK / 4) * (KERNEL_RANK / 4 + 1) / 2;
    int64_t a = tiles * 16 * LANES;
    int64_t b = (int64_t)KERNEL_RANK * 2 * KERNEL_RANK;
    return t + (a > b ? a : b) + LANES;
}
LS_CLONES
void ls_scan_span(int code, const void *src, int64_t nt, const int64_t *start,
                  const int64_t *count, const int8_t *axis, const int64_t *rank,
                  const int64_t *goff, uint32_t *maxbits, double *abs_sum, double *sq_sum,
                  double *gram, float *wide, int wide_on, float *scratch) {
    float la[LANES] = {0}, lq[LANES] = {0};
    int64_t tsize = BLOCK + 2 * KERNEL_RANK + 2 * LANES;
    if ((int64_t)KERNEL_RANK * COLS > tsize) tsize = (int64_t)KERNEL_RANK * COLS;
    float *tmp = scratch, *acc = scratch + tsize;
    for (int64_t k = 0; k < nt; k++) {
        int64_t i0 = start[k], n = count[k];
        uint32_t mb = 0;
        double as = 0, qs = 0;
        int r = (int)rank[k];
        if (goff[k] >= 0 && axis[k] == 0 && r > 0 && r <= KERNEL_RANK) {
            double *g = gram + goff[k];
            memset(g, 0, (size_t)r * r * 8);
            ls_gram_up(code, src, i0, n / r, r, tmp, acc, g, la, lq, &as, &qs, &mb);
            for (int i = 0; i < r; i++)
                for (int j = 0; j < i; j++) g[i * r + j] = g[j * r + i];
        } else if (goff[k] >= 0 && axis[k] == 1 && r > 0 && r <= KERNEL_RANK) {
            double *g = gram + goff[k];
            memset(g, 0, (size_t)r * r * 8);
            ls_gram_down(code, src, i0, n / r, r, tmp, acc, g, la, lq, &as, &qs, &mb);
            for (int i = 0; i < r; i++)
                for (int j = 0; j < i; j++) g[i * r + j] = g[j * r + i];
        } else {
            for (int64_t b = 0; b < n; b += BLOCK) {
                int64_t m = n - b < BLOCK ? n - b : BLOCK;
                int64_t mp = (m + LANES - 1) / LANES * LANES;
                float *dst;
                if (code == 3) {
                    dst = (float *)src + i0 + b;            /* float32 is read in place */
                    uint32_t m3 = ls_maxbits32((const float *)src + i0 + b, m);
                    if (m3 > mb) mb = m3;
                } else {
                    dst = wide_on ? wide + i0 + b : tmp;
                    ls_widen(code, src, i0 + b, m, dst, &mb);
                }
                if (mp != m) {             /* the tail goes through the scratch block */
                    if (dst != tmp) memcpy(tmp, dst, (size_t)m * 4);
                    memset(tmp + m, 0, (size_t)(mp - m) * 4);
                    dst = tmp;
                }
                ls_sums(dst, mp, la, lq);
                as += ls_flush(la);
                qs += ls_flush(lq);
            }
        }
        maxbits[k] = mb;
        abs_sum[k] = as;
        sq_sum[k] = qs;
    }
}
