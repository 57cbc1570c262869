/*
 * emu_step.h -- what the emulated kernels share (emu_kernels.cpp and the
 * step's files emu_step_*.cpp): the device's reduction shapes, the dispatch
 * on a dtype, and the step kernel's launch per algorithm.
 *
 * The step is compiled in three files, by algorithm, only so that a build
 * compiles its many instantiations (algorithm x parameter dtype x gradient
 * dtype x master / stochastic rounding x pass) in parallel: in one file
 * under ASan + UBSan it was the longest compile of CI's sanitized build.
 */
#ifndef FO_TEST_EMU_STEP_H
#define FO_TEST_EMU_STEP_H

#include <cuda_runtime_api.h>

#include <cstdint>
#include <type_traits>
#include <vector>

#include "block_work.cuh"
#include "emu.h"
#include "launch.h"
#include "step_state.h"

namespace emu {

inline constexpr int NT = FO_CUDA_THREADS;

/* fo_warp_sum: lane 0's value after the shuffle-down tree over v[0..32). */
inline double warp_sum(double *v) {
  for (int o = 16; o > 0; o >>= 1)
    for (int l = 0; l < o; l++) v[l] += v[l + o];
  return v[0];
}

/* fo_block_sum<threads>: each warp's sum, then the first warp's over them. */
inline double block_sum(std::vector<double> v) {
  const size_t warps = v.size() / 32;
  double sums[32] = {0.0};
  for (size_t w = 0; w < warps; w++) sums[w] = warp_sum(&v[32 * w]);
  return warp_sum(sums);
}

/* f(std::integral_constant<int, DT>()) for the dtype dt (FO_RULE_*). */
template <class F>
int by_dtype(int32_t dt, F f) {
  switch (dt) {
    case FO_RULE_F32: return f(std::integral_constant<int, FO_RULE_F32>());
    case FO_RULE_F16: return f(std::integral_constant<int, FO_RULE_F16>());
    case FO_RULE_BF16: return f(std::integral_constant<int, FO_RULE_BF16>());
    default: return (int)cudaErrorInvalidValue;
  }
}

/* ------------------------------------------------------------ the step */

template <int ALG, int PT, int GT, bool MASTER, bool SR, int PASS>
void run_step(const fo_step_launch &a, int64_t nb) {
  for (int64_t b = 0; b < nb; b++) {
    for (int t = 0; t < NT; t++) fo_publish_known_block(a, b, t);
    if (b >= a.num_blocks) continue;
    if constexpr (PASS == FO_PASS_NORMS) {
      std::vector<double> w(NT), x(NT);
      for (int t = 0; t < NT; t++) {
        double s[2] = {0.0, 0.0};
        fo_norms_block<ALG, PT, GT, MASTER, SR>(a, b, t, NT, s);
        w[(size_t)t] = s[0];
        x[(size_t)t] = s[1];
      }
      a.norm_partials[2 * b] = block_sum(w);
      a.norm_partials[2 * b + 1] = block_sum(x);
    } else {
      for (int t = 0; t < NT; t++) fo_step_block<ALG, PT, GT, MASTER, SR, PASS>(a, b, t, NT);
    }
  }
}

template <int ALG, int PT, int GT, bool MASTER, bool SR, int PASS>
int enqueue_step(const fo_step_launch &a, void *stream) {
  /* step_kernel.cuh: an empty plan's carried step is one block that only
   * publishes */
  const int64_t nb = a.num_blocks > 0 || !(a.known && a.state) ? a.num_blocks : 1;
  return fo_emu_launch(stream, [a, nb]() { run_step<ALG, PT, GT, MASTER, SR, PASS>(a, nb); });
}

template <int ALG, int PT, int GT, int PASS>
int step_mode(const fo_step_launch &a, void *stream) {
  if constexpr (PT == FO_RULE_F32) {
    return enqueue_step<ALG, PT, GT, false, false, PASS>(a, stream);
  } else {
    if (a.master) return enqueue_step<ALG, PT, GT, true, false, PASS>(a, stream);
    if (a.stochastic) {
      if constexpr (PT != FO_RULE_BF16)
        return (int)cudaErrorInvalidValue;
      else
        return enqueue_step<ALG, PT, GT, false, true, PASS>(a, stream);
    }
    return enqueue_step<ALG, PT, GT, false, false, PASS>(a, stream);
  }
}

template <int ALG, int PASS>
int step_param(const fo_step_launch &a, void *stream) {
  return by_dtype(a.param_dtype, [&](auto pt) {
    return by_dtype(a.grad_dtype, [&](auto gt) {
      return step_mode<ALG, decltype(pt)::value, decltype(gt)::value, PASS>(a, stream);
    });
  });
}

template <int ALG>
int step_alg(const fo_step_launch &a, void *stream) {
  if constexpr (ALG == FO_RULE_LAMB || ALG == FO_RULE_LARS) {
    if (a.pass == FO_PASS_NORMS) return step_param<ALG, FO_PASS_NORMS>(a, stream);
    if (a.pass == FO_PASS_APPLY) return step_param<ALG, FO_PASS_APPLY>(a, stream);
    return (int)cudaErrorInvalidValue;
  } else {
    if (a.pass != FO_PASS_UPDATE) return (int)cudaErrorInvalidValue;
    return step_param<ALG, FO_PASS_UPDATE>(a, stream);
  }
}

/* step_alg for each algorithm is instantiated once, in emu_step_*.cpp;
 * fo_launch_step (emu_kernels.cpp) calls it after checking the arguments. */
extern template int step_alg<FO_RULE_SGD>(const fo_step_launch &, void *);
extern template int step_alg<FO_RULE_ADAM>(const fo_step_launch &, void *);
extern template int step_alg<FO_RULE_ADAMW>(const fo_step_launch &, void *);
extern template int step_alg<FO_RULE_LION>(const fo_step_launch &, void *);
extern template int step_alg<FO_RULE_ADAGRAD>(const fo_step_launch &, void *);
extern template int step_alg<FO_RULE_RMSPROP>(const fo_step_launch &, void *);
extern template int step_alg<FO_RULE_NADAM>(const fo_step_launch &, void *);
extern template int step_alg<FO_RULE_LAMB>(const fo_step_launch &, void *);
extern template int step_alg<FO_RULE_LARS>(const fo_step_launch &, void *);

}  // namespace emu

#endif /* FO_TEST_EMU_STEP_H */
