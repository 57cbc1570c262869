#!/usr/bin/env python3
"""Train the digits MLP of examples/train in PyTorch with fusedopt.torch.AdamW.

    FUSEDOPT_LIBRARY=build/host/libfusedopt.so PYTHONPATH=python \\
        python3 examples/train_torch.py [--compare-torch] [--epochs 30]

The 8x8 handwritten digits (data/digits.csv.gz, shipped), a seeded
80/20 split, an MLP 64-128-128-10 (ReLU), AdamW lr 2e-3, weight decay
0.05 (none on biases), linear warmup (one epoch, at most a fifth of the
run, as examples/train's default) then a cosine schedule
(torch.optim.lr_scheduler.LambdaLR changing group["lr"], which fusedopt
pushes to the library before each step), batch 64, 30 epochs.  One line
per epoch, as examples/train prints them (the lr column: the epoch's last
step's; the step count without skipped steps); the curves go to
out/train_torch_fusedopt.csv (and out/train_torch_torch.csv with
--compare-torch) and, when gnuplot is installed, out/train_torch.png.

--compare-torch trains torch.optim.AdamW beside it from the same initial
weights on the same batches and prints both, and the largest parameter
difference at the end.  --precision bf16 trains bf16 parameters with
fusedopt's fp32 master weights and its dynamic loss scaler.
--device cuda runs on the GPU (fusedopt's CUDA executor on
torch.cuda.current_stream()).
"""

import argparse
import csv
import gzip
import math
import os
import shutil
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "python"))  # the source tree's package

import fusedopt.torch  # noqa: E402


def load_digits(path):
    """The rows of a digits CSV, gzipped or plain (as examples/train reads
    it); a file it cannot use ends the program with one line (exit 1)."""
    xs, ys = [], []
    try:
        with open(path, "rb") as raw:
            gzipped = raw.read(2) == b"\x1f\x8b"
        with (gzip.open(path, "rt") if gzipped else open(path)) as f:
            for n, line in enumerate(f, 1):
                fields = line.strip().split(",")
                if len(fields) != 65:
                    raise SystemExit("train_torch: %s:%d: %d fields, want 65"
                                     % (path, n, len(fields)))
                try:
                    xs.append([int(v) / 16.0 for v in fields[:64]])
                    ys.append(int(fields[64]))
                except ValueError:
                    raise SystemExit("train_torch: %s:%d: a field is not an integer" % (path, n))
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise SystemExit("train_torch: cannot read the data file %s: %s" % (path, e))
    if not ys:
        raise SystemExit("train_torch: the data file %s holds no rows" % path)
    return torch.tensor(xs), torch.tensor(ys)


def make_model(seed, dtype, device, hidden):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(),
                                torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
                                torch.nn.Linear(hidden, 10))
    return model.to(device=device, dtype=dtype)


def param_groups(model, wd):
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


class Run:
    def __init__(self, name, model, opt, sched, scaled):
        self.name, self.model, self.opt, self.sched, self.scaled = name, model, opt, sched, scaled
        self.rows = []

    def train_step(self, x, y):
        self.lr = self.opt.param_groups[0]["lr"]  # this step's, before the scheduler moves it
        self.opt.zero_grad()
        logits = self.model(x.to(next(self.model.parameters()).dtype))
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        (self.opt.scale_loss(loss) if self.scaled else loss).backward()
        self.opt.step()
        self.sched.step()
        return loss.detach()

    @torch.no_grad()
    def accuracy(self, x, y):
        logits = self.model(x.to(next(self.model.parameters()).dtype))
        return (logits.argmax(1) == y).float().mean().item()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--wd", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    ap.add_argument("--compare-torch", action="store_true",
                    help="also train torch.optim.AdamW from the same start")
    ap.add_argument("--data", default=os.path.join(HERE, "..", "data", "digits.csv.gz"))
    ap.add_argument("--out", default="out")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args()
    for name in ("epochs", "batch", "hidden"):
        if getattr(args, name) < 1:
            ap.error("--%s %d: must be >= 1" % (name, getattr(args, name)))
    if not (0 < args.lr < math.inf):
        ap.error("--lr %g: must be positive and finite" % args.lr)
    if not (0 <= args.wd < math.inf):
        ap.error("--wd %g: must be >= 0 and finite" % args.wd)

    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        ap.error("--device %s: %s" % (args.device, e))
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device %s: torch %s sees no usable CUDA device" % (args.device, torch.__version__))
    if device.type not in ("cpu", "cuda"):
        ap.error("--device %s: fusedopt runs on cpu or cuda" % args.device)
    if device.type == "cpu" and device.index not in (None, 0):
        ap.error("--device %s: there is one cpu device" % args.device)
    if device.type == "cuda" and device.index is not None and \
            device.index >= torch.cuda.device_count():
        ap.error("--device %s: torch sees %d CUDA device(s)"
                 % (args.device, torch.cuda.device_count()))
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        ap.error("--out %s: not a directory" % args.out)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    x, y = load_digits(args.data)
    g = torch.Generator().manual_seed(args.seed)
    perm = torch.randperm(len(y), generator=g)
    n_val = int(0.2 * len(y))
    xv, yv = x[perm[:n_val]].to(device), y[perm[:n_val]].to(device)
    xt, yt = x[perm[n_val:]].to(device), y[perm[n_val:]].to(device)
    steps_per_epoch = len(yt) // args.batch
    if steps_per_epoch == 0:
        ap.error("--batch %d is larger than the %d training rows" % (args.batch, len(yt)))
    total = steps_per_epoch * args.epochs
    warmup = min(steps_per_epoch, total // 5)  # examples/train's default

    def factor(k):  # the lr factor of step k+1, as examples/train's schedule
        if k < warmup:
            return (k + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (k - warmup) / max(1, total - warmup))))

    n_params = sum(p.numel() for p in make_model(args.seed, dtype, "cpu", args.hidden).parameters())
    print("fusedopt %s (libfusedopt %s), torch %s: 8x8 digits, %d train / %d validation images; "
          "MLP 64-%d-%d-10 (ReLU), %d parameters" % (fusedopt.__version__,
                                                      fusedopt.library_version(),
                                                      torch.__version__, len(yt), len(yv),
                                                      args.hidden, args.hidden, n_params))
    print("%s, %s, batch %d, %d steps/epoch, %d epoch%s, warmup %d steps then cosine"
          % (device, args.precision, args.batch, steps_per_epoch, args.epochs,
             "" if args.epochs == 1 else "s", warmup))

    runs = []
    model = make_model(args.seed, dtype, device, args.hidden)
    opt = fusedopt.torch.AdamW(param_groups(model, args.wd), lr=args.lr,
                               loss_scale=args.precision != "fp32")
    runs.append(Run("fusedopt", model, opt, torch.optim.lr_scheduler.LambdaLR(opt, factor),
                    args.precision != "fp32"))
    if args.compare_torch:
        model = make_model(args.seed, torch.float32 if dtype != torch.float32 else dtype,
                           device, args.hidden)
        if dtype != torch.float32:  # torch gets fp32 weights, rounded from the same bf16 start
            with torch.no_grad():
                for p, q in zip(model.parameters(), runs[0].model.parameters()):
                    p.copy_(q.float())
        opt = torch.optim.AdamW(param_groups(model, args.wd), lr=args.lr)
        runs.append(Run("torch", model, opt, torch.optim.lr_scheduler.LambdaLR(opt, factor),
                        False))

    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as e:
        raise SystemExit("train_torch: cannot create --out %s: %s" % (args.out, e))
    for run in runs:
        print("%s: AdamW lr %g, weight decay %g (none on biases), betas 0.9, 0.999"
              % (run.name, args.lr, args.wd))
    step = 0
    for epoch in range(1, args.epochs + 1):
        order = torch.randperm(len(yt), generator=g).to(device)
        sums = [torch.zeros((), device=device) for _ in runs]
        times = [0.0 for _ in runs]
        for b in range(steps_per_epoch):
            idx = order[b * args.batch:(b + 1) * args.batch]
            for i, run in enumerate(runs):
                t0 = time.perf_counter()
                sums[i] += run.train_step(xt[idx], yt[idx])
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times[i] += time.perf_counter() - t0
            step += 1
        for i, run in enumerate(runs):
            loss = sums[i].item() / steps_per_epoch
            acc = run.accuracy(xv, yv)
            if run.name == "fusedopt":
                info = run.opt.info()
                scale, skipped, steps = info.loss_scale, info.skipped_steps, info.step
            else:
                scale, skipped, steps = 1.0, 0, step
            sps = steps_per_epoch * args.batch / max(times[i], 1e-9)
            run.rows.append((epoch, steps, loss, acc, run.lr, scale, skipped, sps))
            print("%-8s epoch %3d/%d  loss %.4f  val acc %6.2f%%  lr %.3e  scale %-11.9g  "
                  "skipped %d  %.0f samples/s" % (run.name, epoch, args.epochs, loss, 100 * acc,
                                                  run.lr, scale, skipped, sps))

    for run in runs:
        last = run.rows[-1]
        print("done: %s AdamW reached %.2f%% validation accuracy, training loss %.4f, in %d "
              "epoch%s (%d steps, %d skipped)" % (run.name, 100 * last[3], last[2], args.epochs,
                                                  "" if args.epochs == 1 else "s", last[1],
                                                  last[6]))
        path = os.path.join(args.out, "train_torch_%s.csv" % run.name)
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["epoch", "step", "train_loss", "val_acc", "lr", "loss_scale", "skipped",
                        "samples_per_s"])
            w.writerows(run.rows)
        print("curves: %s" % path)
    if args.compare_torch:
        diff = max((p.float() - q.float()).abs().max().item()
                   for p, q in zip(runs[0].model.parameters(), runs[1].model.parameters()))
        print("largest parameter difference, fusedopt vs torch.optim.AdamW: %.3g%s"
              % (diff, " (torch's run in fp32)" if dtype != torch.float32 else ""))
    plot(args, runs)


def plot(args, runs):
    script = os.path.join(args.out, "train_torch.gp")
    png = os.path.join(args.out, "train_torch.png")
    lines = ["set terminal pngcairo size 900,500", "set output '%s'" % png,
             "set datafile separator ','", "set key autotitle columnhead",
             "set xlabel 'epoch'", "set ylabel 'training loss'", "set y2label 'val acc'",
             "set y2tics", "plot " + ", ".join(
                 "'%s' using 1:3 with lines title '%s loss', '%s' using 1:4 axes x1y2 with "
                 "lines title '%s val acc'" % (os.path.join(args.out, "train_torch_%s.csv"
                                                            % r.name), r.name,
                                               os.path.join(args.out, "train_torch_%s.csv"
                                                            % r.name), r.name)
                 for r in runs)]
    with open(script, "w") as f:
        f.write("\n".join(lines) + "\n")
    if args.no_plot:
        print("plot: skipped (--no-plot); gnuplot script: %s" % script)
    elif not shutil.which("gnuplot"):
        print("plot: gnuplot is not installed; gnuplot script: %s" % script)
    elif subprocess.call(["gnuplot", script]) != 0:
        print("plot: gnuplot failed on %s; the CSV is complete" % script)
    else:
        print("plot: %s" % png)


if __name__ == "__main__":
    main()
