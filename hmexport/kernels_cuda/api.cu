// api.cu: the C ABI (hmx.h): argument checks with messages, then dispatch on dtype and on
// L == 1 (step kernel) versus L > 1 (prefill kernel). Only the CUDA runtime API is used.
#include <stdarg.h>
#include <stdio.h>

#include "hmx.h"

namespace {

thread_local char g_error[512];

int fail(int code, const char* fmt, ...) {
  va_list args;
  va_start(args, fmt);
  vsnprintf(g_error, sizeof g_error, fmt, args);
  va_end(args);
  return code;
}

int ok() {
  g_error[0] = '\0';
  return 0;
}

const char* dtype_name(int dtype) {
  switch (dtype) {
    case HMX_FP32: return "fp32";
    case HMX_FP16: return "fp16";
    case HMX_BF16: return "bf16";
    default: return "?";
  }
}

template <typename Params>
int check_common(const char* op, const Params* p, int dtype) {
  if (!p) return fail(cudaErrorInvalidValue, "%s: params is NULL", op);
  if (dtype < HMX_FP32 || dtype > HMX_BF16)
    return fail(cudaErrorInvalidValue, "%s: dtype %d: expected 0 (fp32), 1 (fp16) or 2 (bf16)", op, dtype);
  if (p->Bt < 1 || p->Bt > 65535) return fail(cudaErrorInvalidValue, "%s: Bt = %d: expected 1..65535", op, p->Bt);
  if (p->L < 1) return fail(cudaErrorInvalidValue, "%s: L = %d: expected >= 1", op, p->L);
  if (p->Di < 1) return fail(cudaErrorInvalidValue, "%s: Di = %d: expected >= 1", op, p->Di);
  return 0;
}

template <typename T>
cudaError_t run_scan(const HmxScanParams& p, cudaStream_t stream) {
  return p.L == 1 ? hmx::selective_scan_step<T>(p, stream) : hmx::selective_scan_prefill<T>(p, stream);
}

template <typename T>
cudaError_t run_conv(const HmxConvParams& p, cudaStream_t stream) {
  return p.L == 1 ? hmx::causal_conv1d_step<T>(p, stream) : hmx::causal_conv1d_prefill<T>(p, stream);
}

}  // namespace

HMX_API int hmx_abi_version(void) { return HMX_ABI_VERSION; }
HMX_API int hmx_scan_params_size(void) { return int(sizeof(HmxScanParams)); }
HMX_API int hmx_conv_params_size(void) { return int(sizeof(HmxConvParams)); }
HMX_API const char* hmx_last_error(void) { return g_error; }

HMX_API int hmx_device_count(int* count) {
  int n = 0;
  const cudaError_t err = hmx::device_count(&n);
  if (count) *count = err == cudaSuccess ? n : 0;
  if (err != cudaSuccess)
    return fail(int(err), "cudaGetDeviceCount: %s (cudaError %d)", hmx::error_string(err), int(err));
  return ok();
}

HMX_API int hmx_selective_scan(const HmxScanParams* p, int dtype, void* stream) {
  const char* op = "hmx_selective_scan";
  if (int rc = check_common(op, p, dtype)) return rc;
  if (p->N < 1 || p->N > HMX_SCAN_MAX_N)
    return fail(cudaErrorInvalidValue, "%s: N = %d: expected 1..%d", op, p->N, HMX_SCAN_MAX_N);
  const struct { const void* ptr; const char* name; } required[] = {
      {p->u, "u"}, {p->delta, "delta"}, {p->A_log, "A_log"}, {p->B, "B"}, {p->C, "C"}, {p->y, "y"}};
  for (const auto& r : required)
    if (!r.ptr) return fail(cudaErrorInvalidValue, "%s: %s is NULL", op, r.name);
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  cudaError_t err = cudaErrorInvalidValue;
  switch (dtype) {
    case HMX_FP32: err = run_scan<float>(*p, s); break;
    case HMX_FP16: err = run_scan<__half>(*p, s); break;
    case HMX_BF16: err = run_scan<__nv_bfloat16>(*p, s); break;
  }
  if (err != cudaSuccess)
    return fail(int(err), "%s (%s, Bt=%d L=%d Di=%d N=%d): %s (cudaError %d)", op, dtype_name(dtype), p->Bt, p->L,
                p->Di, p->N, hmx::error_string(err), int(err));
  return ok();
}

HMX_API int hmx_causal_conv1d(const HmxConvParams* p, int dtype, void* stream) {
  const char* op = "hmx_causal_conv1d";
  if (int rc = check_common(op, p, dtype)) return rc;
  if (p->W < 1 || p->W > HMX_CONV_MAX_W)
    return fail(cudaErrorInvalidValue, "%s: W = %d: expected 1..%d", op, p->W, HMX_CONV_MAX_W);
  if ((p->Di + HMX_CONV_THREADS - 1) / HMX_CONV_THREADS > 65535)
    return fail(cudaErrorInvalidValue, "%s: Di = %d: expected <= %d", op, p->Di, 65535 * HMX_CONV_THREADS);
  if (p->y == p->x && p->L > 1)
    return fail(cudaErrorInvalidValue, "%s: y aliases x; the prefill kernel needs them apart", op);
  const struct { const void* ptr; const char* name; } required[] = {{p->x, "x"}, {p->weight, "weight"}, {p->y, "y"}};
  for (const auto& r : required)
    if (!r.ptr) return fail(cudaErrorInvalidValue, "%s: %s is NULL", op, r.name);
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  cudaError_t err = cudaErrorInvalidValue;
  switch (dtype) {
    case HMX_FP32: err = run_conv<float>(*p, s); break;
    case HMX_FP16: err = run_conv<__half>(*p, s); break;
    case HMX_BF16: err = run_conv<__nv_bfloat16>(*p, s); break;
  }
  if (err != cudaSuccess)
    return fail(int(err), "%s (%s, Bt=%d L=%d Di=%d W=%d): %s (cudaError %d)", op, dtype_name(dtype), p->Bt, p->L,
                p->Di, p->W, hmx::error_string(err), int(err));
  return ok();
}
