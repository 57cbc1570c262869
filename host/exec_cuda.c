/*
 * exec_cuda.c -- the CUDA executor (host/exec.h): device memory through
 * the device layer (cuda_device.c), the step's parts as launches of the
 * kernels in kernels/ (kernels/launch.h).  Nothing here waits for the
 * device except the reads and writes of the step state.
 */
#include <cuda_runtime_api.h>
#include <string.h>

#include "cuda_device.h"
#include "launch.h"

static fo_status check_pointer(const char *fn, const char *what, const void *ptr, size_t bytes,
                               int device) {
  return fo_cuda_check_pointer(fn, what, ptr, bytes, 1, device);
}

static fo_status upload_plan(const char *fn, int device, fo_run_plan *plan) {
  plan->pdl = fo_cuda_supports_pdl(device);
  fo_status st =
      fo_cuda_upload(fn, device, plan->blocks, (size_t)plan->num_blocks * sizeof *plan->blocks,
                     (void **)&plan->d_blocks);
  if (st != FO_SUCCESS) return st;
  return fo_cuda_upload(fn, device, plan->tensors,
                        (size_t)plan->num_tensors * sizeof *plan->tensors,
                        (void **)&plan->d_tensors);
}

/* The block table is in device memory since attach: nothing is copied. */
static fo_status pack(const char *fn, int device, const fo_pack_block *blocks, int64_t num_blocks,
                      void *wire_buf, fo_dtype grad, fo_dtype wire, int unpack,
                      fo_stream_t stream) {
  FO_CUDA_RETURN(
      fn, device, unpack ? "unpack kernel" : "pack kernel",
      fo_launch_pack(blocks, num_blocks, wire_buf, (int32_t)grad, (int32_t)wire, unpack, stream));
}

/* ------------------------------------------------------------------ step */

static int device_of(const fo_optimizer *opt) {
  return opt->options.device;
}

static fo_status prepass(fo_optimizer *opt, fo_stream_t stream) {
  const fo_run_plan *r = &opt->run;
  FO_CUDA_RETURN("fo_optimizer_step", device_of(opt), "step launch",
                 fo_launch_grad_sumsq(r->d_blocks, r->d_tensors, r->num_blocks, r->chunk,
                                      (int32_t)opt->options.grad_dtype, r->partials, stream));
}

static fo_status sum_partials(fo_optimizer *opt, double *out, fo_stream_t stream) {
  FO_CUDA_RETURN("fo_optimizer_step", device_of(opt), "step launch",
                 fo_launch_sum_doubles(opt->run.partials, opt->run.num_blocks, out, stream));
}

/* The step launch's arguments that every pass shares.  No Programmatic
 * Dependent Launch into a stream capture: a launch refused there for the
 * attribute (reported on GPUs that run the sm_90 PTX by JIT) invalidates
 * the capture, so grid.cuh's retry without it could not save the graph;
 * and a replayed graph has no launch latency left for PDL to hide. */
static void step_launch_fill(const fo_optimizer *opt, fo_step_launch *out, fo_stream_t stream) {
  const fo_run_plan *r = &opt->run;
  fo_step_launch a;
  memset(&a, 0, sizeof a);
  a.blocks = r->d_blocks;
  a.tensors = r->d_tensors;
  a.num_blocks = r->num_blocks;
  a.chunk = r->chunk;
  a.algorithm = (int32_t)opt->options.algorithm;
  a.param_dtype = (int32_t)opt->options.param_dtype;
  a.grad_dtype = (int32_t)opt->options.grad_dtype;
  a.master = opt->keeps.master;
  a.stochastic = opt->options.stochastic_rounding;
  a.num_groups = opt->num_groups;
  a.pdl = r->pdl && !fo_cuda_stream_capturing(stream);
  a.seed = opt->options.seed;
  a.state = opt->state;
  *out = a;
}

static int unscale(const fo_optimizer *opt, fo_stream_t stream);

/* Can the host decide this step alone (host/known.c)?  Not into a CUDA
 * graph: a captured step must read the count its replay finds on the
 * device, and once one is captured the host no longer knows that count.
 * Not with a pre-pass (sums: the device's sums decide). */
static int decide_on_host(fo_optimizer *opt, const double *sums, const fo_prepare_args *pa,
                          fo_known_step *k, fo_step_state *next, fo_stream_t stream) {
  if (opt->known.off) return 0;
  if (fo_cuda_stream_capturing(stream)) {
    fo_known_forget(opt, 1);
    return 0;
  }
  return !sums && fo_known_next(opt, pa, k, next);
}

/* Enqueue the step's scalars -- carried by value when the host can decide
 * them, else the prepare kernel over sums[0..n) (NULL without a pre-pass)
 * -- and the fused update (and the optional unscaled-gradient write). */
static int enqueue_update(fo_optimizer *opt, const double *sums, int64_t n, fo_stream_t stream) {
  const fo_run_plan *r = &opt->run;
  fo_prepare_args pa;
  fo_prepare_args_fill(opt, &pa);
  fo_step_launch a;
  step_launch_fill(opt, &a, stream);
  fo_step_state next;
  a.known = decide_on_host(opt, sums, &pa, &a.k, &next, stream);
  int e = 0;
  if (a.known) {
    a.pdl = 0; /* no prepare kernel to overlap */
  } else {
    fo_known_forget(opt, 0);
    e = fo_launch_prepare(&pa, sums, n, opt->state, stream);
    if (e) return e;
  }
  if (fo_algorithm_has_tensor_norms(opt->options.algorithm)) {
    /* LAMB, LARS: the norms pass and this rank's slot of the sums; apply()
     * follows, reading the state the norms pass published */
    a.pass = FO_PASS_NORMS;
    a.norm_partials = r->norm_partials;
  }
  e = fo_launch_step(&a, stream);
  if (a.known) {
    if (e)
      fo_known_forget(opt, 0);
    else
      fo_known_set(opt, &next);
  }
  if (e) return e;
  if (fo_algorithm_has_tensor_norms(opt->options.algorithm))
    return fo_launch_piece_sums(
        r->d_blocks, r->d_tensors, r->num_blocks, r->num_tensors, r->all_tensors, r->norm_partials,
        r->tensor_sums + (size_t)r->slot * (size_t)r->all_tensors * 2, stream);
  return unscale(opt, stream);
}

/* The optional write-back of unscaled gradients, after the pass that read
 * them last. */
static int unscale(const fo_optimizer *opt, fo_stream_t stream) {
  const fo_run_plan *r = &opt->run;
  if (!opt->options.write_unscaled_grads) return 0;
  return fo_launch_unscale_grads(r->d_blocks, r->d_tensors, r->num_blocks, r->chunk,
                                 (int32_t)opt->options.grad_dtype, opt->state, stream);
}

/* LAMB, LARS: the factors from every slot, then the apply pass. */
static int enqueue_apply(fo_optimizer *opt, fo_stream_t stream) {
  const fo_run_plan *r = &opt->run;
  int e = fo_launch_tensor_factors(r->d_tensors, r->num_tensors, r->all_tensors, r->slots,
                                   (int32_t)opt->options.algorithm, r->tensor_sums, opt->state,
                                   r->tensor_factors, stream);
  if (e) return e;
  fo_step_launch a;
  step_launch_fill(opt, &a, stream);
  a.pass = FO_PASS_APPLY;
  a.tensor_factors = r->tensor_factors;
  e = fo_launch_step(&a, stream);
  return e ? e : unscale(opt, stream);
}

static fo_status apply(fo_optimizer *opt, fo_stream_t stream) {
  FO_CUDA_RETURN("fo_optimizer_step", device_of(opt), "step launch", enqueue_apply(opt, stream));
}

static fo_status update(fo_optimizer *opt, const double *sums, int64_t n, fo_stream_t stream) {
  FO_CUDA_RETURN("fo_optimizer_step", device_of(opt), "step launch",
                 enqueue_update(opt, sums, n, stream));
}

/* The skip decision is on the device; the host does not wait for it. */
static int skipped(const fo_optimizer *opt) {
  (void)opt;
  return 0;
}

static fo_status zero_grad(fo_optimizer *opt, fo_stream_t stream) {
  const fo_run_plan *r = &opt->run;
  void *arena = opt->arena[FO_ROLE_GRAD];
  size_t bytes = (size_t)opt->total_elems * fo_dtype_size(opt->options.grad_dtype);
  if (arena)
    FO_CUDA_RETURN("fo_optimizer_zero_grad", device_of(opt), "cudaMemsetAsync",
                   cudaMemsetAsync(arena, 0, bytes, (cudaStream_t)stream));
  FO_CUDA_RETURN("fo_optimizer_zero_grad", device_of(opt), "zero-grad kernel",
                 fo_launch_zero_grad(r->d_blocks, r->d_tensors, r->num_blocks, r->chunk,
                                     (int32_t)opt->options.grad_dtype, stream));
}

static fo_status sync_master(fo_optimizer *opt, fo_stream_t stream) {
  const fo_run_plan *r = &opt->run;
  FO_CUDA_RETURN("fo_optimizer_sync_master", device_of(opt), "sync-master kernel",
                 fo_launch_sync_master(r->d_blocks, r->d_tensors, r->num_blocks, r->chunk,
                                       (int32_t)opt->options.param_dtype, stream));
}

/* ------------------------------------------------------------ step state */

/* Wait for every step in flight (on any stream), then copy. */
static fo_status read_state(const char *fn, const fo_optimizer *opt, fo_step_state *out) {
  fo_status st = fo_cuda_synchronize(fn, device_of(opt));
  if (st != FO_SUCCESS) return st;
  return fo_cuda_memcpy(fn, device_of(opt), out, opt->state, sizeof *out, FO_COPY_TO_HOST);
}

static fo_status write_state(const char *fn, fo_optimizer *opt, const fo_step_state *in) {
  fo_status st = fo_cuda_synchronize(fn, device_of(opt));
  if (st != FO_SUCCESS) return st;
  return fo_cuda_memcpy(fn, device_of(opt), opt->state, in, sizeof *in, FO_COPY_FROM_HOST);
}

static const fo_exec_ops cuda_ops = {
    .chunk = FO_CUDA_CHUNK,
    .host_memory = 0,
    .kind = FO_EXEC_CUDA,
    .alloc = fo_cuda_alloc_zeroed,
    .release = fo_cuda_free,
    .copy = fo_cuda_memcpy,
    .convert = fo_cuda_convert,
    .pack = pack,
    .synchronize = fo_cuda_synchronize,
    .check_stream = fo_cuda_check_stream,
    .check_pointer = check_pointer,
    .upload_plan = upload_plan,
    .prepass = prepass,
    .sum_partials = sum_partials,
    .update = update,
    .apply = apply,
    .skipped = skipped,
    .zero_grad = zero_grad,
    .sync_master = sync_master,
    .read_state = read_state,
    .write_state = write_state,
    .events_create = fo_cuda_events_create,
    .events_destroy = fo_cuda_events_destroy,
    .record = fo_cuda_record,
    .wait = fo_cuda_wait,
    .capture_of = fo_cuda_capture_on,
    .same_stream = fo_cuda_same_stream,
};

const fo_exec_ops *fo_exec_cuda_ops(void) {
  return &cuda_ops;
}
