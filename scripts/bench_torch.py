#!/usr/bin/python3
"""fusedopt against PyTorch's own optimizers, on identical tensors, in one run.

On a machine with PyTorch and a CUDA GPU (run from the project's root after
building; docs/performance.md has the whole recipe):

    python3 scripts/bench_torch.py --csv bench/results/torch_gpu.csv

times, on the same parameter and gradient tensors, torch.optim.AdamW with
fused=True and with foreach=True, each eagerly and replayed from a CUDA
graph (capturable=True), against fusedopt's CUDA step (eager and graph) on
torch.cuda.current_stream(); and Adam and SGD with momentum the same way.
With --cpu (here: Debian's python3-torch, so run /usr/bin/python3):

    /usr/bin/python3 scripts/bench_torch.py --cpu --csv bench/results/torch_cpu.csv

times fusedopt's CPU executor against torch's CPU optimizers (single-tensor
and foreach; fused where this torch has it) with the same thread count.

fusedopt is loaded with ctypes from libfusedopt.so (--lib, else
$FUSEDOPT_LIBRARY or $FUSEDOPT_LIB, else build*/host/libfusedopt.so); its
structs are declared below field for field as in include/fusedopt.h, and
fo_options' and fo_hparams' struct_size (set by their defaults functions)
are checked against ctypes' sizes of the mirrors.  Tensors
are registered as external storage: fusedopt updates torch's own buffers.

Timing: warm-up, then a CUDA event (or a wall-clock mark) between any two
steps, each implementation's steps back to back on CUDA, round by round on
the CPU; each figure is the median of its steps.  On CUDA a step shorter
than 200 us (timed over a few steps after the warm-up) is timed in runs
of up to 16 back to back between two events (column steps_per_mark), so
the event's own Python cost is not added to each step where the host is
the bottleneck.  No input rotation: list a's tensors (2 GB with
their state) are 40x an H100's L2 (b and c more still), and the 4-tensor MLP
measures latency.

Check: from the same initial values and gradients, N steps of fusedopt and
N steps of torch's single-tensor optimizer in fp32 (on the fp32 values of
the bf16 inputs for the bf16 configurations) must agree:
||fusedopt - torch|| / ||torch - initial|| under the tolerance (weights: the
fp32 master where fusedopt keeps one).

Lists: a = GPT-2 124M (148 tensors), mlp = a 4-tensor MLP of 9,610
parameters (64-128-10); bench's b (Llama-7B layers, --layers of them), c (one
tensor of --huge elements) and d (4096 tensors of 1..4096) on request.  Counted bytes per parameter as in bench/model.c;
PyTorch's bf16 optimizers keep bf16 state, 14 bytes for AdamW.
"""
import argparse
import ctypes
import glob
import inspect
import os
import platform
import statistics
import sys
import time

try:
    import torch
except ImportError:
    print("bench_torch: python3 cannot import torch: skipped")
    sys.exit(77)

# ---------------------------------------------------------------- fusedopt

c_int, c_float, c_int64, c_uint64, c_size_t, c_void_p = (
    ctypes.c_int, ctypes.c_float, ctypes.c_int64, ctypes.c_uint64, ctypes.c_size_t,
    ctypes.c_void_p)

# enums (include/fusedopt.h)
FO_SUCCESS = 0
FO_ALG = {"sgd": 0, "adam": 1, "adamw": 2, "lion": 3, "adagrad": 4, "rmsprop": 5, "nadam": 6,
          "lamb": 7, "lars": 8}
FO_DTYPE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
FO_EXEC_CPU, FO_EXEC_CUDA = 0, 1
FO_STORAGE_EXTERNAL = 0
FO_ROLE_MASTER = 2


class FoHparams(ctypes.Structure):
    _fields_ = [("struct_size", c_size_t), ("lr", c_float), ("weight_decay", c_float),
                ("momentum", c_float), ("dampening", c_float), ("nesterov", c_int),
                ("beta1", c_float), ("beta2", c_float), ("eps", c_float), ("amsgrad", c_int),
                ("maximize", c_int), ("lr_decay", c_float),
                ("initial_accumulator_value", c_float), ("alpha", c_float),
                ("centered", c_int), ("momentum_decay", c_float),
                ("decoupled_weight_decay", c_int), ("trust_coef", c_float),
                ("layer_adaptation", c_int), ("reserved", c_uint64 * 4)]


class FoLossScalerOptions(ctypes.Structure):
    _fields_ = [("enabled", c_int), ("init_scale", c_float), ("growth_factor", c_float),
                ("backoff_factor", c_float), ("growth_interval", c_int),
                ("max_scale", c_float), ("hysteresis", c_int)]


class FoSchedule(ctypes.Structure):
    _fields_ = [("kind", c_int), ("warmup_steps", c_int64), ("total_steps", c_int64),
                ("step_size", c_int64), ("period", c_int64), ("period_mult", c_int64),
                ("gamma", c_float), ("min_ratio", c_float)]


class FoOptions(ctypes.Structure):
    _fields_ = [("struct_size", c_size_t), ("algorithm", c_int), ("executor", c_int),
                ("device", c_int), ("storage", c_int), ("param_dtype", c_int),
                ("grad_dtype", c_int), ("master_weights", c_int),
                ("stochastic_rounding", c_int), ("seed", c_uint64), ("num_threads", c_int),
                ("max_grad_norm", c_float), ("write_unscaled_grads", c_int),
                ("loss_scaler", FoLossScalerOptions), ("schedule", FoSchedule),
                ("reserved", c_uint64 * 4)]


class FoTensorDesc(ctypes.Structure):
    _fields_ = [("numel", c_int64), ("group", c_int), ("param", c_void_p),
                ("grad", c_void_p), ("name", ctypes.c_char_p)]


def find_lib(path, prog="bench_torch"):
    """--lib, else $FUSEDOPT_LIBRARY (the package's variable), else
    $FUSEDOPT_LIB, else the newest build*/host/libfusedopt.so of this
    checkout."""
    for candidate in (path, os.environ.get("FUSEDOPT_LIBRARY"), os.environ.get("FUSEDOPT_LIB")):
        if candidate:
            return candidate
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    found = sorted(glob.glob(os.path.join(root, "build*", "host", "libfusedopt.so")),
                   key=os.path.getmtime, reverse=True)
    if not found:
        sys.exit("%s: no libfusedopt.so under build*/host; build first or pass --lib" % prog)
    return found[0]


def load_lib(path):
    lib = ctypes.CDLL(path)
    lib.fo_last_error.restype = ctypes.c_char_p
    lib.fo_options_default.argtypes = [ctypes.POINTER(FoOptions)]
    lib.fo_hparams_default.argtypes = [c_int, ctypes.POINTER(FoHparams)]
    lib.fo_optimizer_create.argtypes = [
        ctypes.POINTER(c_void_p), ctypes.POINTER(FoOptions), ctypes.POINTER(FoHparams), c_int,
        ctypes.POINTER(FoTensorDesc), c_int64]
    lib.fo_optimizer_step.argtypes = [c_void_p, c_void_p]
    lib.fo_optimizer_destroy.argtypes = [c_void_p]
    lib.fo_optimizer_state_ptr.argtypes = [c_void_p, c_int64, c_int,
                                           ctypes.POINTER(ctypes.POINTER(c_float))]
    opts = FoOptions()
    check(lib, lib.fo_options_default(ctypes.byref(opts)), "fo_options_default")
    if opts.struct_size != ctypes.sizeof(FoOptions):
        sys.exit("bench_torch: fo_options is %d bytes in the library, %d in this script: "
                 "update the ctypes mirror" % (opts.struct_size, ctypes.sizeof(FoOptions)))
    # fo_hparams_default writes sizeof(fo_hparams) bytes: check that the
    # mirror is that large before trusting it (a smaller one would be
    # overrun), through a buffer of ample size.
    probe = ctypes.create_string_buffer(4096)
    check(lib, lib.fo_hparams_default(0, ctypes.cast(probe, ctypes.POINTER(FoHparams))),
          "fo_hparams_default")
    size = ctypes.c_size_t.from_buffer(probe).value
    if size != ctypes.sizeof(FoHparams):
        sys.exit("bench_torch: fo_hparams is %d bytes in the library, %d in this script: "
                 "update the ctypes mirror" % (size, ctypes.sizeof(FoHparams)))
    return lib


def check(lib, status, what):
    if status != FO_SUCCESS:
        raise RuntimeError("%s: status %d: %s" % (what, status, lib.fo_last_error().decode()))


class FusedOpt:
    """One fusedopt optimizer over torch tensors (external storage)."""

    def __init__(self, lib, alg, params, grads, groups, hp, master, cuda, threads,
                 max_grad_norm=0.0):
        self.lib = lib
        opts = FoOptions()
        check(lib, lib.fo_options_default(ctypes.byref(opts)), "fo_options_default")
        opts.algorithm = FO_ALG[alg]
        opts.executor = FO_EXEC_CUDA if cuda else FO_EXEC_CPU
        opts.device = (params[0].device.index or 0) if cuda else 0
        opts.storage = FO_STORAGE_EXTERNAL
        opts.param_dtype = FO_DTYPE[params[0].dtype]
        opts.grad_dtype = FO_DTYPE[grads[0].dtype]
        opts.master_weights = int(master)
        opts.num_threads = 0 if cuda else threads
        opts.max_grad_norm = max_grad_norm
        hps = (FoHparams * 2)()
        for g in range(2):
            check(lib, lib.fo_hparams_default(FO_ALG[alg], ctypes.byref(hps[g])), "hparams")
            hps[g].lr, hps[g].momentum = hp["lr"], hp.get("momentum", 0.0)
            hps[g].weight_decay = hp["weight_decay"] if g == 0 else 0.0
        desc = (FoTensorDesc * len(params))()
        for i, (p, gr) in enumerate(zip(params, grads)):
            desc[i].numel, desc[i].group = p.numel(), groups[i]
            desc[i].param, desc[i].grad = p.data_ptr(), gr.data_ptr()
        self.handle = c_void_p()
        self.cuda = cuda
        check(lib, lib.fo_optimizer_create(ctypes.byref(self.handle), ctypes.byref(opts), hps,
                                           2, desc, len(params)), "fo_optimizer_create")

    def step(self):
        stream = torch.cuda.current_stream().cuda_stream if self.cuda else None
        check(self.lib, self.lib.fo_optimizer_step(self.handle, stream), "fo_optimizer_step")

    def master(self, index, numel, device):
        """A copy of tensor index's fp32 master weights."""
        ptr = ctypes.POINTER(c_float)()
        check(self.lib, self.lib.fo_optimizer_state_ptr(self.handle, index, FO_ROLE_MASTER,
                                                        ctypes.byref(ptr)), "state_ptr")
        out = torch.empty(numel, dtype=torch.float32, device=device)
        if self.cuda:
            torch.cuda.synchronize()
            cuda_memcpy(out.data_ptr(), ctypes.cast(ptr, c_void_p).value, numel * 4)
        else:
            ctypes.memmove(out.data_ptr(), ptr, numel * 4)
        return out

    def close(self):
        if self.handle:
            self.lib.fo_optimizer_destroy(self.handle)
            self.handle = c_void_p()


def cuda_memcpy(dst, src, nbytes):
    """cudaMemcpy (default kind) through the runtime libfusedopt loaded."""
    for name in ("libcudart.so.13", "libcudart.so.12", "libcudart.so"):
        try:
            rt = ctypes.CDLL(name)
            break
        except OSError:
            continue
    else:
        raise RuntimeError("no libcudart to read fusedopt's master weights")
    rt.cudaMemcpy.argtypes = [c_void_p, c_void_p, c_size_t, c_int]
    if rt.cudaMemcpy(dst, src, nbytes, 4) != 0:  # 4: cudaMemcpyDefault
        raise RuntimeError("cudaMemcpy failed")


# ------------------------------------------------------------------- lists

def gpt2_shapes():
    """(numel, group) of GPT-2 124M's 148 tensors; group 1: biases, norms."""
    c, t = 768, [(50257 * 768, 0), (1024 * 768, 0)]
    for _ in range(12):
        t += [(c, 1), (c, 1), (c * 3 * c, 0), (3 * c, 1), (c * c, 0), (c, 1), (c, 1), (c, 1),
              (c * 4 * c, 0), (4 * c, 1), (4 * c * c, 0), (c, 1)]
    return t + [(c, 1), (c, 1)]


def llama_shapes(layers):
    """Llama-7B-style decoder layers (bench's list b)."""
    h, f = 4096, 11008
    layer = [(h, 1)] + [(h * h, 0)] * 4 + [(h, 1)] + [(h * f, 0)] * 3
    return layer * layers


def mix64(z):
    """bench/values.h's bv_mix (splitmix64's finaliser)."""
    mask = (1 << 64) - 1
    z = ((z ^ (z >> 30)) * 0xbf58476d1ce4e5b9) & mask
    z = ((z ^ (z >> 27)) * 0x94d049bb133111eb) & mask
    return z ^ (z >> 31)


def tiny_shapes():
    """4096 tensors of sizes 1..4096, the same as bench's list d."""
    return [(1 + mix64(0x5eed + i) % 4096, 0) for i in range(4096)]


def mlp_shapes():
    return [(64 * 128, 0), (128, 1), (128 * 10, 0), (10, 1)]


def list_shapes(name, args):
    if name == "a":
        return gpt2_shapes()
    if name == "b":
        return llama_shapes(args.layers)
    if name == "c":
        return [(args.huge, 0)]
    if name == "d":
        return tiny_shapes()
    if name == "mlp":
        return mlp_shapes()
    sys.exit("bench_torch: unknown list %r (a, b, c, d, mlp)" % name)

# (alg, config): hyper-parameters as bench/model.c's
CASES = [("adamw", "fp32"), ("adamw", "bf16"), ("adam", "fp32"), ("sgd", "fp32")]
HPARAMS = {"adamw": {"lr": 1e-3, "weight_decay": 1e-2},
           "adam": {"lr": 1e-3, "weight_decay": 0.0},
           "sgd": {"lr": 1e-3, "weight_decay": 0.0, "momentum": 0.9}}


def bytes_per_param(impl, alg, config, clip=False):
    """Counted bytes per parameter (bench/model.c); torch's bf16 state is bf16.
    With clipping, one more read of the gradient (the norm's) for every
    implementation: the least any can move (torch's clip_grad_norm_ also
    writes the scaled gradients back, which is not counted)."""
    state = 2 if alg in ("adam", "adamw") else 1
    norm_read = (4 if config == "fp32" else 2) if clip else 0
    if config == "fp32":
        step = 12 + 8 * state
    elif impl.startswith("torch"):
        step = 6 + 4 * state  # p r+w, g r, state r+w, all 2 bytes
    elif config == "bf16-master":
        step = 12 + 8 * state
    else:
        step = 6 + 8 * state
    return step + norm_read


def clipped(step, params, max_norm, foreach):
    """step after torch.nn.utils.clip_grad_norm_ (max_norm 0: step alone),
    the way a PyTorch training loop clips: foreach where this torch has it
    and the implementation is a multi-tensor one."""
    if not max_norm:
        return step
    kw = {}
    if "foreach" in inspect.signature(torch.nn.utils.clip_grad_norm_).parameters:
        kw["foreach"] = foreach

    def run():
        torch.nn.utils.clip_grad_norm_(params, max_norm, **kw)
        return step()
    return run


# ------------------------------------------------------------- the tensors

def make_inputs(shapes, dtype, device, seed):
    """Weights in [-0.05, 0.05), gradients in [-1, 1), drawn where they live
    (list b's 3 GB would take long on the host)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    params = [((torch.rand(n, generator=gen, device=device) * 2 - 1) * 0.05).to(dtype)
              for n, _ in shapes]
    grads = [(torch.rand(n, generator=gen, device=device) * 2 - 1).to(dtype) for n, _ in shapes]
    return params, grads


def torch_groups(params, shapes, hp):
    """Two groups as training uses them: decay on matrices only."""
    extra = {k: v for k, v in hp.items() if k != "weight_decay"}
    return [dict(params=[p for p, (_, g) in zip(params, shapes) if g == 0],
                 weight_decay=hp["weight_decay"], **extra),
            dict(params=[p for p, (_, g) in zip(params, shapes) if g == 1],
                 weight_decay=0.0, **extra)]


def torch_optimizer(alg, params, shapes, hp, **kw):
    cls = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}[alg]
    accepted = inspect.signature(cls.__init__).parameters
    if any(k not in accepted for k in kw):
        return None  # this torch lacks the variant (fused on old versions, ...)
    try:
        return cls(torch_groups(params, shapes, hp), **kw)
    except (RuntimeError, ValueError):
        return None


def as_leaf_params(params, grads):
    """torch optimizers step tensors whose .grad is set."""
    out = []
    for p, g in zip(params, grads):
        t = torch.nn.Parameter(p, requires_grad=True)
        t.grad = g
        out.append(t)
    return out


# ---------------------------------------------------------------- timing

class Timer:
    """Marks between steps: CUDA events on the GPU, perf_counter on the CPU."""

    def __init__(self, cuda, n):
        self.cuda = cuda
        self.marks = [torch.cuda.Event(enable_timing=True) for _ in range(n)] if cuda else [0.0] * n

    def mark(self, i):
        if self.cuda:
            self.marks[i].record()
        else:
            self.marks[i] = time.perf_counter()

    def intervals_us(self):
        if self.cuda:
            self.marks[-1].synchronize()
            return [a.elapsed_time(b) * 1e3 for a, b in zip(self.marks, self.marks[1:])]
        return [(b - a) * 1e6 for a, b in zip(self.marks, self.marks[1:])]


def timed_rounds(impls, rounds, cuda, per_mark=1):
    """Marks around rounds of every impl's step (per_mark steps of it
    between two marks); microseconds per step, round-major."""
    if cuda:
        torch.cuda.synchronize()
    timer = Timer(cuda, rounds * len(impls) + 1)
    timer.mark(0)
    k = 0
    for _ in range(rounds):
        for _, step in impls:
            for _ in range(per_mark):
                step()
            k += 1
            timer.mark(k)
    return [us / per_mark for us in timer.intervals_us()]


# On CUDA a mark is an event recorded from Python, a few microseconds of
# host time: between every two steps it would be part of each figure where
# the host is the bottleneck (the 4-tensor MLP's step takes ~15 us).  So
# the marks are at least MARK_EVERY_US of device time apart: short steps
# are timed in runs of up to MAX_PER_MARK back to back.
MARK_EVERY_US = 200.0
MAX_PER_MARK = 16


def warm_up(step, warmup, cuda):
    """Run the warm-up steps; on CUDA, how many steps go between two marks
    (from the mean of a few more steps after it; 1 without a warm-up or on
    the CPU)."""
    for _ in range(warmup):
        step()
    if not cuda or warmup < 1:
        return 1
    # The estimate comes from steps after the warm-up: the first step of a
    # torch.optim optimizer creates its state (cudaMalloc after the
    # empty_cache() before timing, lazy module loads), which would make a
    # 15 us step look like 200+ us and time it one step per mark.
    us = timed_rounds([("probe", step)], 1, cuda, per_mark=min(warmup, 4))[0]
    return max(1, min(MAX_PER_MARK, int(MARK_EVERY_US // max(us, 1e-3))))


def time_impls(impls, reps, warmup, cuda):
    """impls: [(name, step function)]; median microseconds per name, and
    the steps per mark of each (on CUDA; 1 on the CPU).  On the
    CPU the implementations take turns round by round (a shared host's
    bandwidth drifts; turns expose them all to it alike); on CUDA each runs
    its steps back to back, so the device queue stays full as in training
    and no step pays for an idle device left by the one before (bench's
    method, docs/performance.md)."""
    if not cuda:
        for _ in range(warmup):
            for _, step in impls:
                step()
        us = timed_rounds(impls, reps, cuda)
        return ({name: statistics.median(us[j::len(impls)]) for j, (name, _) in enumerate(impls)},
                {name: 1 for name, _ in impls})
    med, per = {}, {}
    for name, step in impls:
        progress("timing " + name)
        per[name] = warm_up(step, warmup, cuda)
        med[name] = statistics.median(timed_rounds([(name, step)], reps, cuda, per[name]))
    return med, per


def progress(what):
    """A line on stderr before each CUDA stage, flushed: a fault reported
    later (an illegal address surfaces at the next synchronize) is then
    placed by the last line before it."""
    print("# " + what, file=sys.stderr, flush=True)


# The implementations whose capture failed, for the summary (and
# --require-graphs): a run without its graph rows must not read as one
# whose graphs replayed cleanly.
CAPTURE_FAILURES = []


def graphed(step, name):
    """Capture step into a CUDA graph after warm-up on a side stream (the
    recipe of torch.cuda.graph's documentation); None if capture fails."""
    progress("capturing " + name)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            step()
    except RuntimeError as e:
        print("# graph capture failed: %s" % str(e).splitlines()[0], file=sys.stderr)
        CAPTURE_FAILURES.append(name)
        return None
    return graph.replay


# ------------------------------------------------------------- one case

def fo_configs(config):
    """fusedopt's configurations for a torch dtype configuration."""
    return [("fp32", False)] if config == "fp32" else [("bf16-master", True), ("bf16", False)]


def build_impls(args, lib, alg, config, shapes, params, grads, hp, cuda):
    """Every implementation's step over the same tensors; also returns what
    must outlive the timing: the fusedopt optimizers (closed afterwards) and
    the capturable torch optimizers whose graphs are timed.  A graph holds
    the addresses its capture used, not the tensors: once the optimizer
    that owns them is gone, its state returns to torch's caching allocator,
    the next capture's empty_cache() gives it back to the driver, and a
    replay writes to unmapped memory (an illegal address) or, where the
    address was handed out again, into another tensor."""
    leaf = as_leaf_params(params, grads)
    groups = [g for _, g in shapes]
    impls, owned = [], []
    for name, master in fo_configs(config):
        fo = FusedOpt(lib, alg, params, grads, groups, hp, master, cuda, args.threads, args.clip)
        owned.append(fo)
        impls.append(("fusedopt_" + name, fo.step))
        if cuda and not args.no_graph:
            # the graph gets an optimizer of its own: once one of its steps
            # is captured, an optimizer computes every later step's scalars
            # on the device (docs/api.md), and the eager row must time the
            # eager step a training loop gets
            gfo = FusedOpt(lib, alg, params, grads, groups, hp, master, cuda, args.threads,
                           args.clip)
            owned.append(gfo)
            replay = graphed(gfo.step, "fusedopt_" + name)
            if replay:
                impls.append(("fusedopt_" + name + "_graph", replay))
    variants = [("torch_fused", {"fused": True}), ("torch_foreach", {"foreach": True})]
    if not cuda:
        variants.append(("torch_single", {"foreach": False}))
    for name, kw in variants:
        multi = name != "torch_single"
        opt = torch_optimizer(alg, leaf, shapes, hp, **kw)
        if opt is not None:
            impls.append((name, clipped(opt.step, leaf, args.clip, multi)))
        if cuda and not args.no_graph and alg != "sgd":
            cap = torch_optimizer(alg, leaf, shapes, hp, capturable=True, **kw)
            replay = graphed(clipped(cap.step, leaf, args.clip, multi), name) \
                if cap is not None else None
            if replay:
                impls.append((name + "_graph", replay))
                owned.append(cap)  # its state is what the graph writes
        elif cuda and not args.no_graph and opt is not None:
            # SGD has no step counter to capture
            replay = graphed(clipped(opt.step, leaf, args.clip, multi), name)
            if replay:
                impls.append((name + "_graph", replay))
    return impls, owned


def check_case(args, lib, alg, config, shapes, hp, device, cuda):
    """{fusedopt config: relative error} after args.check_steps steps."""
    dtype = torch.float32 if config == "fp32" else torch.bfloat16
    p0, g = make_inputs(shapes, dtype, device, seed=2)
    # new gradients at every step (a constant gradient makes Adam's update
    # lr * sign(g) whatever betas and moments do): the same for both
    steps_g = [g] + [make_inputs(shapes, dtype, device, seed=3 + k)[1]
                     for k in range(args.check_steps - 1)]
    # the reference's own gradients: clip_grad_norm_ scales them in place,
    # and fusedopt must clip the originals itself
    ref = as_leaf_params([p.float().clone() for p in p0], [x.float().clone() for x in g])
    opt = torch_optimizer(alg, ref, shapes, hp, foreach=False)
    step = clipped(opt.step, ref, args.clip, False)
    for k in range(args.check_steps):
        for r, x in zip(ref, steps_g[k]):
            r.grad.copy_(x)
        step()
    out = {}
    for name, master in fo_configs(config):
        ps = [p.clone() for p in p0]
        gs = [x.clone() for x in g]
        fo = FusedOpt(lib, alg, ps, gs, [x for _, x in shapes], hp, master, cuda, args.threads,
                      args.clip)
        for k in range(args.check_steps):
            for d, x in zip(gs, steps_g[k]):
                d.copy_(x)
            fo.step()
        if cuda:
            torch.cuda.synchronize()
        w = [fo.master(i, p.numel(), device) if master else p.float() for i, p in enumerate(ps)]
        fo.close()
        num = sum(float(((a - r.detach()) ** 2).sum()) for a, r in zip(w, ref))
        den = sum(float(((r.detach() - p.float()) ** 2).sum()) for r, p in zip(ref, p0))
        out[name] = (num / den) ** 0.5 if den > 0 else float("inf")
    return out


def tolerance(fo_config):
    """fp32 weights: rounding order only; bf16 weights without master are
    rounded every step (half an ulp of 2.4e-4 against updates of ~4e-3;
    with new gradients at every check step, 3.6e-2 measured on the MLP)."""
    return 8e-2 if fo_config == "bf16" else 1e-4


def time_case(args, lib, alg, config, shapes, device, cuda):
    """Median microseconds per implementation (and steps per mark, as
    time_impls); everything it allocated is
    freed when it returns (list b needs the memory for the check)."""
    dtype = torch.float32 if config == "fp32" else torch.bfloat16
    params, grads = make_inputs(shapes, dtype, device, seed=1)
    impls, owned = build_impls(args, lib, alg, config, shapes, params, grads, HPARAMS[alg], cuda)
    if cuda:
        # Whatever the captures left unowned goes back to the driver now, so
        # a graph that still points at it faults here, at its first replay,
        # instead of writing into a tensor allocated later.
        torch.cuda.empty_cache()
    try:
        return time_impls(impls, args.reps, args.warmup, cuda)
    finally:
        for obj in owned:
            if isinstance(obj, FusedOpt):
                obj.close()


def run_case(args, lib, list_name, alg, config, device, cuda):
    shapes = list_shapes(list_name, args)
    med, per = time_case(args, lib, alg, config, shapes, device, cuda)
    if cuda:
        torch.cuda.empty_cache()
    errs = check_case(args, lib, alg, config, shapes, HPARAMS[alg], device, cuda)
    return rows_of(list_name, alg, config, shapes, med, per, errs, args.clip)


def rows_of(list_name, alg, config, shapes, med, per, errs, clip=0.0):
    """One row per implementation; speedup = this time / fusedopt's eager time
    (fusedopt's bf16-master for torch's bf16 rows).  With clipping, each
    configuration is named with "-clip"."""
    numel = sum(n for n, _ in shapes)
    base = med["fusedopt_fp32" if config == "fp32" else "fusedopt_bf16-master"]
    rows = []
    for impl, us in med.items():
        fo_cfg = impl[len("fusedopt_"):].replace("_graph", "") if impl.startswith("fusedopt") else None
        nbytes = bytes_per_param(impl, alg, fo_cfg or config, bool(clip)) * numel
        # the check ran eager steps: a graph row's replays are not what it
        # compared (python/tests/test_torch.py's Cuda graph tests compare
        # captured steps with torch), so its column stays empty
        err = errs.get(fo_cfg) if fo_cfg and not impl.endswith("_graph") else None
        rows.append(dict(list=list_name, alg=alg, config=(fo_cfg or config) + ("-clip" if clip
                                                                                else ""),
                         impl=impl,
                         tensors=len(shapes), params=numel, bytes=nbytes, time_us=us,
                         gbps=nbytes / us * 1e-3, fusedopt_speedup=us / base,
                         check_err=err, check=("" if err is None else
                                               "ok" if err <= tolerance(fo_cfg) else "FAIL"),
                         steps_per_mark=per[impl]))
    return rows


# ------------------------------------------------------------------ output

COLUMNS = ["list", "alg", "config", "impl", "tensors", "params", "bytes", "time_us", "gbps",
           "fusedopt_speedup", "check_err", "check", "steps_per_mark"]


def print_row(r):
    err = "" if r["check_err"] is None else "%s %.1e" % (r["check"], r["check_err"])
    print("  %-4s %-6s %-16s %-26s %5d %11d %11.1f %9.1f %12.3f  %s" % (
        r["list"], r["alg"], r["config"], r["impl"], r["tensors"], r["params"], r["time_us"],
        r["gbps"], r["fusedopt_speedup"], err), flush=True)


def csv_header(f):
    f.write("mode,device,torch," + ",".join(COLUMNS) + "\n")


def csv_row(f, mode, device_name, r):
    vals = ["" if r[c] is None else ("%.4g" % r[c] if isinstance(r[c], float) else str(r[c]))
            for c in COLUMNS]
    f.write("%s,%s,%s,%s\n" % (mode, device_name.replace(",", ";"), torch.__version__,
                               ",".join(vals)))
    f.flush()  # rows so far survive a run cut short


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lib", help="path of libfusedopt.so")
    ap.add_argument("--cpu", action="store_true", help="CPU executor against torch on the CPU")
    ap.add_argument("--lists", default="a,mlp",
                    help="comma-separated: a (GPT-2 124M), mlp (4-tensor MLP), and bench's "
                         "b (Llama-7B layers), c (one huge tensor), d (4096 tiny tensors); "
                         "default a,mlp")
    ap.add_argument("--layers", type=int, default=4, help="layers of list b (default 4)")
    ap.add_argument("--huge", type=int, default=None,
                    help="elements of list c (default 256M on CUDA, 64M on the CPU)")
    ap.add_argument("--cases", default="all",
                    help="alg:config pairs, e.g. adamw:fp32,sgd:fp32 (default all)")
    ap.add_argument("--reps", type=int, default=None, help="timed steps (50 GPU, 10 CPU)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps (5 GPU, 2 CPU)")
    ap.add_argument("--check-steps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=os.cpu_count(),
                    help="CPU threads of torch and of the CPU executor (default: every core)")
    ap.add_argument("--no-graph", action="store_true", help="skip the CUDA-graph rows")
    ap.add_argument("--clip", type=float, default=0.0,
                    help="clip the global gradient norm to this before every step: "
                         "torch.nn.utils.clip_grad_norm_ for torch's optimizers, "
                         "max_grad_norm for fusedopt's (default 0: off)")
    ap.add_argument("--csv", help="write the rows as CSV")
    ap.add_argument("--require-graphs", action="store_true",
                    help="exit 3 when a CUDA graph capture failed (its rows are missing)")
    args = ap.parse_args()
    cuda = not args.cpu
    args.reps = args.reps or (50 if cuda else 10)
    args.warmup = args.warmup if args.warmup is not None else (5 if cuda else 2)
    args.huge = args.huge or (256 if cuda else 64) << 20
    if cuda and not torch.cuda.is_available():
        print("bench_torch: no CUDA device visible to torch %s: skipped (--cpu runs the CPU "
              "comparison)" % torch.__version__)
        return 0
    torch.set_num_threads(args.threads)
    lib = load_lib(find_lib(args.lib))
    device = torch.device("cuda" if cuda else "cpu")
    name = torch.cuda.get_device_name() if cuda else "%s, %d thread%s" % (
        cpu_model(), args.threads, "" if args.threads == 1 else "s")
    cases = CASES if args.cases == "all" else [tuple(c.split(":")) for c in args.cases.split(",")]
    print("# fusedopt vs torch %s on %s; median of %d steps after %d warm-up; speedup = "
          "time / fusedopt's eager time" % (torch.__version__, name, args.reps, args.warmup))
    print("# %-4s %-6s %-16s %-26s %5s %11s %11s %9s %12s  %s" % (
        "list", "alg", "config", "impl", "tens", "params", "time(us)", "GB/s", "vs fusedopt",
        "check"))
    rows = []
    csv = open(args.csv, "w") if args.csv else None
    if csv:
        csv_header(csv)
    for list_name in args.lists.split(","):
        for alg, config in cases:
            for r in run_case(args, lib, list_name, alg, config, device, cuda):
                print_row(r)
                if csv:
                    csv_row(csv, "cuda" if cuda else "cpu", name, r)
                rows.append(r)
    if csv:
        csv.close()
    failed = [r for r in rows if r["check"] == "FAIL"]
    if failed:
        print("# %d correctness checks FAILED" % len(failed))
    if CAPTURE_FAILURES:
        print("# %d graph captures failed, their rows are missing: %s"
              % (len(CAPTURE_FAILURES), ", ".join(CAPTURE_FAILURES)))
    if failed:
        return 2
    return 3 if args.require_graphs and CAPTURE_FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
