// selective_scan_step.cu: one decoding step (L == 1) of the selective scan; the contract is in
// selective_scan.h. Thread (c, g) of a block handles channel blockIdx.x * (threads / G) + c and
// states n = g, g + G, ...; G is the next power of two >= N, at most 32, so the G threads of a
// channel are consecutive lanes of one warp and read (b, d, 0..N) of the state contiguously.
#include "selective_scan.h"

namespace hmx {
namespace {

template <typename T>
__global__ void __launch_bounds__(HMX_SCAN_STEP_THREADS) scan_step_kernel(HmxScanParams p, int G) {
  const int tid = threadIdx.x;
  const int g = tid % G;
  const int d = blockIdx.x * (HMX_SCAN_STEP_THREADS / G) + tid / G;
  const int b = blockIdx.y;
  const int N = p.N;
  const bool d_ok = d < p.Di;

  float uv = 0.f, dt = 0.f;
  if (d_ok) {
    uv = to_float(static_cast<const T*>(p.u)[b * p.u_batch_stride + d]);
    dt = to_float(static_cast<const T*>(p.delta)[b * p.delta_batch_stride + d]) + (p.delta_bias ? p.delta_bias[d] : 0.f);
    if (p.delta_softplus) dt = softplus(dt);
  }
  const float dtu = dt * uv;
  const T* Bm = static_cast<const T*>(p.B) + b * p.B_batch_stride;
  const T* Cm = static_cast<const T*>(p.C) + b * p.C_batch_stride;
  const int64_t srow = b * p.state_batch_stride + d * p.state_dim_stride;

  float acc = 0.f;
  if (d_ok) {
    for (int n = g; n < N; n += G) {
      // The same operations as the prefill kernel, so a step continues a prefill seamlessly.
      const float A2 = -expf(p.A_log[int64_t(d) * N + n]) * kLog2e;
      float s = p.state_in ? p.state_in[srow + n] : 0.f;
      s = exp2f(dt * A2) * s + dtu * to_float(Bm[n]);
      acc += s * to_float(Cm[n]);
      if (p.state_out) p.state_out[srow + n] = s;
    }
  }
  for (int m = G / 2; m >= 1; m /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, m);

  if (d_ok && g == 0) {
    float out = acc;
    if (p.D) out += p.D[d] * uv;
    if (p.z) out *= silu(to_float(static_cast<const T*>(p.z)[b * p.z_batch_stride + d]));
    static_cast<T*>(p.y)[b * p.y_batch_stride + d] = from_float<T>(out);
  }
}

}  // namespace

template <typename T>
cudaError_t selective_scan_step(const HmxScanParams& p, cudaStream_t stream) {
  int G = 1;
  while (G < p.N && G < 32) G *= 2;
  const dim3 grid(ceil_div(p.Di, HMX_SCAN_STEP_THREADS / G), p.Bt);
  return launch(scan_step_kernel<T>, grid, dim3(HMX_SCAN_STEP_THREADS), stream, p, G);
}

template cudaError_t selective_scan_step<float>(const HmxScanParams&, cudaStream_t);
template cudaError_t selective_scan_step<__half>(const HmxScanParams&, cudaStream_t);
template cudaError_t selective_scan_step<__nv_bfloat16>(const HmxScanParams&, cudaStream_t);

}  // namespace hmx
