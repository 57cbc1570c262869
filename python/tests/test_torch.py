"""fusedopt.torch against torch.optim on identical models and inputs.

Run as a script (CTest's python_torch): exits 77 (CTest's SKIP_RETURN_CODE),
saying why, when torch cannot be imported.  Works with Debian 12's
python3-torch (1.13) and with torch 2.x.  NAdam is compared only with
torch 2.x (1.13's NAdam computes otherwise); an algorithm the library lacks
is skipped, saying so; the CUDA tests skip without a device.
"""

import math
import os
import sys
import tempfile
import unittest
import warnings

try:
    import torch
except ImportError as e:  # pragma: no cover
    if __name__ == "__main__":
        print("SKIP: torch cannot be imported (%s): install python3-torch (Debian) or a "
              "torch wheel to run fusedopt.torch's tests" % e)
        sys.exit(77)
    raise unittest.SkipTest("torch cannot be imported: %s" % e)

import fusedopt
import fusedopt.torch as ft

TOL = 1e-5  # docs/numerics.md, TOL_F32: 1e-5 x the running max magnitude
STEPS = 10
TORCH_VERSION = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]
                      if x.isdigit())


def _probe(alg):
    """None when alg can be checked here, else why not: the library lacks
    it, or (NAdam) the installed torch predates 2.0, whose NAdam fusedopt
    follows (torch 1.13's gives other numbers on the same inputs; the
    golden vectors of tests/test_golden.c pin NAdam to torch 2.x)."""
    if alg not in fusedopt.algorithms():
        return "the library has no %s" % alg
    major = int(torch.__version__.split(".")[0])
    if alg == "nadam" and major < 2:
        return ("torch %s's NAdam is not torch 2.x's, which fusedopt follows "
                "(tests/test_golden.c checks it against torch 2.x)" % torch.__version__)
    return None


_PROBES = {}


def make_model(seed=0, dtype=torch.float32, device="cpu"):
    torch.manual_seed(seed)
    m = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    return m.to(device=device, dtype=dtype)


def batches(n, seed=1, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(32, 8, generator=g).to(device), torch.randn(32, 4, generator=g).to(device))
            for _ in range(n)]


def loss_of(model, x, y):
    return ((model(x.to(next(model.parameters()).dtype)) - y).float() ** 2).mean()


def train(model, opt, data, on_step=None):
    for k, (x, y) in enumerate(data):
        if on_step:
            on_step(k, opt)
        opt.zero_grad()
        loss_of(model, x, y).backward()
        opt.step()


def assert_close(tc, got, want, what="", tol=TOL, ref=None):
    for i, (a, b) in enumerate(zip(got, want)):
        a, b = a.detach().float().cpu(), b.detach().float().cpu()
        scale = max(b.abs().max().item(), ref[i].abs().max().item() if ref else 0.0, 1e-3)
        err = (a - b).abs().max().item()
        tc.assertLessEqual(err, tol * scale,
                           "%s tensor %d: max error %.3g > %.3g" % (what, i, err, tol * scale))


def lion_reference(params, grads_per_step, lr, betas, wd):
    """Lion in torch ops (Chen et al. 2023; docs/numerics.md)."""
    ps = [p.detach().clone() for p in params]
    ms = [torch.zeros_like(p) for p in ps]
    for grads in grads_per_step:
        for p, m, g in zip(ps, ms, grads):
            c = betas[0] * m + (1 - betas[0]) * g
            p.mul_(1 - lr * wd).add_(torch.sign(c), alpha=-lr)
            m.mul_(betas[1]).add_(g, alpha=1 - betas[1])
    return ps


# (fusedopt class, torch class name, alg, constructor arguments)
CASES = [
    ("SGD", "sgd", dict(lr=0.05)),
    ("SGD", "sgd", dict(lr=0.05, momentum=0.9, weight_decay=0.01, nesterov=True)),
    ("SGD", "sgd", dict(lr=0.05, momentum=0.8, dampening=0.3, maximize=True)),
    ("Adam", "adam", dict(lr=1e-2)),
    ("Adam", "adam", dict(lr=1e-2, betas=(0.8, 0.99), weight_decay=0.1, amsgrad=True)),
    ("AdamW", "adamw", dict(lr=1e-2)),
    ("AdamW", "adamw", dict(lr=1e-2, weight_decay=0.3, amsgrad=True, eps=1e-6)),
    ("Adagrad", "adagrad", dict(lr=0.05, lr_decay=0.01, weight_decay=0.01,
                                initial_accumulator_value=0.1)),
    ("RMSprop", "rmsprop", dict(lr=1e-2)),
    ("RMSprop", "rmsprop", dict(lr=1e-2, momentum=0.9, centered=True, weight_decay=0.01)),
    ("NAdam", "nadam", dict(lr=1e-2, weight_decay=0.01)),
]
if TORCH_VERSION >= (2, 1):
    CASES.append(("NAdam", "nadam", dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True)))


class AgainstTorch(unittest.TestCase):
    """N steps of fusedopt and of torch.optim on identical models and
    inputs give the same parameters within the fp32 tolerance."""

    def run_pair(self, name, kw, data=None, fo_kw=None, groups=None, on_step=None):
        m1, m2 = make_model(), make_model()
        init = [p.detach().clone() for p in m1.parameters()]
        data = data or batches(STEPS)
        if groups:
            g1, g2 = groups(m1), groups(m2)
        else:
            g1, g2 = m1.parameters(), m2.parameters()
        o1 = getattr(ft, name)(g1, **kw, **(fo_kw or {}))
        o2 = getattr(torch.optim, name)(g2, **kw)
        train(m1, o1, data, on_step)
        train(m2, o2, data, on_step)
        assert_close(self, list(m1.parameters()), list(m2.parameters()), name, ref=init)
        return m1, m2, o1, o2

    def test_every_algorithm(self):
        for name, alg, kw in CASES:
            with self.subTest(name=name, kw=kw):
                why = _PROBES.setdefault(alg, _probe(alg)) if alg in (
                    "adagrad", "rmsprop", "nadam") else None
                if why:
                    self.skipTest(why)
                self.run_pair(name, kw)

    def test_lion_against_reference(self):
        m = make_model()
        opt = ft.Lion(m.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
        init = [p.detach().clone() for p in m.parameters()]
        grads = []
        for x, y in batches(STEPS):
            opt.zero_grad()
            loss_of(m, x, y).backward()
            grads.append([p.grad.clone() for p in m.parameters()])
            # the reference is fed the same gradients, so step both from here
            opt.step()
        # Recompute the reference trajectory with the recorded gradients:
        # Lion's sign makes the result depend only on the gradients' signs.
        ref = lion_reference(init, grads, 1e-3, (0.9, 0.99), 0.1)
        assert_close(self, list(m.parameters()), ref, "lion", ref=init)

    def test_param_groups(self):
        def groups(m):
            return [{"params": [m[0].weight], "lr": 3e-2, "weight_decay": 0.5},
                    {"params": [m[0].bias, m[2].bias], "weight_decay": 0.0},
                    {"params": [m[2].weight], "betas": (0.5, 0.9)}]
        self.run_pair("AdamW", dict(lr=1e-2), groups=groups)

        def sgd_groups(m):
            return [{"params": m[0].parameters(), "momentum": 0.9},
                    {"params": m[2].parameters(), "lr": 0.2}]
        self.run_pair("SGD", dict(lr=0.05), groups=sgd_groups)

    def test_hparam_changes_between_steps(self):
        def change(k, opt):
            for i, g in enumerate(opt.param_groups):
                g["lr"] = 1e-2 / (1 + k + i)
                if k == 5:
                    g["betas"] = (0.8, 0.95)
                    g["weight_decay"] = 0.2
        self.run_pair("AdamW", dict(lr=1e-2), on_step=change)

    def test_hparams_changed_in_place(self):
        """An unchanged group is not converted again at each step; a value
        that changes without the group changing (a tensor filled, a list
        written) still reaches the library."""
        def change(k, opt):
            for i, g in enumerate(opt.param_groups):
                lr = 1e-2 / (1 + k + i)
                if isinstance(g["lr"], torch.Tensor):
                    g["lr"].fill_(lr)  # fusedopt's groups hold tensors
                else:
                    g["lr"] = lr
                if k == 4:
                    if isinstance(g["betas"], list):
                        g["betas"][0] = 0.7
                    else:
                        g["betas"] = (0.7, g["betas"][1])

        def fo_groups(m):
            return [{"params": m[0].parameters(), "lr": torch.tensor(1e-2),
                     "betas": [0.9, 0.999]},
                    {"params": m[2].parameters(), "lr": torch.tensor(5e-3),
                     "betas": [0.9, 0.999]}]

        m1, m2 = make_model(), make_model()
        o1 = ft.AdamW(fo_groups(m1), lr=1e-2)
        o2 = torch.optim.AdamW([{"params": m2[0].parameters(), "lr": 1e-2},
                                {"params": m2[2].parameters(), "lr": 5e-3}], lr=1e-2)
        data = batches(STEPS)
        train(m1, o1, data, change)
        train(m2, o2, data, change)
        assert_close(self, list(m1.parameters()), list(m2.parameters()), "in place")

    def test_unchanged_groups_still_checked(self):
        """A value replaced by an equal one of another type is checked as
        before (False == 0.0, but a flag must be a bool); -0.0 is pushed as
        0.0, so the skip of equal values is exact."""
        m = make_model()
        opt = ft.AdamW(m.parameters(), lr=1e-2)
        train(m, opt, batches(1))
        before = [p.detach().clone() for p in m.parameters()]
        opt.param_groups[0]["amsgrad"] = 0.0
        with self.assertRaisesRegex(TypeError, "amsgrad"):
            opt.step()
        self.assertEqual(opt.step_count, 1)
        for a, b in zip(m.parameters(), before):
            self.assertTrue(torch.equal(a, b))
        opt.param_groups[0]["amsgrad"] = False
        opt.param_groups[0]["lr"] = torch.full((2,), 1e-2)  # not one element
        with self.assertRaisesRegex(TypeError, "lr"):
            opt.step()
        opt.param_groups[0]["lr"] = 1e-2
        opt.param_groups[0]["weight_decay"] = -0.0
        opt.step()
        lib = fusedopt.torch.C.FoHparams()
        opt._call("fo_optimizer_get_hparams", 0, fusedopt.torch.ctypes.byref(lib))
        self.assertEqual(math.copysign(1.0, lib.weight_decay), 1.0)
        self.assertEqual(opt.step_count, 2)

    def test_lr_scheduler(self):
        m1, m2 = make_model(), make_model()
        o1 = ft.SGD(m1.parameters(), lr=0.1, momentum=0.9)
        o2 = torch.optim.SGD(m2.parameters(), lr=0.1, momentum=0.9)
        s1 = torch.optim.lr_scheduler.StepLR(o1, step_size=3, gamma=0.5)
        s2 = torch.optim.lr_scheduler.StepLR(o2, step_size=3, gamma=0.5)
        for x, y in batches(STEPS):
            for m, o, s in ((m1, o1, s1), (m2, o2, s2)):
                o.zero_grad()
                loss_of(m, x, y).backward()
                o.step()
                s.step()
        assert_close(self, list(m1.parameters()), list(m2.parameters()), "StepLR")
        self.assertAlmostEqual(o1.param_groups[0]["lr"], o2.param_groups[0]["lr"])

    def test_closure(self):
        m1, m2 = make_model(), make_model()
        o1, o2 = ft.Adam(m1.parameters(), lr=1e-2), torch.optim.Adam(m2.parameters(), lr=1e-2)
        for x, y in batches(3):
            for m, o in ((m1, o1), (m2, o2)):
                def closure():
                    o.zero_grad()
                    loss = loss_of(m, x, y)
                    loss.backward()
                    return loss
                loss = o.step(closure)
                self.assertTrue(torch.is_tensor(loss))
        assert_close(self, list(m1.parameters()), list(m2.parameters()), "closure")


STATE_CASES = [("AdamW", "adamw", dict(lr=1e-2, amsgrad=True)),
               ("Adam", "adam", dict(lr=1e-2, weight_decay=0.1)),
               ("SGD", "sgd", dict(lr=0.05, momentum=0.9)),
               ("Adagrad", "adagrad", dict(lr=0.05)),
               ("RMSprop", "rmsprop", dict(lr=1e-2, momentum=0.5, centered=True)),
               ("NAdam", "nadam", dict(lr=1e-2))]


class StateDicts(unittest.TestCase):
    def skip_unimplemented(self, alg):
        why = _PROBES.setdefault(alg, _probe(alg)) if alg in (
            "adagrad", "rmsprop", "nadam", "lamb", "lars") else None
        if why:
            self.skipTest(why)

    def test_torch_to_fusedopt_and_back(self):
        data = batches(2 * 4)
        for name, alg, kw in STATE_CASES:
            with self.subTest(name=name):
                self.skip_unimplemented(alg)
                # torch first half, then fusedopt second half (state from torch)
                m1, m2 = make_model(), make_model()
                o_t = getattr(torch.optim, name)(m1.parameters(), **kw)
                train(m1, o_t, data[:4])
                m2.load_state_dict(m1.state_dict())
                o_f = getattr(ft, name)(m2.parameters(), **kw)
                o_f.load_state_dict(o_t.state_dict())
                train(m1, o_t, data[4:])
                train(m2, o_f, data[4:])
                assert_close(self, list(m2.parameters()), list(m1.parameters()),
                             "torch -> fusedopt")
                # fusedopt first half, torch second half
                m3, m4 = make_model(), make_model()
                o_f = getattr(ft, name)(m3.parameters(), **kw)
                train(m3, o_f, data[:4])
                m4.load_state_dict(m3.state_dict())
                o_t = getattr(torch.optim, name)(m4.parameters(), **kw)
                o_t.load_state_dict(o_f.state_dict())
                train(m3, o_f, data[4:])
                train(m4, o_t, data[4:])
                assert_close(self, list(m4.parameters()), list(m3.parameters()),
                             "fusedopt -> torch")

    def test_fresh_state_dict_is_torchs(self):
        """Before the first step: AdaGrad's accumulator is already
        initial_accumulator_value in torch's state dict, and a state taken
        then resumes in torch as torch's own would."""
        self.skip_unimplemented("adagrad")
        kw = dict(lr=0.05, initial_accumulator_value=0.3)
        m1, m2 = make_model(), make_model()
        m2.load_state_dict(m1.state_dict())
        o_f = ft.Adagrad(m1.parameters(), **kw)
        o_t = torch.optim.Adagrad(m2.parameters(), **kw)
        sf, st = o_f.state_dict(), o_t.state_dict()
        for i in st["state"]:
            self.assertTrue(torch.equal(sf["state"][i]["sum"], st["state"][i]["sum"]),
                            "state %d: sum %s, torch %s" % (i, sf["state"][i]["sum"].flatten()[:3],
                                                            st["state"][i]["sum"].flatten()[:3]))
        m3 = make_model()
        m3.load_state_dict(m1.state_dict())
        o_t3 = torch.optim.Adagrad(m3.parameters(), **kw)
        o_t3.load_state_dict(sf)
        data = batches(3)
        train(m2, o_t, data)
        train(m3, o_t3, data)
        train(m1, o_f, data)
        assert_close(self, list(m3.parameters()), list(m2.parameters()), "resumed in torch")
        assert_close(self, list(m1.parameters()), list(m2.parameters()), "fusedopt")

    def test_state_names_are_torchs(self):
        for name, alg, kw in STATE_CASES:
            with self.subTest(name=name):
                self.skip_unimplemented(alg)
                m1, m2 = make_model(), make_model()
                o_f = getattr(ft, name)(m1.parameters(), **kw)
                o_t = getattr(torch.optim, name)(m2.parameters(), **kw)
                train(m1, o_f, batches(2))
                train(m2, o_t, batches(2))
                sf, st = o_f.state_dict(), o_t.state_dict()
                self.assertEqual(sorted(sf["state"]), sorted(st["state"]))
                for i in st["state"]:
                    want = {k for k, v in st["state"][i].items() if v is not None}
                    self.assertEqual(set(sf["state"][i]), want, "state %d" % i)
                    if "step" in want:
                        self.assertEqual(float(sf["state"][i]["step"]),
                                         float(st["state"][i]["step"]))
                    if "mu_product" in want:
                        self.assertAlmostEqual(float(sf["state"][i]["mu_product"]),
                                               float(st["state"][i]["mu_product"]), places=6)
                for gf, gt in zip(sf["param_groups"], st["param_groups"]):
                    self.assertEqual(gf["params"], gt["params"])
                    for k in kw:
                        self.assertEqual(gf[k], gt[k])

    def test_resume_equals_uninterrupted(self):
        data = batches(8)
        for name, alg, kw in STATE_CASES + [("Lion", "lion", dict(lr=1e-3)),
                                            ("LAMB", "lamb", dict(lr=1e-2)),
                                            ("LARS", "lars", dict(lr=1.0, weight_decay=1e-3))]:
            with self.subTest(name=name):
                self.skip_unimplemented(alg)
                m1 = make_model()
                o1 = getattr(ft, name)(m1.parameters(), **kw)
                train(m1, o1, data)
                m2 = make_model()
                o2 = getattr(ft, name)(m2.parameters(), **kw)
                train(m2, o2, data[:4])
                sd, msd = o2.state_dict(), {k: v.clone() for k, v in m2.state_dict().items()}
                m3 = make_model(seed=5)
                m3.load_state_dict(msd)
                o3 = getattr(ft, name)(m3.parameters(), **kw)
                o3.load_state_dict(sd)
                train(m3, o3, data[4:])
                for a, b in zip(m1.parameters(), m3.parameters()):
                    self.assertTrue(torch.equal(a, b), "%s: resumed != uninterrupted" % name)
                if name not in ("SGD", "Lion"):  # torch's SGD state has no step
                    self.assertEqual(o3.step_count, o1.step_count)

    def test_save_load_files(self):
        data = batches(6)
        m1 = make_model()
        o1 = ft.AdamW(m1.parameters(), lr=1e-2)
        train(m1, o1, data)
        m2 = make_model()
        o2 = ft.AdamW(m2.parameters(), lr=1e-2)
        train(m2, o2, data[:3])
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "opt.safetensors")
            o2.param_groups[0]["lr"] = 5e-3
            o2.save(path)
            m3 = make_model(seed=9)
            o3 = ft.AdamW(m3.parameters(), lr=1e-1)
            o3.load(path)  # parameters too
            self.assertAlmostEqual(o3.param_groups[0]["lr"], 5e-3, places=9)
            o3.param_groups[0]["lr"] = 1e-2
            train(m3, o3, data[3:])
        for a, b in zip(m1.parameters(), m3.parameters()):
            self.assertTrue(torch.equal(a, b))

    def test_load_refuses_and_changes_nothing(self):
        m = make_model()
        opt = ft.AdamW(m.parameters(), lr=1e-2)
        train(m, opt, batches(2))
        before = opt.state_dict()
        # another algorithm's state
        m2 = make_model()
        sgd = torch.optim.SGD(m2.parameters(), lr=0.1, momentum=0.9)
        train(m2, sgd, batches(1))
        with self.assertRaisesRegex(ValueError, "momentum_buffer|another algorithm"):
            opt.load_state_dict(sgd.state_dict())
        # Adam's state (torch 2.x's groups say decoupled_weight_decay=False)
        m_adam = make_model()
        o_adam = ft.Adam(m_adam.parameters(), lr=1e-2)
        train(m_adam, o_adam, batches(1))
        with self.assertRaisesRegex(ValueError, "decoupled_weight_decay"):
            opt.load_state_dict(o_adam.state_dict())
        # another model: other shapes
        other = torch.nn.Sequential(torch.nn.Linear(8, 5), torch.nn.Tanh(), torch.nn.Linear(5, 4))
        o_other = torch.optim.AdamW(other.parameters())
        train(other, o_other, batches(1))
        with self.assertRaisesRegex(ValueError, "another model|shape"):
            opt.load_state_dict(o_other.state_dict())
        # other number of parameters
        small = torch.nn.Linear(8, 4)
        o_small = torch.optim.AdamW(small.parameters())
        with self.assertRaisesRegex(ValueError, "size|groups"):
            opt.load_state_dict(o_small.state_dict())
        # an out-of-range hyper-parameter in the loaded groups
        bad = opt.state_dict()
        bad["param_groups"][0]["lr"] = -1.0
        with self.assertRaises(ValueError):
            opt.load_state_dict(bad)
        after = opt.state_dict()
        self.assertEqual(before["param_groups"], after["param_groups"])
        for i in before["state"]:
            for k in before["state"][i]:
                self.assertTrue(torch.equal(before["state"][i][k], after["state"][i][k]))


class GradientBuffer(unittest.TestCase):
    def test_views_of_one_flat_buffer(self):
        m = make_model()
        opt = ft.AdamW(m.parameters())
        ptrs = [p.grad.data_ptr() for p in m.parameters()]
        base = opt._flat.data_ptr()
        end = base + opt._flat.numel() * opt._flat.element_size()
        for p in m.parameters():
            self.assertTrue(base <= p.grad.data_ptr() < end)
            self.assertEqual(p.grad.shape, p.shape)
        loss_of(m, *batches(1)[0]).backward()
        self.assertEqual([p.grad.data_ptr() for p in m.parameters()], ptrs)  # accumulated in place
        self.assertTrue(all(p.grad.abs().sum() > 0 for p in m.parameters()))
        grads = [p.grad for p in m.parameters()]
        opt.zero_grad(set_to_none=True)
        for p, g in zip(m.parameters(), grads):
            self.assertIs(p.grad, g)
            self.assertEqual(p.grad.abs().sum().item(), 0.0)

    def test_replaced_grads_are_copied(self):
        # model.zero_grad() sets p.grad = None (torch 2.x); backward then
        # allocates new tensors: the step copies them into its buffer.
        m1, m2 = make_model(), make_model()
        o1 = ft.AdamW(m1.parameters(), lr=1e-2)
        o2 = torch.optim.AdamW(m2.parameters(), lr=1e-2)
        views = [p.grad for p in m1.parameters()]
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            for x, y in batches(3):
                m1.zero_grad(set_to_none=True)
                loss_of(m1, x, y).backward()
                o1.step()
                o2.zero_grad()
                loss_of(m2, x, y).backward()
                o2.step()
        self.assertTrue(any("copied" in str(x.message) for x in w))
        for p, v in zip(m1.parameters(), views):
            self.assertIs(p.grad, v)
        assert_close(self, list(m1.parameters()), list(m2.parameters()), "copied grads")
        # an assignment of p.grad is copied too
        p = next(m1.parameters())
        p.grad = torch.full_like(p, 0.25)
        o1.step()
        self.assertIs(p.grad, views[0])
        self.assertTrue(torch.equal(views[0], torch.full_like(p, 0.25)))

    def test_missing_grad(self):
        m = make_model()
        opt = ft.AdamW(m.parameters(), lr=1e-2)
        before = [p.detach().clone() for p in m.parameters()]
        next(m.parameters()).grad = None
        with self.assertRaisesRegex(RuntimeError, "no gradient"):
            opt.step()
        self.assertEqual(opt.step_count, 0)
        for a, b in zip(m.parameters(), before):
            self.assertTrue(torch.equal(a, b))
        opt.zero_grad()  # re-registers the view
        opt.step()
        self.assertEqual(opt.step_count, 1)
        m2 = make_model()
        opt2 = ft.SGD(m2.parameters(), lr=0.1, missing_grad="zero")
        for p in m2.parameters():
            p.grad = None
        opt2.step()
        for a, b in zip(m2.parameters(), before):
            self.assertTrue(torch.equal(a, b))

    def test_sparse_and_moved(self):
        m = make_model()
        opt = ft.SGD(m.parameters(), lr=0.1)
        p = next(m.parameters())
        p.grad = torch.zeros_like(p).to_sparse()
        with self.assertRaisesRegex(RuntimeError, "sparse"):
            opt.step()
        opt.zero_grad()
        p.data = p.data.clone()
        with self.assertRaisesRegex(RuntimeError, "moved"):
            opt.step()
        # narrowed in place: the same address, fewer elements
        m2 = make_model()
        opt2 = ft.SGD(m2.parameters(), lr=0.1)
        train(m2, opt2, batches(1))
        w = m2[0].weight
        w.data = w.data[:1]
        with self.assertRaisesRegex(RuntimeError, "moved"):
            opt2.step()


class BadInput(unittest.TestCase):
    def test_params(self):
        leaf = torch.zeros(4, requires_grad=True)
        with self.assertRaisesRegex(ValueError, "non-leaf"):
            ft.AdamW([leaf * 2])
        with self.assertRaisesRegex(ValueError, "contiguous"):
            ft.AdamW([torch.zeros(4, 4, requires_grad=True).t()])
        with self.assertRaisesRegex(TypeError, "complex|dtype"):
            ft.AdamW([torch.zeros(4, dtype=torch.complex64, requires_grad=True)])
        with self.assertRaisesRegex(TypeError, "integer|dtype"):
            ft.SGD([torch.zeros(4, dtype=torch.int32)])
        with self.assertRaisesRegex(TypeError, "float64|dtype"):
            ft.SGD([torch.zeros(4, dtype=torch.float64, requires_grad=True)])
        a = torch.zeros(4, requires_grad=True)
        with self.assertRaisesRegex(ValueError, "more than one"):
            ft.AdamW([{"params": [a]}, {"params": [a]}])
        with self.assertRaisesRegex(ValueError, "one device"):
            ft.AdamW([a, torch.zeros(4, device="meta", requires_grad=True)])
        with self.assertRaisesRegex(TypeError, "one dtype"):
            ft.AdamW([a, torch.zeros(4, dtype=torch.bfloat16, requires_grad=True)])
        with self.assertRaisesRegex(ValueError, "empty"):
            ft.AdamW([])
        self.assertIsNone(a.grad)  # nothing was registered

    def test_named_params_are_checked(self):
        """(name, tensor) pairs, as torch 2.6 and newer take them from
        named_parameters(): each tensor is checked as a bare one would be
        (older torch refuses the pairs itself, after these checks)."""
        a = torch.zeros(4, requires_grad=True)
        with self.assertRaisesRegex(TypeError, "one dtype"):
            ft.AdamW([("a", a), ("b", torch.zeros(4, dtype=torch.bfloat16, requires_grad=True))])
        with self.assertRaisesRegex(ValueError, "contiguous"):
            ft.AdamW([("a", a), ("t", torch.zeros(4, 4, requires_grad=True).t())])
        with self.assertRaisesRegex(TypeError, "float64|dtype"):
            ft.SGD([("d", torch.zeros(4, dtype=torch.float64, requires_grad=True))])
        self.assertIsNone(a.grad)

    def test_arguments(self):
        a = torch.zeros(4, requires_grad=True)
        with self.assertRaises(TypeError):
            ft.AdamW([a], lr=1e-3, bogus=1)
        with self.assertRaisesRegex(ValueError, "lr"):
            ft.AdamW([a], lr=-1.0)
        with self.assertRaisesRegex(ValueError, "beta"):
            ft.Adam([a], betas=(1.5, 0.9))
        with self.assertRaisesRegex(ValueError, "eps"):
            ft.Adam([a], eps=-1.0)
        with self.assertRaisesRegex(TypeError, "betas"):
            ft.Adam([a], betas=0.9)
        with self.assertRaisesRegex(ValueError, "missing_grad"):
            ft.Adam([a], missing_grad="ignore")
        with self.assertRaisesRegex(ValueError, "differentiable"):
            ft.Adam([a], differentiable=True)
        with self.assertRaisesRegex(ValueError, "AdamW"):
            ft.Adam([a], decoupled_weight_decay=True)
        with self.assertRaisesRegex(ValueError, "Adam's"):
            ft.AdamW([a], decoupled_weight_decay=False)
        # ... and in a live group, at the next step
        m = make_model()
        opt = ft.Adam(m.parameters(), lr=1e-2)
        train(m, opt, batches(1))
        opt.param_groups[0]["decoupled_weight_decay"] = True
        with self.assertRaisesRegex(ValueError, "decoupled_weight_decay"):
            opt.step()
        self.assertEqual(opt.step_count, 1)
        with self.assertRaisesRegex(TypeError, "loss_scale"):
            ft.Adam([a], loss_scale={"bogus": 1})
        self.assertIsNone(a.grad)

    def test_bad_hparam_between_steps_changes_nothing(self):
        m = make_model()
        opt = ft.AdamW([{"params": m[0].parameters()}, {"params": m[2].parameters()}], lr=1e-2)
        train(m, opt, batches(1))
        before = [p.detach().clone() for p in m.parameters()]
        opt.param_groups[0]["lr"] = 5e-3          # valid
        opt.param_groups[1]["betas"] = (0.9, 2.0)  # not
        with self.assertRaisesRegex(ValueError, "beta2"):
            opt.step()
        self.assertEqual(opt.step_count, 1)
        for a, b in zip(m.parameters(), before):
            self.assertTrue(torch.equal(a, b))
        lib = fusedopt.torch.C.FoHparams()
        opt._call("fo_optimizer_get_hparams", 0, fusedopt.torch.ctypes.byref(lib))
        self.assertAlmostEqual(lib.lr, 1e-2, places=7)  # group 0 was rolled back
        opt.param_groups[1]["betas"] = (0.9, 0.999)
        opt.step()
        self.assertEqual(opt.step_count, 2)

    def test_add_param_group(self):
        m = make_model()
        opt = ft.SGD(m[0].parameters(), lr=0.1)
        opt.add_param_group({"params": m[2].parameters(), "lr": 0.01})
        self.assertEqual(len(opt.param_groups), 2)
        self.assertIsNotNone(m[2].weight.grad)
        train(m, opt, batches(1))
        with self.assertRaisesRegex(RuntimeError, "after the first step"):
            opt.add_param_group({"params": [torch.zeros(3, requires_grad=True)]})
        self.assertEqual(len(opt.param_groups), 2)

    def test_not_picklable(self):
        import copy
        opt = ft.SGD([torch.zeros(3, requires_grad=True)])
        with self.assertRaisesRegex(TypeError, "state_dict"):
            copy.deepcopy(opt)


class MixedPrecision(unittest.TestCase):
    def test_bf16_with_master_weights(self):
        m16 = make_model(dtype=torch.bfloat16)
        m32 = make_model(dtype=torch.bfloat16).float()  # the same bf16 values, in fp32
        o16 = ft.AdamW(m16.parameters(), lr=1e-2)
        o32 = torch.optim.AdamW(m32.parameters(), lr=1e-2)
        for x, y in batches(5):
            o16.zero_grad()
            loss_of(m16, x, y).backward()
            # torch gets the same (bf16) gradients, widened
            for p16, p32 in zip(m16.parameters(), m32.parameters()):
                p32.grad = p16.grad.float()
            o16.step()
            o32.step()
        sd = o16.state_dict()
        masters = [sd["state"][i]["master"] for i in range(4)]
        assert_close(self, masters, list(m32.parameters()), "master")
        for p16, mst in zip(m16.parameters(), masters):
            self.assertEqual(p16.dtype, torch.bfloat16)
            self.assertTrue(torch.equal(p16, mst.to(torch.bfloat16)))
        self.assertEqual(sd["state"][0]["exp_avg"].dtype, torch.float32)

    def test_loss_scaler(self):
        m1, m2 = make_model(), make_model()
        o1 = ft.SGD(m1.parameters(), lr=0.1, loss_scale={"init_scale": 1024.0,
                                                         "growth_interval": 1000})
        o2 = torch.optim.SGD(m2.parameters(), lr=0.1)
        scale = o1.loss_scale
        self.assertEqual(scale.shape, (1,))
        self.assertEqual(scale.item(), 1024.0)
        for x, y in batches(3):
            o1.zero_grad()
            o1.scale_loss(loss_of(m1, x, y)).backward()
            o1.step()
            o2.zero_grad()
            loss_of(m2, x, y).backward()
            o2.step()
        assert_close(self, list(m1.parameters()), list(m2.parameters()), "scaled")
        before = [p.detach().clone() for p in m1.parameters()]
        o1.zero_grad()
        next(m1.parameters()).grad[0, 0] = float("inf")
        o1.step()
        info = o1.info()
        self.assertEqual(info.skipped_steps, 1)
        self.assertTrue(info.last_step_skipped)
        self.assertEqual(o1.loss_scale.item(), 512.0)
        for a, b in zip(m1.parameters(), before):
            self.assertTrue(torch.equal(a, b))


class StepObservers(unittest.TestCase):
    """step() goes through torch's wrapper of an optimizer's step (the
    profiler's range, step hooks) only when something observes it, and
    then does everything that wrapper does."""

    def test_step_is_not_wrapped_per_class(self):
        m = make_model()
        opt = ft.AdamW(m.parameters(), lr=1e-2)
        self.assertIs(type(opt).step, ft.FusedOptimizer.step)
        ft.SGD(make_model().parameters(), lr=0.1)
        self.assertIs(ft.SGD.step, ft.FusedOptimizer.step)

    def test_the_profiler_sees_the_step(self):
        m = make_model()
        opt = ft.AdamW(m.parameters(), lr=1e-2)
        train(m, opt, batches(1))
        with torch.autograd.profiler.profile() as prof:
            opt.step()
        self.assertIn("Optimizer.step#AdamW.step", [e.name for e in prof.function_events])
        self.assertEqual(opt.step_count, 2)

    def test_step_hooks(self):
        if not hasattr(torch.optim.Optimizer, "register_step_pre_hook"):
            self.skipTest("torch %s has no optimizer step hooks" % torch.__version__)
        m = make_model()
        opt = ft.AdamW(m.parameters(), lr=1e-2)
        train(m, opt, batches(1))
        calls = []
        pre = opt.register_step_pre_hook(lambda o, args, kwargs: calls.append(("pre", o)))
        post = opt.register_step_post_hook(lambda o, args, kwargs: calls.append(("post", o)))
        opt.step()
        self.assertEqual(calls, [("pre", opt), ("post", opt)])
        pre.remove()
        post.remove()
        del calls[:]
        opt.step()
        self.assertEqual(calls, [])
        from torch.optim.optimizer import register_optimizer_step_post_hook
        handle = register_optimizer_step_post_hook(lambda o, args, kwargs: calls.append(o))
        try:
            opt.step()
        finally:
            handle.remove()
        self.assertEqual(calls, [opt])
        self.assertEqual(opt.step_count, 4)


class DLPackView(unittest.TestCase):
    """The DLPack import that gives the CUDA path its views of the library's
    state and loss scale (ft._dlpack_view), checked here on host memory: the
    header's layout, the alias, and the deleter (libc free) over many views."""

    def test_alias_and_lifetime(self):
        base = torch.arange(10, dtype=torch.float32)
        for _ in range(2000):
            v = ft._dlpack_view(base.data_ptr() + 8, 5, torch.device("cpu"))
        self.assertEqual((v.dtype, tuple(v.shape), v.stride()), (torch.float32, (5,), (1,)))
        self.assertEqual(v.tolist(), [2.0, 3.0, 4.0, 5.0, 6.0])
        self.assertEqual(v.data_ptr(), base.data_ptr() + 8)
        v.fill_(-1.0)
        self.assertEqual(base.tolist(), [0, 1, -1, -1, -1, -1, -1, 7, 8, 9])
        del v


def captured_training(m1, o1, m2, o2, data, scale=lambda loss: loss):
    """Train m1 with o1 from a CUDA graph (warm-up step on a side stream,
    then forward, backward of scale(loss) and o1.step() captured once and
    replayed on data[1:] through static inputs), and m2 with o2 eagerly on
    the same batches."""
    x_static, y_static = data[0][0].clone(), data[0][1].clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm-up outside the graph
        o1.zero_grad()
        scale(loss_of(m1, x_static, y_static)).backward()
        o1.step()
    torch.cuda.current_stream().wait_stream(s)
    train(m2, o2, data[:1])
    g = torch.cuda.CUDAGraph()
    o1.zero_grad()
    with torch.cuda.graph(g):
        scale(loss_of(m1, x_static, y_static)).backward()
        o1.step()
    for x, y in data[1:]:
        x_static.copy_(x)
        y_static.copy_(y)
        o1.zero_grad()
        g.replay()
    train(m2, o2, data[1:])
    torch.cuda.synchronize()


@unittest.skipUnless(torch.cuda.is_available(), "no CUDA device (torch.cuda.is_available() "
                     "is False): the CUDA tests need one")
class Cuda(unittest.TestCase):
    def setUp(self):
        try:
            ft.SGD([torch.zeros(1, device="cuda", requires_grad=True)]).close()
        except fusedopt.NoDevice as e:
            self.skipTest("libfusedopt has no usable CUDA executor: %s" % e)

    def test_fp32_against_torch(self):
        for name, alg, kw in CASES:
            if alg in ("adagrad", "rmsprop", "nadam") and _PROBES.setdefault(alg, _probe(alg)):
                continue
            with self.subTest(name=name, kw=kw):
                m1, m2 = make_model(device="cuda"), make_model(device="cuda")
                init = [p.detach().clone() for p in m1.parameters()]
                o1 = getattr(ft, name)(m1.parameters(), **kw)
                o2 = getattr(torch.optim, name)(m2.parameters(), **kw)
                data = batches(STEPS, device="cuda")
                train(m1, o1, data)
                train(m2, o2, data)
                assert_close(self, list(m1.parameters()), list(m2.parameters()), name,
                             ref=init)

    def test_bf16_master_and_state_dict(self):
        m16 = make_model(dtype=torch.bfloat16, device="cuda")
        m32 = make_model(dtype=torch.bfloat16, device="cuda").float()
        o16 = ft.AdamW(m16.parameters(), lr=1e-2, loss_scale=True)
        o32 = torch.optim.AdamW(m32.parameters(), lr=1e-2)
        for x, y in batches(5, device="cuda"):
            o16.zero_grad()
            o16.scale_loss(loss_of(m16, x, y)).backward()
            for p16, p32 in zip(m16.parameters(), m32.parameters()):
                p32.grad = p16.grad.float() / o16.loss_scale
            o16.step()
            o32.step()
        sd = o16.state_dict()
        masters = [sd["state"][i]["master"] for i in range(4)]
        assert_close(self, masters, list(m32.parameters()), "master", tol=1e-4)
        for p16, mst in zip(m16.parameters(), masters):
            self.assertEqual(p16.dtype, torch.bfloat16)
            self.assertTrue(torch.equal(p16, mst.to(torch.bfloat16)), "p16 != RNE(master)")
        # The state is read from the library's device memory: fp32 on the
        # parameters' device, and torch's moments (on the same gradients).
        want = o32.state_dict()["state"]
        for i in range(4):
            for k in ("exp_avg", "exp_avg_sq"):
                t = sd["state"][i][k]
                self.assertEqual((t.device.type, t.dtype), ("cuda", torch.float32), k)
            assert_close(self, [sd["state"][i]["exp_avg"]], [want[i]["exp_avg"]],
                         "exp_avg %d" % i, tol=1e-4)
        self.assertEqual(float(sd["state"][0]["step"]), 5.0)

    def test_graph_capture(self):
        m1, m2 = make_model(device="cuda"), make_model(device="cuda")
        o1 = ft.AdamW(m1.parameters(), lr=1e-2)
        o2 = torch.optim.AdamW(m2.parameters(), lr=1e-2)
        data = batches(6, device="cuda")
        captured_training(m1, o1, m2, o2, data)
        assert_close(self, list(m1.parameters()), list(m2.parameters()), "graph", tol=1e-4)
        # the step count (bias corrections) advances on the device in replays
        self.assertEqual(o1.step_count, len(data))
        # eager steps after the replays: the library now computes every
        # step's scalars on the device (its prepare kernel, then the update
        # with Programmatic Dependent Launch on torch's current stream),
        # counting on from the replays
        more = batches(2, device="cuda")
        train(m1, o1, more)
        train(m2, o2, more)
        torch.cuda.synchronize()
        assert_close(self, list(m1.parameters()), list(m2.parameters()), "eager after graph",
                     tol=1e-4)
        self.assertEqual(o1.step_count, len(data) + 2)

    def test_graph_capture_refuses_a_cuda_tensor_lr(self):
        """A group's lr in a CUDA tensor is read with .item(), a host
        synchronization, which a capture cannot hold: the step refuses it
        with a message before any work, the capture ends intact, and the
        optimizer still steps eagerly."""
        m = make_model(device="cuda")
        o = ft.AdamW(m.parameters(), lr=torch.tensor(1e-2, device="cuda"))
        (x, y), = batches(1, device="cuda")
        train(m, o, [(x, y)])  # eager: the tensor is read, as torch reads it
        g = torch.cuda.CUDAGraph()
        o.zero_grad()
        with self.assertRaisesRegex(RuntimeError, "lr is a CUDA tensor"):
            with torch.cuda.graph(g):
                loss_of(m, x, y).backward()
                o.step()
        torch.cuda.synchronize()
        self.assertEqual(o.step_count, 1)
        o.param_groups[0]["lr"] = 1e-2
        train(m, o, [(x, y)])
        torch.cuda.synchronize()
        self.assertEqual(o.step_count, 2)

    def test_graph_capture_loss_scale(self):
        """The loss scaler inside a capture: scale_loss multiplies by the
        device-resident scale (no host synchronization, which a capture
        would refuse) and the step unscales; torch's AdamW on the unscaled
        gradients agrees."""
        m1, m2 = make_model(device="cuda"), make_model(device="cuda")
        o1 = ft.AdamW(m1.parameters(), lr=1e-2, loss_scale=True)
        o2 = torch.optim.AdamW(m2.parameters(), lr=1e-2)
        data = batches(6, device="cuda")
        captured_training(m1, o1, m2, o2, data, scale=o1.scale_loss)
        info = o1.info()
        self.assertEqual((info.step, info.skipped_steps), (len(data), 0))
        self.assertEqual(o1.loss_scale.item(), 65536.0)
        assert_close(self, list(m1.parameters()), list(m2.parameters()), "graph, scaled",
                     tol=1e-4)

    def test_graph_capture_bf16_master(self):
        """bf16 parameters with fp32 master weights, the step captured with
        backward and replayed; torch's AdamW on the fp32 values of the same
        parameters gets the graph's gradients, widened, after each replay."""
        m16 = make_model(dtype=torch.bfloat16, device="cuda")
        m32 = make_model(dtype=torch.bfloat16, device="cuda").float()
        o16 = ft.AdamW(m16.parameters(), lr=1e-2)
        o32 = torch.optim.AdamW(m32.parameters(), lr=1e-2)

        def torch_step():
            for p16, p32 in zip(m16.parameters(), m32.parameters()):
                p32.grad = p16.grad.float()
            o32.step()

        data = batches(6, device="cuda")
        x_static, y_static = data[0][0].clone(), data[0][1].clone()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):  # warm-up outside the graph
            o16.zero_grad()
            loss_of(m16, x_static, y_static).backward()
            o16.step()
        torch.cuda.current_stream().wait_stream(s)
        torch_step()  # the warm-up's gradients: computed at the initial weights
        g = torch.cuda.CUDAGraph()
        o16.zero_grad()
        with torch.cuda.graph(g):
            loss_of(m16, x_static, y_static).backward()
            o16.step()
        for x, y in data[1:]:
            x_static.copy_(x)
            y_static.copy_(y)
            o16.zero_grad()
            g.replay()
            torch_step()  # the gradients stay in fusedopt's buffer until zero_grad
        torch.cuda.synchronize()
        self.assertEqual(o16.step_count, len(data))
        sd = o16.state_dict()
        masters = [sd["state"][i]["master"] for i in range(4)]
        assert_close(self, masters, list(m32.parameters()), "bf16 graph master", tol=1e-4)
        for p16, mst in zip(m16.parameters(), masters):
            self.assertTrue(torch.equal(p16, mst.to(torch.bfloat16)), "p16 != RNE(master)")

    def test_state_dict_both_ways(self):
        """The state read from and written to device memory: fusedopt's state
        continued by torch, and torch's continued by fusedopt, agree with the
        other optimizer running on."""
        data = batches(8, device="cuda")
        for name, kw in (("AdamW", dict(lr=1e-2, amsgrad=True)),
                         ("SGD", dict(lr=0.05, momentum=0.9))):
            with self.subTest(name=name):
                m1, m2 = make_model(device="cuda"), make_model(device="cuda")
                o1 = getattr(ft, name)(m1.parameters(), **kw)
                train(m1, o1, data[:4])
                sd = o1.state_dict()
                for st in sd["state"].values():
                    for k, v in st.items():
                        if k != "step":
                            self.assertEqual(v.device.type, "cuda", k)
                m2.load_state_dict(m1.state_dict())
                o2 = getattr(torch.optim, name)(m2.parameters(), **kw)
                o2.load_state_dict(sd)
                train(m1, o1, data[4:])
                train(m2, o2, data[4:])
                assert_close(self, list(m2.parameters()), list(m1.parameters()),
                             "fusedopt -> torch")
                m3 = make_model(seed=3, device="cuda")
                m3.load_state_dict(m2.state_dict())
                o3 = getattr(ft, name)(m3.parameters(), **kw)
                o3.load_state_dict(o2.state_dict())
                train(m2, o2, data[:4])
                train(m3, o3, data[:4])
                assert_close(self, list(m3.parameters()), list(m2.parameters()),
                             "torch -> fusedopt")


if __name__ == "__main__":
    print("fusedopt.torch tests: torch %s, libfusedopt %s (%s), CUDA %s"
          % (torch.__version__, fusedopt.library_version(), fusedopt.library_path(),
             torch.cuda.is_available()))
    unittest.main()
