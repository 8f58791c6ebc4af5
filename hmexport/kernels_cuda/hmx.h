/* hmx.h: the C ABI of hmexport's CUDA kernels (libhmexport_cuda.so), for ctypes and C callers.
 *
 * Each op takes a parameter struct (see selective_scan/selective_scan.h and
 * causal_conv1d/causal_conv1d.h for shapes, layouts and aliasing rules), a dtype code for its
 * activations, and a cudaStream_t (NULL: the legacy default stream). It dispatches to the one-step
 * kernel when L == 1 and to the prefill kernel otherwise, is asynchronous on the stream, and
 * returns 0 or a cudaError_t code; hmx_last_error() then says what went wrong on this host thread.
 * Pointers are device pointers on the current device of the calling thread.
 */
#ifndef HMX_H
#define HMX_H

#include "causal_conv1d/causal_conv1d.h"
#include "selective_scan/selective_scan.h"

#define HMX_ABI_VERSION 1

enum HmxDtype { HMX_FP32 = 0, HMX_FP16 = 1, HMX_BF16 = 2 };

#ifdef __cplusplus
#define HMX_API extern "C" __attribute__((visibility("default")))
#else
#define HMX_API extern __attribute__((visibility("default")))
#endif

HMX_API int hmx_abi_version(void);
/* sizeof the two parameter structs, so a binding can check its mirror of them. */
HMX_API int hmx_scan_params_size(void);
HMX_API int hmx_conv_params_size(void);
HMX_API int hmx_selective_scan(const HmxScanParams* params, int dtype, void* stream);
HMX_API int hmx_causal_conv1d(const HmxConvParams* params, int dtype, void* stream);
/* cudaGetDeviceCount through this library's runtime: fails without a driver or a GPU. */
HMX_API int hmx_device_count(int* count);
/* The message of this thread's last failed call ("" after a successful one). */
HMX_API const char* hmx_last_error(void);

#endif /* HMX_H */
