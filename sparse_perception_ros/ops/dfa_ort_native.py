"""The DFA node as a native ONNX Runtime custom op: the C kernel of :mod:`.dfa_cpu` behind ORT's C API.

Why (measured, ``bench/RESULTS.md``, *fifteenth measurement*): the onnxruntime-extensions Python op
(:mod:`.dfa_ort`) copies the op's inputs into numpy arrays and its output back (the fused preset's
features are ``[1, 22 440, 64]`` floats, 5.7 MB, per call), and its body takes the GIL. In the node
the head's ``session.run`` otherwise runs without the GIL beside the image, LiDAR and ROS threads;
every DFA call waited for the interpreter. Here ORT hands the op its own buffers and the output it
allocates, and no Python runs inside the step.

The library is plain C compiled on first use like the kernel (same cache, same compiler flags, no
ONNX Runtime headers needed): it reaches ORT through the function table ``OrtApiBase::GetApi``
returns. That table is append-only across ORT releases, so positions from API version 8 (the
version this op asks for) hold in every later runtime; the positions used are listed in
``_ORT_API_POSITIONS`` (facts of ``onnxruntime_c_api.h``). The op struct is filled to version 16
(``KernelComputeV2`` returns a status, so a bad input raises in ``session.run`` with our message).

The op serves our own domain ``sparse_perception`` (:mod:`.dfa_onnx`), so the graph file needs no
renaming, unlike the Python op. Attribute ``num_threads`` (int, default 1) sets the kernel's OpenMP
threads; :func:`ort_model` writes it from the session's thread count.
"""

from __future__ import annotations

import threading
from pathlib import Path

from sparse_perception_ros.ops import dfa_cpu
from sparse_perception_ros.ops.dfa_onnx import DOMAIN, OP_TYPE

__all__ = ["library_path", "available", "unavailable_reason", "ort_model", "session_options", "NUM_THREADS_ATTR"]

NUM_THREADS_ATTR = "num_threads"

# Positions in ONNX Runtime's OrtApi function table (onnxruntime_c_api.h, API version 8).
_ORT_API_POSITIONS = {
    "CreateStatus": 0,
    "CreateCustomOpDomain": 26,
    "CustomOpDomain_Add": 27,
    "AddCustomOpDomain": 28,
    "GetTensorMutableData": 51,
    "GetTensorElementType": 60,
    "GetDimensionsCount": 61,
    "GetDimensions": 62,
    "GetTensorTypeAndShape": 65,
    "KernelInfoGetAttribute_int64": 86,
    "KernelContext_GetInputCount": 88,
    "KernelContext_GetInput": 90,
    "KernelContext_GetOutput": 91,
    "ReleaseStatus": 93,
    "ReleaseTensorTypeAndShapeInfo": 99,
}

_GLUE = r"""
/* ---- ONNX Runtime custom op glue (C API, no ORT headers) ---------------------------------- */
typedef struct OrtStatus OrtStatus;
typedef struct OrtValue OrtValue;
typedef struct OrtKernelInfo OrtKernelInfo;
typedef struct OrtKernelContext OrtKernelContext;
typedef struct OrtTensorTypeAndShapeInfo OrtTensorTypeAndShapeInfo;
typedef struct OrtSessionOptions OrtSessionOptions;
typedef struct OrtCustomOpDomain OrtCustomOpDomain;

typedef struct OrtApiBase {
  const void *const *(*GetApi)(uint32_t version);
  const char *(*GetVersionString)(void);
} OrtApiBase;

enum { ORT_FAIL = 1, ORT_INVALID_ARGUMENT = 2 };
enum { TYPE_FLOAT = 1, TYPE_INT64 = 7 };

/* OrtCustomOp up to API version 16; the fields after KernelComputeV2 exist in later headers and
   are left NULL (ORT reads a field only when the op's version is at least the field's). */
typedef struct OrtCustomOp {
  uint32_t version;
  void *(*CreateKernel)(const struct OrtCustomOp *op, const void *api, const OrtKernelInfo *info);
  const char *(*GetName)(const struct OrtCustomOp *op);
  const char *(*GetExecutionProviderType)(const struct OrtCustomOp *op);
  int (*GetInputType)(const struct OrtCustomOp *op, size_t index);
  size_t (*GetInputTypeCount)(const struct OrtCustomOp *op);
  int (*GetOutputType)(const struct OrtCustomOp *op, size_t index);
  size_t (*GetOutputTypeCount)(const struct OrtCustomOp *op);
  void (*KernelCompute)(void *kernel, OrtKernelContext *context);
  void (*KernelDestroy)(void *kernel);
  int (*GetInputCharacteristic)(const struct OrtCustomOp *op, size_t index);
  int (*GetOutputCharacteristic)(const struct OrtCustomOp *op, size_t index);
  int (*GetInputMemoryType)(const struct OrtCustomOp *op, size_t index);
  int (*GetVariadicInputMinArity)(const struct OrtCustomOp *op);
  int (*GetVariadicInputHomogeneity)(const struct OrtCustomOp *op);
  int (*GetVariadicOutputMinArity)(const struct OrtCustomOp *op);
  int (*GetVariadicOutputHomogeneity)(const struct OrtCustomOp *op);
  OrtStatus *(*CreateKernelV2)(const struct OrtCustomOp *op, const void *api, const OrtKernelInfo *info,
                               void **kernel);
  OrtStatus *(*KernelComputeV2)(void *kernel, OrtKernelContext *context);
  void *later[7]; /* InferOutputShapeFn .. ReleaseAliasMap */
} OrtCustomOp;

static const void *const *api;
typedef OrtStatus *(*CreateStatus_t)(int code, const char *msg);
typedef OrtStatus *(*CreateCustomOpDomain_t)(const char *domain, OrtCustomOpDomain **out);
typedef OrtStatus *(*CustomOpDomain_Add_t)(OrtCustomOpDomain *domain, const OrtCustomOp *op);
typedef OrtStatus *(*AddCustomOpDomain_t)(OrtSessionOptions *options, OrtCustomOpDomain *domain);
typedef OrtStatus *(*GetTensorMutableData_t)(OrtValue *value, void **out);
typedef OrtStatus *(*GetTensorElementType_t)(const OrtTensorTypeAndShapeInfo *info, int *out);
typedef OrtStatus *(*GetDimensionsCount_t)(const OrtTensorTypeAndShapeInfo *info, size_t *out);
typedef OrtStatus *(*GetDimensions_t)(const OrtTensorTypeAndShapeInfo *info, int64_t *dims, size_t n);
typedef OrtStatus *(*GetTensorTypeAndShape_t)(const OrtValue *value, OrtTensorTypeAndShapeInfo **out);
typedef OrtStatus *(*KernelInfoGetAttribute_int64_t)(const OrtKernelInfo *info, const char *name, int64_t *out);
typedef OrtStatus *(*KernelContext_GetInputCount_t)(const OrtKernelContext *context, size_t *out);
typedef OrtStatus *(*KernelContext_GetInput_t)(const OrtKernelContext *context, size_t index, const OrtValue **out);
typedef OrtStatus *(*KernelContext_GetOutput_t)(OrtKernelContext *context, size_t index, const int64_t *dims,
                                               size_t n, OrtValue **out);
typedef void (*ReleaseStatus_t)(OrtStatus *status);
typedef void (*ReleaseTensorTypeAndShapeInfo_t)(OrtTensorTypeAndShapeInfo *info);
#define ORT(name) ((name##_t)api[POS_##name])
#define TRY(call) do { OrtStatus *st_ = (call); if (st_) return st_; } while (0)

typedef struct { int nthreads; } dfa_kernel_t;

static const char *op_name(const OrtCustomOp *op) { (void)op; return OP_NAME; }
static const char *op_ep(const OrtCustomOp *op) { (void)op; return NULL; /* CPU */ }
static int op_input_type(const OrtCustomOp *op, size_t i) { (void)op; return (i == 1 || i == 2) ? TYPE_INT64 : TYPE_FLOAT; }
static size_t op_input_count(const OrtCustomOp *op) { (void)op; return 5; }
static int op_output_type(const OrtCustomOp *op, size_t i) { (void)op; (void)i; return TYPE_FLOAT; }
static size_t op_output_count(const OrtCustomOp *op) { (void)op; return 1; }
static int op_required(const OrtCustomOp *op, size_t i) { (void)op; (void)i; return 0; /* required */ }
static int op_mem_default(const OrtCustomOp *op, size_t i) { (void)op; (void)i; return 0; /* OrtMemTypeDefault */ }
static int op_one(const OrtCustomOp *op) { (void)op; return 1; }

static OrtStatus *create_kernel_v2(const OrtCustomOp *op, const void *api_, const OrtKernelInfo *info, void **out) {
  (void)op; (void)api_;
  dfa_kernel_t *k = (dfa_kernel_t *)malloc(sizeof(dfa_kernel_t));
  if (!k) return ORT(CreateStatus)(ORT_FAIL, "DeformableAggregation: out of memory creating the kernel");
  int64_t n = 1;
  OrtStatus *st = ORT(KernelInfoGetAttribute_int64)(info, NUM_THREADS_ATTR, &n);
  if (st) { ORT(ReleaseStatus)(st); n = 1; } /* absent: one thread */
  k->nthreads = n < 1 ? 1 : (int)n;
  *out = k;
  return NULL;
}
static void *create_kernel(const OrtCustomOp *op, const void *api_, const OrtKernelInfo *info) {
  void *k = NULL;
  OrtStatus *st = create_kernel_v2(op, api_, info, &k);
  if (st) { ORT(ReleaseStatus)(st); return NULL; }
  return k;
}
static void destroy_kernel(void *k) { free(k); }

/* Shape and element type of input i; rank must be `rank`. */
static OrtStatus *input(OrtKernelContext *ctx, size_t i, int type, size_t rank, int64_t *dims, void **data) {
  const OrtValue *v = NULL;
  OrtTensorTypeAndShapeInfo *info = NULL;
  size_t n = 0;
  int t = 0;
  char msg[160];
  TRY(ORT(KernelContext_GetInput)(ctx, i, &v));
  if (!v) {
    snprintf(msg, sizeof msg, "DeformableAggregation: input %zu is missing", i);
    return ORT(CreateStatus)(ORT_INVALID_ARGUMENT, msg);
  }
  TRY(ORT(GetTensorTypeAndShape)(v, &info));
  OrtStatus *st = ORT(GetTensorElementType)(info, &t);
  if (!st) st = ORT(GetDimensionsCount)(info, &n);
  if (!st && n == rank) st = ORT(GetDimensions)(info, dims, n);
  ORT(ReleaseTensorTypeAndShapeInfo)(info);
  if (st) return st;
  if (t != type || n != rank) {
    snprintf(msg, sizeof msg, "DeformableAggregation: input %zu must be a rank-%zu %s tensor (got rank %zu, type %d)",
             i, rank, type == TYPE_FLOAT ? "float32" : "int64", n, t);
    return ORT(CreateStatus)(ORT_INVALID_ARGUMENT, msg);
  }
  return ORT(GetTensorMutableData)((OrtValue *)v, data);
}

static OrtStatus *bad(const char *what) {
  char msg[200];
  snprintf(msg, sizeof msg, "DeformableAggregation: %s", what);
  return ORT(CreateStatus)(ORT_INVALID_ARGUMENT, msg);
}

/* The contract of ops/dfa_shapes.py check_inputs, plus what the kernel needs to stay in bounds. */
static OrtStatus *compute_v2(void *kernel, OrtKernelContext *ctx) {
  const dfa_kernel_t *k = (const dfa_kernel_t *)kernel;
  int64_t fd[3], sd[3], id[2], ld[5], wd[6];
  void *feat, *shape, *start, *loc, *w;
  TRY(input(ctx, 0, TYPE_FLOAT, 3, fd, &feat));
  TRY(input(ctx, 1, TYPE_INT64, 3, sd, &shape));
  TRY(input(ctx, 2, TYPE_INT64, 2, id, &start));
  TRY(input(ctx, 3, TYPE_FLOAT, 5, ld, &loc));
  TRY(input(ctx, 4, TYPE_FLOAT, 6, wd, &w));
  const int64_t bs = fd[0], rows = fd[1], C = fd[2], A = ld[1], P = ld[2], cams = ld[3], L = wd[4], G = wd[5];
  if (ld[4] != 2) return bad("sampling_location must be [bs, A, P, cams, 2]");
  if (wd[0] != ld[0] || wd[1] != A || wd[2] != P || wd[3] != cams) return bad("weights do not match locations");
  if (ld[0] != bs) return bad("batch sizes of features and locations differ");
  if (sd[0] != cams || sd[1] != L || sd[2] != 2 || id[0] != cams || id[1] != L)
    return bad("spatial_shape/scale_start_index must be [cams, levels, 2]/[cams, levels]");
  if (G < 1 || C % G) return bad("channels not divisible by groups");
  const int64_t *hw = (const int64_t *)shape, *st0 = (const int64_t *)start;
  for (int64_t i = 0; i < cams * L; ++i) {
    if (hw[2 * i] < 1 || hw[2 * i + 1] < 1 || st0[i] < 0 || st0[i] + hw[2 * i] * hw[2 * i + 1] > rows)
      return bad("a (camera, level) block of spatial_shape/scale_start_index lies outside the feature rows");
  }
  const int64_t odims[3] = {bs, A, C};
  OrtValue *out = NULL;
  void *o = NULL;
  TRY(ORT(KernelContext_GetOutput)(ctx, 0, odims, 3, &out));
  TRY(ORT(GetTensorMutableData)(out, &o));
  if (dfa_forward((const float *)feat, hw, st0, (const float *)loc, (const float *)w, (float *)o, bs, rows, C, A, P,
                  cams, L, G, k->nthreads))
    return ORT(CreateStatus)(ORT_FAIL, "DeformableAggregation: the CPU kernel could not allocate its work buffers");
  return NULL;
}
static void compute(void *kernel, OrtKernelContext *ctx) {
  OrtStatus *st = compute_v2(kernel, ctx);
  if (st) ORT(ReleaseStatus)(st); /* only reached by runtimes older than API 16, which ignore V2 */
}

static OrtCustomOp dfa_op = {
  16, create_kernel, op_name, op_ep, op_input_type, op_input_count, op_output_type, op_output_count, compute,
  destroy_kernel, op_required, op_required, op_mem_default, op_one, op_one, op_one, op_one, create_kernel_v2,
  compute_v2, {0}
};

/* Entry point of SessionOptions.register_custom_ops_library. */
OrtStatus *RegisterCustomOps(OrtSessionOptions *options, const OrtApiBase *base) {
  api = base->GetApi(ORT_API_VERSION_USED);
  if (!api) return NULL; /* cannot even create a status: ORT then reports the op as unknown */
  OrtCustomOpDomain *domain = NULL;
  TRY(ORT(CreateCustomOpDomain)(OP_DOMAIN, &domain));
  TRY(ORT(CustomOpDomain_Add)(domain, &dfa_op));
  return ORT(AddCustomOpDomain)(options, domain);
}
"""


def _source() -> str:
    defines = "".join(f"#define POS_{name} {pos}\n" for name, pos in _ORT_API_POSITIONS.items())
    defines += (f'#define OP_NAME "{OP_TYPE}"\n#define OP_DOMAIN "{DOMAIN}"\n#define NUM_THREADS_ATTR "{NUM_THREADS_ATTR}"\n'
                "#define ORT_API_VERSION_USED 16\n#include <stdio.h>\n")
    return dfa_cpu.KERNEL_SOURCE + defines + _GLUE


_lock = threading.Lock()
_path: Path | None = None
_error: str | None = None


def library_path() -> Path:
    """The compiled custom-op library (built on first use); raises :class:`~.dfa_cpu.FastDFAUnavailable`."""
    global _path, _error
    with _lock:
        if _path is None and _error is None:
            try:
                _path = dfa_cpu.build_library(_source(), "dfa_ort_op")
            except (OSError, dfa_cpu.FastDFAUnavailable) as exc:
                _error = str(exc)
        if _path is None:
            raise dfa_cpu.FastDFAUnavailable(_error)
        return _path


def available() -> bool:
    """True when the library is built (or builds now)."""
    try:
        library_path()
    except dfa_cpu.FastDFAUnavailable:
        return False
    return True


def unavailable_reason() -> str | None:
    """Why :func:`available` is False (the compiler's message), else None."""
    return None if available() else _error


def ort_model(model, num_threads: int | None = None):
    """A copy of ``model`` (``onnx.ModelProto``) whose DFA nodes carry ``num_threads`` (the kernel's
    OpenMP threads, default 1). The domain stays ours (``sparse_perception``)."""
    import onnx  # lazy: graph rewriting only
    from onnx import helper  # lazy: as above

    from sparse_perception_ros.ops.dfa_onnx import is_dfa_node

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graphs, found = [out.graph], 0
    while graphs:
        g = graphs.pop()
        for node in g.node:
            if is_dfa_node(node):
                found += 1
                node.domain = DOMAIN
                kept = [a for a in node.attribute if a.name != NUM_THREADS_ATTR]
                del node.attribute[:]
                node.attribute.extend(kept + [helper.make_attribute(NUM_THREADS_ATTR, int(num_threads or 1))])
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    graphs.append(attr.g)
    if found and not any(o.domain == DOMAIN for o in out.opset_import):
        out.opset_import.extend([helper.make_opsetid(DOMAIN, 1)])
    return out


def session_options(num_threads: int | None = None):
    """``onnxruntime.SessionOptions`` with this library registered (no onnxruntime-extensions)."""
    import onnxruntime as ort  # lazy: optional dependency (ONNX Runtime backend)

    so = ort.SessionOptions()
    so.register_custom_ops_library(str(library_path()))
    if num_threads:
        so.intra_op_num_threads = int(num_threads)
        so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as the Python op's sessions
    return so
