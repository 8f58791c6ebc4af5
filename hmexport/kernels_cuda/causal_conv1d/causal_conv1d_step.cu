// causal_conv1d_step.cu: one decoding step (L == 1) of the causal convolution (contract in
// causal_conv1d.h): thread (b, d) reads the W - 1 state rows and x, writes y and the shifted state.
#include "causal_conv1d.h"

namespace hmx {
namespace {

template <typename T, int kW>
__global__ void __launch_bounds__(HMX_CONV_THREADS) conv_step_kernel(HmxConvParams p) {
  const int d = blockIdx.x * HMX_CONV_THREADS + threadIdx.x;
  const int b = blockIdx.y;
  if (d >= p.Di) return;
  const int64_t srow = b * p.state_batch_stride + d;

  float win[kW];
#pragma unroll
  for (int k = 0; k < kW - 1; ++k) win[k] = p.state_in ? p.state_in[srow + k * p.state_time_stride] : 0.f;
  win[kW - 1] = to_float(static_cast<const T*>(p.x)[b * p.x_batch_stride + d]);

  float acc = 0.f;
#pragma unroll
  for (int k = 0; k < kW; ++k) acc += p.weight[int64_t(d) * kW + k] * win[k];
  acc += p.bias ? p.bias[d] : 0.f;
  static_cast<T*>(p.y)[b * p.y_batch_stride + d] = from_float<T>(p.activation ? silu(acc) : acc);

  if (p.state_out) {
#pragma unroll
    for (int r = 0; r < kW - 1; ++r) p.state_out[srow + r * p.state_time_stride] = win[r + 1];
  }
}

template <typename T, int kW>
cudaError_t launch_step(const HmxConvParams& p, cudaStream_t stream) {
  const dim3 grid(ceil_div(p.Di, HMX_CONV_THREADS), p.Bt);
  return launch(conv_step_kernel<T, kW>, grid, dim3(HMX_CONV_THREADS), stream, p);
}

}  // namespace

template <typename T>
cudaError_t causal_conv1d_step(const HmxConvParams& p, cudaStream_t stream) {
  switch (p.W) {
    case 1: return launch_step<T, 1>(p, stream);
    case 2: return launch_step<T, 2>(p, stream);
    case 3: return launch_step<T, 3>(p, stream);
    case 4: return launch_step<T, 4>(p, stream);
    case 5: return launch_step<T, 5>(p, stream);
    case 6: return launch_step<T, 6>(p, stream);
    case 7: return launch_step<T, 7>(p, stream);
    case 8: return launch_step<T, 8>(p, stream);
    default: return cudaErrorInvalidValue;  // 1 <= W <= HMX_CONV_MAX_W, checked by the caller
  }
}

template cudaError_t causal_conv1d_step<float>(const HmxConvParams&, cudaStream_t);
template cudaError_t causal_conv1d_step<__half>(const HmxConvParams&, cudaStream_t);
template cudaError_t causal_conv1d_step<__nv_bfloat16>(const HmxConvParams&, cudaStream_t);

}  // namespace hmx
