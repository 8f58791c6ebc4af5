/* onnxruntime custom ops hmexport::SelectiveScan and hmexport::CausalConv1d over ssm_ops.c.
 *
 * Loaded with SessionOptions.register_custom_ops_library(path). Inputs arrive as onnxruntime's own
 * buffers and outputs are allocated by onnxruntime: no copies. Node contracts (float32, time-major):
 *   SelectiveScan(u, delta, A_log, B, C, D, z, delta_bias, state) -> (y, state_out)
 *       attribute delta_softplus (int, default 1); D, z, delta_bias are optional ("" inputs).
 *   CausalConv1d(x, weight (Di, W), bias, state (Bt, W-1, Di)) -> (y, state_out)
 *       attribute activation (int: 1 = SiLU, default 1); bias optional.
 */
#include "ort_abi.h"
#include "ssm_ops.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const OrtApi* api;
    int kind; /* 0 scan, 1 conv */
    int64_t flag;
} Kernel;

typedef struct {
    const float* data;
    int64_t dims[4];
    size_t rank;
} Tensor;

static OrtStatus* fail(const OrtApi* api, const char* msg) {
    return ((hmx_CreateStatus)HMX_FN(api, HMX_SLOT_CreateStatus))(HMX_ORT_INVALID_ARGUMENT, msg);
}

/* Read input `index` (absent optional inputs give data == NULL). */
static OrtStatus* input(const OrtApi* api, OrtKernelContext* ctx, size_t index, Tensor* t) {
    size_t count = 0;
    memset(t, 0, sizeof *t);
    OrtStatus* st = ((hmx_KernelContext_GetInputCount)HMX_FN(api, HMX_SLOT_KernelContext_GetInputCount))(ctx, &count);
    if (st || index >= count) return st;
    const OrtValue* v = NULL;
    if ((st = ((hmx_KernelContext_GetInput)HMX_FN(api, HMX_SLOT_KernelContext_GetInput))(ctx, index, &v)) || !v) return st;
    OrtTensorTypeAndShapeInfo* info = NULL;
    if ((st = ((hmx_GetTensorTypeAndShape)HMX_FN(api, HMX_SLOT_GetTensorTypeAndShape))(v, &info))) return st;
    int elem = 0;
    st = ((hmx_GetTensorElementType)HMX_FN(api, HMX_SLOT_GetTensorElementType))(info, &elem);
    if (!st) st = ((hmx_GetDimensionsCount)HMX_FN(api, HMX_SLOT_GetDimensionsCount))(info, &t->rank);
    if (!st && t->rank > 4) st = fail(api, "hmexport op: input rank above 4");
    if (!st) st = ((hmx_GetDimensions)HMX_FN(api, HMX_SLOT_GetDimensions))(info, t->dims, t->rank);
    ((hmx_ReleaseTensorTypeAndShapeInfo)HMX_FN(api, HMX_SLOT_ReleaseTensorTypeAndShapeInfo))(info);
    if (st) return st;
    if (elem != HMX_ELEM_FLOAT) return fail(api, "hmexport CPU ops take float32 tensors only");
    void* data = NULL;
    st = ((hmx_GetTensorMutableData)HMX_FN(api, HMX_SLOT_GetTensorMutableData))((OrtValue*)v, &data);
    t->data = (const float*)data;
    return st;
}

static OrtStatus* output(const OrtApi* api, OrtKernelContext* ctx, size_t index, const int64_t* dims, size_t rank, float** out) {
    OrtValue* v = NULL;
    OrtStatus* st = ((hmx_KernelContext_GetOutput)HMX_FN(api, HMX_SLOT_KernelContext_GetOutput))(ctx, index, dims, rank, &v);
    if (st) return st;
    return ((hmx_GetTensorMutableData)HMX_FN(api, HMX_SLOT_GetTensorMutableData))(v, (void**)out);
}

static int same(const Tensor* t, size_t rank, int64_t d0, int64_t d1, int64_t d2) {
    int64_t want[3] = {d0, d1, d2};
    if (t->rank != rank) return 0;
    for (size_t i = 0; i < rank; ++i)
        if (t->dims[i] != want[i]) return 0;
    return 1;
}

/* KernelContext_ParallelFor when the runtime has it (API >= 17): the work items run on the session's
 * own intra-op threads, which spin between ops and are already awake. A second pool (OpenMP) would
 * compete with them for the same cores: measured on 2 cores, --ops fused prefill ran at 1250-1550
 * tok/s with onnxruntime's workers spinning next to OpenMP's, 1780 with them parked. */
static int have_parallel_for = 0;

static void scan_item(void* args, size_t i) { hmx_scan_item((const hmx_scan_args*)args, (int64_t)i); }
static void conv_item(void* args, size_t i) { hmx_conv_item((const hmx_conv_args*)args, (int64_t)i); }

static OrtStatus* run_items(const OrtApi* api, OrtKernelContext* ctx, int64_t items, void (*fn)(void*, size_t), void* args) {
    if (have_parallel_for && items > 1)
        return ((hmx_KernelContext_ParallelFor)HMX_FN(api, HMX_SLOT_KernelContext_ParallelFor))(ctx, fn, (size_t)items, 0, args);
    for (int64_t i = 0; i < items; ++i) fn(args, (size_t)i);
    return NULL;
}

static OrtStatus* compute_scan(const Kernel* k, OrtKernelContext* ctx) {
    const OrtApi* api = k->api;
    Tensor u, delta, A, B, C, D, z, bias, state;
    Tensor* all[9] = {&u, &delta, &A, &B, &C, &D, &z, &bias, &state};
    for (size_t i = 0; i < 9; ++i) {
        OrtStatus* st = input(api, ctx, i, all[i]);
        if (st) return st;
    }
    if (!u.data || u.rank != 3) return fail(api, "SelectiveScan: u must be (Bt, L, Di)");
    int64_t Bt = u.dims[0], L = u.dims[1], Di = u.dims[2], N = A.dims[1];
    if (!same(&delta, 3, Bt, L, Di)) return fail(api, "SelectiveScan: delta must have u's shape (Bt, L, Di)");
    if (!same(&A, 2, Di, N, 0)) return fail(api, "SelectiveScan: A_log must be (Di, N)");
    if (!same(&B, 3, Bt, L, N) || !same(&C, 3, Bt, L, N)) return fail(api, "SelectiveScan: B and C must be (Bt, L, N)");
    if (D.data && !same(&D, 1, Di, 0, 0)) return fail(api, "SelectiveScan: D must be (Di)");
    if (z.data && !same(&z, 3, Bt, L, Di)) return fail(api, "SelectiveScan: z must have u's shape");
    if (bias.data && !same(&bias, 1, Di, 0, 0)) return fail(api, "SelectiveScan: delta_bias must be (Di)");
    if (state.data && !same(&state, 3, Bt, Di, N)) return fail(api, "SelectiveScan: state must be (Bt, Di, N)");
    if (N > HMX_MAX_STATE) return fail(api, "SelectiveScan: N above 64 is not supported on the CPU");
    float *y = NULL, *so = NULL;
    int64_t ydims[3] = {Bt, L, Di}, sdims[3] = {Bt, Di, N};
    OrtStatus* st = output(api, ctx, 0, ydims, 3, &y);
    if (!st) st = output(api, ctx, 1, sdims, 3, &so);
    if (st) return st;
    hmx_scan_args args = {u.data, delta.data, A.data, B.data, C.data, D.data, z.data, bias.data, state.data, y, so, Bt, L, Di, N, (int)k->flag};
    if (hmx_scan_check(&args)) return fail(api, "SelectiveScan: invalid dimensions");
    return run_items(api, ctx, hmx_scan_items(&args), scan_item, &args);
}

static OrtStatus* compute_conv(const Kernel* k, OrtKernelContext* ctx) {
    const OrtApi* api = k->api;
    Tensor x, w, bias, state;
    Tensor* all[4] = {&x, &w, &bias, &state};
    for (size_t i = 0; i < 4; ++i) {
        OrtStatus* st = input(api, ctx, i, all[i]);
        if (st) return st;
    }
    if (!x.data || x.rank != 3) return fail(api, "CausalConv1d: x must be (Bt, L, Di)");
    int64_t Bt = x.dims[0], L = x.dims[1], Di = x.dims[2], W = w.dims[1];
    if (!same(&w, 2, Di, W, 0)) return fail(api, "CausalConv1d: weight must be (Di, W)");
    if (bias.data && !same(&bias, 1, Di, 0, 0)) return fail(api, "CausalConv1d: bias must be (Di)");
    if (state.data && !same(&state, 3, Bt, W - 1, Di)) return fail(api, "CausalConv1d: state must be (Bt, W-1, Di)");
    float *y = NULL, *so = NULL;
    int64_t ydims[3] = {Bt, L, Di}, sdims[3] = {Bt, W - 1, Di};
    OrtStatus* st = output(api, ctx, 0, ydims, 3, &y);
    if (!st) st = output(api, ctx, 1, sdims, 3, &so);
    if (st) return st;
    hmx_conv_args args = {x.data, w.data, bias.data, state.data, y, so, Bt, L, Di, W, (int)k->flag};
    if (hmx_conv_check(&args)) return fail(api, "CausalConv1d: invalid dimensions (W must be 1..32)");
    return run_items(api, ctx, hmx_conv_items(&args), conv_item, &args);
}

/* ---- OrtCustomOp callbacks ---- */

static const char* scan_name(const OrtCustomOp* op) { (void)op; return "SelectiveScan"; }
static const char* conv_name(const OrtCustomOp* op) { (void)op; return "CausalConv1d"; }
static const char* provider(const OrtCustomOp* op) { (void)op; return NULL; /* CPU */ }
static int float_type(const OrtCustomOp* op, size_t i) { (void)op; (void)i; return HMX_ELEM_FLOAT; }
static size_t scan_inputs(const OrtCustomOp* op) { (void)op; return 9; }
static size_t conv_inputs(const OrtCustomOp* op) { (void)op; return 4; }
static size_t two(const OrtCustomOp* op) { (void)op; return 2; }
static int scan_input_kind(const OrtCustomOp* op, size_t i) { (void)op; return (i == 5 || i == 6 || i == 7) ? HMX_IO_OPTIONAL : HMX_IO_REQUIRED; }
static int conv_input_kind(const OrtCustomOp* op, size_t i) { (void)op; return i == 2 ? HMX_IO_OPTIONAL : HMX_IO_REQUIRED; }
static int required(const OrtCustomOp* op, size_t i) { (void)op; (void)i; return HMX_IO_REQUIRED; }
static int default_memory(const OrtCustomOp* op, size_t i) { (void)op; (void)i; return 0; }
static void destroy(void* kernel) { free(kernel); }

static OrtStatus* create(const OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info, void** out, int kind, const char* attr) {
    Kernel* k = (Kernel*)calloc(1, sizeof(Kernel));
    if (!k) return fail(api, "hmexport op: out of memory");
    k->api = api;
    k->kind = kind;
    k->flag = 1;
    OrtStatus* st = ((hmx_KernelInfoGetAttribute_int64)HMX_FN(api, HMX_SLOT_KernelInfoGetAttribute_int64))(info, attr, &k->flag);
    if (st) { /* attribute absent: keep the default */
        ((hmx_ReleaseStatus)HMX_FN(api, HMX_SLOT_ReleaseStatus))(st);
        k->flag = 1;
    }
    (void)op;
    *out = k;
    return NULL;
}
static OrtStatus* create_scan(const OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info, void** out) {
    return create(op, api, info, out, 0, "delta_softplus");
}
static OrtStatus* create_conv(const OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info, void** out) {
    return create(op, api, info, out, 1, "activation");
}
static OrtStatus* compute(void* kernel, OrtKernelContext* ctx) {
    const Kernel* k = (const Kernel*)kernel;
    return k->kind == 0 ? compute_scan(k, ctx) : compute_conv(k, ctx);
}

static OrtCustomOp scan_op, conv_op;

static void fill(OrtCustomOp* op, const char* (*name)(const OrtCustomOp*), size_t (*inputs)(const OrtCustomOp*),
                 int (*input_kind)(const OrtCustomOp*, size_t),
                 OrtStatus* (*create_fn)(const OrtCustomOp*, const OrtApi*, const OrtKernelInfo*, void**)) {
    memset(op, 0, sizeof *op);
    op->version = HMX_ORT_OP_VERSION;
    op->GetName = name;
    op->GetExecutionProviderType = provider;
    op->GetInputType = float_type;
    op->GetInputTypeCount = inputs;
    op->GetOutputType = float_type;
    op->GetOutputTypeCount = two;
    op->KernelDestroy = destroy;
    op->GetInputCharacteristic = input_kind;
    op->GetOutputCharacteristic = required;
    op->GetInputMemoryType = default_memory;
    op->CreateKernelV2 = create_fn;
    op->KernelComputeV2 = compute;
}

/* Entry point called by SessionOptions.register_custom_ops_library. */
__attribute__((visibility("default"))) OrtStatus* RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* base) {
    const OrtApi* api = base->GetApi(HMX_ORT_OP_VERSION);
    if (!api) return NULL; /* runtime older than API 16: nothing we can register safely */
    have_parallel_for = base->GetApi(HMX_ORT_PARALLEL_FOR_VERSION) != NULL;
    fill(&scan_op, scan_name, scan_inputs, scan_input_kind, create_scan);
    fill(&conv_op, conv_name, conv_inputs, conv_input_kind, create_conv);
    OrtCustomOpDomain* domain = NULL;
    OrtStatus* st = ((hmx_CreateCustomOpDomain)HMX_FN(api, HMX_SLOT_CreateCustomOpDomain))("hmexport", &domain);
    if (!st) st = ((hmx_CustomOpDomain_Add)HMX_FN(api, HMX_SLOT_CustomOpDomain_Add))(domain, &scan_op);
    if (!st) st = ((hmx_CustomOpDomain_Add)HMX_FN(api, HMX_SLOT_CustomOpDomain_Add))(domain, &conv_op);
    if (!st) st = ((hmx_AddCustomOpDomain)HMX_FN(api, HMX_SLOT_AddCustomOpDomain))(options, domain);
    return st; /* the domain lives as long as the process: sessions keep pointing at it */
}

/* The version this library was built for, for `hmexport kernels` diagnostics. */
__attribute__((visibility("default"))) const char* hmx_cpu_ops_version(void) { return "hmexport-cpu-ops 2"; }
