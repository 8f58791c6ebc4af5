/* CPU selective scan and causal conv1d (fp32). Build: see hmexport/kernels/cpu/build.py. */
#include "ssm_ops.h"

#include <math.h>
#include <string.h>

/* exp(x) for x in [-87, 88]: Cody-Waite reduction to r in [-ln2/2, ln2/2], a degree-6
 * polynomial, scaling by 2^n through the exponent bits. Branch-free so the channel loops
 * vectorize (libm's expf does not here); max relative error ~2 ulp against expf. */
static inline float fast_exp(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    float n = __builtin_roundf(x * 1.44269504088896341f);
    float r = x - n * 0.693145751953125f;
    r = r - n * 1.428606765330187045e-06f;
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (0.16666667163372040f + r * (0.041666645557f + r * (0.0083333803f + r * 0.0013887678f)))));
    union { float f; int32_t i; } scale = {.i = ((int32_t)n + 127) << 23};
    return p * scale.f;
}

/* log1p(y) for y in [0, 1]: 2 atanh(s) with s = y / (2 + y) in [0, 1/3], odd series to s^17
 * (remainder < 2e-9 relative). No cancellation for small y, so -ffast-math cannot spoil it. */
static inline float log1p_unit(float y) {
    float s = y / (2.0f + y), s2 = s * s;
    float p = 1.0f / 17.0f;
    p = 1.0f / 15.0f + s2 * p;
    p = 1.0f / 13.0f + s2 * p;
    p = 1.0f / 11.0f + s2 * p;
    p = 1.0f / 9.0f + s2 * p;
    p = 1.0f / 7.0f + s2 * p;
    p = 1.0f / 5.0f + s2 * p;
    p = 1.0f / 3.0f + s2 * p;
    return 2.0f * s * (1.0f + s2 * p);
}

/* softplus(x) = max(x, 0) + log1p(exp(-|x|)): branch-free, so the channel loops vectorize (libm's
 * log1pf and expf stay scalar calls: they were most of a decode step's scan time). */
static inline float softplus_f(float x) { return (x > 0.0f ? x : 0.0f) + log1p_unit(fast_exp(-__builtin_fabsf(x))); }
static inline float silu_f(float x) { return x / (1.0f + fast_exp(-x)); }

/* One block of up to HMX_LANES channels [d0, d0 + nd) of batch row b, all L steps.
 * s[n][c] and a[n][c] hold the block's state and A transposed so the inner loops run over c. */
static void scan_block(const hmx_scan_args* p, int64_t b, int64_t d0, int64_t nd) {
    const float *u = p->u, *delta = p->delta, *A_log = p->A_log, *B = p->B, *C = p->C, *D = p->D, *z = p->z;
    const float *delta_bias = p->delta_bias, *state_in = p->state_in;
    float *y = p->y, *state_out = p->state_out;
    const int64_t L = p->L, Di = p->Di, N = p->N;
    const int softplus = p->softplus;
    float s[HMX_MAX_STATE][HMX_LANES], a[HMX_MAX_STATE][HMX_LANES];
    float dt[HMX_LANES], du[HMX_LANES], acc[HMX_LANES];
    for (int64_t n = 0; n < N; ++n)
        for (int64_t c = 0; c < HMX_LANES; ++c) {
            int64_t d = d0 + (c < nd ? c : 0);
            a[n][c] = -fast_exp(A_log[d * N + n]);
            s[n][c] = (state_in && c < nd) ? state_in[(b * Di + d) * N + n] : 0.0f;
        }
    for (int64_t t = 0; t < L; ++t) {
        int64_t row = (b * L + t) * Di + d0;
        const float* Bt_ = B + (b * L + t) * N;
        const float* Ct_ = C + (b * L + t) * N;
        for (int64_t c = 0; c < HMX_LANES; ++c) {
            int64_t cc = c < nd ? c : 0;
            float v = delta[row + cc] + (delta_bias ? delta_bias[d0 + cc] : 0.0f);
            dt[c] = softplus ? softplus_f(v) : v;
            du[c] = dt[c] * u[row + cc];
            acc[c] = 0.0f;
        }
        for (int64_t n = 0; n < N; ++n) {
            const float bn = Bt_[n], cn = Ct_[n];
            for (int64_t c = 0; c < HMX_LANES; ++c) {
                s[n][c] = fast_exp(dt[c] * a[n][c]) * s[n][c] + du[c] * bn;
                acc[c] += s[n][c] * cn;
            }
        }
        for (int64_t c = 0; c < nd; ++c) {
            float out = acc[c];
            if (D) out += D[d0 + c] * u[row + c];
            if (z) out *= silu_f(z[row + c]);
            y[row + c] = out;
        }
    }
    for (int64_t n = 0; n < N; ++n)
        for (int64_t c = 0; c < nd; ++c) state_out[(b * Di + d0 + c) * N + n] = s[n][c];
}

/* One time step (a decode step) in the state's own (Di, N) layout: each channel's N states are
 * contiguous, so the loops over n vectorize with plain loads and stores (scan_block would gather
 * and scatter the state with stride N for a single step). The per-channel scalars (softplus, SiLU
 * gate) come first, in loops that vectorize across the tile's channels. */
static void scan_step(const hmx_scan_args* a, int64_t b, int64_t d0, int64_t nd) {
    float dt[HMX_STEP_TILE], du[HMX_STEP_TILE], skip[HMX_STEP_TILE], gate[HMX_STEP_TILE];
    const int64_t N = a->N, row0 = b * a->Di + d0;
    const float* Bb = a->B + b * N;
    const float* Cb = a->C + b * N;
    for (int64_t c = 0; c < nd; ++c) {
        float v = a->delta[row0 + c] + (a->delta_bias ? a->delta_bias[d0 + c] : 0.0f);
        dt[c] = a->softplus ? softplus_f(v) : v;
        du[c] = dt[c] * a->u[row0 + c];
        skip[c] = a->D ? a->D[d0 + c] * a->u[row0 + c] : 0.0f;
        gate[c] = a->z ? silu_f(a->z[row0 + c]) : 1.0f;
    }
    for (int64_t c = 0; c < nd; ++c) {
        const float* al = a->A_log + (d0 + c) * N;
        float s[HMX_MAX_STATE], acc = 0.0f, dtc = dt[c], duc = du[c];
        if (a->state_in) {
            const float* si = a->state_in + (row0 + c) * N;
            for (int64_t n = 0; n < N; ++n) s[n] = fast_exp(-dtc * fast_exp(al[n])) * si[n] + duc * Bb[n];
        } else {
            for (int64_t n = 0; n < N; ++n) s[n] = duc * Bb[n];
        }
        for (int64_t n = 0; n < N; ++n) acc += s[n] * Cb[n];
        memcpy(a->state_out + (row0 + c) * N, s, (size_t)N * sizeof(float));
        a->y[row0 + c] = (acc + skip[c]) * gate[c];
    }
}

static int64_t scan_tile(const hmx_scan_args* a) { return a->L == 1 ? HMX_STEP_TILE : HMX_LANES; }
static int64_t tiles(int64_t Di, int64_t tile) { return (Di + tile - 1) / tile; }

int hmx_scan_check(const hmx_scan_args* a) {
    return (a->N < 1 || a->N > HMX_MAX_STATE || a->Di < 1 || a->L < 0 || a->Bt < 0) ? 1 : 0;
}

int64_t hmx_scan_items(const hmx_scan_args* a) { return a->Bt * tiles(a->Di, scan_tile(a)); }

void hmx_scan_item(const hmx_scan_args* a, int64_t i) {
    int64_t t = scan_tile(a), n_tiles = tiles(a->Di, t);
    int64_t b = i / n_tiles, d0 = (i % n_tiles) * t, nd = a->Di - d0 < t ? a->Di - d0 : t;
    if (a->L == 1)
        scan_step(a, b, d0, nd);
    else /* L == 0 too: no steps, the state passes through */
        scan_block(a, b, d0, nd);
}

int hmx_cpu_selective_scan(const float* u, const float* delta, const float* A_log, const float* B, const float* C,
                           const float* D, const float* z, const float* delta_bias, const float* state_in,
                           float* y, float* state_out, int64_t Bt, int64_t L, int64_t Di, int64_t N, int softplus) {
    hmx_scan_args a = {u, delta, A_log, B, C, D, z, delta_bias, state_in, y, state_out, Bt, L, Di, N, softplus};
    if (hmx_scan_check(&a)) return 1;
    int64_t items = hmx_scan_items(&a);
    /* A decode step is ~16K multiply-adds: waking a second thread costs more than it saves. */
#pragma omp parallel for schedule(static) if (L * Di >= 8192)
    for (int64_t i = 0; i < items; ++i) hmx_scan_item(&a, i);
    return 0;
}

/* Channels [d0, d0 + nd) of batch row b, all L steps. The tile's taps are transposed to (W, nd)
 * on the stack so the loops over channels read them contiguously. */
static void conv_tile(const hmx_conv_args* a, int64_t b, int64_t d0, int64_t nd) {
    const int64_t L = a->L, Di = a->Di, W = a->W, H = W - 1; /* rows of history */
    float wt[HMX_CONV_MAX_W * HMX_CONV_TILE];
    for (int64_t c = 0; c < nd; ++c)
        for (int64_t k = 0; k < W; ++k) wt[k * HMX_CONV_TILE + c] = a->weight[(d0 + c) * W + k];
    const float* hist = a->state_in ? a->state_in + b * H * Di : 0;
    const float* xb = a->x + b * L * Di;
    for (int64_t t = 0; t < L; ++t) {
        float* yr = a->y + (b * L + t) * Di + d0;
        for (int64_t c = 0; c < nd; ++c) yr[c] = a->bias ? a->bias[d0 + c] : 0.0f;
        for (int64_t k = 0; k < W; ++k) {
            int64_t src = t + k - H; /* window row t + k; rows < H come from the state */
            const float* xr = src >= 0 ? xb + src * Di : (hist ? hist + (H + src) * Di : 0);
            if (!xr) continue;
            xr += d0;
            const float* wk = wt + k * HMX_CONV_TILE;
            for (int64_t c = 0; c < nd; ++c) yr[c] += wk[c] * xr[c];
        }
        if (a->silu)
            for (int64_t c = 0; c < nd; ++c) yr[c] = silu_f(yr[c]);
    }
    /* new history: the last H rows of [state | x] */
    float* so = a->state_out + b * H * Di;
    for (int64_t r = 0; r < H; ++r) {
        int64_t src = L + r - H;
        const float* xr = src >= 0 ? xb + src * Di : (hist ? hist + (H + src) * Di : 0);
        if (xr) memcpy(so + r * Di + d0, xr + d0, (size_t)nd * sizeof(float));
        else memset(so + r * Di + d0, 0, (size_t)nd * sizeof(float));
    }
}

int hmx_conv_check(const hmx_conv_args* a) {
    return (a->W < 1 || a->W > HMX_CONV_MAX_W || a->Di < 1 || a->L < 0 || a->Bt < 0) ? 1 : 0;
}

int64_t hmx_conv_items(const hmx_conv_args* a) { return a->Bt * tiles(a->Di, HMX_CONV_TILE); }

void hmx_conv_item(const hmx_conv_args* a, int64_t i) {
    int64_t n_tiles = tiles(a->Di, HMX_CONV_TILE), d0 = (i % n_tiles) * HMX_CONV_TILE;
    conv_tile(a, i / n_tiles, d0, a->Di - d0 < HMX_CONV_TILE ? a->Di - d0 : HMX_CONV_TILE);
}

int hmx_cpu_causal_conv1d(const float* x, const float* weight, const float* bias, const float* state_in,
                          float* y, float* state_out, int64_t Bt, int64_t L, int64_t Di, int64_t W, int silu) {
    hmx_conv_args a = {x, weight, bias, state_in, y, state_out, Bt, L, Di, W, silu};
    if (hmx_conv_check(&a)) return 1;
    int64_t items = hmx_conv_items(&a);
#pragma omp parallel for schedule(static) if (Bt * L * Di >= 65536)
    for (int64_t i = 0; i < items; ++i) hmx_conv_item(&a, i);
    return 0;
}
