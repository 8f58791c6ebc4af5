// causal_conv1d_prefill.cu: the causal depthwise convolution over any L (contract in
// causal_conv1d.h). Grid: x = time chunks (the long axis, up to 2^31 - 1 blocks), y = channel
// blocks, z = batch rows.
#include "causal_conv1d.h"

namespace hmx {
namespace {

template <typename T, int kW>
__global__ void __launch_bounds__(HMX_CONV_THREADS) conv_prefill_kernel(HmxConvParams p) {
  const int d = blockIdx.y * HMX_CONV_THREADS + threadIdx.x;
  const int b = blockIdx.z;
  const int64_t t0 = int64_t(blockIdx.x) * HMX_CONV_CHUNK;
  if (d >= p.Di) return;  // no block-level synchronisation in this kernel

  const T* x = static_cast<const T*>(p.x) + b * p.x_batch_stride + d;
  T* y = static_cast<T*>(p.y) + b * p.y_batch_stride + d;
  const float* state = p.state_in ? p.state_in + b * p.state_batch_stride + d : nullptr;

  float w[kW], win[kW];
#pragma unroll
  for (int k = 0; k < kW; ++k) w[k] = p.weight[int64_t(d) * kW + k];
  const float bias = p.bias ? p.bias[d] : 0.f;

  // win[k] = window row t0 + k for the first step: rows before x's start come from the state.
#pragma unroll
  for (int k = 0; k < kW - 1; ++k) {
    const int64_t t = t0 - (kW - 1) + k;
    win[k] = t >= 0 ? to_float(x[t * p.x_time_stride]) : (state ? state[(kW - 1 + t) * p.state_time_stride] : 0.f);
  }

  const int64_t t_end = t0 + HMX_CONV_CHUNK < p.L ? t0 + HMX_CONV_CHUNK : p.L;
#pragma unroll 4
  for (int64_t t = t0; t < t_end; ++t) {
    win[kW - 1] = to_float(x[t * p.x_time_stride]);
    float acc = 0.f;
#pragma unroll
    for (int k = 0; k < kW; ++k) acc += w[k] * win[k];
    acc += bias;
    y[t * p.y_time_stride] = from_float<T>(p.activation ? silu(acc) : acc);
#pragma unroll
    for (int k = 0; k < kW - 1; ++k) win[k] = win[k + 1];
  }
}

// state_out row r = window row L + r. Ascending r reads row L + r > r before any write to it,
// so state_out may alias state_in.
template <typename T>
__global__ void __launch_bounds__(HMX_CONV_THREADS) conv_state_kernel(HmxConvParams p) {
  const int d = blockIdx.x * HMX_CONV_THREADS + threadIdx.x;
  const int b = blockIdx.y;
  if (d >= p.Di) return;
  const int64_t srow = b * p.state_batch_stride + d;
  const T* x = static_cast<const T*>(p.x) + b * p.x_batch_stride + d;
  for (int r = 0; r < p.W - 1; ++r) {
    const int64_t j = int64_t(p.L) + r;  // window row
    float v;
    if (j >= p.W - 1) v = to_float(x[(j - (p.W - 1)) * p.x_time_stride]);
    else v = p.state_in ? p.state_in[srow + j * p.state_time_stride] : 0.f;
    p.state_out[srow + r * p.state_time_stride] = v;
  }
}

template <typename T, int kW>
cudaError_t launch_prefill(const HmxConvParams& p, cudaStream_t stream) {
  const dim3 grid(ceil_div(p.L, HMX_CONV_CHUNK), ceil_div(p.Di, HMX_CONV_THREADS), p.Bt);
  cudaError_t err = launch(conv_prefill_kernel<T, kW>, grid, dim3(HMX_CONV_THREADS), stream, p);
  if (err != cudaSuccess || !p.state_out || p.W == 1) return err;
  return launch(conv_state_kernel<T>, dim3(ceil_div(p.Di, HMX_CONV_THREADS), p.Bt), dim3(HMX_CONV_THREADS), stream, p);
}

}  // namespace

template <typename T>
cudaError_t causal_conv1d_prefill(const HmxConvParams& p, cudaStream_t stream) {
  switch (p.W) {
    case 1: return launch_prefill<T, 1>(p, stream);
    case 2: return launch_prefill<T, 2>(p, stream);
    case 3: return launch_prefill<T, 3>(p, stream);
    case 4: return launch_prefill<T, 4>(p, stream);
    case 5: return launch_prefill<T, 5>(p, stream);
    case 6: return launch_prefill<T, 6>(p, stream);
    case 7: return launch_prefill<T, 7>(p, stream);
    case 8: return launch_prefill<T, 8>(p, stream);
    default: return cudaErrorInvalidValue;  // 1 <= W <= HMX_CONV_MAX_W, checked by the caller
  }
}

template cudaError_t causal_conv1d_prefill<float>(const HmxConvParams&, cudaStream_t);
template cudaError_t causal_conv1d_prefill<__half>(const HmxConvParams&, cudaStream_t);
template cudaError_t causal_conv1d_prefill<__nv_bfloat16>(const HmxConvParams&, cudaStream_t);

}  // namespace hmx
