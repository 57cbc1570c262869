/*
 * train_gpu.cu -- the CUDA engine: the MLP's GEMMs through cuBLAS, a few
 * small kernels of its own (bias and ReLU, softmax cross-entropy, bias
 * gradients, dtype casts, accuracy), and the library's CUDA executor for
 * the step, all on one stream with no host synchronization inside a step.
 *
 * Layouts are row-major as on the CPU: activations rows x width, weights
 * out x in (torch.nn.Linear).  cuBLAS is column-major, so every GEMM below
 * is written for the transposes; each carries its derivation.
 *
 * With bf16 or fp16 the GEMMs run in fp32 on mirrors of the optimizer's
 * arenas: one kernel widens the whole 16-bit parameter arena before the
 * forward pass, one rounds the whole fp32 gradient mirror into the 16-bit
 * gradient arena after the backward pass.  The loss gradient is multiplied
 * by the loss scale read on the device from the library's scale pointer.
 *
 * --graph: the first step runs eagerly (cuBLAS loads its kernels and picks
 * its algorithms outside the capture); the second is captured -- widen, forward, loss,
 * backward, round, fo_optimizer_step -- and every step from then on is one
 * cudaGraphLaunch.  The graph bakes in the batch size and the buffer
 * addresses, so each batch is copied into the same fixed device buffers
 * before the launch.
 */
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train.h"

#define THREADS 256
#define CUBLAS_WORKSPACE_BYTES (4u << 20)

/* ------------------------------------------------------------ errors */

static int cuda_failed(cudaError_t e, const char *what) {
  if (e == cudaSuccess) return 0;
  fprintf(stderr, "train: %s: %s (%s)\n", what, cudaGetErrorName(e), cudaGetErrorString(e));
  return 1;
}

static int blas_failed(cublasStatus_t s, const char *what) {
  if (s == CUBLAS_STATUS_SUCCESS) return 0;
  fprintf(stderr, "train: %s: %s\n", what, cublasGetStatusString(s));
  return 1;
}

/* A kernel launch's own error (bad configuration), not the kernel's. */
static int launch_failed(const char *kernel) {
  return cuda_failed(cudaGetLastError(), kernel);
}

static unsigned grid_for(size_t n) {
  size_t blocks = (n + THREADS - 1) / THREADS;
  return (unsigned)(blocks < 65535 ? (blocks ? blocks : 1) : 65535);
}

/* ----------------------------------------------------------- kernels */

/* z[r][c] += b[c], then ReLU when relu. */
__global__ void bias_act_kernel(float *z, const float *b, int rows, int cols, int relu) {
  size_t n = (size_t)rows * cols;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    float v = z[i] + b[i % cols];
    z[i] = relu && v < 0.0f ? 0.0f : v;
  }
}

/* One thread per row: adds the row's cross-entropy to *loss_sum and writes
 * the gradient of the row's loss times *scale (1 when scale is NULL) x
 * ranks / global_rows: the gradient of the mean loss in one process, and
 * N times this rank's share of the global batch's mean with N ranks (the
 * library divides the sum over the ranks by N). */
__global__ void softmax_xent_kernel(const float *logits, const int *y, int rows, const float *scale,
                                    int ranks, int global_rows, float *dz, double *loss_sum) {
  int r = blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  const float *z = logits + (size_t)r * TRAIN_CLASSES;
  float *d = dz + (size_t)r * TRAIN_CLASSES, mx = z[0], sum = 0.0f;
  for (int c = 1; c < TRAIN_CLASSES; c++) mx = fmaxf(mx, z[c]);
  for (int c = 0; c < TRAIN_CLASSES; c++) sum += d[c] = expf(z[c] - mx);
  float coef = (scale ? *scale : 1.0f) * (float)ranks / (float)global_rows;
  for (int c = 0; c < TRAIN_CLASSES; c++) d[c] = (d[c] / sum - (c == y[r] ? 1.0f : 0.0f)) * coef;
  atomicAdd(loss_sum, (double)(logf(sum) - (z[y[r]] - mx)));
}

/* d[i] = 0 where the ReLU's output a[i] is not positive. */
__global__ void relu_backward_kernel(float *d, const float *a, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x)
    if (a[i] <= 0.0f) d[i] = 0.0f;
}

/* db[c] = sum over rows of dz[r][c]; one thread per column, so a warp
 * reads consecutive columns of a row. */
__global__ void bias_grad_kernel(const float *dz, float *db, int rows, int cols) {
  int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  float s = 0.0f;
  for (int r = 0; r < rows; r++) s += dz[(size_t)r * cols + c];
  db[c] = s;
}

__global__ void count_correct_kernel(const float *logits, const int *y, int rows, int *correct) {
  int r = blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  const float *z = logits + (size_t)r * TRAIN_CLASSES;
  int best = 0;
  for (int c = 1; c < TRAIN_CLASSES; c++)
    if (z[c] > z[best]) best = c;
  if (best == y[r]) atomicAdd(correct, 1);
}

__device__ inline float widen(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
__device__ inline float widen(__half v) {
  return __half2float(v);
}
__device__ inline void narrow(float v, __nv_bfloat16 *out) {
  *out = __float2bfloat16_rn(v);
}
__device__ inline void narrow(float v, __half *out) {
  *out = __float2half_rn(v);
}

template <typename T>
__global__ void widen_kernel(const T *src, float *dst, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x)
    dst[i] = widen(src[i]);
}

/* Round to nearest even; a value past fp16's range becomes inf, which the
 * library's step sees and skips. */
template <typename T>
__global__ void narrow_kernel(const float *src, T *dst, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x)
    narrow(src[i], &dst[i]);
}

/* ------------------------------------------------------------ engine */

typedef struct gpu_engine {
  net_shape net;
  fo_optimizer *opt;
  fo_dtype dtype;
  int batch, rows_max, num_tensors, use_graph, warmed_up;
  int ranks, global_batch, device;
  cudaStream_t stream;
  cublasHandle_t blas;
  void *blas_workspace;
  arena_layout params, grads;
  float *param_mirror, *grad_mirror; /* fp32 copies of 16-bit arenas */
  float *w[TRAIN_MAX_TENSORS], *gw[TRAIN_MAX_TENSORS];
  const float *input;               /* the rows of the current pass */
  float *act[TRAIN_MAX_LINEAR + 1]; /* layer l's output in act[l + 1] */
  float *dact[TRAIN_MAX_LINEAR + 1];
  float *batch_x; /* the fixed input buffers */
  int *batch_y;
  float *val_x;
  int *val_y, n_val;
  double *loss_sum;
  int *correct;
  const float *loss_scale; /* device pointer, or NULL */
  cudaGraphExec_t graph;
} gpu_engine;

/* cudaMalloc, zero-filled in the engine's stream order (a non-blocking
 * stream does not wait for the legacy stream a plain cudaMemset uses). */
static int device_alloc(gpu_engine *e, void **p, size_t bytes, const char *what) {
  if (cuda_failed(cudaMalloc(p, bytes ? bytes : 1), what)) {
    *p = NULL;
    return 1;
  }
  return cuda_failed(cudaMemsetAsync(*p, 0, bytes, e->stream), what);
}

/* A host-to-device copy in the engine's stream order. */
static int upload(gpu_engine *e, void *dst, const void *src, size_t bytes, const char *what) {
  return cuda_failed(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, e->stream), what);
}

/* ---------------------------------------------------------------- GEMMs */

/* Z (rows x out) = X (rows x in) W^T.  Column-major, Z^T (out x rows, ld
 * out) = W (out x in) X^T (in x rows): W is stored as the column-major
 * in x out matrix W^T (ld in), so op T; X^T is X's storage (ld in), op N. */
static int gemm_forward(gpu_engine *e, const float *x, const float *w, float *z, int rows, int in,
                        int out) {
  const float one = 1.0f, zero = 0.0f;
  return blas_failed(cublasSgemm(e->blas, CUBLAS_OP_T, CUBLAS_OP_N, out, rows, in, &one, w, in, x,
                                 in, &zero, z, out),
                     "cublasSgemm (forward)");
}

/* dW (out x in) = dZ^T (out x rows) X (rows x in).  Column-major, dW^T
 * (in x out, ld in) = X^T (in x rows; X's storage, ld in, op N) times dZ
 * (rows x out; dZ's storage is dZ^T, out x rows, ld out, so op T). */
static int gemm_weight_grad(gpu_engine *e, const float *x, const float *dz, float *dw, int rows,
                            int in, int out) {
  const float one = 1.0f, zero = 0.0f;
  return blas_failed(cublasSgemm(e->blas, CUBLAS_OP_N, CUBLAS_OP_T, in, out, rows, &one, x, in, dz,
                                 out, &zero, dw, in),
                     "cublasSgemm (weight gradient)");
}

/* dX (rows x in) = dZ (rows x out) W (out x in).  Column-major, dX^T
 * (in x rows, ld in) = W^T (in x out; W's storage, ld in, op N) times dZ^T
 * (out x rows; dZ's storage, ld out, op N). */
static int gemm_input_grad(gpu_engine *e, const float *dz, const float *w, float *dx, int rows,
                           int in, int out) {
  const float one = 1.0f, zero = 0.0f;
  return blas_failed(cublasSgemm(e->blas, CUBLAS_OP_N, CUBLAS_OP_N, in, rows, out, &one, w, in, dz,
                                 out, &zero, dx, in),
                     "cublasSgemm (input gradient)");
}

/* ------------------------------------------------------------- passes */

static const float *layer_input(const gpu_engine *e, int l) {
  return l == 0 ? e->input : e->act[l];
}

static int enqueue_forward(gpu_engine *e, const float *x, int rows) {
  const net_shape *n = &e->net;
  e->input = x;
  for (int l = 0; l < n->n_linear; l++) {
    int in = n->dim[l], out = n->dim[l + 1];
    if (gemm_forward(e, layer_input(e, l), e->w[2 * l], e->act[l + 1], rows, in, out)) return 1;
    bias_act_kernel<<<grid_for((size_t)rows * out), THREADS, 0, e->stream>>>(
        e->act[l + 1], e->w[2 * l + 1], rows, out, l + 1 < n->n_linear);
    if (launch_failed("bias_act_kernel")) return 1;
  }
  return 0;
}

static int enqueue_backward(gpu_engine *e, int rows) {
  const net_shape *n = &e->net;
  for (int l = n->n_linear - 1; l >= 0; l--) {
    int in = n->dim[l], out = n->dim[l + 1];
    const float *dz = e->dact[l + 1];
    if (gemm_weight_grad(e, layer_input(e, l), dz, e->gw[2 * l], rows, in, out)) return 1;
    bias_grad_kernel<<<grid_for((size_t)out), THREADS, 0, e->stream>>>(dz, e->gw[2 * l + 1], rows,
                                                                       out);
    if (launch_failed("bias_grad_kernel")) return 1;
    if (l == 0) break;
    if (gemm_input_grad(e, dz, e->w[2 * l], e->dact[l], rows, in, out)) return 1;
    size_t count = (size_t)rows * in;
    relu_backward_kernel<<<grid_for(count), THREADS, 0, e->stream>>>(e->dact[l], e->act[l], count);
    if (launch_failed("relu_backward_kernel")) return 1;
  }
  return 0;
}

/* 16-bit: widen the whole parameter arena into its fp32 mirror. */
static int enqueue_widen_params(gpu_engine *e) {
  if (!e->param_mirror) return 0;
  size_t n = (size_t)e->params.elems;
  if (e->dtype == FO_DTYPE_BF16)
    widen_kernel<<<grid_for(n), THREADS, 0, e->stream>>>((const __nv_bfloat16 *)e->params.base,
                                                         e->param_mirror, n);
  else
    widen_kernel<<<grid_for(n), THREADS, 0, e->stream>>>((const __half *)e->params.base,
                                                         e->param_mirror, n);
  return launch_failed("widen_kernel");
}

/* 16-bit: round the whole fp32 gradient mirror into the gradient arena. */
static int enqueue_narrow_grads(gpu_engine *e) {
  if (!e->grad_mirror) return 0;
  size_t n = (size_t)e->grads.elems;
  if (e->dtype == FO_DTYPE_BF16)
    narrow_kernel<<<grid_for(n), THREADS, 0, e->stream>>>(e->grad_mirror,
                                                          (__nv_bfloat16 *)e->grads.base, n);
  else
    narrow_kernel<<<grid_for(n), THREADS, 0, e->stream>>>(e->grad_mirror, (__half *)e->grads.base,
                                                          n);
  return launch_failed("narrow_kernel");
}

/* Everything of one step after the batch is in batch_x / batch_y. */
static int enqueue_step(gpu_engine *e) {
  int last = e->net.n_linear;
  if (enqueue_widen_params(e) || enqueue_forward(e, e->batch_x, e->batch)) return 1;
  softmax_xent_kernel<<<grid_for((size_t)e->batch), THREADS, 0, e->stream>>>(
      e->act[last], e->batch_y, e->batch, e->loss_scale, e->ranks, e->global_batch, e->dact[last],
      e->loss_sum);
  if (launch_failed("softmax_xent_kernel")) return 1;
  if (enqueue_backward(e, e->batch) || enqueue_narrow_grads(e)) return 1;
  return train_failed(fo_optimizer_step(e->opt, e->stream), "fo_optimizer_step");
}

/* Records enqueue_step into e->graph.  A failure inside ends the capture
 * and leaves no graph. */
static int capture_step(gpu_engine *e) {
  cudaGraph_t graph = NULL;
  if (cuda_failed(cudaStreamBeginCapture(e->stream, cudaStreamCaptureModeThreadLocal),
                  "cudaStreamBeginCapture"))
    return 1;
  int rc = enqueue_step(e);
  cudaError_t end = cudaStreamEndCapture(e->stream, &graph);
  if (!rc) rc = cuda_failed(end, "cudaStreamEndCapture (capturing the training step)");
  if (!rc) rc = cuda_failed(cudaGraphInstantiate(&e->graph, graph, 0), "cudaGraphInstantiate");
  if (graph) (void)cudaGraphDestroy(graph);
  return rc;
}

static int gpu_train_step(void *handle, const float *x, const int *y) {
  gpu_engine *e = (gpu_engine *)handle;
  /* From pageable memory: the calls return once x and y are staged, so the
   * caller may refill them at once; the copies stay in stream order. */
  if (cuda_failed(cudaMemcpyAsync(e->batch_x, x, sizeof(float) * e->batch * TRAIN_FEATURES,
                                  cudaMemcpyHostToDevice, e->stream),
                  "copying the batch") ||
      cuda_failed(
          cudaMemcpyAsync(e->batch_y, y, sizeof(int) * e->batch, cudaMemcpyHostToDevice, e->stream),
          "copying the labels"))
    return 1;
  if (!e->use_graph) return enqueue_step(e);
  if (!e->warmed_up) { /* eager first step, then capture */
    e->warmed_up = 1;
    if (enqueue_step(e)) return 1;
    return cuda_failed(cudaStreamSynchronize(e->stream), "the first training step");
  }
  if (!e->graph && capture_step(e)) return 1;
  return cuda_failed(cudaGraphLaunch(e->graph, e->stream), "cudaGraphLaunch");
}

static int gpu_take_loss_sum(void *handle, double *sum) {
  gpu_engine *e = (gpu_engine *)handle;
  if (cuda_failed(cudaMemcpyAsync(sum, e->loss_sum, sizeof *sum, cudaMemcpyDeviceToHost, e->stream),
                  "reading the loss") ||
      cuda_failed(cudaStreamSynchronize(e->stream), "the epoch's training steps"))
    return 1;
  return cuda_failed(cudaMemsetAsync(e->loss_sum, 0, sizeof *e->loss_sum, e->stream),
                     "resetting the loss");
}

static int gpu_evaluate(void *handle, int *correct) {
  gpu_engine *e = (gpu_engine *)handle;
  int last = e->net.n_linear;
  if (enqueue_widen_params(e) || enqueue_forward(e, e->val_x, e->n_val)) return 1;
  if (cuda_failed(cudaMemsetAsync(e->correct, 0, sizeof(int), e->stream), "cudaMemsetAsync"))
    return 1;
  count_correct_kernel<<<grid_for((size_t)e->n_val), THREADS, 0, e->stream>>>(
      e->act[last], e->val_y, e->n_val, e->correct);
  if (launch_failed("count_correct_kernel")) return 1;
  return cuda_failed(
             cudaMemcpyAsync(correct, e->correct, sizeof(int), cudaMemcpyDeviceToHost, e->stream),
             "reading the accuracy") ||
         cuda_failed(cudaStreamSynchronize(e->stream), "evaluating");
}

static int gpu_read_back(void *handle, void *host, const void *src, size_t bytes) {
  gpu_engine *e = (gpu_engine *)handle;
  return cuda_failed(cudaMemcpyAsync(host, src, bytes, cudaMemcpyDeviceToHost, e->stream),
                     "reading the optimizer's state") ||
         cuda_failed(cudaStreamSynchronize(e->stream), "reading the optimizer's state");
}

static int gpu_write_params(void *handle, float *const init[]) {
  gpu_engine *e = (gpu_engine *)handle;
  size_t esize = fo_dtype_size(e->dtype);
  for (int i = 0; i < e->num_tensors; i++) {
    int64_t numel = net_tensor_numel(&e->net, i);
    void *staged = malloc((size_t)numel * esize);
    char *dst = (char *)e->params.base + e->params.offset[i] * (int64_t)esize;
    int rc = !staged || train_failed(fo_convert_from_f32(e->dtype, init[i], staged, numel),
                                     "fo_convert_from_f32");
    if (!rc)
      rc = upload(e, dst, staged, (size_t)numel * esize, "copying the initial weights") ||
           cuda_failed(cudaStreamSynchronize(e->stream), "copying the initial weights");
    free(staged);
    if (rc) return 1;
  }
  return train_failed(fo_optimizer_sync_master(e->opt, e->stream), "fo_optimizer_sync_master") ||
         cuda_failed(cudaStreamSynchronize(e->stream), "fo_optimizer_sync_master");
}

/* ------------------------------------------------------------- set-up */

static void gpu_destroy(void *handle) {
  gpu_engine *e = (gpu_engine *)handle;
  if (!e) return;
  if (e->stream) (void)cudaStreamSynchronize(e->stream);
  if (e->graph) (void)cudaGraphExecDestroy(e->graph);
  if (e->blas) (void)cublasDestroy(e->blas);
  void *buffers[] = {e->blas_workspace, e->param_mirror, e->grad_mirror, e->batch_x, e->batch_y,
                     e->val_x,          e->val_y,        e->loss_sum,    e->correct};
  for (size_t i = 0; i < sizeof buffers / sizeof buffers[0]; i++) (void)cudaFree(buffers[i]);
  for (int l = 1; l <= e->net.n_linear; l++) (void)cudaFree(e->act[l]), (void)cudaFree(e->dact[l]);
  if (e->stream) (void)cudaStreamDestroy(e->stream);
  free(e);
}

/* Points w and gw at the arenas (fp32) or at fp32 mirrors of them. */
static int bind_tensors(gpu_engine *e) {
  if (get_arena_layout(e->opt, FO_ROLE_PARAM, e->dtype, e->num_tensors, &e->params) ||
      get_arena_layout(e->opt, FO_ROLE_GRAD, e->dtype, e->num_tensors, &e->grads))
    return 1;
  float *pbase = (float *)e->params.base, *gbase = (float *)e->grads.base;
  if (e->dtype != FO_DTYPE_F32) {
    if (device_alloc(e, (void **)&e->param_mirror, sizeof(float) * e->params.elems,
                     "allocating the parameter mirror") ||
        device_alloc(e, (void **)&e->grad_mirror, sizeof(float) * e->grads.elems,
                     "allocating the gradient mirror"))
      return 1;
    pbase = e->param_mirror;
    gbase = e->grad_mirror;
  }
  for (int i = 0; i < e->num_tensors; i++) {
    e->w[i] = pbase + e->params.offset[i];
    e->gw[i] = gbase + e->grads.offset[i];
  }
  return 0;
}

static int alloc_buffers(gpu_engine *e, const dataset *val) {
  for (int l = 1; l <= e->net.n_linear; l++) {
    size_t bytes = sizeof(float) * e->rows_max * e->net.dim[l];
    if (device_alloc(e, (void **)&e->act[l], bytes, "allocating activations") ||
        device_alloc(e, (void **)&e->dact[l], bytes, "allocating activation gradients"))
      return 1;
  }
  size_t xb = sizeof(float) * TRAIN_FEATURES;
  e->n_val = val->n;
  return device_alloc(e, (void **)&e->batch_x, xb * e->batch, "allocating the batch") ||
         device_alloc(e, (void **)&e->batch_y, sizeof(int) * e->batch, "allocating the labels") ||
         device_alloc(e, (void **)&e->val_x, xb * val->n, "allocating the validation set") ||
         device_alloc(e, (void **)&e->val_y, sizeof(int) * val->n, "allocating the labels") ||
         device_alloc(e, (void **)&e->loss_sum, sizeof(double), "allocating the loss") ||
         device_alloc(e, (void **)&e->correct, sizeof(int), "allocating the counter") ||
         upload(e, e->val_x, val->x, xb * val->n, "copying the validation set") ||
         upload(e, e->val_y, val->y, sizeof(int) * val->n, "copying the validation labels") ||
         cuda_failed(cudaStreamSynchronize(e->stream), "setting up the GPU engine");
}

/* A stream of our own (the legacy default stream cannot be captured) and
 * a cuBLAS handle on it with a workspace of our own, so that a capture
 * never makes cuBLAS allocate. */
static int create_stream_and_blas(gpu_engine *e) {
  return cuda_failed(cudaStreamCreateWithFlags(&e->stream, cudaStreamNonBlocking),
                     "cudaStreamCreateWithFlags") ||
         blas_failed(cublasCreate(&e->blas), "cublasCreate") ||
         blas_failed(cublasSetStream(e->blas, e->stream), "cublasSetStream") ||
         device_alloc(e, &e->blas_workspace, CUBLAS_WORKSPACE_BYTES,
                      "allocating cuBLAS's workspace") ||
         blas_failed(cublasSetWorkspace(e->blas, e->blas_workspace, CUBLAS_WORKSPACE_BYTES),
                     "cublasSetWorkspace");
}

/* The optimizer runs on the rank's device (fo_options.device: 0 in one
 * process, the rank's index on its node with several); so does the
 * engine.  Creating the optimizer left work on the legacy stream, which
 * our non-blocking stream would not wait for: hence the synchronize. */
static int gpu_create(const engine_setup *s, void **out) {
  gpu_engine *e = (gpu_engine *)calloc(1, sizeof *e);
  if (!e) {
    fprintf(stderr, "train: out of memory\n");
    return 1;
  }
  e->net = *s->net;
  e->opt = s->opt;
  e->dtype = s->dtype;
  e->batch = s->batch;
  e->ranks = s->ranks;
  e->global_batch = s->global_batch;
  e->device = s->device;
  e->use_graph = s->graph;
  e->rows_max = s->batch > s->val->n ? s->batch : s->val->n;
  e->num_tensors = net_num_tensors(s->net);
  if (cuda_failed(cudaSetDevice(e->device), "cudaSetDevice") ||
      cuda_failed(cudaDeviceSynchronize(), "cudaDeviceSynchronize") || create_stream_and_blas(e) ||
      find_loss_scale(s->opt, &e->loss_scale) || bind_tensors(e) || alloc_buffers(e, s->val)) {
    gpu_destroy(e);
    return 1;
  }
  *out = e;
  return 0;
}

/* Declared extern "C" in train.h. */
const engine_ops gpu_engine_ops = {
    "cuda",       gpu_create,    gpu_write_params, gpu_train_step, gpu_take_loss_sum,
    gpu_evaluate, gpu_read_back, gpu_destroy,
};
