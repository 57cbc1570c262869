"""fusedopt.Optimizer on the CPU executor: every algorithm against a
pure-Python double-precision reference written from docs/numerics.md,
errors carrying the library's message, checkpoints, zero_grad, and the
arguments refused in Python before the library is called."""

import array
import ctypes
import json
import math
import os
import random
import struct
import tempfile
import unittest

import fusedopt

TOL = 1e-5  # docs/numerics.md, TOL_F32: 1e-5 x the running max magnitude


def f32(x):
    """The nearest float32 (hyper-parameters are floats in the API)."""
    return struct.unpack("f", struct.pack("f", x))[0]


def rand_vec(rng, n, lo=0.1, hi=1.0):
    """Random signs and magnitudes in [lo, hi]: never zero."""
    return [rng.choice((-1.0, 1.0)) * rng.uniform(lo, hi) for _ in range(n)]


class Reference:
    """One tensor's update in double, from docs/numerics.md."""

    def __init__(self, alg, hp, w):
        self.alg = alg
        self.hp = {k: (f32(v) if isinstance(v, float) else v) for k, v in hp.items()}
        self.w = [f32(x) for x in w]
        n = len(w)
        self.m = [0.0] * n  # exp_avg / momentum buffer
        self.v = [0.0] * n
        self.vmax = [0.0] * n
        self.t = 0
        self.mu_product = 1.0

    def nadam_mu(self, t):
        return self.hp["beta1"] * (1 - 0.5 * 0.96 ** (t * self.hp["momentum_decay"]))

    def step_tensor(self, g):
        """LAMB and LARS: the whole tensor's norms first, then the update."""
        hp, t, w = self.hp, self.t, self.w
        lr, wd, adapt = hp["lr"], hp["weight_decay"], hp["layer_adaptation"]
        wn = math.sqrt(sum(x * x for x in w))
        if self.alg == "lamb":
            b1, b2 = hp["beta1"], hp["beta2"]
            u = []
            for i, gi in enumerate(g):
                self.m[i] = b1 * self.m[i] + (1 - b1) * gi
                self.v[i] = b2 * self.v[i] + (1 - b2) * gi * gi
                u.append((self.m[i] / (1 - b1 ** t))
                         / (math.sqrt(self.v[i] / (1 - b2 ** t)) + hp["eps"]) + wd * w[i])
            un = math.sqrt(sum(x * x for x in u))
            r = wn / un if adapt and wn > 0 and un > 0 else 1.0
            for i in range(len(w)):
                w[i] = w[i] - lr * r * u[i]
            return
        gn = math.sqrt(sum(x * x for x in g))
        local = (hp["trust_coef"] * wn / (gn + wd * wn)
                 if adapt and wn > 0 and gn > 0 else 1.0)
        mu = hp["momentum"]
        for i, gi in enumerate(g):
            d = (gi + wd * w[i]) * local
            if mu != 0:
                self.m[i] = d if t == 1 else mu * self.m[i] + (1 - hp["dampening"]) * d
                d = d + mu * self.m[i] if hp["nesterov"] else self.m[i]
            w[i] = w[i] - lr * d

    def lion_c(self, g):
        b1 = self.hp["beta1"]
        return [b1 * m + (1 - b1) * gi for m, gi in zip(self.m, g)]

    def step(self, g):
        hp, self.t = self.hp, self.t + 1
        t, lr, wd = self.t, hp["lr"], hp["weight_decay"]
        if hp["maximize"]:
            g = [-x for x in g]
        w = self.w
        if self.alg in ("lamb", "lars"):
            return self.step_tensor(g)
        if self.alg == "nadam":
            mu, mu_next = self.nadam_mu(t), self.nadam_mu(t + 1)
            self.mu_product *= mu
        for i, gi in enumerate(g):
            if self.alg == "adagrad":
                d = gi + wd * w[i]
                clr = lr / (1 + (t - 1) * hp["lr_decay"])
                if t == 1:
                    self.v[i] = hp["initial_accumulator_value"]
                self.v[i] += d * d
                w[i] = w[i] - clr * d / (math.sqrt(self.v[i]) + hp["eps"])
            elif self.alg == "rmsprop":
                d = gi + wd * w[i]
                a = hp["alpha"]
                self.v[i] = a * self.v[i] + (1 - a) * d * d
                avg = self.v[i]
                if hp["centered"]:
                    self.vmax[i] = a * self.vmax[i] + (1 - a) * d
                    avg = max(avg - self.vmax[i] ** 2, 0.0)
                avg = math.sqrt(avg) + hp["eps"]
                if hp["momentum"] > 0:
                    self.m[i] = hp["momentum"] * self.m[i] + d / avg
                    w[i] = w[i] - lr * self.m[i]
                else:
                    w[i] = w[i] - lr * d / avg
            elif self.alg == "nadam":
                if hp["decoupled_weight_decay"]:
                    d = gi
                    w[i] = w[i] * (1 - lr * wd)
                else:
                    d = gi + wd * w[i]
                b1, b2 = hp["beta1"], hp["beta2"]
                self.m[i] = b1 * self.m[i] + (1 - b1) * d
                self.v[i] = b2 * self.v[i] + (1 - b2) * d * d
                denom = math.sqrt(self.v[i] / (1 - b2 ** t)) + hp["eps"]
                w[i] = (w[i] - lr * (1 - mu) / (1 - self.mu_product) * d / denom
                        - lr * mu_next / (1 - self.mu_product * mu_next) * self.m[i] / denom)
            elif self.alg == "sgd":
                d = gi + wd * w[i]
                mu = hp["momentum"]
                if mu != 0:
                    if t == 1:
                        self.m[i] = d
                    else:
                        self.m[i] = mu * self.m[i] + (1 - hp["dampening"]) * d
                    d = d + mu * self.m[i] if hp["nesterov"] else self.m[i]
                w[i] = w[i] - lr * d
            elif self.alg in ("adam", "adamw"):
                if self.alg == "adam":
                    d = gi + wd * w[i]
                else:
                    d = gi
                    w[i] = w[i] * (1 - lr * wd)
                b1, b2 = hp["beta1"], hp["beta2"]
                self.m[i] = b1 * self.m[i] + (1 - b1) * d
                self.v[i] = b2 * self.v[i] + (1 - b2) * d * d
                v = self.v[i]
                if hp["amsgrad"]:
                    self.vmax[i] = max(self.vmax[i], v)
                    v = self.vmax[i]
                denom = math.sqrt(v) / math.sqrt(1 - b2 ** t) + hp["eps"]
                w[i] = w[i] - lr / (1 - b1 ** t) * self.m[i] / denom
            elif self.alg == "lion":
                b1, b2 = hp["beta1"], hp["beta2"]
                c = b1 * self.m[i] + (1 - b1) * gi
                s = (c > 0) - (c < 0)
                w[i] = w[i] * (1 - lr * wd) - lr * s
                self.m[i] = b2 * self.m[i] + (1 - b2) * gi
            else:
                raise AssertionError(self.alg)


CASES = [
    ("adamw", dict(lr=0.0517, weight_decay=0.0213, beta1=0.87, beta2=0.991, eps=1e-8)),
    ("adamw", dict(lr=0.0317, weight_decay=0.05, amsgrad=True)),
    ("adam", dict(lr=0.0417, weight_decay=0.0213, beta1=0.9, beta2=0.999)),
    ("adam", dict(lr=0.0217, amsgrad=True, maximize=True)),
    ("sgd", dict(lr=0.0517, momentum=0.9, dampening=0.1, weight_decay=0.0213)),
    ("sgd", dict(lr=0.0517, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("sgd", dict(lr=0.0717)),
    ("lion", dict(lr=0.0117, beta1=0.9, beta2=0.99, weight_decay=0.0213)),
    ("adagrad", dict(lr=0.0517, lr_decay=0.013, initial_accumulator_value=0.31,
                     weight_decay=0.0213)),
    ("adagrad", dict(lr=0.0317, maximize=True)),
    ("rmsprop", dict(lr=0.0117, alpha=0.93, weight_decay=0.0213)),
    ("rmsprop", dict(lr=0.0117, alpha=0.9, momentum=0.8, centered=True)),
    ("nadam", dict(lr=0.0217, weight_decay=0.0213, momentum_decay=0.0041)),
    ("nadam", dict(lr=0.0217, weight_decay=0.05, decoupled_weight_decay=True, maximize=True)),
    ("lamb", dict(lr=0.0217, weight_decay=0.0213, beta1=0.87, beta2=0.991, eps=1e-6)),
    ("lamb", dict(lr=0.0217, layer_adaptation=False)),
    ("lars", dict(lr=0.517, momentum=0.9, weight_decay=0.0213, trust_coef=0.0123)),
    ("lars", dict(lr=0.0517, momentum=0.9, nesterov=True)),
    ("lars", dict(lr=0.0517, momentum=0.0, layer_adaptation=False, maximize=True)),
]


class Algorithms(unittest.TestCase):
    def run_case(self, alg, overrides, seed, steps=3, sizes=(7, 33, 1)):
        rng = random.Random(seed)
        hp = fusedopt.default_hparams(alg)
        hp.update(overrides)
        params = [array.array("f", rand_vec(rng, n, 0.2, 2.0)) for n in sizes]
        refs = [Reference(alg, hp, list(p)) for p in params]
        wmax = [[abs(x) for x in p] for p in params]
        gmax = [[0.0] * len(p) for p in params]
        with fusedopt.Optimizer(params, alg, num_threads=2, **overrides) as opt:
            for _ in range(steps):
                for k, (g_buf, ref) in enumerate(zip(opt.grads, refs)):
                    g = rand_vec(rng, len(g_buf))
                    if alg == "lion":  # sign(c) near c = 0 (docs/numerics.md)
                        for i in range(len(g)):
                            while abs(ref.lion_c([g[i]] * len(g))[i]) < 0.01:
                                g[i] = rng.choice((-1.0, 1.0)) * rng.uniform(0.1, 1.0)
                    g = [f32(x) for x in g]
                    g_buf[:] = array.array("f", g)
                    ref.step(g)
                    gmax[k] = [max(a, abs(b)) for a, b in zip(gmax[k], g)]
                opt.step()
                for k, (p, ref) in enumerate(zip(params, refs)):
                    wmax[k] = [max(a, abs(b)) for a, b in zip(wmax[k], ref.w)]
                    for i in range(len(p)):
                        self.assertLessEqual(abs(p[i] - ref.w[i]), TOL * wmax[k][i],
                                             "%s %s tensor %d elem %d step %d"
                                             % (alg, overrides, k, i, ref.t))
                    roles = []
                    if alg in ("adam", "adamw", "nadam", "lamb"):
                        roles = [("exp_avg", ref.m), ("exp_avg_sq", ref.v)]
                        if overrides.get("amsgrad"):
                            roles.append(("max_exp_avg_sq", ref.vmax))
                    elif alg == "adagrad":
                        roles = [("sum", ref.v)]
                    elif alg == "rmsprop":
                        roles = [("square_avg", ref.v)]
                        if overrides.get("momentum"):
                            roles.append(("momentum_buffer", ref.m))
                        if overrides.get("centered"):
                            roles.append(("grad_avg", ref.vmax))
                    elif alg == "lion" or overrides.get("momentum"):
                        roles = [("momentum_buffer" if alg in ("sgd", "lars") else "exp_avg", ref.m)]
                    for name, want in roles:
                        got = opt.state(k, name)
                        for i in range(len(got)):
                            squares = name in ("exp_avg_sq", "sum", "square_avg")
                            scale = max(abs(want[i]), gmax[k][i] ** 2 if squares else gmax[k][i])
                            self.assertLessEqual(abs(got[i] - want[i]), TOL * scale + 1e-30,
                                                 "%s %s elem %d" % (alg, name, i))
            self.assertEqual(opt.step_count, steps)

    def test_every_algorithm_matches_the_reference(self):
        self.assertEqual(sorted(fusedopt.algorithms()),
                         sorted(["adam", "adamw", "lion", "sgd", "adagrad", "rmsprop", "nadam",
                                 "lamb", "lars"]))
        covered = set()
        for n, (alg, overrides) in enumerate(CASES):
            with self.subTest(alg=alg, overrides=overrides):
                self.run_case(alg, overrides, seed=1000 + n)
                covered.add(alg)
        self.assertEqual(covered, set(fusedopt.algorithms()))

    def test_groups_have_their_own_hyper_parameters(self):
        rng = random.Random(7)
        params = [array.array("f", rand_vec(rng, 5)) for _ in range(3)]
        refs = [Reference("adamw", dict(fusedopt.default_hparams("adamw"), lr=lr), list(p))
                for p, lr in zip(params, (0.05, 0.01, 0.05))]
        groups = [{"params": [0, 2], "lr": 0.05}, {"params": [1], "lr": 0.01}]
        with fusedopt.Optimizer(params, "adamw", groups) as opt:
            self.assertEqual(opt.num_groups, 2)
            self.assertAlmostEqual(opt.get_lr(1), 0.01, places=7)
            for _ in range(3):
                for g_buf, ref in zip(opt.grads, refs):
                    g = [f32(x) for x in rand_vec(rng, 5)]
                    g_buf[:] = array.array("f", g)
                    ref.step(g)
                opt.step()
            for p, ref in zip(params, refs):
                for a, b in zip(p, ref.w):
                    self.assertLessEqual(abs(a - b), TOL * 2)


class Errors(unittest.TestCase):
    def setUp(self):
        self.p = array.array("f", [0.5, -0.25, 1.0])
        self.opt = fusedopt.Optimizer([self.p], "adamw")

    def tearDown(self):
        self.opt.close()

    def test_negative_lr_carries_the_library_message(self):
        with self.assertRaises(fusedopt.InvalidArgument) as cm:
            self.opt.set_lr(-0.5)
        e = cm.exception
        self.assertEqual(e.status, 2)
        self.assertEqual(e.status_name, "invalid argument")
        self.assertEqual(e.function, "fo_optimizer_set_lr")
        self.assertIn("lr = -0.5", e.message)
        self.assertIn(e.message, str(e))
        self.assertIsInstance(e, fusedopt.FusedoptError)
        self.assertAlmostEqual(self.opt.get_lr(0), 1e-3, places=9)  # unchanged

    def test_bad_group_carries_the_library_message(self):
        with self.assertRaises(fusedopt.InvalidArgument) as cm:
            self.opt.get_lr(5)
        self.assertIn("group", cm.exception.message)
        with self.assertRaises(fusedopt.InvalidArgument):
            self.opt.set_lr(0.1, group=3)

    def test_bad_hyper_parameter_at_create(self):
        with self.assertRaises(fusedopt.InvalidArgument) as cm:
            fusedopt.Optimizer([array.array("f", [1.0])], "adam", beta1=1.5)
        self.assertIn("beta1", cm.exception.message)
        with self.assertRaises(fusedopt.InvalidArgument) as cm:
            fusedopt.Optimizer([array.array("f", [1.0]), array.array("f", [2.0])], "adam",
                               [{"params": [0]}, {"params": [1], "eps": 0.0}])
        self.assertIn("hparams[1]", cm.exception.message)

    def test_set_hparams_turning_amsgrad_on_is_invalid_state(self):
        with self.assertRaises(fusedopt.InvalidState) as cm:
            self.opt.set_hparams(0, amsgrad=True)
        self.assertTrue(cm.exception.message)

    def test_missing_checkpoint_is_io_error(self):
        with tempfile.TemporaryDirectory() as d:
            with self.assertRaises(fusedopt.IOFailure) as cm:
                self.opt.load(os.path.join(d, "missing.safetensors"))
            self.assertIn("missing.safetensors", cm.exception.message)

    def test_overlapping_buffers(self):
        with self.assertRaises(fusedopt.Overlap):
            fusedopt.Optimizer([self.p], grads=[self.p])

    def test_misaligned_buffer_is_bad_pointer(self):
        # floats at an address 2 mod 4: the library refuses them (a CUDA
        # kernel would fault on them) and names the buffer
        raw = bytearray(range(7, 7 + 4 * 5 + 2))
        before = bytes(raw)
        base = ctypes.addressof((ctypes.c_char * len(raw)).from_buffer(raw))
        skew = (2 - base) % 4
        odd = memoryview(raw)[skew:skew + 16].cast("f")
        with self.assertRaises(fusedopt.BadPointer) as cm:
            fusedopt.Optimizer([odd], grads=[array.array("f", [0.5] * 4)])
        self.assertIn("aligned", cm.exception.message)
        self.assertEqual(bytes(raw), before)  # nothing written

    def test_integer_types_with_index_are_ints(self):
        class Index:  # numpy's integer scalars behave so
            def __init__(self, v):
                self.v = v

            def __index__(self):
                return self.v

        f = array.array("f", [1.0, 2.0])
        g = array.array("f", [3.0, 4.0])
        with fusedopt.Optimizer([f, g], "adamw", [{"params": [Index(0)]},
                                                  {"params": [Index(1)], "lr": 0.5}],
                                num_threads=Index(1)) as opt:
            opt.set_lr(0.25, group=Index(1))
            self.assertEqual(opt.get_lr(Index(1)), 0.25)
            self.assertAlmostEqual(opt.get_lr(Index(0)), 1e-3, places=9)
            self.assertEqual(list(opt.state(Index(1), "exp_avg")), [0.0, 0.0])
            for bad in (True, 1.0, "1"):
                with self.assertRaises(TypeError):
                    opt.get_lr(bad)
            with self.assertRaises(ValueError):
                opt.get_lr(Index(2**40))
        try:
            import numpy
        except ImportError:
            return
        with fusedopt.Optimizer([f], num_threads=numpy.int64(2)) as opt:
            opt.set_lr(0.5, group=numpy.int32(0))
            self.assertEqual(opt.get_lr(numpy.int64(0)), 0.5)

    def test_python_arguments_refused_before_the_library(self):
        f = array.array("f", [1.0, 2.0])
        bad = [
            (ValueError, lambda: fusedopt.Optimizer([f], "adabelief")),
            (TypeError, lambda: fusedopt.Optimizer([f], 3)),
            (TypeError, lambda: fusedopt.Optimizer([f], "adamw", betas2=0.9)),
            (TypeError, lambda: fusedopt.Optimizer([f], "adamw", lr="fast")),
            (TypeError, lambda: fusedopt.Optimizer([f], "adamw", amsgrad=2)),
            (TypeError, lambda: fusedopt.Optimizer([array.array("d", [1.0])])),
            (TypeError, lambda: fusedopt.Optimizer([[1.0, 2.0]])),
            (TypeError, lambda: fusedopt.Optimizer([bytearray(4)])),
            (ValueError, lambda: fusedopt.Optimizer([memoryview(array.array("f", [1, 2, 3,
                                                                                 4]))[::2]])),
            (ValueError, lambda: fusedopt.Optimizer([memoryview(bytes(8)).cast("f")])),
            (ValueError, lambda: fusedopt.Optimizer([f], num_threads=-1)),
            (ValueError, lambda: fusedopt.Optimizer([f], grads=[])),
            (ValueError, lambda: fusedopt.Optimizer([f], grads=[array.array("f", [0.0])])),
            (ValueError, lambda: fusedopt.Optimizer([f, f], groups=[{"params": [0, 1]},
                                                                    {"params": [1]}])),
            (ValueError, lambda: fusedopt.Optimizer([f, f], groups=[{"params": [0]}])),
            (ValueError, lambda: fusedopt.Optimizer([f], groups=[{"params": [4]}])),
            (ValueError, lambda: fusedopt.Optimizer([f], groups=[])),
            (TypeError, lambda: fusedopt.Optimizer([f], groups=[{"lr": 0.1}])),
            (TypeError, lambda: self.opt.set_lr("0.1")),
            (TypeError, lambda: self.opt.get_lr(0.5)),
            (ValueError, lambda: self.opt.state(0, "velocity")),
            (ValueError, lambda: self.opt.save("")),
            # what ctypes would wrap silently (2**32 - 1 as group -1: every
            # group) and what C would cut at the NUL
            (ValueError, lambda: self.opt.get_lr(2**32)),
            (ValueError, lambda: self.opt.set_lr(5.0, group=2**32 - 1)),
            (ValueError, lambda: fusedopt.Optimizer([f], num_threads=2**32 + 1)),
            (ValueError, lambda: self.opt.state(2**64, "exp_avg")),
            (ValueError, lambda: self.opt.save("ckpt.safetensors\0.bak")),
            (ValueError, lambda: fusedopt.Optimizer({"w\0secret": f})),
        ]
        for exc, call in bad:
            with self.subTest(exc=exc):
                with self.assertRaises(exc) as cm:
                    call()
                self.assertNotIsInstance(cm.exception, fusedopt.FusedoptError)

    def test_errors_pickle_and_copy(self):
        """A worker process's error reaches its parent whole."""
        import copy
        import pickle
        with self.assertRaises(fusedopt.InvalidArgument) as cm:
            self.opt.set_lr(-1.0)
        for e in (pickle.loads(pickle.dumps(cm.exception)), copy.copy(cm.exception)):
            self.assertIs(type(e), fusedopt.InvalidArgument)
            self.assertEqual((e.status, e.status_name, e.function, e.message),
                             (cm.exception.status, cm.exception.status_name,
                              cm.exception.function, cm.exception.message))
            self.assertEqual(str(e), str(cm.exception))

    def test_close_while_another_thread_is_inside_a_call(self):
        """close() during another thread's step is refused, changing
        nothing (destroying the optimizer then would pull its memory from
        under the step); after the step it closes."""
        import threading
        p = array.array("f", [1.0, 2.0])
        opt = fusedopt.Optimizer([p], "sgd", lr=0.5)
        real, inside, release = opt._lib, threading.Event(), threading.Event()

        class Gate:  # the library, with a step that waits inside the call
            def __getattr__(self, name):
                fn = getattr(real, name)
                if name != "fo_optimizer_step":
                    return fn

                def step(*args):
                    inside.set()
                    release.wait(10)
                    return fn(*args)
                return step
        opt._lib = Gate()
        opt._grads[0][0] = 1.0
        t = threading.Thread(target=opt.step)
        t.start()
        self.assertTrue(inside.wait(10))
        with self.assertRaisesRegex(fusedopt.InvalidState, "another thread"):
            opt.close()
        self.assertFalse(opt.closed)
        release.set()
        t.join(10)
        self.assertEqual(p[0], 0.5)  # the step ran, on a live optimizer
        opt._lib = real
        opt.close()
        self.assertTrue(opt.closed)

    def test_closed_optimizer(self):
        p = array.array("f", [1.0])
        opt = fusedopt.Optimizer([p], "sgd")
        with self.assertRaises(BufferError):  # the library holds its address
            p.append(2.0)
        opt.close()
        opt.close()  # idempotent
        self.assertTrue(opt.closed)
        with self.assertRaises(ValueError):
            opt.step()
        p.append(2.0)  # released


class StateAndBuffers(unittest.TestCase):
    def test_save_load_round_trip_is_exact(self):
        rng = random.Random(3)
        init = [rand_vec(rng, n) for n in (9, 4)]
        grads = [[rand_vec(rng, n) for n in (9, 4)] for _ in range(5)]

        def make():
            return fusedopt.Optimizer({"w": array.array("f", init[0]),
                                       "b": array.array("f", init[1])}, "adamw", amsgrad=True,
                                      lr=0.02)

        def feed(opt, k):
            for buf, g in zip(opt.grads, grads[k]):
                buf[:] = array.array("f", g)

        def snapshot(opt):
            out = [p.tobytes() for p in opt.params]
            for i in range(len(opt)):
                for name in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
                    out.append(opt.state(i, name).tobytes())
            return out, opt.step_count, opt.get_hparams(0)

        with tempfile.TemporaryDirectory() as d, make() as a, make() as b:
            path = os.path.join(d, "opt.safetensors")
            for k in range(3):
                feed(a, k)
                a.step()
            a.set_lr(0.015)
            a.save(path)
            saved = snapshot(a)
            b.load(path)
            self.assertEqual(snapshot(b), saved)
            self.assertEqual(b.step_count, 3)
            for k in (3, 4):  # resuming equals continuing, bit for bit
                feed(a, k)
                feed(b, k)
                a.step()
                b.step()
            self.assertEqual(snapshot(a), snapshot(b))

    def test_zero_grad_zeroes_in_place(self):
        p = array.array("f", [1.0, 2.0, 3.0])
        g = array.array("f", [0.5, -0.5, 4.0])
        with fusedopt.Optimizer([p], "sgd", grads=[g], lr=0.1) as opt:
            self.assertIs(opt.grads[0], g)
            opt.step()
            opt.zero_grad()
            self.assertEqual(list(g), [0.0, 0.0, 0.0])
            self.assertIs(opt.grads[0], g)
            before = p.tobytes()
            opt.step()  # zero gradient, no decay: unchanged
            self.assertEqual(p.tobytes(), before)

    def test_info_and_lr(self):
        p = array.array("f", [1.0, 2.0])
        with fusedopt.Optimizer([p], "lion") as opt:
            self.assertEqual(opt.get_lr(), f32(1e-4))
            opt.set_lr(0.25)
            self.assertEqual(opt.get_lr(0), 0.25)
            opt.grads[0][:] = array.array("f", [1.0, -1.0])
            opt.step()
            self.assertEqual(list(p), [0.75, 2.25])
            info = opt.info()
            self.assertIsInstance(info, fusedopt.StepInfo)
            self.assertEqual((info.step, info.skipped_steps, info.last_step_skipped),
                             (1, 0, False))
            self.assertEqual(info.lr_factor, 1.0)
            self.assertEqual(info.grad_coef, 1.0)

    def test_empty_and_zero_size_tensors(self):
        with fusedopt.Optimizer([array.array("f"), array.array("f", [1.0])], "adam") as opt:
            opt.step()
            self.assertEqual(len(opt.state(0, "exp_avg")), 0)

    def test_garbage_collection_destroys(self):
        import gc
        p = array.array("f", [1.0])
        opt = fusedopt.Optimizer([p], "sgd")
        del opt
        gc.collect()
        p.append(2.0)  # the export was released


class ArgumentGaps(unittest.TestCase):
    """Arguments and names whose handling no other test would notice going
    wrong."""

    def test_betas_pair_sets_both(self):
        with fusedopt.Optimizer([array.array("f", [1.0])], "adam", betas=(0.8, 0.95)) as opt:
            hp = opt.get_hparams(0)
            self.assertEqual((hp["beta1"], hp["beta2"]), (f32(0.8), f32(0.95)))

    def test_group_index_past_the_end_refused(self):
        ps = [array.array("f", [1.0]), array.array("f", [2.0])]
        with self.assertRaisesRegex(ValueError, "outside"):
            fusedopt.Optimizer(ps, "sgd", [{"params": [0, 2]}, {"params": [1]}])

    def test_longer_gradient_refused(self):
        with self.assertRaisesRegex(ValueError, "grads\\[0\\] has 3 elements"):
            fusedopt.Optimizer([array.array("f", [1.0, 2.0])], "sgd",
                               grads=[array.array("f", [0.0] * 3)])

    def test_max_grad_norm_clips(self):
        p = array.array("f", [0.0] * 4)
        with fusedopt.Optimizer([p], "sgd", lr=1.0, max_grad_norm=1.5) as opt:
            g = opt.grads[0]
            for i in range(4):
                g[i] = 3.0  # norm 6: scaled by 1.5 / 6
            opt.step()
            self.assertAlmostEqual(opt.info().grad_norm, 6.0, places=4)
            for x in p:  # lr * 3 * 1.5 / (6 + eps): not 3
                self.assertAlmostEqual(x, -0.75, places=5)

    def test_set_hparams_keeps_the_others(self):
        with fusedopt.Optimizer([array.array("f", [1.0])], "sgd", lr=0.5, momentum=0.9) as opt:
            opt.set_hparams(0, weight_decay=0.1)
            hp = opt.get_hparams(0)
            self.assertEqual((hp["lr"], hp["momentum"], hp["weight_decay"]),
                             (0.5, f32(0.9), f32(0.1)))

    def test_lars_checkpoint_names_its_momentum_buffer(self):
        with fusedopt.Optimizer({"w": array.array("f", [1.0, 2.0])}, "lars") as opt:
            with tempfile.TemporaryDirectory() as d:
                path = os.path.join(d, "lars.safetensors")
                opt.save(path)
                with open(path, "rb") as f:
                    n = struct.unpack("<Q", f.read(8))[0]
                    keys = set(json.loads(f.read(n)))
        self.assertIn("w.momentum_buffer", keys)


if __name__ == "__main__":
    unittest.main()
