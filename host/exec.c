/*
 * exec.c -- choosing an optimizer's executor, and the shorthands the rest
 * of host/ uses for its memory (host/exec.h).
 */
#include "exec.h"

fo_status fo_exec_select(const char *fn, const fo_options *o, const fo_exec_ops **out) {
  if (o->executor == FO_EXEC_CPU) {
    *out = fo_exec_cpu_ops();
    return FO_SUCCESS;
  }
  fo_status st = fo_cuda_available(fn, o->device);
  if (st != FO_SUCCESS) return st;
  *out = fo_exec_cuda_ops();
  if (!*out) return fo_fail(FO_ERR_NO_DEVICE, fn, "this fusedopt was built without CUDA");
  return FO_SUCCESS;
}

fo_status fo_exec_alloc(const char *fn, const fo_optimizer *opt, size_t bytes, void **out) {
  return opt->exec->alloc(fn, opt->options.device, bytes, out);
}

void fo_exec_free(const fo_optimizer *opt, void *p) {
  if (p) opt->exec->release(opt->options.device, p);
}

fo_status fo_exec_copy(const char *fn, const fo_optimizer *opt, void *dst, const void *src,
                       size_t bytes, fo_copy_dir dir) {
  return opt->exec->copy(fn, opt->options.device, dst, src, bytes, dir);
}

fo_status fo_exec_synchronize(const char *fn, const fo_optimizer *opt) {
  return opt->exec->synchronize(fn, opt->options.device);
}

fo_status fo_exec_check_stream(const char *fn, const fo_optimizer *opt, fo_stream_t stream) {
  return opt->exec->check_stream(fn, stream, opt->options.device);
}

fo_status fo_exec_read_state(const char *fn, const fo_optimizer *opt, fo_step_state *out) {
  return opt->exec->read_state(fn, opt, out);
}

fo_status fo_exec_write_state(const char *fn, fo_optimizer *opt, const fo_step_state *in) {
  fo_status st = opt->exec->write_state(fn, opt, in);
  /* the host's copy follows every write; after a failed one the device's
   * state is unknown */
  if (st == FO_SUCCESS)
    fo_known_set(opt, in);
  else
    fo_known_forget(opt, 0);
  return st;
}
