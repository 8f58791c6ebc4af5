/* causal_conv1d.h: the depthwise causal convolution in front of Mamba's scan, on CUDA: a prefill
 * kernel (any L) and a one-step kernel (L == 1). The math is hmexport/kernels/reference.py
 * `causal_conv1d`:
 *
 *     window = [state | x] over time                    (W - 1 + L rows)
 *     y_t    = silu(bias + sum_k weight[:, k] * window[t + k])      (silu only if activation)
 *     state_out = the last W - 1 rows of window
 *
 * Layout (time-major; strides in elements; channels contiguous):
 *     x, y      : (Bt, L, Di)      dtype T    (b, t, d) at ptr[b*batch_stride + t*time_stride + d]
 *     weight    : (Di, W)  fp32, contiguous;  bias: (Di,) fp32 or NULL
 *     state_in  : (Bt, W-1, Di) fp32, (b, r, d) at ptr[b*state_batch_stride + r*state_time_stride + d];
 *                 NULL means zeros.  state_out: the same strides, NULL means not written.
 * T is fp32, fp16 or bf16; computed in fp32. The state is fp32 like the reference's (it holds
 * inputs, so an fp16/bf16 x is stored in it exactly).
 *
 * Aliasing: state_out may be state_in (the state rows are written by a second kernel, or by the
 * step kernel after it has read them, each row r after row L + r was read). y must not alias x: a
 * time chunk reads the W - 1 rows of x before it, which another block may already have replaced.
 * Limits: 1 <= W <= HMX_CONV_MAX_W, Bt <= 65535, Di / HMX_CONV_THREADS <= 65535 blocks, L >= 1.
 *
 * Prefill design: one thread per (batch, channel, chunk of HMX_CONV_CHUNK steps), the window of
 * W values in registers sliding down the chunk; a warp reads 32 consecutive channels of a step
 * (coalesced, channels are contiguous). x is read once plus W - 1 rows per chunk (W = 4: 5%); y
 * is written once. Then a (b, d)-parallel kernel writes state_out.
 * Step design: one thread per (batch, channel): read the state rows and x, write y and the state.
 */
#ifndef HMX_CAUSAL_CONV1D_H
#define HMX_CAUSAL_CONV1D_H

#include <stdint.h>

#define HMX_CONV_THREADS 128   /* channels per block */
#define HMX_CONV_CHUNK 64      /* time steps per thread in the prefill kernel */
#define HMX_CONV_MAX_W 8

typedef struct HmxConvParams {
  const void* x;
  const float* weight;
  const float* bias;       /* NULL: no bias */
  const float* state_in;   /* NULL: zeros */
  float* state_out;        /* NULL: not written */
  void* y;
  int64_t x_batch_stride, x_time_stride;
  int64_t y_batch_stride, y_time_stride;
  int64_t state_batch_stride, state_time_stride;
  int32_t Bt, L, Di, W;
  int32_t activation;      /* 1: silu; 0: identity */
  int32_t reserved;        /* keeps the struct a multiple of 8 bytes; set to 0 */
} HmxConvParams;

#ifdef __cplusplus
#include "../common.cuh"

namespace hmx {
template <typename T> cudaError_t causal_conv1d_prefill(const HmxConvParams& p, cudaStream_t stream);
template <typename T> cudaError_t causal_conv1d_step(const HmxConvParams& p, cudaStream_t stream);
}  // namespace hmx
#endif

#endif /* HMX_CAUSAL_CONV1D_H */
