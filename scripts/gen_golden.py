#!/usr/bin/env python3
"""Generate golden vectors from PyTorch's own optimizers for tests/test_golden.c.

Run with any Python that has torch >= 2.1 (NAdam's decoupled_weight_decay
appeared in 2.1), for example a virtual environment's:

    python3 scripts/gen_golden.py            # writes the missing files
    python3 scripts/gen_golden.py --force    # rewrites every file
    python3 scripts/gen_golden.py --check    # regenerate, compare

By default only the cases whose file is missing are written: a file, once
committed, stays byte-identical (another torch version may differ from it in
the last bit of a value, and the test's tolerance covers that).  --check
compares the files recorded with the running torch version and says which it
skips.

Every case runs torch.optim.SGD, Adam, AdamW, Adagrad, RMSprop or NAdam
(single-tensor path, fp32 parameters on the CPU) for STEPS steps over 2-3
tensors of small odd sizes, with fresh random gradients every step, and
records the hyper-parameters, the initial parameters, every step's gradients,
the final parameters and the final optimizer state.

File format (text, one record per line, tokens separated by spaces; every
float is an fp32 value written with Python's float.hex(), which C's strtod
reads exactly):

    fusedopt-golden <1|2>
    # comment lines start with '#'
    case <name>
    algorithm sgd|adam|adamw|adagrad|rmsprop|nadam
    groups <G>
    group <g> lr <x> weight_decay <x> momentum <x> dampening <x> nesterov <0|1>
          beta1 <x> beta2 <x> eps <x> amsgrad <0|1> maximize <0|1>
          [<key> <x>]...
    steps <S>
    tensors <T>
    tensor <t> group <g> numel <n>
    init <t> <n values>
    grad <step> <t> <n values>            (step counts from 0)
    final <t> <n values>
    state <name> <t> <n values>
    end

(the group record is one line.)  Version 2 adds the algorithms adagrad,
rmsprop and nadam, the optional group keys after maximize -- lr_decay,
initial_accumulator_value (Adagrad), alpha, centered (RMSprop),
momentum_decay, decoupled_weight_decay (NAdam); a key left out keeps
fusedopt's default -- and the state names sum (Adagrad), square_avg,
grad_avg (RMSprop) besides exp_avg, exp_avg_sq, max_exp_avg_sq and
momentum_buffer (SGD, RMSprop).  A case that needs none of it is written as
version 1.  Hyper-parameters are chosen exactly representable in fp32, since
fusedopt takes them as floats.
"""
import argparse
import os
import struct
import sys

import torch

# the file version of the original algorithms' cases, and of the others'
FORMAT_VERSION = 1
FORMAT_VERSION_NEW = 2
NEW_ALGORITHMS = ("adagrad", "rmsprop", "nadam")
STEPS = 10
SEED = 20240611


def f32(x):
    """Round a Python float to the nearest fp32 value."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def hexs(values):
    return " ".join(float(v).hex() for v in values)


# (name, algorithm, [per-group hyper-parameters], [(numel, group) per tensor])
SGD_BASE = dict(lr=0.05, momentum=0.0, dampening=0.0, weight_decay=0.0,
                nesterov=False, maximize=False)
ADAM_BASE = dict(lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, maximize=False)


ADAGRAD_BASE = dict(lr=0.05, lr_decay=0.0, weight_decay=0.0,
                    initial_accumulator_value=0.0, eps=1e-10, maximize=False)
RMSPROP_BASE = dict(lr=0.01, alpha=0.99, eps=1e-8, weight_decay=0.0,
                    momentum=0.0, centered=False, maximize=False)
NADAM_BASE = dict(lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                  momentum_decay=4e-3, decoupled_weight_decay=False,
                  maximize=False)


def adagrad(**kw):
    d = dict(ADAGRAD_BASE)
    d.update(kw)
    return d


def rmsprop(**kw):
    d = dict(RMSPROP_BASE)
    d.update(kw)
    return d


def nadam(**kw):
    d = dict(NADAM_BASE)
    d.update(kw)
    return d


def sgd(**kw):
    d = dict(SGD_BASE)
    d.update(kw)
    return d


def adam(**kw):
    d = dict(ADAM_BASE)
    d.update(kw)
    return d


TENSORS3 = [(5, 0), (9, 0), (1, 0)]
TENSORS2 = [(7, 0), (3, 0)]
TWO_GROUPS = [(5, 0), (9, 1), (3, 0)]

CASES = [
    ("sgd_plain", "sgd", [sgd()], TENSORS3),
    ("sgd_momentum", "sgd", [sgd(momentum=0.9)], TENSORS3),
    ("sgd_dampening", "sgd", [sgd(momentum=0.9, dampening=0.3)], TENSORS2),
    ("sgd_nesterov", "sgd", [sgd(momentum=0.8, nesterov=True)], TENSORS3),
    ("sgd_wd", "sgd", [sgd(momentum=0.9, weight_decay=0.05)], TENSORS2),
    ("sgd_nesterov_wd_maximize", "sgd",
     [sgd(momentum=0.7, nesterov=True, weight_decay=0.02, maximize=True)],
     TENSORS3),
    ("sgd_maximize_dampening_wd", "sgd",
     [sgd(lr=0.03, momentum=0.5, dampening=0.5, weight_decay=0.1,
          maximize=True)], TENSORS2),
    ("sgd_two_groups", "sgd",
     [sgd(momentum=0.9, weight_decay=0.01),
      sgd(lr=0.02, momentum=0.6, dampening=0.2)], TWO_GROUPS),
    ("adam_plain", "adam", [adam()], TENSORS3),
    ("adam_wd", "adam", [adam(weight_decay=0.1)], TENSORS3),
    ("adam_amsgrad", "adam", [adam(amsgrad=True, betas=(0.8, 0.99))],
     TENSORS2),
    ("adam_wd_amsgrad_maximize", "adam",
     [adam(lr=0.02, weight_decay=0.05, amsgrad=True, maximize=True,
           eps=1e-6)], TENSORS3),
    ("adam_two_groups", "adam",
     [adam(weight_decay=0.1), adam(lr=0.003, betas=(0.85, 0.995),
                                   eps=1e-7)], TWO_GROUPS),
    # eps comparable to sqrt(v_hat): placing eps inside the square root or
    # before the bias correction would change these by percents
    ("adam_eps_placement", "adam",
     [adam(eps=0.1, weight_decay=0.02, betas=(0.9, 0.99))], TENSORS3),
    ("adamw_plain", "adamw", [adam(weight_decay=0.01)], TENSORS3),
    ("adamw_eps_placement", "adamw",
     [adam(lr=0.02, eps=0.03, weight_decay=0.1, amsgrad=True)], TENSORS2),
    ("adamw_wd", "adamw", [adam(lr=0.02, weight_decay=0.2)], TENSORS2),
    ("adamw_amsgrad", "adamw",
     [adam(weight_decay=0.1, amsgrad=True, betas=(0.9, 0.99))], TENSORS3),
    ("adamw_amsgrad_maximize", "adamw",
     [adam(lr=0.005, weight_decay=0.3, amsgrad=True, maximize=True,
           eps=1e-6)], TENSORS2),
    ("adamw_two_groups", "adamw",
     [adam(weight_decay=0.05), adam(lr=0.002, weight_decay=0.0,
                                    amsgrad=False)], TWO_GROUPS),
    # Appended cases keep the seeds (SEED + index) of those above.
    ("adagrad_plain", "adagrad", [adagrad()], TENSORS3),
    ("adagrad_lr_decay_init_acc", "adagrad",
     [adagrad(lr_decay=0.1, initial_accumulator_value=0.25)], TENSORS3),
    ("adagrad_wd_maximize", "adagrad",
     [adagrad(lr=0.03, lr_decay=0.05, initial_accumulator_value=0.1,
              weight_decay=0.05, maximize=True)], TENSORS2),
    # eps comparable to sqrt(sum): added outside the square root
    ("adagrad_eps_placement", "adagrad",
     [adagrad(eps=0.1, lr_decay=0.02, initial_accumulator_value=0.05,
              weight_decay=0.1)], TENSORS2),
    ("adagrad_two_groups", "adagrad",
     [adagrad(weight_decay=0.1, lr_decay=0.2),
      adagrad(lr=0.02, initial_accumulator_value=0.5)], TWO_GROUPS),
    ("rmsprop_plain", "rmsprop", [rmsprop()], TENSORS3),
    ("rmsprop_centered", "rmsprop", [rmsprop(alpha=0.9, centered=True)],
     TENSORS3),
    ("rmsprop_momentum", "rmsprop", [rmsprop(lr=0.003, momentum=0.9)],
     TENSORS2),
    ("rmsprop_centered_momentum_wd", "rmsprop",
     [rmsprop(lr=0.002, centered=True, momentum=0.8, weight_decay=0.05)],
     TENSORS3),
    ("rmsprop_wd_maximize", "rmsprop",
     [rmsprop(weight_decay=0.1, maximize=True, alpha=0.95)], TENSORS2),
    # eps comparable to the square root of the (centered) average
    ("rmsprop_eps_placement", "rmsprop",
     [rmsprop(eps=0.05, alpha=0.9, centered=True, weight_decay=0.02)],
     TENSORS2),
    ("rmsprop_two_groups", "rmsprop",
     [rmsprop(weight_decay=0.05, momentum=0.5),
      rmsprop(lr=0.004, alpha=0.8, centered=True)], TWO_GROUPS),
    ("nadam_plain", "nadam", [nadam()], TENSORS3),
    ("nadam_l2", "nadam", [nadam(weight_decay=0.1)], TENSORS3),
    ("nadam_decoupled", "nadam",
     [nadam(weight_decay=0.1, decoupled_weight_decay=True)], TENSORS2),
    ("nadam_momentum_decay", "nadam",
     [nadam(momentum_decay=0.05, betas=(0.8, 0.99))], TENSORS3),
    ("nadam_l2_maximize", "nadam",
     [nadam(lr=0.02, weight_decay=0.05, maximize=True, eps=1e-6)], TENSORS2),
    # eps comparable to sqrt(v_hat)
    ("nadam_eps_placement", "nadam",
     [nadam(eps=0.1, weight_decay=0.02, decoupled_weight_decay=True,
            betas=(0.9, 0.99))], TENSORS3),
    ("nadam_two_groups", "nadam",
     [nadam(weight_decay=0.1), nadam(lr=0.003, weight_decay=0.2,
                                     decoupled_weight_decay=True,
                                     momentum_decay=0.01)], TWO_GROUPS),
]


def exact_hparams(alg, h):
    """The group's hyper-parameters as fp32 values (what fusedopt takes),
    both for torch and for the file."""
    out = {"lr": f32(h["lr"]), "weight_decay": f32(h["weight_decay"]),
           "maximize": bool(h["maximize"])}
    if alg == "sgd":
        out.update(momentum=f32(h["momentum"]), dampening=f32(h["dampening"]),
                   nesterov=bool(h["nesterov"]))
    elif alg == "adagrad":
        out.update(lr_decay=f32(h["lr_decay"]), eps=f32(h["eps"]),
                   initial_accumulator_value=f32(
                       h["initial_accumulator_value"]))
    elif alg == "rmsprop":
        out.update(alpha=f32(h["alpha"]), eps=f32(h["eps"]),
                   momentum=f32(h["momentum"]), centered=bool(h["centered"]))
    elif alg == "nadam":
        b1, b2 = h["betas"]
        out.update(betas=(f32(b1), f32(b2)), eps=f32(h["eps"]),
                   momentum_decay=f32(h["momentum_decay"]),
                   decoupled_weight_decay=bool(h["decoupled_weight_decay"]))
    else:
        b1, b2 = h["betas"]
        out.update(betas=(f32(b1), f32(b2)), eps=f32(h["eps"]),
                   amsgrad=bool(h["amsgrad"]))
    return out


def group_line(alg, g, h):
    b1, b2 = h.get("betas", (0.9, 0.999))
    fields = [
        ("lr", h["lr"]), ("weight_decay", h["weight_decay"]),
        ("momentum", h.get("momentum", 0.0)),
        ("dampening", h.get("dampening", 0.0)),
        ("nesterov", int(h.get("nesterov", False))),
        ("beta1", f32(b1)), ("beta2", f32(b2)),
        ("eps", h.get("eps", f32(1e-8))),
        ("amsgrad", int(h.get("amsgrad", False))),
        ("maximize", int(h["maximize"])),
    ]
    # version 2's keys, after maximize, for the algorithms that read them
    extra = {"adagrad": ["lr_decay", "initial_accumulator_value"],
             "rmsprop": ["alpha", "centered"],
             "nadam": ["momentum_decay", "decoupled_weight_decay"]}
    for k in extra.get(alg, []):
        v = h[k]
        fields.append((k, int(v) if isinstance(v, bool) else v))
    parts = ["group", str(g)]
    for k, v in fields:
        parts += [k, str(v) if isinstance(v, int) else float(v).hex()]
    return " ".join(parts)


def random_values(gen, n, lo, hi):
    return lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)


def random_grad(gen, n):
    """Magnitude in [0.05, 1], random sign: never zero."""
    mag = random_values(gen, n, 0.05, 1.0)
    sign = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    return (mag * sign.double()).float()


def run_case(name, alg, groups, tensors, seed):
    gen = torch.Generator().manual_seed(seed)
    hps = [exact_hparams(alg, h) for h in groups]
    params = [random_values(gen, n, -1.0, 1.0).float().clone().requires_grad_()
              for n, _ in tensors]
    init = [p.detach().clone() for p in params]
    param_groups = []
    for g, h in enumerate(hps):
        d = dict(h)
        d["params"] = [p for p, (_, tg) in zip(params, tensors) if tg == g]
        param_groups.append(d)
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam,
           "adamw": torch.optim.AdamW, "adagrad": torch.optim.Adagrad,
           "rmsprop": torch.optim.RMSprop, "nadam": torch.optim.NAdam}[alg]
    if alg == "sgd":
        opt = cls(param_groups, lr=hps[0]["lr"], foreach=False)
    elif alg == "adagrad":
        # torch.optim.Adagrad fills every sum with the constructor's
        # initial_accumulator_value, whatever the group says; fusedopt's is
        # per group: start each group's sums from its own
        opt = cls(param_groups, foreach=False,
                  initial_accumulator_value=hps[0]["initial_accumulator_value"])
        for group in opt.param_groups:
            for p in group["params"]:
                opt.state[p]["sum"].fill_(group["initial_accumulator_value"])
    else:
        opt = cls(param_groups, foreach=False)

    grads = []
    for step in range(STEPS):
        step_grads = []
        for p, (n, g) in zip(params, tensors):
            gr = random_grad(gen, n)
            l2 = alg in ("adam", "adagrad", "rmsprop") or (
                alg == "nadam" and not hps[g]["decoupled_weight_decay"])
            if l2 and hps[g]["weight_decay"] != 0.0:
                # Keep the decayed gradient away from zero, where Adam's first
                # step lr*d/(|d|+eps) is ill-conditioned (Adagrad's, RMSprop's
                # and NAdam's first steps are much the same).
                wd = hps[g]["weight_decay"]
                sgn = -1.0 if hps[g]["maximize"] else 1.0
                for _ in range(100):
                    d = sgn * gr + wd * p.detach()
                    bad = d.abs() < 0.01
                    if not bool(bad.any()):
                        break
                    gr = torch.where(bad, random_grad(gen, n), gr)
            p.grad = gr.clone()
            step_grads.append(gr.clone())
        grads.append(step_grads)
        opt.step()

    version = FORMAT_VERSION_NEW if alg in NEW_ALGORITHMS else FORMAT_VERSION
    lines = [f"fusedopt-golden {version}",
             f"# generated by scripts/gen_golden.py with torch {torch.__version__}"
             f" (seed {seed}); do not edit",
             f"case {name}", f"algorithm {alg}", f"groups {len(hps)}"]
    lines += [group_line(alg, g, h) for g, h in enumerate(hps)]
    lines += [f"steps {STEPS}", f"tensors {len(tensors)}"]
    lines += [f"tensor {t} group {g} numel {n}"
              for t, (n, g) in enumerate(tensors)]
    lines += [f"init {t} {hexs(v.tolist())}" for t, v in enumerate(init)]
    for step, sg in enumerate(grads):
        lines += [f"grad {step} {t} {hexs(v.tolist())}"
                  for t, v in enumerate(sg)]
    lines += [f"final {t} {hexs(p.detach().tolist())}"
              for t, p in enumerate(params)]
    names = {"sgd": ["momentum_buffer"], "adagrad": ["sum"],
             "rmsprop": ["square_avg", "momentum_buffer", "grad_avg"],
             "nadam": ["exp_avg", "exp_avg_sq"]}.get(
                 alg, ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"])
    for key in names:
        for t, p in enumerate(params):
            st = opt.state[p].get(key)
            if st is None:
                continue
            lines.append(f"state {key} {t} {hexs(st.tolist())}")
    lines.append("end")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "..", "tests",
                                                  "golden"))
    ap.add_argument("--check", action="store_true",
                    help="regenerate and compare with the files in --out"
                    " recorded with this torch version")
    ap.add_argument("--force", action="store_true",
                    help="rewrite the files that exist too")
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    stale = done = skipped = 0
    for k, (name, alg, groups, tensors) in enumerate(CASES):
        path = os.path.join(args.out, name + ".golden")
        exists = os.path.exists(path)
        if args.check:
            if not exists:
                print(f"{path}: missing")
                stale += 1
                continue
            with open(path) as f:
                old = f.read()
            if f"with torch {torch.__version__} " not in old:
                skipped += 1
                continue
        elif exists and not args.force:
            skipped += 1
            continue
        text = run_case(name, alg, groups, tensors, SEED + k)
        done += 1
        if args.check:
            if old != text:
                print(f"{path}: differs from a fresh run")
                stale += 1
        else:
            with open(path, "w") as f:
                f.write(text)
    print(f"{done} cases {'checked' if args.check else 'written'}"
          f" in {os.path.normpath(args.out)}; {skipped} skipped"
          f" ({'recorded with another torch version' if args.check else 'their files exist'})")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
