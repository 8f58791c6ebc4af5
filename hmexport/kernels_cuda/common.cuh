// common.cuh: what every kernel translation unit shares. Float conversion for the three input
// dtypes, softplus/silu with the reference's exact definitions, and one launch helper, so that a
// kernel is launched the same way on the GPU and in the CPU SIMT emulator CI uses to check the
// kernels' indexing and reductions without a GPU (tests/kernels_cuda/emu, built by g++ with
// -DHMX_SIMT_EMULATOR; that is the only reason for the #if below).
#pragma once

#include <stdint.h>

#if defined(HMX_SIMT_EMULATOR)
#include "simt_emulator.h"
#else
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#endif

namespace hmx {

constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// As reference.softplus (and torch): the identity above 20, where log1p(exp(x)) == x in fp32.
__device__ __forceinline__ float softplus(float x) { return x > 20.f ? x : log1pf(expf(x)); }
__device__ __forceinline__ float silu(float x) { return x / (1.f + expf(-x)); }

__host__ __device__ constexpr int ceil_div(int64_t a, int64_t b) { return int((a + b - 1) / b); }

template <typename... KernelArgs, typename... Args>
inline cudaError_t launch(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, cudaStream_t stream, Args... args) {
#if defined(HMX_SIMT_EMULATOR)
  (void)stream;
  return simt::launch(kernel, grid, block, args...);
#else
  kernel<<<grid, block, 0, stream>>>(args...);
  return cudaGetLastError();
#endif
}

inline cudaError_t device_count(int* count) {
#if defined(HMX_SIMT_EMULATOR)
  *count = 1;
  return cudaSuccess;
#else
  return cudaGetDeviceCount(count);
#endif
}

inline const char* error_string(cudaError_t err) {
#if defined(HMX_SIMT_EMULATOR)
  return err == cudaSuccess ? "no error" : "simt emulator error";
#else
  return cudaGetErrorString(err);
#endif
}

}  // namespace hmx
