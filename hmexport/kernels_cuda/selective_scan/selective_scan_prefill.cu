// selective_scan_prefill.cu: the selective scan over any L (see selective_scan.h for the contract
// and the design). One block: one batch row, kChannels = HMX_SCAN_THREADS / kG channels; thread
// (c, g) owns states n = g + j * kG (j < kNP) of channel d0 + c.
#include "selective_scan.h"

namespace hmx {
namespace {

// Butterfly reduce-scatter over the kG threads of a channel (consecutive lanes): at offset kM a
// thread keeps the half of its steps selected by bit kM of g and adds its partner's copy of that
// half. At the end part[0] is the full sum for step g of the group: kG - 1 shuffles for kG steps.
// Recursion on kM (rather than a loop) keeps every index compile-time, so part stays in registers.
template <int kM, int kG>
__device__ __forceinline__ void reduce_scatter(float (&part)[kG], int g) {
  if constexpr (kM >= 1) {
    const bool upper = (g & kM) != 0;
#pragma unroll
    for (int j = 0; j < kM; ++j) {
      const float send = upper ? part[j] : part[j + kM];
      const float keep = upper ? part[j + kM] : part[j];
      part[j] = keep + __shfl_xor_sync(0xffffffffu, send, kM);
    }
    reduce_scatter<kM / 2>(part, g);
  }
}

template <typename T, int kNP, int kG>
__global__ void __launch_bounds__(HMX_SCAN_THREADS) scan_prefill_kernel(HmxScanParams p) {
  constexpr int kThreads = HMX_SCAN_THREADS;
  constexpr int kChunk = HMX_SCAN_CHUNK;
  constexpr int kChannels = kThreads / kG;
  constexpr int kNMax = kNP * kG;
  static_assert(kThreads % kG == 0 && 32 % kG == 0 && kChunk % kG == 0, "G must divide the warp and the chunk");

  // fp32 staging for one pass. Padding (t >= len, d >= Di, n >= N) is zero, and a zero step is the
  // identity on the state (exp2(0) * s + 0 * 0 == s), so the recurrence needs no bounds checks.
  __shared__ float s_u[kChunk][kChannels];
  __shared__ float s_dt[kChunk][kChannels];
  __shared__ float s_y[kChunk][kChannels];
  __shared__ float s_B[kChunk][kNMax];
  __shared__ float s_C[kChunk][kNMax];

  const int tid = threadIdx.x;
  const int g = tid % kG;
  const int c = tid / kG;
  const int b = blockIdx.y;
  const int d0 = blockIdx.x * kChannels;
  const int d = d0 + c;
  const int Di = p.Di, N = p.N, L = p.L;

  const T* u = static_cast<const T*>(p.u) + b * p.u_batch_stride;
  const T* delta = static_cast<const T*>(p.delta) + b * p.delta_batch_stride;
  const T* Bm = static_cast<const T*>(p.B) + b * p.B_batch_stride;
  const T* Cm = static_cast<const T*>(p.C) + b * p.C_batch_stride;
  const T* z = p.z ? static_cast<const T*>(p.z) + b * p.z_batch_stride : nullptr;
  T* y = static_cast<T*>(p.y) + b * p.y_batch_stride;

  // A is pre-multiplied by log2(e): exp(dt * A) == exp2(dt * A2), one MUFU op.
  float A2[kNP], s[kNP];
#pragma unroll
  for (int j = 0; j < kNP; ++j) {
    const int n = g + j * kG;
    const bool ok = d < Di && n < N;
    A2[j] = ok ? -expf(p.A_log[int64_t(d) * N + n]) * kLog2e : 0.f;
    s[j] = ok && p.state_in ? p.state_in[b * p.state_batch_stride + d * p.state_dim_stride + n] : 0.f;
  }

  for (int64_t t0 = 0; t0 < L; t0 += kChunk) {
    const int len = L - t0 < kChunk ? int(L - t0) : kChunk;

    // Stage: consecutive threads take consecutive channels (coalesced rows of kChannels values).
    for (int i = tid; i < kChunk * kChannels; i += kThreads) {
      const int tt = i / kChannels, cc = i % kChannels, dd = d0 + cc;
      float uv = 0.f, dtv = 0.f;
      if (tt < len && dd < Di) {
        const int64_t t = t0 + tt;
        uv = to_float(u[t * p.u_time_stride + dd]);
        dtv = to_float(delta[t * p.delta_time_stride + dd]) + (p.delta_bias ? p.delta_bias[dd] : 0.f);
        if (p.delta_softplus) dtv = softplus(dtv);
      }
      s_u[tt][cc] = uv;
      s_dt[tt][cc] = dtv;
    }
    for (int i = tid; i < kChunk * kNMax; i += kThreads) {
      const int tt = i / kNMax, n = i % kNMax;
      const bool ok = tt < len && n < N;
      s_B[tt][n] = ok ? to_float(Bm[(t0 + tt) * p.B_time_stride + n]) : 0.f;
      s_C[tt][n] = ok ? to_float(Cm[(t0 + tt) * p.C_time_stride + n]) : 0.f;
    }
    __syncthreads();

    // Recurrence, kG steps at a time: part[j] is this thread's share of y at step tg + j.
    for (int tg = 0; tg < len; tg += kG) {
      float part[kG];
#pragma unroll
      for (int j = 0; j < kG; ++j) {
        const float dt = s_dt[tg + j][c];
        const float dtu = dt * s_u[tg + j][c];
        float acc = 0.f;
#pragma unroll
        for (int k = 0; k < kNP; ++k) {
          const int n = g + k * kG;
          s[k] = exp2f(dt * A2[k]) * s[k] + dtu * s_B[tg + j][n];
          acc += s[k] * s_C[tg + j][n];
        }
        part[j] = acc;
      }
      reduce_scatter<kG / 2>(part, g);
      if (tg + g < len) s_y[tg + g][c] = part[0];
    }
    __syncthreads();

    // Epilogue: skip term, gate, store; coalesced over channels like the staging.
    for (int i = tid; i < kChunk * kChannels; i += kThreads) {
      const int tt = i / kChannels, cc = i % kChannels, dd = d0 + cc;
      if (tt < len && dd < Di) {
        const int64_t t = t0 + tt;
        float out = s_y[tt][cc];
        if (p.D) out += p.D[dd] * s_u[tt][cc];
        if (z) out *= silu(to_float(z[t * p.z_time_stride + dd]));
        y[t * p.y_time_stride + dd] = from_float<T>(out);
      }
    }
    __syncthreads();  // the next pass overwrites s_u, s_y
  }

  if (p.state_out) {
#pragma unroll
    for (int j = 0; j < kNP; ++j) {
      const int n = g + j * kG;
      if (d < Di && n < N) p.state_out[b * p.state_batch_stride + d * p.state_dim_stride + n] = s[j];
    }
  }
}

template <typename T, int kNP, int kG>
cudaError_t launch_prefill(const HmxScanParams& p, cudaStream_t stream) {
  constexpr int kChannels = HMX_SCAN_THREADS / kG;
  const dim3 grid(ceil_div(p.Di, kChannels), p.Bt);
  return launch(scan_prefill_kernel<T, kNP, kG>, grid, dim3(HMX_SCAN_THREADS), stream, p);
}

}  // namespace

template <typename T>
cudaError_t selective_scan_prefill(const HmxScanParams& p, cudaStream_t stream) {
  // The smallest group that holds N: more threads per channel is more parallelism when Bt * Di
  // is small (decoder batch 1), and Mamba-1's N = 16 gets one state per thread.
  if (p.N <= 4) return launch_prefill<T, 1, 4>(p, stream);
  if (p.N <= 8) return launch_prefill<T, 1, 8>(p, stream);
  if (p.N <= 16) return launch_prefill<T, 1, 16>(p, stream);
  if (p.N <= 32) return launch_prefill<T, 1, 32>(p, stream);
  return launch_prefill<T, 2, 32>(p, stream);  // N <= HMX_SCAN_MAX_N == 64, checked by the caller
}

template cudaError_t selective_scan_prefill<float>(const HmxScanParams&, cudaStream_t);
template cudaError_t selective_scan_prefill<__half>(const HmxScanParams&, cudaStream_t);
template cudaError_t selective_scan_prefill<__nv_bfloat16>(const HmxScanParams&, cudaStream_t);

}  // namespace hmx
