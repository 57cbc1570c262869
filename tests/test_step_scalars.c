/*
 * test_step_scalars.c -- each group's per-step scalars (kernels/
 * step_state.h, fo_group_scalars) against the contract of
 * docs/numerics.md, bit for bit: computed in double from the float
 * hyper-parameters and rounded to float once, as PyTorch computes its
 * Python-side scalars.
 *
 * The other tests of these scalars compare step_state.h with itself (the
 * host's copy, the emulated prepare kernel) or compare the updates they
 * drive within a tolerance (the references, the golden files), under which
 * a scalar rounded twice -- the square root of an already rounded bias
 * correction, NAdam's coefficients from the double product instead of the
 * fp32 one PyTorch keeps -- is one ulp away and unseen.  Here an oracle
 * written from the documented formulas, for every algorithm, random
 * hyper-parameters and steps 1 to 1000, must give the same bits.
 *
 * And through the public API on the CPU executor: a skipped step advances
 * neither the schedule nor NAdam's product; set_step far past 2^24 settled
 * NAdam steps.
 */
#define _POSIX_C_SOURCE 200809L /* mkdtemp in ckpt_harness.h (reliability.h) */

#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "fusedopt.h"
#include "reliability.h" /* info_of */
#include "step_state.h"
#include "testutil.h"

#define STEPS 1000

/* Random float hyper-parameters in the ranges users set. */
static fo_group_hparams draw(tu_rng *r, uint32_t flags) {
  fo_group_hparams h;
  memset(&h, 0, sizeof h);
  h.lr = (float)tu_rng_range(r, 1e-5, 1e-1);
  h.weight_decay = (float)tu_rng_range(r, 0.0, 0.2);
  h.momentum = (float)tu_rng_range(r, 0.5, 0.99);
  h.dampening = (float)tu_rng_range(r, 0.0, 0.5);
  h.beta1 = (float)tu_rng_range(r, 0.5, 0.99);
  h.beta2 = (float)tu_rng_range(r, 0.9, 0.9999);
  h.eps = (float)tu_rng_range(r, 1e-10, 1e-6);
  h.lr_decay = (float)tu_rng_range(r, 0.0, 1e-2);
  h.alpha = (float)tu_rng_range(r, 0.9, 0.999);
  h.momentum_decay = (float)tu_rng_range(r, 1e-3, 1e-2);
  h.trust_coef = (float)tu_rng_range(r, 1e-4, 1e-2);
  h.flags = flags;
  return h;
}

/* "Equal" as bits, so that -0 and 0, or two NaNs, are told apart. */
#define EXPECT_BITS(got, want, what)                                                         \
  do {                                                                                       \
    float g_ = (got), w_ = (want);                                                           \
    cr_assert(memcmp(&g_, &w_, sizeof g_) == 0, "alg %d, t %lld: %s = %.9g, want %.9g", alg, \
              (long long)t, what, (double)g_, (double)w_);                                   \
  } while (0)

static void check_algorithm(int alg, uint32_t flags) {
  tu_rng rng;
  tu_rng_seed(&rng, (uint64_t)alg * 977u + flags, 5u);
  for (int set = 0; set < 8; set++) {
    const fo_group_hparams h = draw(&rng, flags);
    const double factor = set == 0 ? 1.0 : tu_rng_range(&rng, 0.01, 1.0); /* the schedule's */
    const double lr = (double)h.lr * factor;
    float mu_product = 1.0f, want_product = 1.0f;
    for (int64_t t = 1; t <= STEPS; t++) {
      fo_rule_scalars s;
      memset(&s, 0xa5, sizeof s);
      fo_group_scalars(alg, &h, t, lr, 0.75f, &mu_product, &s);
      EXPECT_BITS(s.grad_coef, 0.75f, "grad_coef");
      const double b1t = pow((double)h.beta1, (double)t), b2t = pow((double)h.beta2, (double)t);
      switch (alg) {
        case FO_RULE_SGD:
        case FO_RULE_LARS:
          EXPECT_BITS(s.lr, (float)lr, "lr");
          EXPECT_BITS(s.one_minus_b1, (float)(1.0 - (double)h.dampening), "1 - dampening");
          cr_assert_eq(!!(s.flags & FO_RULE_FIRST_STEP), t == 1, "t %lld: first-step flag",
                       (long long)t);
          break;
        case FO_RULE_ADAGRAD:
          EXPECT_BITS(s.lr, (float)(lr / (1.0 + (double)(t - 1) * (double)h.lr_decay)),
                      "lr / (1 + (t-1) lr_decay)");
          break;
        case FO_RULE_RMSPROP:
          EXPECT_BITS(s.lr, (float)lr, "lr");
          EXPECT_BITS(s.one_minus_b2, (float)(1.0 - (double)h.alpha), "1 - alpha");
          break;
        default: /* Adam, AdamW, Lion, NAdam, LAMB */
          EXPECT_BITS(s.one_minus_b1, (float)(1.0 - (double)h.beta1), "1 - beta1");
          EXPECT_BITS(s.one_minus_b2, (float)(1.0 - (double)h.beta2), "1 - beta2");
          EXPECT_BITS(s.bc2_sqrt, (float)sqrt(1.0 - b2t), "sqrt(1 - beta2^t)");
          if (alg == FO_RULE_LAMB)
            EXPECT_BITS(s.step_size, (float)(1.0 / (1.0 - b1t)), "1 / (1 - beta1^t)");
          else if (alg != FO_RULE_NADAM)
            EXPECT_BITS(s.step_size, (float)(lr / (1.0 - b1t)), "lr / (1 - beta1^t)");
          break;
      }
      if (alg == FO_RULE_NADAM) {
        /* torch.optim.NAdam: mu_t = beta1 (1 - 0.5 * 0.96^(t psi)); the
         * product kept in fp32, rounded once per step; both coefficients
         * from that fp32 product */
        const double psi = (double)h.momentum_decay;
        const double mu = (double)h.beta1 * (1.0 - 0.5 * pow(0.96, (double)t * psi));
        const double mu_next = (double)h.beta1 * (1.0 - 0.5 * pow(0.96, (double)(t + 1) * psi));
        want_product = (float)((double)want_product * mu);
        EXPECT_BITS(mu_product, want_product, "mu_product");
        EXPECT_BITS(s.step_size_g, (float)(lr * (1.0 - mu) / (1.0 - (double)want_product)),
                    "lr (1 - mu_t) / (1 - product)");
        EXPECT_BITS(s.step_size, (float)(lr * mu_next / (1.0 - (double)want_product * mu_next)),
                    "lr mu_{t+1} / (1 - product mu_{t+1})");
      } else {
        EXPECT_BITS(mu_product, 1.0f, "mu_product (NAdam's only)");
      }
      /* the decoupled decays multiply the weight by 1 - lr wd; the L2
       * ones add wd p to the gradient instead */
      const int decoupled = alg == FO_RULE_ADAMW || alg == FO_RULE_LION ||
                            (alg == FO_RULE_NADAM && (flags & FO_RULE_DECOUPLED));
      if (decoupled) {
        EXPECT_BITS(s.decay, (float)(1.0 - lr * (double)h.weight_decay), "1 - lr wd");
        EXPECT_BITS(s.weight_decay, 0.0f, "weight_decay (decoupled)");
      } else {
        EXPECT_BITS(s.decay, 1.0f, "decay (L2)");
        EXPECT_BITS(s.weight_decay, h.weight_decay, "weight_decay (L2)");
      }
    }
  }
}

Test(step_scalars, sgd_and_lars) {
  check_algorithm(FO_RULE_SGD, 0);
  check_algorithm(FO_RULE_LARS, 0);
}

Test(step_scalars, adam_adamw_lion_lamb) {
  check_algorithm(FO_RULE_ADAM, 0);
  check_algorithm(FO_RULE_ADAMW, FO_RULE_AMSGRAD);
  check_algorithm(FO_RULE_LION, 0);
  check_algorithm(FO_RULE_LAMB, FO_RULE_TRUST);
}

Test(step_scalars, nadam) {
  check_algorithm(FO_RULE_NADAM, 0);
  check_algorithm(FO_RULE_NADAM, FO_RULE_DECOUPLED);
}

Test(step_scalars, adagrad_and_rmsprop) {
  check_algorithm(FO_RULE_ADAGRAD, 0);
  check_algorithm(FO_RULE_RMSPROP, FO_RULE_CENTERED);
}

/* ------------------------------------------ through the public API */

static void step(fo_optimizer *opt) {
  cr_assert_eq(fo_optimizer_step(opt, NULL), FO_SUCCESS, "step: %s", fo_last_error());
}

/* A skipped step is not a step of the schedule: after an overflow on the
 * first call, the first applied step still takes the warmup's first rate
 * (1/4 of lr here), not its second. */
Test(step_scalars, a_skipped_step_does_not_advance_the_schedule) {
  float p = 0.0f, g = INFINITY;
  fo_tensor_desc t = {1, 0, &p, &g, NULL};
  fo_options o;
  fo_options_default(&o);
  o.algorithm = FO_ALG_SGD;
  o.max_grad_norm = 1e30f; /* the pre-pass, which finds the overflow */
  o.schedule.warmup_steps = 4;
  fo_hparams h;
  fo_hparams_default(FO_ALG_SGD, &h);
  h.lr = 1.0f;
  fo_optimizer *opt = NULL;
  cr_assert_eq(fo_optimizer_create(&opt, &o, &h, 1, &t, 1), FO_SUCCESS, "%s", fo_last_error());
  step(opt);
  cr_assert(info_of(opt).last_step_skipped && p == 0.0f);
  g = 1.0f;
  step(opt);
  const fo_step_info i = info_of(opt);
  cr_assert(!i.last_step_skipped && i.step == 1 && i.skipped_steps == 1);
  cr_expect_eq(i.lr_factor, 0.25f, "lr factor %.9g after a skipped step, want 0.25",
               (double)i.lr_factor);
  cr_expect_eq(p, -0.25f, "moved by %.9g, want -0.25", (double)p);
  fo_optimizer_destroy(opt);
}

/* NAdam's running product of momentum coefficients does not advance on a
 * skipped step (numerics.md): after an overflow the product is the one
 * before it, bit for bit, and the next clean step equals a twin's that
 * never saw the overflow. */
Test(step_scalars, a_skipped_step_leaves_nadams_product) {
  float p[2] = {0.3f, 0.3f}, g[2] = {0.5f, 0.5f};
  fo_tensor_desc t[2] = {{1, 0, &p[0], &g[0], NULL}, {1, 0, &p[1], &g[1], NULL}};
  fo_options o;
  fo_options_default(&o);
  o.algorithm = FO_ALG_NADAM;
  o.max_grad_norm = 1e30f;
  fo_hparams h;
  fo_hparams_default(FO_ALG_NADAM, &h);
  fo_optimizer *opt = NULL, *twin = NULL;
  cr_assert_eq(fo_optimizer_create(&opt, &o, &h, 1, &t[0], 1), FO_SUCCESS, "%s", fo_last_error());
  cr_assert_eq(fo_optimizer_create(&twin, &o, &h, 1, &t[1], 1), FO_SUCCESS, "%s", fo_last_error());
  step(opt);
  step(twin);
  float before = 0.0f, after = 0.0f, twins = 0.0f;
  cr_assert_eq(fo_optimizer_get_mu_product(opt, 0, &before), FO_SUCCESS);
  cr_assert(before > 0.0f && before < 1.0f, "product %.9g after one step", (double)before);
  g[0] = INFINITY;
  step(opt);
  cr_assert(info_of(opt).last_step_skipped);
  cr_assert_eq(fo_optimizer_get_mu_product(opt, 0, &after), FO_SUCCESS);
  cr_expect_eq(after, before, "a skipped step moved the product from %.9g to %.9g", (double)before,
               (double)after);
  g[0] = g[1] = -0.25f;
  step(opt);
  step(twin);
  cr_assert_eq(fo_optimizer_get_mu_product(opt, 0, &after), FO_SUCCESS);
  cr_assert_eq(fo_optimizer_get_mu_product(twin, 0, &twins), FO_SUCCESS);
  cr_expect_eq(after, twins, "product %.9g, the twin's %.9g", (double)after, (double)twins);
  cr_expect_eq(p[0], p[1], "parameter %.9g after the skip, the twin's %.9g", (double)p[0],
               (double)p[1]);
  fo_optimizer_destroy(opt);
  fo_optimizer_destroy(twin);
}

/* Past 2^24 steps with mu_t settled (beta1 within about 2^-20 of 1, so
 * the product neither underflows nor reaches a fixed point) set_step stops
 * stepping and closes with one power, rounded once: the product of the
 * steps up to there times mu^(the rest), within 2 ulps (one factor of mu
 * too many or too few is ~64 ulps here).  The steps themselves round
 * p * mu once each, which drifts from the power by up to half an ulp per
 * step past the cap (262 ulps after 4096 here, a relative 1.6e-5 of a
 * product of 1.6e-28): the bound hparams.c documents, checked too. */
Test(step_scalars, set_step_past_two_to_the_24_settled_steps) {
  fo_options o;
  cr_assert_eq(fo_options_default(&o), FO_SUCCESS);
  o.algorithm = FO_ALG_NADAM;
  fo_hparams h[1];
  cr_assert_eq(fo_hparams_default(FO_ALG_NADAM, &h[0]), FO_SUCCESS);
  h[0].beta1 = 1.0f - 0x1p-18f;
  h[0].momentum_decay = 100.0f; /* 0.96^(100 t) gone by t = 10 */
  const int64_t rest = 4096, cap = (int64_t)1 << 24;
  float stepped = 1.0f, at_cap = 0.0f;
  int64_t settled = 0, t_cap = 0;
  double mu_cap = 0.0;
  for (int64_t t = 1; t_cap == 0 || t <= t_cap + rest; t++) {
    const double mu = (double)h[0].beta1 * (1.0 - 0.5 * pow(0.96, (double)t * 100.0));
    const double next = (double)h[0].beta1 * (1.0 - 0.5 * pow(0.96, (double)(t + 1) * 100.0));
    stepped = (float)((double)stepped * mu);
    if (t_cap == 0 && mu == next && ++settled == cap) {
      t_cap = t;
      at_cap = stepped;
      mu_cap = mu;
    }
  }
  const float closed = (float)((double)at_cap * pow(mu_cap, (double)rest));
  float p = 0.5f, g = 0.25f;
  fo_tensor_desc t = {1, 0, &p, &g, NULL};
  fo_optimizer *opt = NULL;
  cr_assert_eq(fo_optimizer_create(&opt, &o, h, 1, &t, 1), FO_SUCCESS, "%s", fo_last_error());
  cr_assert_eq(fo_optimizer_set_step(opt, t_cap + rest), FO_SUCCESS, "%s", fo_last_error());
  float got = 0.0f;
  cr_assert_eq(fo_optimizer_get_mu_product(opt, 0, &got), FO_SUCCESS);
  const double ulp = (double)nextafterf(closed, 1.0f) - (double)closed;
  cr_expect(fabs((double)got - (double)closed) <= 2.0 * ulp,
            "set_step(%lld): product %.9g, the steps' to 2^24 settled then one power %.9g (%.1f "
            "ulps apart)",
            (long long)(t_cap + rest), (double)got, (double)closed,
            fabs((double)got - (double)closed) / ulp);
  cr_expect(fabs((double)got - (double)stepped) <= (0.5 * (double)rest + 2.0) * ulp,
            "product %.9g, every step's %.9g: %.1f ulps apart, past half an ulp per step",
            (double)got, (double)stepped, fabs((double)got - (double)stepped) / ulp);
  cr_assert_eq(fo_optimizer_destroy(opt), FO_SUCCESS);
}
