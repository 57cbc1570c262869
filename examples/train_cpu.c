/*
 * train_cpu.c -- the CPU engine: the MLP's forward and backward passes as
 * plain loops over host memory, and the library's CPU executor for the
 * step.
 *
 * The optimizer owns the parameters and gradients (arena storage).  With
 * fp32 the loops read and write them in place.  With bf16 or fp16 the
 * loops work on fp32 mirrors: the 16-bit parameters are widened before the
 * forward pass, and the gradients, computed in fp32 from a loss gradient
 * multiplied by the current loss scale, are rounded into the 16-bit
 * gradient arena (where an overflow becomes inf, and the library's step
 * skips and backs the scale off).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train.h"

typedef struct cpu_engine {
  net_shape net;
  fo_optimizer *opt;
  fo_dtype dtype;
  int batch, rows_max, num_tensors;
  int ranks, global_batch; /* the loss gradient's weight: see engine_setup */
  const dataset *val;
  arena_layout params, grads;
  float *param_mirror, *grad_mirror; /* fp32 copies of 16-bit arenas */
  float *w[TRAIN_MAX_TENSORS];       /* what the loops read ... */
  float *gw[TRAIN_MAX_TENSORS];      /* ... and write */
  const float *input;                /* the rows of the current pass */
  float *act[TRAIN_MAX_LINEAR + 1];  /* layer l's output in act[l + 1] */
  float *dact[TRAIN_MAX_LINEAR + 1]; /* gradients of the layer outputs */
  const float *loss_scale;           /* the optimizer's, or NULL */
  double loss_sum;
} cpu_engine;

/* --------------------------------------------------------------- math */

/* z = x W^T + b over rows, ReLU'd when relu. */
static void linear_forward(const float *restrict x, const float *restrict w,
                           const float *restrict b, float *restrict z, int rows, int in, int out,
                           int relu) {
  for (int r = 0; r < rows; r++) {
    const float *xr = x + (size_t)r * in;
    for (int o = 0; o < out; o++) {
      const float *wo = w + (size_t)o * in;
      float s = 0.0f;
#pragma omp simd reduction(+ : s)
      for (int i = 0; i < in; i++) s += xr[i] * wo[i];
      s += b[o];
      z[(size_t)r * out + o] = relu && s < 0.0f ? 0.0f : s;
    }
  }
}

static void axpy(float *restrict y, const float *restrict x, float a, int n) {
#pragma omp simd
  for (int i = 0; i < n; i++) y[i] += a * x[i];
}

/* From dz = dL/dz: dW = dz^T x, db = column sums of dz, and dx = dz W when
 * dx is not NULL.  Overwrites dw, db and dx. */
static void linear_backward(const float *restrict x, const float *restrict w,
                            const float *restrict dz, float *restrict dw, float *restrict db,
                            float *restrict dx, int rows, int in, int out) {
  memset(dw, 0, sizeof *dw * (size_t)out * (size_t)in);
  memset(db, 0, sizeof *db * (size_t)out);
  if (dx) memset(dx, 0, sizeof *dx * (size_t)rows * (size_t)in);
  for (int r = 0; r < rows; r++)
    for (int o = 0; o < out; o++) {
      float d = dz[(size_t)r * out + o];
      if (d == 0.0f) continue; /* ReLU zeroes many */
      db[o] += d;
      axpy(dw + (size_t)o * in, x + (size_t)r * in, d, in);
      if (dx) axpy(dx + (size_t)r * in, w + (size_t)o * in, d, in);
    }
}

/* The gradient through a ReLU whose output is a. */
static void relu_backward(float *restrict d, const float *restrict a, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (a[i] <= 0.0f) d[i] = 0.0f;
}

/* Softmax cross-entropy of each row against its label: returns the summed
 * loss and writes the gradient of each row's loss, times coef, to dz. */
static double softmax_xent(const float *logits, const int *y, int rows, float coef, float *dz) {
  double loss = 0.0;
  for (int r = 0; r < rows; r++) {
    const float *z = logits + (size_t)r * TRAIN_CLASSES;
    float *d = dz + (size_t)r * TRAIN_CLASSES, mx = z[0], sum = 0.0f;
    for (int c = 1; c < TRAIN_CLASSES; c++) mx = z[c] > mx ? z[c] : mx;
    for (int c = 0; c < TRAIN_CLASSES; c++) sum += d[c] = expf(z[c] - mx);
    loss += log(sum) - (z[y[r]] - mx);
    for (int c = 0; c < TRAIN_CLASSES; c++) d[c] = (d[c] / sum - (c == y[r])) * coef;
  }
  return loss;
}

static int count_correct(const float *logits, const int *y, int rows) {
  int right = 0;
  for (int r = 0; r < rows; r++) {
    const float *z = logits + (size_t)r * TRAIN_CLASSES;
    int best = 0;
    for (int c = 1; c < TRAIN_CLASSES; c++)
      if (z[c] > z[best]) best = c;
    right += best == y[r];
  }
  return right;
}

/* ------------------------------------------------------------ passes */

/* The input of layer l. */
static const float *layer_input(const cpu_engine *e, int l) {
  return l == 0 ? e->input : e->act[l];
}

static void forward(cpu_engine *e, const float *x, int rows) {
  const net_shape *n = &e->net;
  e->input = x;
  for (int l = 0; l < n->n_linear; l++)
    linear_forward(layer_input(e, l), e->w[2 * l], e->w[2 * l + 1], e->act[l + 1], rows, n->dim[l],
                   n->dim[l + 1], l + 1 < n->n_linear);
}

/* From the logits' gradient in dact[n_linear] down to every weight's. */
static void backward(cpu_engine *e, int rows) {
  const net_shape *n = &e->net;
  for (int l = n->n_linear - 1; l >= 0; l--) {
    float *dx = l > 0 ? e->dact[l] : NULL;
    linear_backward(layer_input(e, l), e->w[2 * l], e->dact[l + 1], e->gw[2 * l], e->gw[2 * l + 1],
                    dx, rows, n->dim[l], n->dim[l + 1]);
    if (dx) relu_backward(dx, e->act[l], (size_t)rows * (size_t)n->dim[l]);
  }
}

/* 16-bit: widen the current parameters into the mirror the loops read. */
static int refresh_params(cpu_engine *e) {
  if (!e->param_mirror) return 0;
  return train_failed(fo_convert_to_f32(e->dtype, e->params.base, e->param_mirror, e->params.elems),
                      "fo_convert_to_f32");
}

/* 16-bit: round the fp32 gradients into the optimizer's gradient arena. */
static int publish_grads(cpu_engine *e) {
  if (!e->grad_mirror) return 0;
  return train_failed(fo_convert_from_f32(e->dtype, e->grad_mirror, e->grads.base, e->grads.elems),
                      "fo_convert_from_f32");
}

static int cpu_train_step(void *handle, const float *x, const int *y) {
  cpu_engine *e = handle;
  if (refresh_params(e)) return 1;
  forward(e, x, e->batch);
  float scale = e->loss_scale ? *e->loss_scale : 1.0f;
  /* One process: scale / batch, the gradient of the mean loss.  N ranks:
   * scale N / global batch, so that the library's mean over the ranks is
   * the mean over the global batch. */
  float coef = scale * (float)e->ranks / (float)e->global_batch;
  int last = e->net.n_linear;
  e->loss_sum += softmax_xent(e->act[last], y, e->batch, coef, e->dact[last]);
  backward(e, e->batch);
  if (publish_grads(e)) return 1;
  return train_failed(fo_optimizer_step(e->opt, NULL), "fo_optimizer_step");
}

static int cpu_take_loss_sum(void *handle, double *sum) {
  cpu_engine *e = handle;
  *sum = e->loss_sum;
  e->loss_sum = 0.0;
  return 0;
}

static int cpu_evaluate(void *handle, int *correct) {
  cpu_engine *e = handle;
  if (refresh_params(e)) return 1;
  forward(e, e->val->x, e->val->n);
  *correct = count_correct(e->act[e->net.n_linear], e->val->y, e->val->n);
  return 0;
}

static int cpu_read_back(void *handle, void *host, const void *src, size_t bytes) {
  (void)handle;
  memcpy(host, src, bytes); /* the CPU executor's arenas are host memory */
  return 0;
}

static int cpu_write_params(void *handle, float *const init[]) {
  cpu_engine *e = handle;
  for (int i = 0; i < e->num_tensors; i++) {
    char *dst = (char *)e->params.base + e->params.offset[i] * (int64_t)fo_dtype_size(e->dtype);
    if (train_failed(fo_convert_from_f32(e->dtype, init[i], dst, net_tensor_numel(&e->net, i)),
                     "fo_convert_from_f32"))
      return 1;
  }
  return train_failed(fo_optimizer_sync_master(e->opt, NULL), "fo_optimizer_sync_master");
}

/* ------------------------------------------------------------ set-up */

static void cpu_destroy(void *handle) {
  cpu_engine *e = handle;
  if (!e) return;
  free(e->param_mirror);
  free(e->grad_mirror);
  for (int l = 1; l <= e->net.n_linear; l++) free(e->act[l]), free(e->dact[l]);
  free(e);
}

/* Points w and gw at the arenas (fp32) or at fp32 mirrors of them. */
static int bind_tensors(cpu_engine *e) {
  if (get_arena_layout(e->opt, FO_ROLE_PARAM, e->dtype, e->num_tensors, &e->params) ||
      get_arena_layout(e->opt, FO_ROLE_GRAD, e->dtype, e->num_tensors, &e->grads))
    return 1;
  float *pbase = e->params.base, *gbase = e->grads.base;
  if (e->dtype != FO_DTYPE_F32) {
    pbase = e->param_mirror = calloc((size_t)e->params.elems, sizeof(float));
    gbase = e->grad_mirror = calloc((size_t)e->grads.elems, sizeof(float));
    if (!pbase || !gbase) {
      fprintf(stderr, "train: out of memory for the fp32 mirrors\n");
      return 1;
    }
  }
  for (int i = 0; i < e->num_tensors; i++) {
    e->w[i] = pbase + e->params.offset[i];
    e->gw[i] = gbase + e->grads.offset[i];
  }
  return 0;
}

static int alloc_activations(cpu_engine *e) {
  for (int l = 1; l <= e->net.n_linear; l++) {
    size_t n = (size_t)e->rows_max * (size_t)e->net.dim[l];
    e->act[l] = malloc(n * sizeof(float));
    e->dact[l] = malloc(n * sizeof(float));
    if (!e->act[l] || !e->dact[l]) {
      fprintf(stderr, "train: out of memory for the activations\n");
      return 1;
    }
  }
  return 0;
}

static int cpu_create(const engine_setup *s, void **out) {
  cpu_engine *e = calloc(1, sizeof *e);
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
  e->val = s->val;
  e->rows_max = s->batch > s->val->n ? s->batch : s->val->n;
  e->num_tensors = net_num_tensors(s->net);
  if (find_loss_scale(s->opt, &e->loss_scale) || bind_tensors(e) || alloc_activations(e)) {
    cpu_destroy(e);
    return 1;
  }
  *out = e;
  return 0;
}

const engine_ops cpu_engine_ops = {
    "cpu",        cpu_create,    cpu_write_params, cpu_train_step, cpu_take_loss_sum,
    cpu_evaluate, cpu_read_back, cpu_destroy,
};
