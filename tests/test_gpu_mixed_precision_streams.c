/*
 * test_gpu_mixed_precision_streams.c -- the GPU tier of mixed
 * precision (issue #4):
 * the step in a CUDA graph and on streams the host never waits for.
 * tests/test_mixed_precision.c is the CPU tier of the same features;
 * tests/support/gpu/gpu_mp.h is the rig.
 *
 * Every test first asks fo_cuda_device_count(); without a usable device it
 * is skipped with the reason (never passed without running).  With one:
 *
 *   graph_replay_matches_eager_steps
 *       fo_optimizer_step with loss scaling (growth every 3 steps),
 *       clipping and a cosine schedule captured once (global mode) on a
 *       non-blocking stream and replayed 8 times (the gradients rewritten
 *       before each replay by cudaMemcpyAsync on that stream, outside the
 *       graph; step 5 overflows and must be skipped inside the graph),
 *       against 8 eager steps of a second optimizer on another stream:
 *       fo_step_info after every step (step, skipped, scale, tracker, norm,
 *       coefficient, lr_factor) and every parameter, gradient and state
 *       byte at the end, bit for bit; with and without write_unscaled_grads.
 *   step_never_waits_for_the_host
 *       the stream is held by a host callback waiting on a flag the test
 *       sets (at most 10 s); step, zero_grad and sync_master (external and
 *       arena storage; every kernel already run once, so that lazy module
 *       loading cannot synchronize) must return FO_SUCCESS while it is still
 *       held, and the work must be done once it is released.  The same
 *       calls under a global-mode stream capture must succeed (a
 *       synchronizing call fails the capture).
 *
 * Set FO_GPU_TEST_STAND_IN=cpu to run the same bodies against the CPU
 * executor over host memory (a check of the test's own plumbing on a
 * machine without a GPU).  The tests that need real CUDA streams skip:
 * step_never_waits_for_the_host entirely, graph_replay_matches_eager_steps
 * after running its eager-against-eager plumbing.
 */
#define _POSIX_C_SOURCE 200809L
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fusedopt.h"
#include "gpu_harness.h"
#include "gpu_mp.h"
#include "reference.h"
#include "testutil.h"

Test(gpu_mp, graph_replay_matches_eager_steps) {
  const int cuda = require_device(0);
  dev d = dev_open(cuda);
  enum { N = 8, OVERFLOW_AT = 5 };
  /* init 1024, growth every 3 clean steps, step 5 overflows */
  const float want_scale[N] = {1024, 1024, 2048, 2048, 1024, 1024, 1024, 2048};
  const int want_tracker[N] = {1, 2, 0, 1, 0, 1, 2, 0};
  dev gd = d; /* the graph's stream: non-blocking */
  if (cuda) CK(cudaStreamCreateWithFlags(&gd.stream, cudaStreamNonBlocking));
  const struct {
    fo_dtype pt, gt;
  } dts[2] = {{FO_DTYPE_BF16, FO_DTYPE_BF16}, {FO_DTYPE_F32, FO_DTYPE_F16}};
  for (int a = 0; a < FO_ALG_COUNT; a++)
    for (int m = 0; m < 2; m++) {
      const fo_algorithm alg = (fo_algorithm)a;
      char ctx[160];
      ctx_name(ctx, sizeof ctx, alg, dts[m].pt, dts[m].gt, m ? "write_unscaled_grads" : NULL);
      world w;
      mp_world_make(&w, dts[m].pt, dts[m].gt, 0, 4000 + (uint64_t)(a * 2 + m));
      unsigned char *pimg = param_image(&w, 41 + (uint64_t)(a * 2 + m));
      unsigned char *gimg[N];
      tu_rng rng;
      tu_rng_seed(&rng, (uint64_t)(a * 2 + m), 4);
      for (int s = 0; s < N; s++) gimg[s] = grad_image(&w, &rng, 1024.0);
      img_store(&w, gimg[OVERFLOW_AT - 1], 1, find_tensor(&w, 4097), 4096, INFINITY);
      fo_options o;
      base_options(&o, alg, dts[m].pt, dts[m].gt);
      o.loss_scaler.growth_interval = 3;
      o.max_grad_norm = 5.0f;
      o.write_unscaled_grads = m;
      o.schedule.kind = FO_SCHED_COSINE;
      o.schedule.warmup_steps = 2;
      o.schedule.total_steps = 10;
      o.schedule.min_ratio = 0.1f;
      fo_hparams h[2];
      hparams_for(alg, h);
      run eager, graphed;
      run_open(&eager, &d, &w, &o, h, pimg);
      run_open(&graphed, &gd, &w, &o, h, pimg);
      cudaGraph_t graph = NULL;
      cudaGraphExec_t exec = NULL;
      for (int s = 0; s < N; s++) {
        run_grads(&eager, gimg[s]);
        run_step(&eager);
        if (cuda && !exec) {
          /* captured after the eager optimizer's first step has run the
           * same kernels once (lazy module loading stays out of the
           * capture).  Global mode: a call the step makes that is not
           * allowed during capture (a synchronizing copy, an allocation)
           * fails the capture. */
          dev_sync(&d);
          CK(cudaStreamBeginCapture(gd.stream, cudaStreamCaptureModeGlobal));
          fo_status st = fo_optimizer_step(graphed.opt, gd.stream);
          cudaError_t e = cudaStreamEndCapture(gd.stream, &graph);
          cr_assert_eq(st, FO_SUCCESS, "%s: step during capture: %s", ctx, fo_last_error());
          cr_assert_eq(e, cudaSuccess, "%s: capture: %s", ctx, cudaGetErrorString(e));
          size_t nodes = 0;
          CK(cudaGraphGetNodes(graph, NULL, &nodes));
          /* the pre-pass, the prepare kernel, the update (+ the write-back) */
          cr_assert_geq(nodes, (size_t)(3 + m), "%s: %zu graph nodes", ctx, nodes);
          CK(cudaGraphInstantiate(&exec, graph, 0));
          /* capturing ran nothing */
          cr_assert_eq(run_info(&graphed).step, 0, "%s: capture applied a step", ctx);
        }
        /* a copy outside the graph, in stream order before the replay */
        run_grads(&graphed, gimg[s]);
        if (cuda)
          CK(cudaGraphLaunch(exec, gd.stream));
        else
          run_step(&graphed);
        const fo_step_info ie = run_info(&eager), ig = run_info(&graphed);
        char what[64];
        snprintf(what, sizeof what, "replay %d", s + 1);
        info_identical(&ig, &ie, what, ctx);
        cr_assert_eq(ie.loss_scale, want_scale[s], "%s: after step %d: scale %g, expected %g", ctx,
                     s + 1, (double)ie.loss_scale, (double)want_scale[s]);
        cr_assert_eq(ie.growth_tracker, want_tracker[s], "%s: after step %d: tracker %d", ctx,
                     s + 1, ie.growth_tracker);
        cr_assert_eq(ie.last_step_skipped, s + 1 == OVERFLOW_AT, "%s: step %d", ctx, s + 1);
        cr_assert_eq(ie.step, s + 1 < OVERFLOW_AT ? s + 1 : s, "%s: step %d", ctx, s + 1);
        cr_assert_eq(run_scale_at_ptr(&graphed), ig.loss_scale, "%s: step %d", ctx, s + 1);
      }
      snap se, sg;
      snap_take(&eager, &se);
      snap_take(&graphed, &sg);
      snap_identical(&w, &sg, &se, "graph replay against eager steps", ctx);
      cr_assert_eq(se.info.skipped_steps, 1, "%s", ctx);
      /* the last applied step is number 7 (k = 6): warmup 2, then cosine
       * over 8 steps at j = 4: 0.1 + 0.9 * 0.5 * (1 + cos(pi/2)) = 0.55 */
      cr_assert(fabs((double)sg.info.lr_factor - 0.55) <= 1e-6, "%s: lr factor %.9g", ctx,
                (double)sg.info.lr_factor);
      mp_check_gaps(&w, sg.param, 0, ctx);
      mp_check_gaps(&w, sg.grad, 1, ctx);
      if (exec) CK(cudaGraphExecDestroy(exec));
      if (graph) CK(cudaGraphDestroy(graph));
      snap_free(&se);
      snap_free(&sg);
      run_close(&eager);
      run_close(&graphed);
      for (int s = 0; s < N; s++) free(gimg[s]);
      free(pimg);
      world_free(&w);
    }
  if (cuda) CK(cudaStreamDestroy(gd.stream));
  dev_close(&d);
  if (!cuda)
    cr_skip_test(
        "stand-in: graph capture needs a CUDA device (the eager-against-eager "
        "plumbing ran and passed)");
}

/* ==================================================== 5. no host waits */

#define GATE_TIMEOUT_S 10.0

/* A host callback that holds its stream until the test opens the gate (or
 * GATE_TIMEOUT_S passes, so that a library call that waits for the stream
 * fails the test instead of hanging it). */
typedef struct gate {
  atomic_int open, done, timed_out;
} gate;

static void CUDART_CB gate_wait(void *arg) {
  gate *g = arg;
  const double t0 = tu_now();
  const struct timespec nap = {0, 1000000};
  while (!atomic_load(&g->open)) {
    if (tu_now() - t0 > GATE_TIMEOUT_S) {
      atomic_store(&g->timed_out, 1);
      break;
    }
    nanosleep(&nap, NULL);
  }
  atomic_store(&g->done, 1);
}

Test(gpu_mp, step_never_waits_for_the_host, .timeout = 120) {
  require_device(1);
  dev d = dev_open(1); /* a blocking stream: legacy-stream work would wait on it too */
  world w;
  mp_world_make(&w, FO_DTYPE_BF16, FO_DTYPE_BF16, 0, 5000);
  const char *ctx = "adamw bf16, scaler + clip + cosine + write_unscaled_grads";
  unsigned char *pimg = param_image(&w, 51);
  tu_rng rng;
  tu_rng_seed(&rng, 51, 2);
  unsigned char *gimg = grad_image(&w, &rng, 1024.0);
  fo_options o;
  base_options(&o, FO_ALG_ADAMW, w.pt, w.gt);
  o.max_grad_norm = 5.0f;
  o.write_unscaled_grads = 1;
  o.schedule.kind = FO_SCHED_COSINE;
  o.schedule.warmup_steps = 1;
  o.schedule.total_steps = 5;
  fo_hparams h[2];
  hparams_for(FO_ALG_ADAMW, h);
  run r;
  run_open(&r, &d, &w, &o, h, pimg);
  run_grads(&r, gimg);
  /* an arena optimizer too: its zero_grad is one cudaMemsetAsync */
  fo_options oa = o;
  oa.storage = FO_STORAGE_ARENA;
  oa.executor = FO_EXEC_CUDA;
  fo_tensor_desc *t = calloc((size_t)w.nt, sizeof *t);
  cr_assert_not_null(t);
  for (int64_t i = 0; i < w.nt; i++)
    t[i] = (fo_tensor_desc){w.numel[i], w.group[i], NULL, NULL, NULL};
  fo_optimizer *arena = NULL;
  OK(fo_optimizer_create(&arena, &oa, h, 2, t, w.nt));
  free(t);
  void *abase = NULL;
  size_t abytes = 0;
  OK(fo_optimizer_arena(arena, FO_ROLE_GRAD, &abase, &abytes));
  /* warm-up: every call once on a free stream, so that each kernel the
   * held round launches is loaded (lazy module loading may synchronize the
   * context on a kernel's first launch) */
  OK(fo_optimizer_step(r.opt, d.stream));
  OK(fo_optimizer_zero_grad(r.opt, d.stream));
  /* the arena's master weights first: a step refuses until they are set */
  OK(fo_optimizer_sync_master(arena, d.stream));
  OK(fo_optimizer_step(arena, d.stream));
  OK(fo_optimizer_zero_grad(arena, d.stream));
  CK(cudaStreamSynchronize(d.stream));
  snap s0;
  snap_take(&r, &s0);
  cr_assert_eq(s0.info.step, 1, "%s: warm-up step", ctx);
  /* fresh gradients: external ones, and the arena's as bf16 0x3c3c
   * (finite, non-zero) */
  run_grads(&r, gimg);
  CK(cudaMemsetAsync(abase, 0x3c, abytes, d.stream));
  CK(cudaStreamSynchronize(d.stream));

  gate g;
  atomic_init(&g.open, 0);
  atomic_init(&g.done, 0);
  atomic_init(&g.timed_out, 0);
  CK(cudaLaunchHostFunc(d.stream, gate_wait, &g));
  /* separate statements: the order matters (an initializer list's
   * expressions are indeterminately sequenced) */
  fo_status st[5];
  const double t0 = tu_now();
  st[0] = fo_optimizer_step(r.opt, d.stream);
  st[1] = fo_optimizer_zero_grad(r.opt, d.stream);
  st[2] = fo_optimizer_step(arena, d.stream);
  st[3] = fo_optimizer_zero_grad(arena, d.stream);
  st[4] = fo_optimizer_sync_master(arena, d.stream);
  const double took = tu_now() - t0;
  const int held = !atomic_load(&g.done);
  const cudaError_t q = cudaStreamQuery(d.stream);
  (void)cudaGetLastError(); /* cudaErrorNotReady is not an error to keep */
  atomic_store(&g.open, 1);
  CK(cudaStreamSynchronize(d.stream));
  const char *names[5] = {"step", "zero_grad", "arena step", "arena zero_grad",
                          "arena sync_master"};
  for (int i = 0; i < 5; i++)
    cr_assert_eq(st[i], FO_SUCCESS, "%s: %s on a held stream: %s (%s)", ctx, names[i],
                 fo_status_string(st[i]), fo_last_error());
  cr_assert(held,
            "%s: the calls returned after %.3f s, only once the stream was released: one "
            "of them waited for the stream",
            ctx, took);
  cr_assert_eq(q, cudaErrorNotReady, "%s: the stream was not busy after the calls (%s)", ctx,
               cudaGetErrorName(q));
  cr_assert(!atomic_load(&g.timed_out), "%s: the host callback timed out", ctx);
  cr_log_info("%s: 5 calls on a held stream returned in %.1f us", ctx, took * 1e6);

  /* the work ran once the stream was released */
  snap s;
  snap_take(&r, &s);
  cr_assert_eq(s.info.step, 2, "%s: step count %lld", ctx, (long long)s.info.step);
  cr_assert_eq(s.info.last_step_skipped, 0, "%s", ctx);
  cr_assert(memcmp(s.param, s0.param, w.pbytes) != 0, "%s: no parameter changed", ctx);
  for (int64_t i = 0; i < w.nt; i++)
    for (int64_t j = 0; j < w.numel[i]; j++)
      cr_assert(img_load(&w, s.grad, 1, i, j) == 0.0, "%s: grad %lld [%lld] not zeroed", ctx,
                (long long)i, (long long)j);
  mp_check_gaps(&w, s.param, 0, ctx);
  mp_check_gaps(&w, s.grad, 1, ctx);
  fo_step_info ai;
  OK(fo_optimizer_get_info(arena, &ai));
  cr_assert_eq(ai.step, 2, "%s: arena step count", ctx);
  unsigned char *ag = malloc(abytes + 1), *zero = calloc(abytes + 1, 1);
  cr_assert(ag && zero);
  CK(cudaMemcpy(ag, abase, abytes, cudaMemcpyDeviceToHost));
  cr_assert(memcmp(ag, zero, abytes) == 0, "%s: arena gradients not zeroed", ctx);
  free(ag);
  free(zero);

  /* under a global-mode capture, a synchronizing call would fail it */
  cudaStream_t cs;
  CK(cudaStreamCreateWithFlags(&cs, cudaStreamNonBlocking));
  CK(cudaStreamBeginCapture(cs, cudaStreamCaptureModeGlobal));
  fo_status cst[5];
  cst[0] = fo_optimizer_step(r.opt, cs);
  cst[1] = fo_optimizer_zero_grad(r.opt, cs);
  cst[2] = fo_optimizer_sync_master(r.opt, cs);
  cst[3] = fo_optimizer_step(arena, cs);
  cst[4] = fo_optimizer_zero_grad(arena, cs);
  cudaGraph_t graph = NULL;
  const cudaError_t e = cudaStreamEndCapture(cs, &graph);
  const char *cnames[5] = {"step", "zero_grad", "sync_master", "arena step", "arena zero_grad"};
  for (int i = 0; i < 5; i++)
    cr_assert_eq(cst[i], FO_SUCCESS, "%s: %s under capture: %s (%s)", ctx, cnames[i],
                 fo_status_string(cst[i]), fo_last_error());
  cr_assert_eq(e, cudaSuccess, "%s: capture: %s (%s)", ctx, cudaGetErrorName(e),
               cudaGetErrorString(e));
  cr_assert_not_null(graph);
  CK(cudaGraphDestroy(graph));
  CK(cudaStreamDestroy(cs));
  cr_assert_eq(run_info(&r).step, 2, "%s: the capture applied a step", ctx);

  /* The legacy stream (NULL) while a blocking stream is being captured:
   * its work would depend on the capture, which CUDA refuses at the first
   * launch, invalidating the capture.  Each call is refused before any
   * work, and the capture and the optimizers are unharmed. */
  CK(cudaStreamBeginCapture(d.stream, cudaStreamCaptureModeGlobal));
  fo_status lst[3];
  char lmsg[3][256];
  lst[0] = fo_optimizer_step(r.opt, NULL);
  snprintf(lmsg[0], sizeof lmsg[0], "%s", fo_last_error());
  lst[1] = fo_optimizer_zero_grad(r.opt, NULL);
  snprintf(lmsg[1], sizeof lmsg[1], "%s", fo_last_error());
  lst[2] = fo_optimizer_step(arena, cudaStreamLegacy);
  snprintf(lmsg[2], sizeof lmsg[2], "%s", fo_last_error());
  enum cudaStreamCaptureStatus lcap = cudaStreamCaptureStatusNone;
  CK(cudaStreamIsCapturing(d.stream, &lcap));
  graph = NULL;
  const cudaError_t le = cudaStreamEndCapture(d.stream, &graph);
  for (int i = 0; i < 3; i++) {
    cr_assert_eq(lst[i], FO_ERR_INVALID_ARGUMENT, "%s: legacy-stream call %d during a capture: %s",
                 ctx, i, fo_status_string(lst[i]));
    cr_assert_not_null(strstr(lmsg[i], "being captured"), "%s: %s", ctx, lmsg[i]);
  }
  cr_assert_eq(lcap, cudaStreamCaptureStatusActive, "%s: the capture was invalidated", ctx);
  cr_assert_eq(le, cudaSuccess, "%s: capture: %s", ctx, cudaGetErrorName(le));
  if (graph) CK(cudaGraphDestroy(graph));
  fo_status fault = FO_ERR_INTERNAL;
  OK(fo_optimizer_get_fault(r.opt, &fault, NULL, 0));
  cr_assert_eq(fault, FO_SUCCESS, "%s: a refused call faulted the optimizer", ctx);
  OK(fo_optimizer_get_fault(arena, &fault, NULL, 0));
  cr_assert_eq(fault, FO_SUCCESS, "%s: a refused call faulted the arena optimizer", ctx);
  cr_assert_eq(run_info(&r).step, 2, "%s: a refused call applied a step", ctx);
  OK(fo_optimizer_step(r.opt, NULL)); /* the legacy stream serves again after the capture */
  cr_assert_eq(run_info(&r).step, 3, "%s", ctx);

  /* An eager step on a stream that is not captured while this thread
   * captures another one in global mode: the step's calls (the stream
   * checks, the launches) must leave that capture intact.  (CUDA documents
   * cudaStreamGetDevice's refusal on the capturing stream itself only;
   * this probes it on another.) */
  cudaStream_t other, eager;
  CK(cudaStreamCreateWithFlags(&other, cudaStreamNonBlocking));
  CK(cudaStreamCreateWithFlags(&eager, cudaStreamNonBlocking));
  CK(cudaStreamBeginCapture(other, cudaStreamCaptureModeGlobal));
  const fo_status est = fo_optimizer_step(r.opt, eager);
  char emsg[256];
  snprintf(emsg, sizeof emsg, "%s", fo_last_error());
  enum cudaStreamCaptureStatus ecap = cudaStreamCaptureStatusNone;
  const cudaError_t eq = cudaStreamIsCapturing(other, &ecap);
  graph = NULL;
  const cudaError_t ee = cudaStreamEndCapture(other, &graph);
  cr_assert_eq(est, FO_SUCCESS, "%s: an eager step beside a capture: %s", ctx, emsg);
  cr_assert_eq(eq, cudaSuccess, "%s: %s", ctx, cudaGetErrorName(eq));
  cr_assert_eq(ecap, cudaStreamCaptureStatusActive, "%s: the eager step invalidated the capture",
               ctx);
  cr_assert_eq(ee, cudaSuccess, "%s: capture beside an eager step: %s", ctx, cudaGetErrorName(ee));
  if (graph) CK(cudaGraphDestroy(graph));
  CK(cudaStreamSynchronize(eager));
  cr_assert_eq(run_info(&r).step, 4, "%s: the eager step beside the capture", ctx);
  CK(cudaStreamDestroy(other));
  CK(cudaStreamDestroy(eager));

  snap_free(&s0);
  snap_free(&s);
  OK(fo_optimizer_destroy(arena));
  run_close(&r);
  free(gimg);
  free(pimg);
  world_free(&w);
  dev_close(&d);
}

/* ============================================ 6. unscaled gradients */

/* Every gradient of got is want / div exactly (div a power of two). */
