/* The slice of onnxruntime's stable C ABI that a custom-op library needs, declared here because
 * no installable package ships onnxruntime's headers. Facts (checked against onnxruntime 1.32):
 *  - a library exports RegisterCustomOps(OrtSessionOptions*, const OrtApiBase*);
 *  - OrtApiBase is {GetApi(version), GetVersionString}; GetApi(N) accepts every N <= the runtime's;
 *  - OrtApi is a table of function pointers that only ever grows, so a slot's index is fixed
 *    (the indices below; ORT's own static_assert pins ReleaseCustomOpDomain at 101);
 *  - OrtCustomOp's fields are read according to its `version` (>= 16 enables the V2 callbacks,
 *    >= 13 reads GetInputMemoryType; the characteristic callbacks are always read).
 */
#ifndef HMX_ORT_ABI_H
#define HMX_ORT_ABI_H
#include <stddef.h>
#include <stdint.h>

typedef struct OrtStatus OrtStatus;
typedef struct OrtValue OrtValue;
typedef struct OrtSessionOptions OrtSessionOptions;
typedef struct OrtCustomOpDomain OrtCustomOpDomain;
typedef struct OrtKernelInfo OrtKernelInfo;
typedef struct OrtKernelContext OrtKernelContext;
typedef struct OrtTensorTypeAndShapeInfo OrtTensorTypeAndShapeInfo;
typedef struct OrtApi OrtApi; /* opaque: accessed as an array of function pointers */

enum { HMX_ORT_FAIL = 1, HMX_ORT_INVALID_ARGUMENT = 2 };
enum { HMX_ELEM_UNDEFINED = 0, HMX_ELEM_FLOAT = 1, HMX_ELEM_INT64 = 7, HMX_ELEM_FLOAT16 = 10, HMX_ELEM_BFLOAT16 = 16 };
enum { HMX_IO_REQUIRED = 0, HMX_IO_OPTIONAL = 1 };
#define HMX_ORT_OP_VERSION 16

/* Slots of OrtApi used here (0-based). */
enum {
    HMX_SLOT_CreateStatus = 0,
    HMX_SLOT_CreateCustomOpDomain = 26,
    HMX_SLOT_CustomOpDomain_Add = 27,
    HMX_SLOT_AddCustomOpDomain = 28,
    HMX_SLOT_GetTensorMutableData = 51,
    HMX_SLOT_GetTensorElementType = 60,
    HMX_SLOT_GetDimensionsCount = 61,
    HMX_SLOT_GetDimensions = 62,
    HMX_SLOT_GetTensorTypeAndShape = 65,
    HMX_SLOT_KernelInfoGetAttribute_int64 = 86,
    HMX_SLOT_KernelContext_GetInputCount = 88,
    HMX_SLOT_KernelContext_GetInput = 90,
    HMX_SLOT_KernelContext_GetOutput = 91,
    HMX_SLOT_ReleaseStatus = 93,
    HMX_SLOT_ReleaseTensorTypeAndShapeInfo = 99,
    HMX_SLOT_KernelContext_ParallelFor = 274, /* since API 17 (onnxruntime 1.17) */
};
#define HMX_ORT_PARALLEL_FOR_VERSION 17

typedef struct OrtApiBase {
    const OrtApi* (*GetApi)(uint32_t version);
    const char* (*GetVersionString)(void);
} OrtApiBase;

typedef struct OrtCustomOp OrtCustomOp;
struct OrtCustomOp {
    uint32_t version;
    void* (*CreateKernel)(const OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info);
    const char* (*GetName)(const OrtCustomOp* op);
    const char* (*GetExecutionProviderType)(const OrtCustomOp* op);
    int (*GetInputType)(const OrtCustomOp* op, size_t index);
    size_t (*GetInputTypeCount)(const OrtCustomOp* op);
    int (*GetOutputType)(const OrtCustomOp* op, size_t index);
    size_t (*GetOutputTypeCount)(const OrtCustomOp* op);
    void (*KernelCompute)(void* kernel, OrtKernelContext* context);
    void (*KernelDestroy)(void* kernel);
    int (*GetInputCharacteristic)(const OrtCustomOp* op, size_t index);
    int (*GetOutputCharacteristic)(const OrtCustomOp* op, size_t index);
    int (*GetInputMemoryType)(const OrtCustomOp* op, size_t index);
    int (*GetVariadicInputMinArity)(const OrtCustomOp* op);
    int (*GetVariadicInputHomogeneity)(const OrtCustomOp* op);
    int (*GetVariadicOutputMinArity)(const OrtCustomOp* op);
    int (*GetVariadicOutputHomogeneity)(const OrtCustomOp* op);
    OrtStatus* (*CreateKernelV2)(const OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info, void** kernel);
    OrtStatus* (*KernelComputeV2)(void* kernel, OrtKernelContext* context);
    void* reserved[7]; /* later callbacks (shape inference, versions, in-place, aliasing): left NULL */
};

/* Typed views of the slots. */
#define HMX_FN(api, slot) (((void* const*)(api))[slot])
typedef OrtStatus* (*hmx_CreateStatus)(int code, const char* msg);
typedef OrtStatus* (*hmx_CreateCustomOpDomain)(const char* domain, OrtCustomOpDomain** out);
typedef OrtStatus* (*hmx_CustomOpDomain_Add)(OrtCustomOpDomain* domain, const OrtCustomOp* op);
typedef OrtStatus* (*hmx_AddCustomOpDomain)(OrtSessionOptions* options, OrtCustomOpDomain* domain);
typedef OrtStatus* (*hmx_GetTensorMutableData)(OrtValue* value, void** out);
typedef OrtStatus* (*hmx_GetTensorElementType)(const OrtTensorTypeAndShapeInfo* info, int* out);
typedef OrtStatus* (*hmx_GetDimensionsCount)(const OrtTensorTypeAndShapeInfo* info, size_t* out);
typedef OrtStatus* (*hmx_GetDimensions)(const OrtTensorTypeAndShapeInfo* info, int64_t* dims, size_t n);
typedef OrtStatus* (*hmx_GetTensorTypeAndShape)(const OrtValue* value, OrtTensorTypeAndShapeInfo** out);
typedef OrtStatus* (*hmx_KernelInfoGetAttribute_int64)(const OrtKernelInfo* info, const char* name, int64_t* out);
typedef OrtStatus* (*hmx_KernelContext_GetInputCount)(const OrtKernelContext* ctx, size_t* out);
typedef OrtStatus* (*hmx_KernelContext_GetInput)(const OrtKernelContext* ctx, size_t index, const OrtValue** out);
typedef OrtStatus* (*hmx_KernelContext_GetOutput)(OrtKernelContext* ctx, size_t index, const int64_t* dims, size_t n, OrtValue** out);
typedef OrtStatus* (*hmx_KernelContext_ParallelFor)(const OrtKernelContext* ctx, void (*fn)(void*, size_t), size_t total, size_t num_batch, void* data);
typedef void (*hmx_ReleaseStatus)(OrtStatus* status);
typedef void (*hmx_ReleaseTensorTypeAndShapeInfo)(OrtTensorTypeAndShapeInfo* info);
#endif
