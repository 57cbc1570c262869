#!/usr/bin/python3
"""The whole training step of a GPT-2-style model, fusedopt against PyTorch's AdamW.

On a machine with PyTorch and a CUDA GPU (run from the project's root after
building; docs/performance.md, "The whole training step"):

    python3 scripts/bench_torch_train.py --csv bench/results/torch_train_gpu.csv

trains GPT-2 small (12 layers, 768 wide, 12 heads, vocabulary 50257, context
1024; written below from torch.nn pieces, random weights and random tokens,
nothing downloaded) for a few steps with fusedopt.torch.AdamW and with
torch.optim.AdamW(fused=True), in fp32, with bf16 autocast (fp32 weights),
and with the model itself in bf16 and fp32 master weights (bf16-master).
On the CPU (Debian's python3-torch: run /usr/bin/python3), a tiny model:

    /usr/bin/python3 scripts/bench_torch_train.py --smoke --device cpu

where the torch rows are torch's default AdamW (named "torch").

Every implementation trains a copy of the same initial model on the same
batches with the same hyper-parameters (GPT-2's: lr 6e-4, betas (0.9, 0.95),
eps 1e-8, weight decay 0.1 on matrices and embeddings, none on biases and
LayerNorms).  In bf16-master the torch rows keep the fp32 master copy
themselves, in Python (gradients widened into it, the step, the result
rounded back into the bf16 model), which is what fusedopt does inside its
step: the same arithmetic, so the rows compare.

Timing: warm-up steps, then --steps timed steps; each step is marked before
zero_grad, after backward and after the optimizer's step (CUDA events on
the GPU, time.perf_counter on the CPU), so the optimizer is timed on its
real gradients inside real training.  Reported: the medians of the whole
step and of the optimizer alone, and tokens per second of the whole step.
On CUDA each implementation runs its steps back to back; on the CPU they
take turns step by step (a shared host drifts; turns expose every
implementation to it alike).  Eager steps only: fusedopt's step captured
in a torch.cuda.graph has an open fault (docs/gpu-verification.md).

Check: from identical initial weights, --check-steps (3) steps of fusedopt
and of torch's single-tensor AdamW on identical batches; the error is
||fusedopt - torch|| / ||torch - initial|| over every weight (fp32 master
weights in bf16-master), and a second torch run gives the floor, torch
against itself (0 where the kernels are deterministic).  ok: error <=
max(the precision's TOLERANCE, 2 x floor) and fusedopt changed every tensor.

Exit status: 0, 2 when a check FAILs, 77 (CTest's SKIP) when torch cannot
be imported; without a CUDA device, --device cuda prints why and exits 0.
"""
import argparse
import contextlib
import copy
import gc
import importlib.util
import math
import os
import statistics
import sys
import time

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError as e:
    print("SKIP: torch cannot be imported (%s): install python3-torch (Debian) or a torch "
          "wheel to run bench_torch_train.py" % e)
    sys.exit(77)

from bench_torch import cpu_model, find_lib  # noqa: E402  (scripts/, next to this file)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# GPT-2's training hyper-parameters, the same for every implementation.
HPARAMS = dict(lr=6e-4, betas=(0.9, 0.95), eps=1e-8)
WEIGHT_DECAY = 0.1

# Largest accepted ||fusedopt - torch|| / ||torch - initial|| over every
# weight after --check-steps (3) steps; both are correct AdamW, so they
# differ by rounding, which training then feeds back: the next gradients are
# computed at slightly other weights, and Adam divides by sqrt(v), so an
# element whose gradient is rounding noise (the key bias: softmax ignores it)
# moves by up to lr whatever its sign.  Three steps are enough to see every
# hyper-parameter (betas only act from the second) and few enough to keep that
# growth small.  Measured on the CPU (the smoke model and 4 layers x 256):
#   fp32: 5e-6 .. 1.1e-5 (3.4e-7 after one step: the optimizers' own
#   rounding), while a wrong rule is off by 2.5e-3 (no decay) to 1 (Adam's
#   L2 decay, or no step): 1e-4 leaves the feedback a margin of ten and
#   catches each of those.
#   bf16 autocast: 2.5e-7 (smoke) to 1.8e-2 (4 x 256): a weight one fp32 ulp
#   away can round to another bf16 value in the forward, 2^-8 of it, and
#   bf16 activations carry that on: a correct run then diverges as far as one
#   without weight decay (1.9e-2), so here the check catches gross faults
#   only (no step, the wrong algorithm, NaN: 1 and more).
#   bf16-master: 2.5e-7 to 3.8e-3; the same bound as bf16.
# The fp32 row is the discriminating one; the library's tests check the
# 16-bit arithmetic element by element.
TOLERANCE = {"fp32": 1e-4, "bf16": 1e-1, "bf16-master": 1e-1}
PRECISIONS = ("fp32", "bf16", "bf16-master")


# ------------------------------------------------------------------ fusedopt

def import_fusedopt_torch(lib_path):
    """fusedopt.torch over lib_path: the package of this checkout (python/)
    unless one is importable already (installed, or on PYTHONPATH)."""
    os.environ["FUSEDOPT_LIBRARY"] = lib_path  # the package loads exactly this file
    if importlib.util.find_spec("fusedopt") is None:
        sys.path.insert(0, os.path.join(ROOT, "python"))
    import fusedopt
    import fusedopt.torch
    return fusedopt, fusedopt.torch


# --------------------------------------------------------------------- model

HAS_SDPA = hasattr(F, "scaled_dot_product_attention")  # torch >= 2.0


class CausalSelfAttention(nn.Module):
    def __init__(self, dim, heads, seq):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        if not HAS_SDPA:
            # Not persistent and not floating point: neither in the
            # state dict nor turned into bf16 by model.to(torch.bfloat16).
            self.register_buffer("future", torch.ones(seq, seq, dtype=torch.bool).triu(1),
                                 persistent=False)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        if HAS_SDPA:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.size(-1)))
            att = att.masked_fill(self.future[:t, :t], float("-inf"))
            y = att.softmax(dim=-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    """Pre-LayerNorm: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, dim, heads, seq):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads, seq)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 4 * dim)
        self.out = nn.Linear(4 * dim, dim)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    """A GPT-2-style decoder; the LM head is the token embedding (tied), so
    the parameter count is GPT-2's (124,439,808 at the default size)."""

    def __init__(self, vocab, seq, layers, dim, heads):
        super().__init__()
        if dim % heads:
            raise ValueError("--dim %d is not a multiple of --heads %d" % (dim, heads))
        self.wte = nn.Embedding(vocab, dim)
        self.wpe = nn.Embedding(seq, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, seq) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        # GPT-2's initialisation: N(0, 0.02), the projections that end a
        # residual branch scaled by 1/sqrt(2 layers), biases zero.
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * layers) if name.endswith(("proj.weight", "out.weight")) \
                    else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx, targets):
        pos = torch.arange(idx.size(1), device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        logits = F.linear(self.ln_f(x), self.wte.weight)
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1))


def param_groups(model):
    """Two groups as GPT-2 is trained: decay on matrices and embeddings only."""
    params = list(model.parameters())
    return [dict(params=[p for p in params if p.dim() >= 2], weight_decay=WEIGHT_DECAY),
            dict(params=[p for p in params if p.dim() < 2], weight_decay=0.0)]


def make_batches(args, device, count, seed):
    """count batches of random tokens, drawn on the device: (inputs, targets),
    the targets the inputs shifted by one."""
    gen = torch.Generator(device=device).manual_seed(seed)
    out = []
    for _ in range(count):
        tok = torch.randint(args.vocab, (args.batch, args.seq + 1), generator=gen, device=device)
        out.append((tok[:, :-1].contiguous(), tok[:, 1:].contiguous()))
    return out


def base_model(args, device):
    """The initial model every implementation copies (seeded on the CPU, so
    the weights are the same whatever the device)."""
    torch.manual_seed(0)
    model = GPT(args.vocab, args.seq, args.layers, args.dim, args.heads)
    return model.to(device)


# ------------------------------------------------------------ implementations

class TorchMaster:
    """torch's AdamW over fp32 copies of a bf16 model's parameters: each step
    widens the gradients into the copies, steps them, and rounds the result
    back into the model.  The usual way to keep master weights around a
    torch optimizer, and the arithmetic fusedopt's master weights do."""

    def __init__(self, model, make_opt):
        self.model = model
        self.params = list(model.parameters())
        self.master = [p.detach().float().clone().requires_grad_(True) for p in self.params]
        for m in self.master:
            m.grad = torch.zeros_like(m)
        index = {id(p): m for p, m in zip(self.params, self.master)}
        self.opt = make_opt([dict(g, params=[index[id(p)] for p in g["params"]])
                             for g in param_groups(model)])

    def zero_grad(self):
        self.model.zero_grad(set_to_none=True)

    @torch.no_grad()
    def step(self):
        for p, m in zip(self.params, self.master):
            m.grad.copy_(p.grad)
        self.opt.step()
        for p, m in zip(self.params, self.master):
            p.copy_(m)

    def weights(self):
        """The fp32 weights the optimizer keeps, in model.parameters() order."""
        return [m.detach() for m in self.master]


class Run:
    """One implementation training its own copy of the model."""

    def __init__(self, name, model, opt, weights, note=""):
        self.name, self.model, self.opt, self.note = name, model, opt, note
        self.weights = weights  # () -> the weights it keeps, in model.parameters() order


def fusedopt_weights(model, opt, master):
    if not master:
        return lambda: [p.detach() for p in model.parameters()]

    def read():
        # state_dict() indexes the parameters group by group; map them back
        # to model.parameters() order.  Before any step it holds no state:
        # the weights are then the parameters as they were.
        state = opt.state_dict()["state"]
        flat = [p for g in opt.param_groups for p in g["params"]]
        by_id = {id(p): state[i]["master"] if i in state else p.detach().float()
                 for i, p in enumerate(flat)}
        return [by_id[id(p)] for p in model.parameters()]
    return read


def torch_adamw(kind, cuda):
    """A constructor of torch's AdamW of the given kind (None: this torch
    lacks it, with why)."""
    if kind == "torch_fused" and not cuda:
        return lambda groups: torch.optim.AdamW(groups, **HPARAMS), None  # torch's default
    kw = {"torch_fused": dict(fused=True), "torch_foreach": dict(foreach=True),
          "torch_single": dict(foreach=False)}[kind]
    try:
        probe = torch.nn.Parameter(torch.zeros(2, device="cuda" if cuda else "cpu"))
        torch.optim.AdamW([probe], **HPARAMS, **kw)
    except (TypeError, RuntimeError, ValueError) as e:
        return None, "torch %s's AdamW refuses %s: %s" % (torch.__version__, kw,
                                                         str(e).splitlines()[0])
    return lambda groups: torch.optim.AdamW(groups, **HPARAMS, **kw), None


def row_name(kind, cuda):
    return "torch" if kind == "torch_fused" and not cuda else kind


def make_run(kind, precision, base, ft, cuda, threads):
    """(Run, None) or (None, why it cannot run here)."""
    model = copy.deepcopy(base)
    master = precision == "bf16-master"
    if master:
        model = model.to(torch.bfloat16)
    if kind == "fusedopt":
        opt = ft.AdamW(param_groups(model), **HPARAMS, master_weights=master,
                       num_threads=0 if cuda else threads)
        return Run("fusedopt", model, opt, fusedopt_weights(model, opt, master)), None
    make_opt, why = torch_adamw(kind, cuda)
    if make_opt is None:
        return None, why
    name = row_name(kind, cuda)
    if master:
        wrapped = TorchMaster(model, make_opt)
        return Run(name, model, wrapped, wrapped.weights,
                   note="fp32 master copy kept in Python"), None
    opt = make_opt(param_groups(model))
    return Run(name, model, opt, lambda: [p.detach() for p in model.parameters()]), None


def autocast_of(precision, device):
    if precision == "bf16":
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


# -------------------------------------------------------------------- timing

class Marks:
    """Three marks per step (start, after backward, after the optimizer):
    CUDA events on the GPU, perf_counter on the CPU."""

    def __init__(self, cuda):
        self.cuda = cuda
        self.steps = []

    def mark(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def add(self, marks):
        self.steps.append(marks)

    def medians_ms(self):
        """(median whole step, median optimizer step), milliseconds."""
        if self.cuda:
            self.steps[-1][-1].synchronize()
            ms = [(a.elapsed_time(c), b.elapsed_time(c)) for a, b, c in self.steps]
        else:
            ms = [((c - a) * 1e3, (c - b) * 1e3) for a, b, c in self.steps]
        return statistics.median(m[0] for m in ms), statistics.median(m[1] for m in ms)


def train_step(run, batch, autocast, marks):
    x, y = batch
    t0 = marks.mark() if marks else None
    run.opt.zero_grad()
    with autocast():
        loss = run.model(x, y)
    loss.backward()
    t1 = marks.mark() if marks else None
    run.opt.step()
    if marks:
        marks.add((t0, t1, marks.mark()))


def time_runs(runs, batches, autocast, args, cuda):
    """{name: (step ms, optimizer ms)}, medians of args.steps steps."""
    marks = {r.name: Marks(cuda) for r in runs}
    total = args.warmup + args.steps
    if cuda:
        for r in runs:  # back to back: the device queue stays full, as in training
            for i in range(total):
                train_step(r, batches[i % len(batches)], autocast,
                           marks[r.name] if i >= args.warmup else None)
            torch.cuda.synchronize()
    else:
        for i in range(total):  # in turns: a shared host's drift hits all alike
            for r in runs:
                train_step(r, batches[i % len(batches)], autocast,
                           marks[r.name] if i >= args.warmup else None)
    return {name: m.medians_ms() for name, m in marks.items()}


# --------------------------------------------------------------------- check

def relative_difference(names, weights, reference, initial):
    """(||weights - reference|| / ||reference - initial|| over every weight,
    (the same of the worst tensor, its name))."""
    diff2 = moved2 = 0.0
    per_tensor = []
    for name, a, r, w0 in zip(names, weights, reference, initial):
        a, r, w0 = a.double(), r.double(), w0.double()  # sums of 38M squares
        d2, m2 = float(((a - r) ** 2).sum()), float(((r - w0) ** 2).sum())
        diff2, moved2 = diff2 + d2, moved2 + m2
        per_tensor.append(((d2 / m2) ** 0.5 if m2 > 0 else (0.0 if d2 == 0 else math.inf),
                           name))
    return (diff2 / moved2) ** 0.5 if moved2 > 0 else math.inf, max(per_tensor)


def check(args, precision, base, ft, device, cuda):
    """(error, floor, "ok" / "FAIL" / "", a line on it): args.check_steps steps of
    fusedopt and of torch's single-tensor AdamW from the same weights on the
    same batches; error = ||fusedopt - torch|| / ||torch - initial|| over
    every weight (fp32 master weights in bf16-master).  A second run of the
    reference gives the floor: how far torch is from itself (0 where the
    forward and backward are deterministic, as on the CPU; CUDA kernels that
    add with atomics are not).  ok: error <= max(tolerance, 2 x floor), and
    fusedopt changed every tensor."""
    names = [n for n, _ in base.named_parameters()]
    initial = [p.detach().float().clone() for p in base.parameters()]
    if precision == "bf16-master":  # every run starts from the bf16 rounding
        initial = [p.to(torch.bfloat16).float() for p in initial]
    ref, why = make_run("torch_single", precision, base, ft, cuda, args.threads)
    if ref is None:
        return None, None, "", "no reference: " + why
    again, _ = make_run("torch_single", precision, base, ft, cuda, args.threads)
    fo, _ = make_run("fusedopt", precision, base, ft, cuda, args.threads)
    autocast = autocast_of(precision, device)
    for batch in make_batches(args, device, args.check_steps, seed=2):
        for run in (fo, ref, again):
            train_step(run, batch, autocast, None)
    weights, reference = fo.weights(), ref.weights()
    unchanged = [n for n, a, w0 in zip(names, weights, initial) if torch.equal(a.float(), w0)]
    err, (worst, worst_name) = relative_difference(names, weights, reference, initial)
    floor, _ = relative_difference(names, again.weights(), reference, initial)
    fo.opt.close()
    tol = max(TOLERANCE[precision], 2 * floor)
    line = ("%.2e over every weight (tolerance %.0e; torch against itself %.1e); the worst "
            "tensor %s: %.2e" % (err, TOLERANCE[precision], floor, worst_name, worst))
    if unchanged:
        return err, floor, "FAIL", "fusedopt left %d of %d tensors unchanged (%s...)" % (
            len(unchanged), len(names), unchanged[0])
    if not err <= tol:  # NaN fails too
        return err, floor, "FAIL", line
    return err, floor, "ok", line


# -------------------------------------------------------------------- output

COLUMNS = ["precision", "impl", "params", "layers", "dim", "heads", "vocab", "seq", "batch",
           "step_ms", "opt_ms", "tokens_per_s", "step_vs_fusedopt", "opt_vs_fusedopt",
           "check_err", "check_floor", "check", "note"]


def print_row(r):
    err = "" if r["check_err"] is None else "%s %.1e" % (r["check"], r["check_err"])
    print("  %-11s %-14s %11d %10.2f %10.3f %12.0f %8.3f %8.3f  %-12s %s" % (
        r["precision"], r["impl"], r["params"], r["step_ms"], r["opt_ms"], r["tokens_per_s"],
        r["step_vs_fusedopt"], r["opt_vs_fusedopt"], err, r["note"]), flush=True)


def csv_header(f):
    f.write("mode,device,torch," + ",".join(COLUMNS) + "\n")


def csv_row(f, mode, device_name, r):
    vals = ["" if r[c] is None else ("%.4g" % r[c] if isinstance(r[c], float) else str(r[c]))
            for c in COLUMNS]
    f.write("%s,%s,%s,%s\n" % (mode, device_name.replace(",", ";"), torch.__version__,
                               ",".join(v.replace(",", ";") for v in vals)))
    f.flush()  # rows so far survive a run cut short


def markdown(rows):
    """fusedopt / torch for each torch implementation and precision: below 1,
    fusedopt is faster."""
    lines = ["| precision | torch impl | step ms fusedopt | step ms torch | step fusedopt/torch "
             "| opt ms fusedopt | opt ms torch | opt fusedopt/torch | check |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for prec in PRECISIONS:
        fo = [r for r in rows if r["precision"] == prec and r["impl"] == "fusedopt"]
        if not fo:
            continue
        fo = fo[0]
        for r in rows:
            if r["precision"] != prec or r["impl"] == "fusedopt":
                continue
            lines.append("| %s | %s | %.2f | %.2f | %.3f | %.3f | %.3f | %.3f | %s |" % (
                prec, r["impl"], fo["step_ms"], r["step_ms"], fo["step_ms"] / r["step_ms"],
                fo["opt_ms"], r["opt_ms"], fo["opt_ms"] / r["opt_ms"],
                "%s %.1e" % (fo["check"], fo["check_err"]) if fo["check_err"] is not None
                else fo["check"]))
    return "\n".join(lines)


# ---------------------------------------------------------------------- main

def run_precision(args, precision, base, ft, device, cuda):
    """The rows of one precision (fusedopt's first), printing skips."""
    runs = []
    for kind in args.impls.split(","):
        run, why = make_run(kind, precision, base, ft, cuda, args.threads)
        if run is None:
            print("# %s %s: skipped: %s" % (precision, row_name(kind, cuda), why), flush=True)
        else:
            runs.append(run)
    if not runs:
        return []
    batches = make_batches(args, device, 4, seed=1)
    med = time_runs(runs, batches, autocast_of(precision, device), args, cuda)
    notes = {r.name: r.note for r in runs}
    for r in runs:
        if hasattr(r.opt, "close"):
            r.opt.close()
    del runs
    if cuda:  # the check's three models need the memory back
        gc.collect()
        torch.cuda.empty_cache()
    err, floor, verdict, why = check(args, precision, base, ft, device, cuda)
    print("# %s check: %s" % (precision, why), flush=True)
    ref = med.get("fusedopt")
    tokens = args.batch * args.seq
    rows = []
    for name, (step_ms, opt_ms) in med.items():
        is_fo = name == "fusedopt"
        rows.append(dict(precision=precision, impl=name, params=args.params, layers=args.layers,
                         dim=args.dim, heads=args.heads, vocab=args.vocab, seq=args.seq,
                         batch=args.batch, step_ms=step_ms, opt_ms=opt_ms,
                         tokens_per_s=tokens / step_ms * 1e3,
                         step_vs_fusedopt=step_ms / ref[0] if ref else math.nan,
                         opt_vs_fusedopt=opt_ms / ref[1] if ref else math.nan,
                         check_err=err if is_fo else None,
                         check_floor=floor if is_fo else None, check=verdict if is_fo else "",
                         note=notes[name]))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lib", help="path of libfusedopt.so")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--precision", default="fp32,bf16,bf16-master",
                    help="comma-separated: fp32, bf16 (autocast, fp32 weights), bf16-master "
                         "(bf16 model, fp32 master weights); default all three")
    ap.add_argument("--impls", default="fusedopt,torch_fused",
                    help="comma-separated: fusedopt, torch_fused (fused=True on CUDA; torch's "
                         "default AdamW on the CPU, named torch), torch_foreach, torch_single")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--seq", type=int, default=1024, help="context length (default 1024)")
    ap.add_argument("--batch", type=int, default=8, help="sequences per step (default 8)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (20; smoke 3)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps (3; smoke 1)")
    ap.add_argument("--check-steps", type=int, default=3,
                    help="steps of the correctness check (default 3; see TOLERANCE)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(),
                    help="CPU threads of torch and of fusedopt's CPU executor (default: all)")
    ap.add_argument("--tf32", action="store_true",
                    help="allow TF32 matrix products in fp32 (torch's default is not to)")
    ap.add_argument("--smoke", action="store_true",
                    help="a tiny model (2 layers, 64 wide, 4 heads, vocabulary 512, context 32, "
                         "batch 2) and few steps: seconds on two cores")
    ap.add_argument("--csv", help="write the rows as CSV")
    args = ap.parse_args()
    if args.smoke:
        args.layers, args.dim, args.heads, args.vocab, args.seq, args.batch = 2, 64, 4, 512, 32, 2
    args.steps = args.steps or (3 if args.smoke else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 3)
    precisions = args.precision.split(",")
    for p in precisions:
        if p not in PRECISIONS:
            ap.error("unknown precision %r (%s)" % (p, ", ".join(PRECISIONS)))
    for k in args.impls.split(","):
        if k not in ("fusedopt", "torch_fused", "torch_foreach", "torch_single"):
            ap.error("unknown implementation %r" % k)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        print("bench_torch_train: no CUDA device visible to torch %s: skipped (--device cpu "
              "runs on the CPU)" % torch.__version__)
        return 0
    torch.set_num_threads(args.threads)
    if cuda and args.tf32:
        # only when asked: torch 2.9 and later warn on these legacy setters,
        # and fp32 matmuls are full fp32 by default
        if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
            torch.backends.cuda.matmul.fp32_precision = "tf32"
        else:
            torch.backends.cuda.matmul.allow_tf32 = True
    fo_pkg, ft = import_fusedopt_torch(find_lib(args.lib, "bench_torch_train"))
    device = torch.device(args.device)
    name = torch.cuda.get_device_name() if cuda else "%s, %d thread%s" % (
        cpu_model(), args.threads, "" if args.threads == 1 else "s")
    base = base_model(args, device)
    args.params = sum(p.numel() for p in base.parameters())
    print("# training step, fusedopt %s vs torch %s on %s: %d layers, %d wide, %d heads, "
          "vocabulary %d, context %d, batch %d: %d parameters; attention: %s; TF32 %s"
          % (fo_pkg.library_version(), torch.__version__, name, args.layers, args.dim,
             args.heads, args.vocab, args.seq, args.batch, args.params,
             "scaled_dot_product_attention" if HAS_SDPA else "masked softmax",
             "on" if cuda and args.tf32 else "off"))
    print("# median of %d steps after %d warm-up; check: %d steps against torch's single-tensor "
          "AdamW; eager steps (no CUDA graphs)" % (args.steps, args.warmup, args.check_steps))
    print("# %-11s %-14s %11s %10s %10s %12s %8s %8s  %-12s %s" % (
        "precision", "impl", "params", "step ms", "opt ms", "tokens/s", "step/fo", "opt/fo",
        "check", "note"))
    csv = open(args.csv, "w") if args.csv else None
    if csv:
        csv_header(csv)
    rows = []
    for precision in precisions:
        for r in run_precision(args, precision, base, ft, device, cuda):
            print_row(r)
            if csv:
                csv_row(csv, args.device, name, r)
            rows.append(r)
    if csv:
        csv.close()
    print()
    print(markdown(rows))
    failed = [r for r in rows if r["check"] == "FAIL"]
    if failed:
        print("# %d correctness checks FAILED" % len(failed))
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
