/*
 * buckets.c -- gradient averaging: an optimizer's communicator, its
 * gradient buckets, and their reduction before the step.
 *
 * Buckets are runs of consecutive tensors (fo_dp_options.bucket_bytes of
 * gradients each).  A bucket's gradient memory is a list of segments:
 *   - arena storage: one segment per bucket, the contiguous slice of the
 *     gradient arena from the first tensor's start to the last one's end
 *     (the zero padding between tensors is summed too: zeros stay zeros);
 *   - external storage: one segment per run of tensors whose gradients are
 *     adjacent in memory.
 * A bucket of one segment is summed in place.  Otherwise (or when 16-bit
 * gradients are reduced in fp32) it is packed into a scratch buffer by
 * one launch of the executor's pack op, summed with ONE collective and
 * unpacked by one launch: a bucket costs one collective however scattered
 * its gradients are (PyTorch's allocator leaves a GPT-2's in ~148 runs:
 * one collective each pays its latency ~148 times, where the copies cost
 * bytes at memory bandwidth; docs/data-parallel.md).  The pack table
 * (plan.h) is built and uploaded at attach, so a step copies nothing from
 * the host and waits for nothing.
 *
 * The sum is divided by the number of ranks inside the step (grad_divisor
 * in the step's gradient coefficient), and the pre-pass then reads the
 * summed gradients: the norm, the non-finite flag and the loss scale are
 * the same on every rank without another collective.
 */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "comm_internal.h"
#include "dp.h"
#include "exec.h"

#define FO_DP_DEFAULT_BUCKET_BYTES ((size_t)25 << 20)

/* ------------------------------------------------------------- options */

fo_status fo_dp_options_default(fo_dp_options *out) {
  if (!out) return fo_fail(FO_ERR_NULL_POINTER, "fo_dp_options_default", "out is NULL");
  memset(out, 0, sizeof *out);
  out->struct_size = sizeof *out;
  out->bucket_bytes = FO_DP_DEFAULT_BUCKET_BYTES;
  return FO_SUCCESS;
}

static fo_status validate_options(const char *fn, const fo_dp_options *o) {
  if (o->struct_size != sizeof(fo_dp_options))
    return fo_fail(FO_ERR_INVALID_ARGUMENT, fn,
                   "options->struct_size = %zu, expected %zu (fill it with "
                   "fo_dp_options_default)",
                   o->struct_size, sizeof(fo_dp_options));
  if (o->reduce_in_f32 != 0 && o->reduce_in_f32 != 1)
    return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "options->reduce_in_f32 = %d must be 0 or 1",
                   o->reduce_in_f32);
  if (o->shard_state != 0 && o->shard_state != 1)
    return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "options->shard_state = %d must be 0 or 1",
                   o->shard_state);
  for (size_t i = 0; i < sizeof o->reserved / sizeof o->reserved[0]; i++)
    if (o->reserved[i] != 0)
      return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "options->reserved[%zu] is not zero", i);
  return FO_SUCCESS;
}

/* The communicator must speak the executor's memory. */
static fo_status check_kind(const char *fn, const fo_optimizer *opt, const fo_comm *c) {
  int cuda = opt->options.executor == FO_EXEC_CUDA;
  if (cuda && c->kind != FO_COMM_NCCL)
    return fo_fail(FO_ERR_UNSUPPORTED, fn,
                   "a CUDA optimizer needs an NCCL communicator (this one is a host "
                   "communicator)");
  if (!cuda && c->kind != FO_COMM_HOST)
    return fo_fail(FO_ERR_UNSUPPORTED, fn,
                   "a CPU optimizer needs a host communicator (this one is NCCL)");
  if (cuda && c->device != opt->options.device)
    return fo_fail(FO_ERR_INVALID_ARGUMENT, fn,
                   "the NCCL communicator runs on device %d; the optimizer on device %d", c->device,
                   opt->options.device);
  return FO_SUCCESS;
}

/* --------------------------------------------------------------- layout */

static size_t grad_size(const fo_optimizer *opt) {
  return fo_dtype_size(opt->options.grad_dtype);
}

/* Append count elements at grad to bucket b, extending its last segment
 * when the memory continues it.  A new segment starts its packed copy at a
 * 16-byte boundary, so the pack kernel's vector path runs wherever the
 * gradients themselves are aligned (the padding, under 16 bytes a
 * segment, is summed with the rest and never read back). */
static void add_span(fo_dp *dp, fo_dp_bucket *b, void *grad, int64_t count, size_t gs) {
  if (count == 0) return;
  fo_dp_segment *last = b->num_segs ? &dp->segs[b->first_seg + b->num_segs - 1] : NULL;
  if (last && (char *)last->grad + (size_t)last->count * gs == (char *)grad) {
    last->count += count;
  } else {
    int64_t align = 16 / (int64_t)fo_dtype_size(dp->wire);
    int64_t at = (b->packed + align - 1) / align * align;
    dp->segs[dp->num_segs++] = (fo_dp_segment){grad, count, at};
    b->num_segs++;
    b->packed = at;
  }
  b->count += count;
  b->packed += count;
}

/* The memory of tensors [first, end) of bucket b. */
static void add_tensors(const fo_optimizer *opt, fo_dp *dp, fo_dp_bucket *b, int64_t first,
                        int64_t end) {
  size_t gs = grad_size(opt);
  if (opt->arena[FO_ROLE_GRAD]) { /* one slice of the arena */
    int64_t lo = opt->offsets[first];
    int64_t hi = opt->offsets[end - 1] + opt->tensors[end - 1].numel;
    add_span(dp, b, (char *)opt->arena[FO_ROLE_GRAD] + (size_t)lo * gs, hi - lo, gs);
    return;
  }
  for (int64_t i = first; i < end; i++)
    add_span(dp, b, opt->tensors[i].grad, opt->tensors[i].numel, gs);
}

/* Split the tensors into buckets of at most limit gradient bytes (a larger
 * tensor is a bucket of its own). */
static void build_buckets(const fo_optimizer *opt, fo_dp *dp) {
  size_t gs = grad_size(opt);
  size_t limit = dp->options.bucket_bytes ? dp->options.bucket_bytes : SIZE_MAX;
  int64_t first = 0;
  size_t bytes = 0;
  for (int64_t i = 0; i <= opt->num_tensors; i++) {
    size_t t = i < opt->num_tensors ? (size_t)opt->tensors[i].numel * gs : 0;
    int full = bytes > 0 && t > 0 && (bytes >= limit || t > limit - bytes);
    int close = i == opt->num_tensors ? i > first : full;
    if (close) {
      fo_dp_bucket *b = &dp->buckets[dp->num_buckets++];
      *b = (fo_dp_bucket){first, i - first, dp->num_segs, 0, 0, 0, 0, 0};
      add_tensors(opt, dp, b, first, i);
      first = i;
      bytes = 0;
    }
    bytes += t;
  }
}

/* A bucket goes through the scratch buffer: widened to fp32, or packed
 * because its memory is scattered (one collective instead of one per
 * segment). */
static int packed(const fo_optimizer *opt, const fo_dp *dp, const fo_dp_bucket *b) {
  return dp->wire != opt->options.grad_dtype || b->num_segs > 1;
}

static size_t scratch_needed(const fo_optimizer *opt, const fo_dp *dp) {
  size_t most = 0, ws = fo_dtype_size(dp->wire);
  for (int64_t i = 0; i < dp->num_buckets; i++)
    if (packed(opt, dp, &dp->buckets[i]) && (size_t)dp->buckets[i].packed * ws > most)
      most = (size_t)dp->buckets[i].packed * ws;
  return most;
}

/* The pack table of the packed buckets: each segment cut into blocks of
 * FO_PACK_CHUNK (plan.h), on the host (counted, then written), then copied
 * to the executor's memory once. */
static fo_status build_pack_table(const char *fn, const fo_optimizer *opt, fo_dp *dp) {
  size_t gs = grad_size(opt);
  fo_pack_block *table = NULL;
  int64_t n = 0;
  for (int pass = 0; pass < 2; pass++) {
    n = 0;
    for (int64_t i = 0; i < dp->num_buckets; i++) {
      fo_dp_bucket *b = &dp->buckets[i];
      if (!packed(opt, dp, b)) continue;
      b->first_block = n;
      for (int64_t s = b->first_seg; s < b->first_seg + b->num_segs; s++)
        n += fo_pack_cut(dp->segs[s].grad, gs, dp->segs[s].count, dp->segs[s].packed_at,
                         table ? table + n : NULL);
      b->num_blocks = n - b->first_block;
    }
    if (n == 0) return FO_SUCCESS;
    if (!table && !(table = calloc((size_t)n, sizeof *table)))
      return fo_fail(FO_ERR_OUT_OF_MEMORY, fn, "no memory for a pack table of %lld blocks",
                     (long long)n);
  }
  size_t bytes = (size_t)n * sizeof *table;
  fo_status st = fo_exec_alloc(fn, opt, bytes, (void **)&dp->d_blocks);
  if (st == FO_SUCCESS) st = fo_exec_copy(fn, opt, dp->d_blocks, table, bytes, FO_COPY_FROM_HOST);
  free(table);
  return st;
}

/* ------------------------------------------------------ create, destroy */

static void dp_destroy(fo_optimizer *opt, fo_dp *dp) {
  if (!dp) return;
  if (dp->comm) dp->comm->attached--;
  opt->exec->events_destroy(opt->options.device, dp->events, dp->num_buckets);
  fo_exec_free(opt, dp->scratch);
  fo_exec_free(opt, dp->sumsq);
  fo_exec_free(opt, dp->d_blocks);
  free(dp->events);
  free(dp->streams);
  free(dp->captures);
  free(dp->counts);
  free(dp->reduced);
  free(dp->segs);
  free(dp->buckets);
  free(dp);
}

static fo_status alloc_scratch(const char *fn, const fo_optimizer *opt, fo_dp *dp) {
  dp->scratch_bytes = scratch_needed(opt, dp);
  if (dp->scratch_bytes == 0) return FO_SUCCESS;
  return fo_exec_alloc(fn, opt, dp->scratch_bytes, &dp->scratch);
}

static fo_status dp_create(const char *fn, fo_optimizer *opt, fo_comm *comm, const fo_dp_options *o,
                           fo_dp **out) {
  fo_status st = FO_SUCCESS;
  fo_dp *dp = calloc(1, sizeof *dp);
  if (!dp) return fo_fail(FO_ERR_OUT_OF_MEMORY, fn, "no memory for the buckets");
  dp->options = *o;
  dp->wire = o->reduce_in_f32 ? FO_DTYPE_F32 : opt->options.grad_dtype;
  dp->last_packed = -1;
  size_t n1 = (size_t)opt->num_tensors + 1; /* never more buckets or segments */
  dp->buckets = calloc(n1, sizeof *dp->buckets);
  dp->segs = calloc(n1, sizeof *dp->segs);
  dp->reduced = calloc(n1, 1);
  dp->events = calloc(n1, sizeof *dp->events);
  dp->streams = calloc(n1, sizeof *dp->streams);
  dp->captures = calloc(n1, sizeof *dp->captures);
  dp->counts = calloc((size_t)comm->size, sizeof *dp->counts);
  if (!dp->buckets || !dp->segs || !dp->reduced || !dp->events || !dp->streams || !dp->captures ||
      !dp->counts) {
    st = fo_fail(FO_ERR_OUT_OF_MEMORY, fn, "no memory for %lld buckets",
                 (long long)opt->num_tensors);
    goto done;
  }
  build_buckets(opt, dp);
  FO_TRY(build_pack_table(fn, opt, dp));
  FO_TRY(alloc_scratch(fn, opt, dp));
  FO_TRY(opt->exec->events_create(fn, opt->options.device, dp->events, dp->num_buckets));
  dp->comm = comm; /* last: dp_destroy then releases the attachment */
  comm->attached++;
done:
  if (st != FO_SUCCESS) {
    dp_destroy(opt, dp);
    return st;
  }
  *out = dp;
  return FO_SUCCESS;
}

/* Drop the attachment; on CUDA after the device has finished with it. */
static void detach(fo_optimizer *opt) {
  if (!opt->dp) return;
  (void)fo_exec_synchronize("fo_optimizer_set_comm", opt);
  dp_destroy(opt, opt->dp);
  opt->dp = NULL;
  opt->grad_divisor = 1.0f;
}

static fo_status set_comm_claimed(const char *fn, fo_optimizer *opt, fo_comm *comm,
                                  const fo_dp_options *options) {
  fo_dp_options o;
  fo_dp_options_default(&o);
  if (options) {
    fo_status st = validate_options(fn, options);
    if (st != FO_SUCCESS) return st;
    o = *options;
  }
  if (opt->shard.on)
    return fo_fail(FO_ERR_INVALID_STATE, fn,
                   "the optimizer's state is sharded over the ranks of its communicator; "
                   "it keeps that communicator until fo_optimizer_destroy");
  if (!comm) {
    detach(opt);
    return FO_SUCCESS;
  }
  fo_status st = check_kind(fn, opt, comm);
  fo_dp *dp = NULL;
  if (st == FO_SUCCESS) st = dp_create(fn, opt, comm, &o, &dp);
  /* the scratch's zero-fill ran on the legacy stream: wait, so that a
   * bucket packed on a non-blocking stream finds it done */
  if (st == FO_SUCCESS && (st = fo_exec_synchronize(fn, opt)) != FO_SUCCESS) dp_destroy(opt, dp);
  if (st == FO_SUCCESS && o.shard_state) {
    /* detach the old one first: the shard's collectives are dp's */
    fo_dp *old = opt->dp;
    opt->dp = dp;
    st = fo_shard_attach(fn, opt, comm);
    opt->dp = old;
    if (st != FO_SUCCESS) dp_destroy(opt, dp);
  }
  if (st != FO_SUCCESS) return st;
  detach(opt);
  opt->dp = dp;
  opt->grad_divisor = (float)comm->size;
  return FO_SUCCESS;
}

fo_status fo_optimizer_set_comm(fo_optimizer *opt, fo_comm *comm, const fo_dp_options *options) {
  static const char fn[] = "fo_optimizer_set_comm";
  if (!opt) return fo_fail(FO_ERR_NULL_POINTER, fn, "opt is NULL");
  fo_status st = fo_claim(fn, opt);
  return st != FO_SUCCESS ? st : fo_release(opt, set_comm_claimed(fn, opt, comm, options));
}

void fo_dp_free(fo_optimizer *opt) {
  dp_destroy(opt, opt->dp);
  opt->dp = NULL;
}

/* ------------------------------------------------------------ accessors */

fo_status fo_optimizer_num_buckets(const fo_optimizer *opt, int64_t *out) {
  static const char fn[] = "fo_optimizer_num_buckets";
  if (!opt || !out) return fo_fail(FO_ERR_NULL_POINTER, fn, "%s is NULL", opt ? "out" : "opt");
  fo_status st = fo_claim(fn, opt);
  if (st != FO_SUCCESS) return st;
  *out = opt->dp ? opt->dp->num_buckets : 0;
  return fo_release(opt, FO_SUCCESS);
}

static fo_status check_bucket(const char *fn, const fo_optimizer *opt, int64_t bucket) {
  if (!opt->dp)
    return fo_fail(FO_ERR_INVALID_STATE, fn,
                   "the optimizer has no communicator (fo_optimizer_set_comm)");
  if (bucket < 0 || bucket >= opt->dp->num_buckets)
    return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "bucket = %lld is outside [0, %lld)",
                   (long long)bucket, (long long)opt->dp->num_buckets);
  return FO_SUCCESS;
}

fo_status fo_optimizer_bucket_tensors(const fo_optimizer *opt, int64_t bucket, int64_t *first,
                                      int64_t *count) {
  static const char fn[] = "fo_optimizer_bucket_tensors";
  if (!opt || !first || !count)
    return fo_fail(FO_ERR_NULL_POINTER, fn, "%s is NULL",
                   !opt     ? "opt"
                   : !first ? "first"
                            : "count");
  fo_status st = fo_claim(fn, opt);
  if (st != FO_SUCCESS) return st;
  st = check_bucket(fn, opt, bucket);
  if (st == FO_SUCCESS) {
    *first = opt->dp->buckets[bucket].first_tensor;
    *count = opt->dp->buckets[bucket].num_tensors;
  }
  return fo_release(opt, st);
}

/* ------------------------------------------------------------- reduce */

/* The scratch buffer is the optimizer's one: a bucket packed on another
 * stream than the last one waits for it.  Not across the boundary of a
 * CUDA graph capture, where CUDA allows no wait (and a replay runs long
 * after the capture): a replay and the eager work around it use the same
 * gradients and parameters, so the caller orders them already
 * (docs/data-parallel.md, "CUDA graphs"), and with them their use of the
 * scratch.  here: the capture stream is in (check_same_capture's answer,
 * never unknown: it refuses a stream the runtime cannot place). */
static fo_status claim_scratch(const char *fn, const fo_optimizer *opt, fo_stream_t stream,
                               uint64_t here) {
  const fo_dp *dp = opt->dp;
  const int64_t last = dp->last_packed;
  if (last < 0 || opt->exec->same_stream(dp->streams[last], stream) || dp->captures[last] != here)
    return FO_SUCCESS;
  return opt->exec->wait(fn, opt->options.device, stream, dp->events[last]);
}

/* A step's reductions and the step itself are all in one CUDA graph
 * capture or all eager: a captured step would replay without a sum
 * reduced outside it, an eager step wait for one that only a replay runs.
 * Checked by every call that reduces or steps, before it enqueues; the
 * capture it finds the stream in (0: none) is the one the call's work goes
 * into, so the call asks the runtime once. */
static fo_status check_same_capture(const char *fn, const fo_optimizer *opt, fo_stream_t stream,
                                    uint64_t *capture) {
  const fo_dp *dp = opt->dp;
  const uint64_t here = opt->exec->capture_of(opt->options.device, stream);
  *capture = here;
  if (here == FO_CAPTURE_UNKNOWN)
    return fo_fail(FO_ERR_CUDA, fn, "cannot tell whether stream %p is being captured",
                   (void *)stream);
  for (int64_t b = 0; b < dp->num_buckets; b++) {
    if (!dp->reduced[b] || dp->captures[b] == here) continue;
    const char *how = "in two different captures";
    if (!dp->captures[b]) how = "the bucket reduced eagerly, the stream capturing";
    if (!here) how = "the bucket reduced in a capture, the stream not capturing";
    return fo_fail(FO_ERR_INVALID_STATE, fn,
                   "bucket %lld of this step and stream %p are on two sides of a CUDA graph "
                   "capture's boundary (%s): a step's reductions and the step are all "
                   "captured in one capture (on its stream or streams forked from it) or all "
                   "eager (fo_optimizer_zero_grad forgets the reductions)",
                   (long long)b, (void *)stream, how);
  }
  return FO_SUCCESS;
}

/* Pack (unpack = 0) or unpack the bucket's segments: one launch. */
static fo_status pack(const char *fn, const fo_optimizer *opt, const fo_dp_bucket *b, int unpack,
                      fo_stream_t stream) {
  const fo_dp *dp = opt->dp;
  return opt->exec->pack(fn, opt->options.device, dp->d_blocks + b->first_block, b->num_blocks,
                         dp->scratch, opt->options.grad_dtype, dp->wire, unpack, stream);
}

/* Pack the bucket into the scratch buffer, sum it with one collective,
 * unpack: copies of 2 x count x (grad size + wire size) bytes that a sum in
 * place would not make, for one collective instead of one per segment. */
static fo_status reduce_packed(const char *fn, fo_optimizer *opt, int64_t bi, fo_stream_t stream,
                               uint64_t capture) {
  fo_dp *dp = opt->dp;
  const fo_dp_bucket *b = &dp->buckets[bi];
  fo_status st = FO_SUCCESS;
  FO_TRY(claim_scratch(fn, opt, stream, capture));
  FO_TRY(pack(fn, opt, b, 0, stream));
  FO_TRY(fo_comm_sum(fn, dp->comm, dp->scratch, b->packed, dp->wire, stream));
  FO_TRY(pack(fn, opt, b, 1, stream));
  dp->last_packed = bi;
done:
  return st;
}

/* A bucket of one segment in the wire dtype: summed where it is. */
static fo_status reduce_in_place(const char *fn, fo_optimizer *opt, const fo_dp_bucket *b,
                                 fo_stream_t stream) {
  const fo_dp_segment *seg = &opt->dp->segs[b->first_seg];
  return fo_comm_sum(fn, opt->dp->comm, seg->grad, seg->count, opt->dp->wire, stream);
}

/* A sharded state: reduce-scatter the bucket along the shard boundaries
 * (arena storage: one segment), in place or through the fp32 scratch, of
 * which only this rank's part is unpacked. */
static fo_status reduce_sharded(const char *fn, fo_optimizer *opt, int64_t bi, fo_stream_t stream,
                                uint64_t capture) {
  fo_dp *dp = opt->dp;
  const fo_dp_segment *seg = &dp->segs[dp->buckets[bi].first_seg];
  size_t gs = grad_size(opt);
  int64_t at = ((char *)seg->grad - (char *)opt->arena[FO_ROLE_GRAD]) / (ptrdiff_t)gs;
  if (!packed(opt, dp, &dp->buckets[bi]))
    return fo_shard_reduce(fn, opt, seg->grad, at, seg->count, dp->wire, dp->counts, stream);
  fo_status st = FO_SUCCESS;
  FO_TRY(claim_scratch(fn, opt, stream, capture));
  FO_TRY(pack(fn, opt, &dp->buckets[bi], 0, stream));
  FO_TRY(fo_shard_reduce(fn, opt, dp->scratch, at, seg->count, dp->wire, dp->counts, stream));
  int64_t lo, hi;
  fo_shard_clip(opt, at, seg->count, &lo, &hi);
  if (hi > lo) /* this rank's part only: not the bucket's whole unpack */
    FO_TRY(opt->exec->convert(fn, opt->options.device,
                              (char *)dp->scratch + (size_t)(lo - at) * fo_dtype_size(dp->wire),
                              dp->wire, (char *)seg->grad + (size_t)(lo - at) * gs,
                              opt->options.grad_dtype, hi - lo, stream));
  dp->last_packed = bi;
done:
  return st;
}

/* capture: check_same_capture's answer for stream. */
static fo_status reduce_bucket(const char *fn, fo_optimizer *opt, int64_t bi, fo_stream_t stream,
                               uint64_t capture) {
  fo_dp *dp = opt->dp;
  const fo_dp_bucket *b = &dp->buckets[bi];
  fo_status st = fo_comm_check_async(fn, dp->comm);
  if (st == FO_SUCCESS && b->count > 0)
    st = opt->shard.on        ? reduce_sharded(fn, opt, bi, stream, capture)
         : packed(opt, dp, b) ? reduce_packed(fn, opt, bi, stream, capture)
                              : reduce_in_place(fn, opt, b, stream);
  if (st == FO_SUCCESS) st = opt->exec->record(fn, opt->options.device, dp->events[bi], stream);
  if (st != FO_SUCCESS) {
    opt->grads_poisoned = 1; /* partly summed: never step on them */
    return st;
  }
  dp->streams[bi] = stream;
  dp->captures[bi] = capture;
  dp->reduced[bi] = 1;
  return FO_SUCCESS;
}

static fo_status reduce_remaining(const char *fn, fo_optimizer *opt, fo_stream_t stream,
                                  uint64_t capture) {
  for (int64_t b = 0; b < opt->dp->num_buckets; b++) {
    if (opt->dp->reduced[b]) continue;
    fo_status st = reduce_bucket(fn, opt, b, stream, capture);
    if (st != FO_SUCCESS) return st;
  }
  return FO_SUCCESS;
}

static fo_status refuse_poisoned(const char *fn) {
  return fo_fail(FO_ERR_COMM, fn,
                 "an earlier all-reduce of the gradients failed and left them partly "
                 "summed; zero them (fo_optimizer_zero_grad), recompute them and try again (an "
                 "NCCL communicator that failed is refused then: attach another)");
}

/* The arguments every reduce call shares (opt not NULL, claimed); the
 * capture stream's work goes into (check_same_capture). */
static fo_status check_reduce(const char *fn, const fo_optimizer *opt, fo_stream_t stream,
                              uint64_t *capture) {
  fo_status st = fo_check_process(fn, opt, 0);
  if (st != FO_SUCCESS) return st;
  if (!opt->dp)
    return fo_fail(FO_ERR_INVALID_STATE, fn,
                   "the optimizer has no communicator (fo_optimizer_set_comm)");
  st = fo_exec_check_stream(fn, opt, stream);
  if (st != FO_SUCCESS) return st;
  if (opt->grads_poisoned) return refuse_poisoned(fn);
  return check_same_capture(fn, opt, stream, capture);
}

static fo_status reduce_bucket_claimed(const char *fn, fo_optimizer *opt, int64_t bucket,
                                       fo_stream_t stream) {
  uint64_t capture;
  fo_status st = check_reduce(fn, opt, stream, &capture);
  if (st == FO_SUCCESS) st = check_bucket(fn, opt, bucket);
  if (st != FO_SUCCESS) return st;
  if (opt->dp->reduced[bucket])
    return fo_fail(FO_ERR_INVALID_STATE, fn,
                   "bucket %lld was already reduced for this step (a second sum would "
                   "count every rank twice)",
                   (long long)bucket);
  return reduce_bucket(fn, opt, bucket, stream, capture);
}

fo_status fo_optimizer_reduce_bucket(fo_optimizer *opt, int64_t bucket, fo_stream_t stream) {
  static const char fn[] = "fo_optimizer_reduce_bucket";
  if (!opt) return fo_fail(FO_ERR_NULL_POINTER, fn, "opt is NULL");
  fo_status st = fo_claim(fn, opt);
  return st != FO_SUCCESS ? st : fo_release(opt, reduce_bucket_claimed(fn, opt, bucket, stream));
}

static fo_status reduce_grads_claimed(const char *fn, fo_optimizer *opt, fo_stream_t stream) {
  uint64_t capture;
  fo_status st = check_reduce(fn, opt, stream, &capture);
  if (st != FO_SUCCESS) return st;
  return reduce_remaining(fn, opt, stream, capture);
}

fo_status fo_optimizer_reduce_grads(fo_optimizer *opt, fo_stream_t stream) {
  static const char fn[] = "fo_optimizer_reduce_grads";
  if (!opt) return fo_fail(FO_ERR_NULL_POINTER, fn, "opt is NULL");
  fo_status st = fo_claim(fn, opt);
  return st != FO_SUCCESS ? st : fo_release(opt, reduce_grads_claimed(fn, opt, stream));
}

/* ----------------------------------------------------------- step hooks */

fo_status fo_dp_reduce_for_step(const char *fn, fo_optimizer *opt, fo_stream_t stream) {
  if (opt->grads_poisoned) return refuse_poisoned(fn);
  fo_dp *dp = opt->dp;
  if (!dp) return FO_SUCCESS;
  uint64_t capture;
  fo_status st = check_same_capture(fn, opt, stream, &capture);
  if (st != FO_SUCCESS) return st;
  /* The buckets earlier calls reduced (marked 2 here) may be on another
   * stream, or on another thread's per-thread stream under the same
   * handle: the step waits for their events.  Those this call reduces
   * (marked 1) are on this very stream, this thread's: no wait, so a step
   * on cudaStreamPerThread that reduces everything itself pays none. */
  for (int64_t b = 0; b < dp->num_buckets; b++)
    if (dp->reduced[b]) dp->reduced[b] = 2;
  st = reduce_remaining(fn, opt, stream, capture);
  for (int64_t b = 0; b < dp->num_buckets && st == FO_SUCCESS; b++)
    if (dp->reduced[b] == 2 && !opt->exec->same_stream(dp->streams[b], stream))
      st = opt->exec->wait(fn, opt->options.device, stream, dp->events[b]);
  if (st != FO_SUCCESS) return st;
  memset(dp->reduced, 0, (size_t)dp->num_buckets);
  return FO_SUCCESS;
}

void fo_dp_zero_grad(fo_optimizer *opt) {
  opt->grads_poisoned = 0;
  if (opt->dp) memset(opt->dp->reduced, 0, (size_t)opt->dp->num_buckets);
}
