/*
 * exec.h -- the executor interface: what the rest of the library asks of
 * the memory and the processors a step runs on.
 *
 * Two implementations: the CPU executor (exec_cpu.c: host memory, OpenMP)
 * and the CUDA executor (exec_cuda.c: device memory, kernels/ launchers,
 * on the single CUDA device layer of cuda_device.c).  An optimizer picks
 * one at create (opt->exec) and every later call goes through the table,
 * so no other file asks which executor it has.  Executors never call the
 * data-parallel code: the conductor (step.c) calls them part by part and
 * does the agreement between ranks in between.
 *
 * Every operation that takes fn reports failures under that name.  Work
 * that takes a stream is enqueued on it (the CPU executor runs it at once
 * and takes NULL).
 */
#ifndef FO_EXEC_H
#define FO_EXEC_H

#include "internal.h"

struct fo_exec_ops {
  fo_executor kind;
  /* Elements of one tensor per plan block: a unit of work for one CUDA
   * thread block or one CPU thread. */
  int64_t chunk;
  /* The executor's memory is host memory: the host may read and write it
   * directly (the CPU); otherwise through copy (a device's). */
  int host_memory;
  /* ---- memory (device: the optimizer's device; unused on the CPU) */
  /* Zero-filled memory; 256-byte aligned.  bytes may be 0. */
  fo_status (*alloc)(const char *fn, int device, size_t bytes, void **out);
  /* Release; NULL is a no-op.  On CUDA after the device is done with it. */
  void (*release)(int device, void *p);
  /* A synchronous copy of bytes (returns when dst holds them). */
  fo_status (*copy)(const char *fn, int device, void *dst, const void *src, size_t bytes,
                    fo_copy_dir dir);
  /* Convert n elements between dtypes in executor memory, on stream. */
  fo_status (*convert)(const char *fn, int device, const void *src, fo_dtype from, void *dst,
                       fo_dtype to, int64_t n, fo_stream_t stream);
  /* A gradient bucket's pack (unpack = 0) or unpack, on stream: for each
   * of blocks[0..num_blocks) (executor memory; plan.h), its gradients
   * (dtype grad) to elements [packed_at, packed_at + n) of wire (dtype
   * wire: the same, copied bit for bit, or fp32 for 16-bit gradients), or
   * back (rounded to nearest even).  One launch on CUDA. */
  fo_status (*pack)(const char *fn, int device, const fo_pack_block *blocks, int64_t num_blocks,
                    void *wire_buf, fo_dtype grad, fo_dtype wire, int unpack, fo_stream_t stream);
  /* Wait until every piece of work enqueued on the device has finished. */
  fo_status (*synchronize)(const char *fn, int device);
  /* ---- arguments */
  /* The stream of a call that launches work: NULL on the CPU, a stream of
   * device on CUDA (NULL: the device's default stream). */
  fo_status (*check_stream)(const char *fn, fo_stream_t stream, int device);
  /* ptr .. ptr + bytes is memory this executor may use (named what). */
  fo_status (*check_pointer)(const char *fn, const char *what, const void *ptr, size_t bytes,
                             int device);
  /* ---- the plan: copies of the plan's tables the kernels read (CUDA);
   * nothing to do on the CPU, where the host tables are read */
  fo_status (*upload_plan)(const char *fn, int device, fo_run_plan *plan);
  /* ---- the step, part by part (conductor: step.c) */
  /* Pre-pass: one sum of squares of the gradients per plan block, into
   * opt->run.partials. */
  fo_status (*prepass)(fo_optimizer *opt, fo_stream_t stream);
  /* Add the plan's partials in block order into *out (executor memory). */
  fo_status (*sum_partials)(fo_optimizer *opt, double *out, fo_stream_t stream);
  /* Prepare the step's scalars from the sums of squares sums[0..n) (added
   * in order; NULL without a pre-pass), then update every tensor. */
  fo_status (*update)(fo_optimizer *opt, const double *sums, int64_t n, fo_stream_t stream);
  /* LAMB and LARS (fo_algorithm_has_tensor_norms): update runs the norms
   * pass and leaves this rank's slot of the plan's tensor_sums; apply,
   * once every slot is in place, turns them into each tensor's factor and
   * runs the second pass.  Nothing when the step is skipped. */
  fo_status (*apply)(fo_optimizer *opt, fo_stream_t stream);
  /* 1 when the host knows the last step was skipped (CPU); 0 when it was
   * not or cannot know without waiting (CUDA). */
  int (*skipped)(const fo_optimizer *opt);
  fo_status (*zero_grad)(fo_optimizer *opt, fo_stream_t stream);
  /* Copy the parameters into the fp32 master weights. */
  fo_status (*sync_master)(fo_optimizer *opt, fo_stream_t stream);
  /* ---- the step state (synchronous: waits for the device) */
  fo_status (*read_state)(const char *fn, const fo_optimizer *opt, fo_step_state *out);
  fo_status (*write_state)(const char *fn, fo_optimizer *opt, const fo_step_state *in);
  /* ---- ordering between streams (no-ops on the CPU): n events, record
   * one on a stream, make a stream wait for one */
  fo_status (*events_create)(const char *fn, int device, void **events, int64_t n);
  void (*events_destroy)(int device, void **events, int64_t n);
  fo_status (*record)(const char *fn, int device, void *event, fo_stream_t stream);
  fo_status (*wait)(const char *fn, int device, fo_stream_t stream, void *event);
  /* The CUDA graph capture that work on stream (of device) goes into: 0
   * for none (the CPU's always), FO_CAPTURE_UNKNOWN when the runtime cannot
   * say, else an id of that capture (a wait may not cross a capture's
   * boundary: host/dp/buckets.c). */
  uint64_t (*capture_of)(int device, fo_stream_t stream);
  /* 1 when work enqueued on a and then on b, from any threads, is ordered
   * by the stream alone, so b need not wait for an event of a's: the same
   * handle, except cudaStreamPerThread, which names the calling thread's
   * own stream (an optimizer may be driven by one thread, then another). */
  int (*same_stream)(fo_stream_t a, fo_stream_t b);
};

#define FO_CAPTURE_UNKNOWN UINT64_MAX

/* The executors' tables; fo_exec_cuda_ops() is NULL in a build without
 * CUDA. */
const fo_exec_ops *fo_exec_cpu_ops(void);
const fo_exec_ops *fo_exec_cuda_ops(void);

/* The table for executor kind (validated), or a status: FO_ERR_NO_DEVICE
 * without a usable device for CUDA. */
fo_status fo_exec_select(const char *fn, const fo_options *o, const fo_exec_ops **out);

#endif /* FO_EXEC_H */
