/*
 * ref_harness_new.c -- the harness's tolerances for the algorithms of
 * issue #17 (AdaGrad, RMSprop, NAdam, LAMB, LARS): how a 16-bit parameter
 * without master weights that is off the reference's perturbs what enters
 * the state, and the comparison of their state buffers (ref_harness.h).
 */
#define _POSIX_C_SOURCE 200809L

#include <math.h>
#include <stdio.h>

#include "ref_harness.h"

#define FAIL(...)                    \
  do {                               \
    snprintf(msg, cap, __VA_ARGS__); \
    return 0;                        \
  } while (0)

/* The tolerance of a parameter that has had magnitude up to scale. */
double harness_param_tol(const run_cfg *c, double scale, double want) {
  if (c->pdt == FO_DTYPE_F32) return TOL_F32 * scale;
  if (c->master) return TOL_F32 * scale + TOL_16_MASTER_ULPS * ref_ulp(c->pdt, want);
  return TOL_F32 * scale + TOL_16_NOMASTER_ULPS * ref_ulp(c->pdt, scale);
}

/* The algorithms of issue #17, whose state tolerances harness_check_new_state()
 * sets (the original four keep theirs unchanged). */
int harness_is_new_alg(fo_algorithm alg) {
  return alg == FO_ALG_ADAGRAD || alg == FO_ALG_RMSPROP || alg == FO_ALG_NADAM ||
         alg == FO_ALG_LAMB || alg == FO_ALG_LARS;
}

/* Whether the group's weight decay is L2, added to the gradient: then a
 * 16-bit parameter without master weights that is off the reference's by
 * dp puts wd*dp into the gradient and the state carries it. */
int harness_l2_coupled(fo_algorithm alg, const fo_hparams *hp) {
  if (hp->weight_decay == 0.0f) return 0;
  switch (alg) {
    case FO_ALG_SGD:
    case FO_ALG_ADAM:
    case FO_ALG_ADAGRAD:
    case FO_ALG_RMSPROP:
    case FO_ALG_LARS: return 1;
    case FO_ALG_NADAM: return !hp->decoupled_weight_decay;
    default: return 0;
  }
}

/* 16-bit parameters without master weights, the new algorithms: before
 * the step, the gradient after decay (|d|, RMSprop) and the relative
 * perturbation of ||w|| by the parameters' tolerances (LARS: the local
 * rate has ||w|| above and, times wd, below: twice that). */
void harness_perturbation_before(harness *h) {
  for (int t = 0; t < h->nt; ++t) {
    const ref_tensor *R = &h->ref->tensors[t];
    const fo_hparams *hp = &h->hp[h->group[t]];
    double wd = harness_l2_coupled(h->c.alg, hp) ? hp->weight_decay : 0.0;
    double tol2 = 0.0, w2 = 0.0;
    for (int64_t i = 0; i < h->numel[t]; ++i) {
      double g = hp->maximize ? -h->gval[t][i] : h->gval[t][i];
      h->dabs[t][i] = fabs(g + wd * R->w[i]);
      double dp = harness_param_tol(&h->c, h->pscale[t][i], 0.0);
      tol2 += dp * dp;
      w2 += R->w[i] * R->w[i];
    }
    h->qw[t] = w2 > 0.0 ? 2.0 * sqrt(tol2 / w2) : 0.0;
  }
}

/* After the step: the largest perturbation of what entered m (ebound).
 * RMSprop: every d so far is off by a relative rho at most (the running
 * maximum of wd*dp/|d|); d/avg, avg being homogeneous of degree 1 in the
 * d's, moves by rho for the numerator and by (rho + rho^2/2)*kappa for
 * avg, kappa = (sq + ga^2)/(sq - ga^2) the condition of the centered
 * variance (1 when not centered); twice that for safety.  LARS: e =
 * local*(d + wd*w) moves by local*wd*dp, and by feed*qw through local. */
void harness_perturbation_after(harness *h) {
  for (int t = 0; t < h->nt; ++t) {
    const ref_tensor *R = &h->ref->tensors[t];
    const fo_hparams *hp = &h->hp[h->group[t]];
    double wd = harness_l2_coupled(h->c.alg, hp) ? hp->weight_decay : 0.0;
    for (int64_t i = 0; i < h->numel[t]; ++i) {
      double dp = harness_param_tol(&h->c, h->pscale[t][i], 0.0), e = 0.0;
      if (h->c.alg == FO_ALG_RMSPROP) {
        double rho = h->dabs[t][i] > 0.0 ? wd * dp / h->dabs[t][i] : 0.0;
        if (rho > h->rel[t][i]) h->rel[t][i] = rho;
        rho = h->rel[t][i];
        double kappa = 1.0;
        if (hp->centered) {
          double sq = R->v[i], ga2 = R->gavg[i] * R->gavg[i];
          kappa = sq > ga2 ? (sq + ga2) / (sq - ga2) : INFINITY;
        }
        e = 2.0 * (rho + (rho + 0.5 * rho * rho) * kappa) * R->feed[i];
      } else if (h->c.alg == FO_ALG_LARS) {
        e = R->ratio * wd * dp + (hp->layer_adaptation ? R->feed[i] * h->qw[t] : 0.0);
      }
      if (e > h->ebound[t][i]) h->ebound[t][i] = e;
    }
  }
}

/* The state of the algorithms of issue #17, for tensor t.  As for the
 * original four, a buffer's rounding errors scale with its own running
 * maximum and with what enters it (the reference's feed: the gradient,
 * RMSprop's d/avg, LARS's scaled gradient).  Without master weights, a
 * 16-bit parameter off by dp adds, with L2 decay, wd*dp to the gradient:
 * m, NAdam's and LAMB's first moment, by at most that (weights summing to
 * at most 1); a momentum buffer (RMSprop, LARS) by the running maximum of
 * the perturbation of what entered it (ebound, harness_perturbation_after()) times
 * 1 + 1/(1-momentum); a second moment, square_avg, by (2|d| + wd*dp)*wd*dp,
 * AdaGrad's sum by that once per step; RMSprop's grad_avg by wd*dp. */
int harness_check_new_state(harness *h, int t, int step, char *msg, size_t cap) {
  const run_cfg *c = &h->c;
  fo_algorithm alg = c->alg;
  const ref_tensor *R = &h->ref->tensors[t];
  const fo_hparams *hp = &h->hp[h->group[t]];
  int nomaster16 = c->pdt != FO_DTYPE_F32 && !c->master;
  double wd = harness_l2_coupled(alg, hp) ? hp->weight_decay : 0.0;
  double mw = 1.0 + 1.0 / (1.0 - hp->momentum);
  const double *ps = h->pscale[t];
  double *lim = h->lim;
  int64_t n = h->numel[t];
  int ema_m = alg == FO_ALG_NADAM || alg == FO_ALG_LAMB;
  /* roles this tensor's group does not use are not compared */
  int has_m = ema_m || ((alg == FO_ALG_RMSPROP || alg == FO_ALG_LARS) && hp->momentum != 0.0f);
  if (has_m) {
    for (int64_t i = 0; i < n; ++i) {
      double dd = nomaster16 ? wd * harness_param_tol(c, ps[i], 0.0) : 0.0;
      double sc = h->mscale[t][i] > h->fscale[t][i] ? h->mscale[t][i] : h->fscale[t][i];
      lim[i] = TOL_F32 * sc + (ema_m ? dd : mw * h->ebound[t][i]);
    }
    const char *name = ema_m ? "exp_avg" : "momentum_buffer";
    if (!harness_check_state(h, t, FO_ROLE_EXP_AVG, name, R->m, step, msg, cap)) return 0;
  }
  if (alg != FO_ALG_LARS) {
    double weight = alg == FO_ALG_ADAGRAD ? (double)step : 1.0;
    for (int64_t i = 0; i < n; ++i) {
      double dmax = GRAD_MAX + wd * ps[i];
      double dd = nomaster16 ? wd * harness_param_tol(c, ps[i], 0.0) : 0.0;
      lim[i] = TOL_F32 * h->vscale[t][i] + weight * (2.0 * dmax + dd) * dd;
    }
    const char *name = alg == FO_ALG_ADAGRAD   ? "sum"
                       : alg == FO_ALG_RMSPROP ? "square_avg"
                                               : "exp_avg_sq";
    if (!harness_check_state(h, t, FO_ROLE_EXP_AVG_SQ, name, R->v, step, msg, cap)) return 0;
  }
  if (alg == FO_ALG_RMSPROP && hp->centered) {
    for (int64_t i = 0; i < n; ++i) {
      double dd = nomaster16 ? wd * harness_param_tol(c, ps[i], 0.0) : 0.0;
      lim[i] = TOL_F32 * (GRAD_MAX + wd * ps[i]) + dd;
    }
    if (!harness_check_state(h, t, FO_ROLE_MAX_EXP_AVG_SQ, "grad_avg", R->gavg, step, msg, cap))
      return 0;
  }
  return 1;
}
