/* CPU selective scan and causal conv1d (fp32). Build: see hmexport/kernels/cpu/build.py. */
#include "ssm_ops.h"

#include <math.h>
#include <stdlib.h>
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

static inline float softplus_f(float x) { return x > 20.0f ? x : log1pf(expf(x)); }
static inline float silu_f(float x) { return x / (1.0f + expf(-x)); }

/* One block of up to HMX_LANES channels [d0, d0 + nd) of batch row b, all L steps.
 * s[n][c] and a[n][c] hold the block's state and A transposed so the inner loops run over c. */
static void scan_block(const float* u, const float* delta, const float* A_log, const float* B, const float* C,
                       const float* D, const float* z, const float* delta_bias, const float* state_in,
                       float* y, float* state_out, int64_t L, int64_t Di, int64_t N, int softplus,
                       int64_t b, int64_t d0, int64_t nd) {
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

int hmx_cpu_selective_scan(const float* u, const float* delta, const float* A_log, const float* B, const float* C,
                           const float* D, const float* z, const float* delta_bias, const float* state_in,
                           float* y, float* state_out, int64_t Bt, int64_t L, int64_t Di, int64_t N, int softplus) {
    if (N < 1 || N > HMX_MAX_STATE || Di < 1 || L < 0 || Bt < 0) return 1;
    int64_t blocks = (Di + HMX_LANES - 1) / HMX_LANES;
    /* A decode step is ~16K multiply-adds: waking a second thread costs more than it saves. */
#pragma omp parallel for schedule(static) collapse(2) if (L * Di >= 8192)
    for (int64_t b = 0; b < Bt; ++b)
        for (int64_t k = 0; k < blocks; ++k) {
            int64_t d0 = k * HMX_LANES, nd = Di - d0 < HMX_LANES ? Di - d0 : HMX_LANES;
            scan_block(u, delta, A_log, B, C, D, z, delta_bias, state_in, y, state_out, L, Di, N, softplus, b, d0, nd);
        }
    return 0;
}

int hmx_cpu_causal_conv1d(const float* x, const float* weight, const float* bias, const float* state_in,
                          float* y, float* state_out, int64_t Bt, int64_t L, int64_t Di, int64_t W, int silu) {
    if (W < 1 || Di < 1 || L < 0 || Bt < 0) return 1;
    const int64_t H = W - 1; /* rows of history */
    float* wt = (float*)malloc((size_t)(W * Di) * sizeof(float)); /* (W, Di): contiguous over channels */
    if (!wt) return 2;
    for (int64_t d = 0; d < Di; ++d)
        for (int64_t k = 0; k < W; ++k) wt[k * Di + d] = weight[d * W + k];
#pragma omp parallel for schedule(static) if (Bt > 1 && L * Di >= 8192)
    for (int64_t b = 0; b < Bt; ++b) {
        const float* hist = state_in ? state_in + b * H * Di : 0;
        const float* xb = x + b * L * Di;
        for (int64_t t = 0; t < L; ++t) {
            float* yr = y + (b * L + t) * Di;
            for (int64_t d = 0; d < Di; ++d) yr[d] = bias ? bias[d] : 0.0f;
            for (int64_t k = 0; k < W; ++k) {
                int64_t src = t + k - H; /* window row t + k; rows < H come from the state */
                const float* xr = src >= 0 ? xb + src * Di : (hist ? hist + (H + src) * Di : 0);
                if (!xr) continue;
                const float* wk = wt + k * Di;
                for (int64_t d = 0; d < Di; ++d) yr[d] += wk[d] * xr[d];
            }
            if (silu)
                for (int64_t d = 0; d < Di; ++d) yr[d] = silu_f(yr[d]);
        }
        /* new history: the last H rows of [state | x] */
        float* so = state_out + b * H * Di;
        for (int64_t r = 0; r < H; ++r) {
            int64_t src = L + r - H;
            const float* xr = src >= 0 ? xb + src * Di : (hist ? hist + (H + src) * Di : 0);
            if (xr) memcpy(so + r * Di, xr, (size_t)Di * sizeof(float));
            else memset(so + r * Di, 0, (size_t)Di * sizeof(float));
        }
    }
    free(wt);
    return 0;
}
