/* hmexport CPU ops: the contract is hmexport/kernels/reference.py (time-major layouts).
 *
 *   selective_scan: u, delta, z (Bt, L, Di); A_log (Di, N); B, C (Bt, L, N); D, delta_bias (Di);
 *                   state_in, state_out (Bt, Di, N) float32; y (Bt, L, Di). D, z, delta_bias,
 *                   state_in may be NULL (absent / zeros). state_out may alias state_in.
 *   causal_conv1d:  x, y (Bt, L, Di); weight (Di, W); bias (Di) or NULL;
 *                   state_in, state_out (Bt, W-1, Di) (state_in NULL = zeros; must not alias).
 *
 * All tensors are contiguous float32. Work is split over channel tiles (work items): HMX_LANES
 * channels for a chunk, whose loops run over contiguous channels so the compiler vectorizes them
 * (each time step reads one contiguous row of u / delta / z per block); HMX_STEP_TILE channels for
 * a single step (L = 1), which keeps the state in its (Di, N) layout.
 */
#ifndef HMX_SSM_OPS_H
#define HMX_SSM_OPS_H
#include <stdint.h>

#define HMX_LANES 16     /* channels per block: one AVX-512 vector of float32 */
#define HMX_MAX_STATE 64 /* largest N kept on the stack */
#define HMX_STEP_TILE 256 /* channels per work item of a single-step scan */
#define HMX_CONV_TILE 128 /* channels per work item of the conv */
#define HMX_CONV_MAX_W 32 /* largest conv width (taps kept on the stack) */

#ifdef __cplusplus
extern "C" {
#endif

/* The same ops as independent work items, for a caller with its own thread pool (the onnxruntime
 * kernels hand them to the session's intra-op pool): check, then run items 0..items-1 in any order
 * or concurrently. Items write disjoint parts of y and state_out. */
typedef struct {
    const float *u, *delta, *A_log, *B, *C, *D, *z, *delta_bias, *state_in;
    float *y, *state_out;
    int64_t Bt, L, Di, N;
    int softplus;
} hmx_scan_args;

typedef struct {
    const float *x, *weight, *bias, *state_in;
    float *y, *state_out;
    int64_t Bt, L, Di, W;
    int silu;
} hmx_conv_args;

int hmx_scan_check(const hmx_scan_args* a); /* 0: valid dimensions */
int64_t hmx_scan_items(const hmx_scan_args* a);
void hmx_scan_item(const hmx_scan_args* a, int64_t i);
int hmx_conv_check(const hmx_conv_args* a);
int64_t hmx_conv_items(const hmx_conv_args* a);
void hmx_conv_item(const hmx_conv_args* a, int64_t i);

/* Whole ops, threaded with OpenMP (ctypes callers: tests and benchmarks). Return 0, or 1 on invalid
 * dimensions (N must be 1..HMX_MAX_STATE, W 1..HMX_CONV_MAX_W). */
int hmx_cpu_selective_scan(const float* u, const float* delta, const float* A_log, const float* B, const float* C,
                           const float* D, const float* z, const float* delta_bias, const float* state_in,
                           float* y, float* state_out, int64_t Bt, int64_t L, int64_t Di, int64_t N, int softplus);

int hmx_cpu_causal_conv1d(const float* x, const float* weight, const float* bias, const float* state_in,
                          float* y, float* state_out, int64_t Bt, int64_t L, int64_t Di, int64_t W, int silu);

#ifdef __cplusplus
}
#endif
#endif
