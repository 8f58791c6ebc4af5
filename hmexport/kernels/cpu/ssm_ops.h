/* hmexport CPU ops: the contract is hmexport/kernels/reference.py (time-major layouts).
 *
 *   selective_scan: u, delta, z (Bt, L, Di); A_log (Di, N); B, C (Bt, L, N); D, delta_bias (Di);
 *                   state_in, state_out (Bt, Di, N) float32; y (Bt, L, Di). D, z, delta_bias,
 *                   state_in may be NULL (absent / zeros). state_out may alias state_in.
 *   causal_conv1d:  x, y (Bt, L, Di); weight (Di, W); bias (Di) or NULL;
 *                   state_in, state_out (Bt, W-1, Di) (state_in NULL = zeros; must not alias).
 *
 * All tensors are contiguous float32. Work is split over channel blocks of HMX_LANES channels
 * (threads with OpenMP); inside a block the loops run over contiguous channels so the compiler
 * vectorizes them (each time step reads one contiguous row of u / delta / z per block).
 */
#ifndef HMX_SSM_OPS_H
#define HMX_SSM_OPS_H
#include <stdint.h>

#define HMX_LANES 16     /* channels per block: one AVX-512 vector of float32 */
#define HMX_MAX_STATE 64 /* largest N kept on the stack */

#ifdef __cplusplus
extern "C" {
#endif

int hmx_cpu_selective_scan(const float* u, const float* delta, const float* A_log, const float* B, const float* C,
                           const float* D, const float* z, const float* delta_bias, const float* state_in,
                           float* y, float* state_out, int64_t Bt, int64_t L, int64_t Di, int64_t N, int softplus);

int hmx_cpu_causal_conv1d(const float* x, const float* weight, const float* bias, const float* state_in,
                          float* y, float* state_out, int64_t Bt, int64_t L, int64_t Di, int64_t W, int silu);

#ifdef __cplusplus
}
#endif
#endif
