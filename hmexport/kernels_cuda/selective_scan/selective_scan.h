/* selective_scan.h: Mamba-1's selective scan on CUDA: a prefill kernel (any L) and a one-step
 * kernel (L == 1, decoding). The math is hmexport/kernels/reference.py `selective_scan`:
 *
 *     dt  = softplus(delta_t + delta_bias)        (softplus only if delta_softplus; x > 20 -> x)
 *     s   = exp(dt * A) * s + dt * B_t * u_t      (A = -exp(A_log), per channel d and state n)
 *     y_t = (sum_n s * C_t + D * u_t) * silu(z_t)
 *
 * Layout (time-major like the decoder's K/V; strides are in elements, the last axis is contiguous):
 *     u, delta, z, y : (Bt, L, Di)  dtype T    (b, t, d) at ptr[b*batch_stride + t*time_stride + d]
 *     B, C           : (Bt, L, N)   dtype T    (b, t, n) at ptr[b*batch_stride + t*time_stride + n]
 *     A_log          : (Di, N)  fp32, contiguous
 *     D, delta_bias  : (Di,)    fp32, or NULL when absent; z NULL means no gate
 *     state_in       : (Bt, Di, N) fp32, (b, d, n) at ptr[b*state_batch_stride + d*state_dim_stride + n];
 *                      NULL means zeros.  state_out: the same strides, NULL means not written.
 * T is fp32, fp16 or bf16 (one T for u, delta, z, B, C, y); everything is computed in fp32 and the
 * state is always fp32. Weights (A_log, D, delta_bias) are fp32 whatever T is.
 *
 * Aliasing: state_out may be state_in (each (b, d, n) is read and written by one thread, read
 * first). y may be u, delta or z (each element is read before the block that owns it writes it).
 * Chunked use is exact: [0, L1) then [L1, L) with state_out fed back as state_in gives one run's
 * y and state bit for bit (same kernel, same fp32 operations in the same order).
 * Limits: 1 <= N <= HMX_SCAN_MAX_N, Bt <= 65535, L >= 1; offsets are 64-bit (long L is fine).
 *
 * Prefill design (time-major means a time step of one batch row is Di contiguous values, so the
 * parallel axis is channels and time is a sequential loop; Mamba's own kernel is channel-major and
 * parallel over time instead):
 *   one block = one batch row x (HMX_SCAN_THREADS / G) channels; G threads per channel, each owning
 *   N / G states in registers (G = 4..32, the smallest power of two with N <= G * states per thread).
 *   Per pass of HMX_SCAN_CHUNK steps the block stages u, dt (bias and softplus applied once per
 *   (t, d), not per state), B_t and C_t in shared memory as fp32, runs the recurrence, reduces
 *   y over the G threads of a channel for G steps at once (a butterfly reduce-scatter: G-1 shuffles
 *   per G steps instead of log2(G) per step), and writes y for the pass coalesced over channels.
 *   Inputs are read once and y written once; B and C are re-read by each channel block (from L2;
 *   they are N/Di the size of u).
 * Step design: one thread per (channel, state), G = next power of two >= N (<= 32) threads per
 * channel, a shuffle reduction for y; the state, which dominates the traffic at L == 1, is read
 * and written coalesced when state_dim_stride == N.
 */
#ifndef HMX_SELECTIVE_SCAN_H
#define HMX_SELECTIVE_SCAN_H

#include <stdint.h>

#define HMX_SCAN_THREADS 128     /* threads per prefill block */
#define HMX_SCAN_CHUNK 64        /* time steps staged in shared memory per pass (a multiple of 32) */
#define HMX_SCAN_MAX_N 64        /* largest state size; shared memory for B, C is 2 * CHUNK * N * 4 bytes */
#define HMX_SCAN_STEP_THREADS 256

typedef struct HmxScanParams {
  const void* u;
  const void* delta;
  const float* A_log;
  const void* B;
  const void* C;
  const float* D;           /* NULL: no skip term */
  const void* z;            /* NULL: no gate */
  const float* delta_bias;  /* NULL: no bias */
  const float* state_in;    /* NULL: zeros */
  float* state_out;         /* NULL: not written */
  void* y;
  int64_t u_batch_stride, u_time_stride;
  int64_t delta_batch_stride, delta_time_stride;
  int64_t z_batch_stride, z_time_stride;
  int64_t y_batch_stride, y_time_stride;
  int64_t B_batch_stride, B_time_stride;
  int64_t C_batch_stride, C_time_stride;
  int64_t state_batch_stride, state_dim_stride;
  int32_t Bt, L, Di, N;
  int32_t delta_softplus;   /* 1: dt = softplus(delta + delta_bias); 0: dt = delta + delta_bias */
  int32_t reserved;         /* keeps the struct a multiple of 8 bytes; set to 0 */
} HmxScanParams;

#ifdef __cplusplus
#include "../common.cuh"

namespace hmx {
template <typename T> cudaError_t selective_scan_prefill(const HmxScanParams& p, cudaStream_t stream);
template <typename T> cudaError_t selective_scan_step(const HmxScanParams& p, cudaStream_t stream);
}  // namespace hmx
#endif

#endif /* HMX_SELECTIVE_SCAN_H */
