"""fusedopt.torch's contract where user code does what torch.optim allows:
gradients moved or swapped behind the optimizer's back, frozen parameters,
settings that need state created lazily, group dicts kept by the caller,
state dicts of other algorithms, torch 2.x's state-dict hooks, and the state
torch's layout has no place for (NAdam's mu_product under a changing beta1,
the loss scaler).

Run as a script (CTest's python_torch_contract): exits 77 (CTest's
SKIP_RETURN_CODE), saying why, when torch cannot be imported.
"""

import collections
import sys
import ctypes
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
from test_torch import assert_close, batches, loss_of, make_model


def snapshot(opt, model):
    """Everything a failed call must leave as it was."""
    sd = opt.state_dict()
    return (opt.step_count, opt.info().skipped_steps,
            [dict((k, v) for k, v in g.items() if k != "params") for g in opt.param_groups],
            {i: {k: v.clone() for k, v in s.items()} for i, s in sd["state"].items()},
            [p.detach().clone() for p in model.parameters()])


def assert_same(tc, a, b):
    tc.assertEqual(a[:3], b[:3])
    tc.assertEqual(a[3].keys(), b[3].keys())
    for i in a[3]:
        tc.assertEqual(a[3][i].keys(), b[3][i].keys())
        for k in a[3][i]:
            tc.assertTrue(torch.equal(a[3][i][k], b[3][i][k]), "state %d %s changed" % (i, k))
    for p, q in zip(a[4], b[4]):
        tc.assertTrue(torch.equal(p, q))


def step_on(model, opt, x, y, overflow=False):
    opt.zero_grad()
    loss_of(model, x, y).backward()
    if overflow:
        opt.param_groups[0]["params"][0].grad.fill_(float("inf"))
    opt.step()


class OnDevice(unittest.TestCase):
    """Tests whose tensors live on self.device: the Cuda* subclasses below
    run them again on a GPU (skipped, saying why, without one)."""
    device = "cpu"

    def setUp(self):
        if self.device == "cuda":
            if not torch.cuda.is_available():
                self.skipTest("no CUDA device (torch.cuda.is_available() is False): the "
                              "CUDA tests need one")
            try:
                ft.SGD([torch.zeros(1, device="cuda", requires_grad=True)]).close()
            except fusedopt.NoDevice as e:
                self.skipTest("libfusedopt has no usable CUDA executor: %s" % e)

    def model(self, seed=0):
        return make_model(seed, device=self.device)

    def batches(self, n):
        return batches(n, device=self.device)


class MovedGradients(OnDevice):
    def test_grad_data_assigned(self):
        """p.grad.data = t keeps the view object but moves it off the
        buffer: the step reads t and zero_grad zeroes p.grad, as in torch."""
        for cls in ("SGD", "AdamW"):
            mt, mf = self.model(), self.model()
            ot = getattr(torch.optim, cls)(mt.parameters(), lr=0.1)
            of = getattr(ft, cls)(mf.parameters(), lr=0.1)
            g = torch.Generator().manual_seed(3)
            news = [torch.randn(p.shape, generator=g).to(self.device) for p in mt.parameters()]
            for m in (mt, mf):
                for p, t in zip(m.parameters(), news):
                    p.grad = torch.zeros_like(p) if p.grad is None else p.grad
                    p.grad.data = t.clone()
            ot.step()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                of.step()
            assert_close(self, list(mf.parameters()), list(mt.parameters()), cls)
            # the next round through the buffer again
            for m, o in ((mt, ot), (mf, of)):
                o.zero_grad(set_to_none=False)  # torch 2.x: None by default
                for p in m.parameters():
                    self.assertEqual(p.grad.abs().sum().item(), 0.0)
            x, y = self.batches(1)[0]
            step_on(mt, ot, x, y)
            step_on(mf, of, x, y)
            assert_close(self, list(mf.parameters()), list(mt.parameters()), cls + " after")

    def test_same_memory_other_layout(self):
        """p.grad = p.grad.t(): the same memory read in another order, as
        torch reads it."""
        d = self.device
        for m_cls in (torch.optim.SGD, ft.SGD):
            w = torch.zeros(2, 2, device=d, requires_grad=True)
            opt = m_cls([w], lr=1.0)
            w.grad = torch.zeros(2, 2, device=d) if w.grad is None else w.grad
            with torch.no_grad():
                w.grad.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
            w.grad = w.grad.t()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                opt.step()
            self.assertTrue(torch.equal(w.detach().cpu(), -torch.tensor([[1.0, 3.0],
                                                                         [2.0, 4.0]])), m_cls)

    def test_swapped_grads(self):
        """Two parameters' views swapped: each gets the other's gradient."""
        for m_cls in (torch.optim.SGD, ft.SGD):
            d = self.device
            a = torch.ones(5, device=d, requires_grad=True)
            b = torch.ones(5, device=d, requires_grad=True)
            opt = m_cls([a, b], lr=1.0)
            if m_cls is torch.optim.SGD:
                a.grad, b.grad = torch.zeros(5, device=d), torch.zeros(5, device=d)
            with torch.no_grad():
                a.grad.copy_(torch.arange(5.0))
                b.grad.copy_(torch.arange(5.0) * -3)
            a.grad, b.grad = b.grad, a.grad
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                opt.step()
            self.assertTrue(torch.equal(a.detach().cpu(), 1 + 3 * torch.arange(5.0)), m_cls)
            self.assertTrue(torch.equal(b.detach().cpu(), 1 - torch.arange(5.0)), m_cls)


class FrozenParameters(OnDevice):
    def setUp(self):
        super().setUp()
        self.data = self.batches(4)

    def models(self, freeze=(0,)):
        out = []
        for _ in range(2):
            m = self.model()
            for i, p in enumerate(m.parameters()):
                if i in freeze:
                    p.requires_grad_(False)
            out.append(m)
        return out

    def test_default_refuses_and_changes_nothing(self):
        _, m = self.models()
        opt = ft.AdamW(m.parameters(), lr=1e-2)
        x, y = self.data[0]
        before = snapshot(opt, m)
        opt.zero_grad()
        loss_of(m, x, y).backward()
        with self.assertRaisesRegex(RuntimeError, r"\[0\] are frozen"):
            opt.step()
        assert_same(self, before, snapshot(opt, m))

    def test_skip_is_torchs_step(self):
        for cls, kw in (("AdamW", dict(lr=1e-2, weight_decay=0.1)),
                        ("SGD", dict(lr=0.05, momentum=0.9, weight_decay=0.01))):
            mt, mf = self.models(freeze=(0, 3))
            ot = getattr(torch.optim, cls)(mt.parameters(), **kw)
            of = getattr(ft, cls)(mf.parameters(), missing_grad="skip", **kw)
            frozen = [p.detach().clone() for p in mf.parameters()]
            for x, y in self.data:
                step_on(mt, ot, x, y)
                step_on(mf, of, x, y)
            assert_close(self, list(mf.parameters()), list(mt.parameters()), cls)
            ps = list(mf.parameters())
            for i in (0, 3):
                self.assertTrue(torch.equal(ps[i], frozen[i]), "%s frozen %d moved" % (cls, i))
            st = of.state_dict()["state"]
            for name, t in st[0].items():
                if name != "step":
                    self.assertEqual(t.abs().sum().item(), 0.0, "%s state %s" % (cls, name))
            # unfrozen again: stepped from then on
            ps[0].requires_grad_(True)
            x, y = self.data[0]
            step_on(mf, of, x, y)
            self.assertFalse(torch.equal(ps[0], frozen[0]))

    def test_skip_keeps_a_none_grad_parameter(self):
        m = self.model()
        opt = ft.Adam(m.parameters(), lr=1e-2, missing_grad="skip")
        x, y = self.data[0]
        step_on(m, opt, x, y)
        ps = list(m.parameters())
        kept = [p.detach().clone() for p in ps]
        exp_avg = opt.state_dict()["state"][1]["exp_avg"]
        opt.zero_grad()
        loss_of(m, x, y).backward()
        ps[1].grad = None
        opt.step()
        self.assertTrue(torch.equal(ps[1], kept[1]))
        self.assertTrue(torch.equal(opt.state_dict()["state"][1]["exp_avg"], exp_avg))
        self.assertFalse(torch.equal(ps[0], kept[0]))  # the others were stepped

    def test_assigned_gradient_of_a_frozen_tensor_counts(self):
        """torch steps a tensor that does not require grad when p.grad is
        set: so does every mode; "zero" also steps a gradient written into
        the view in place, which "skip" cannot tell from zero_grad's."""
        g = torch.full((4,), 2.0, device=self.device)
        for mode in ("error", "skip", "zero"):
            wt = torch.ones(4, device=self.device)
            wf = torch.ones(4, device=self.device)
            ot = torch.optim.SGD([wt], lr=0.1)
            of = ft.SGD([wf], lr=0.1, missing_grad=mode)
            wt.grad, wf.grad = g.clone(), g.clone()
            ot.step()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                of.step()
            self.assertTrue(torch.equal(wf, wt), mode)
            with torch.no_grad():
                wf.grad.copy_(g)  # in place, into the view
            if mode == "error":
                with self.assertRaisesRegex(RuntimeError, "frozen"):
                    of.step()
                continue
            of.step()
            want = wt - 0.1 * g if mode == "zero" else wt
            self.assertTrue(torch.equal(wf, want), mode)

    def test_zero_steps_them(self):
        _, m = self.models()
        opt = ft.AdamW(m.parameters(), lr=1e-2, weight_decay=0.5, missing_grad="zero")
        w = next(m.parameters()).detach().clone()
        x, y = self.data[0]
        step_on(m, opt, x, y)
        got = next(m.parameters()).detach()
        self.assertTrue(torch.allclose(got, w * (1 - 1e-2 * 0.5)), "weight decay applied")


class LazyState(unittest.TestCase):
    def test_onecycle_momentum_on_sgd_without_momentum(self):
        """OneCycleLR writes group["momentum"] into SGD(momentum=0) before
        the first step: the optimizer is created again with the buffer."""
        data = batches(6)
        mt, mf = make_model(), make_model()
        ot = torch.optim.SGD(mt.parameters(), lr=0.05)
        of = ft.SGD(mf.parameters(), lr=0.05)
        st = torch.optim.lr_scheduler.OneCycleLR(ot, max_lr=0.1, total_steps=10)
        sf = torch.optim.lr_scheduler.OneCycleLR(of, max_lr=0.1, total_steps=10)
        for x, y in data:
            step_on(mt, ot, x, y)
            step_on(mf, of, x, y)
            st.step()
            sf.step()
        assert_close(self, list(mf.parameters()), list(mt.parameters()), "OneCycleLR")
        self.assertIn("momentum_buffer", of.state_dict()["state"][0])

    def test_after_a_step_refused_unchanged(self):
        m = make_model()
        opt = ft.SGD(m.parameters(), lr=0.05)
        x, y = batches(1)[0]
        step_on(m, opt, x, y)
        opt.param_groups[0]["momentum"] = 0.9
        opt.zero_grad()
        loss_of(m, x, y).backward()
        with self.assertRaisesRegex(fusedopt.InvalidState, "state buffer"):
            opt.step()
        opt.param_groups[0]["momentum"] = 0.0
        before = snapshot(opt, m)
        opt.param_groups[0]["momentum"] = 0.9
        with self.assertRaises(fusedopt.InvalidState):
            opt.step()
        opt.param_groups[0]["momentum"] = 0.0
        assert_same(self, before, snapshot(opt, m))

    def test_load_state_that_needs_more_buffers(self):
        """A state saved with amsgrad / momentum / centered loads into an
        optimizer created without it (trained or not), and the next steps
        are torch's."""
        data = batches(5)
        cases = [("Adam", dict(lr=1e-2, amsgrad=True), dict(lr=1e-2)),
                 ("SGD", dict(lr=0.05, momentum=0.9), dict(lr=0.05)),
                 ("RMSprop", dict(lr=1e-2, momentum=0.9, centered=True), dict(lr=1e-2))]
        for cls, src_kw, dst_kw in cases:
            for trained in (0, 2):
                ms = make_model()
                src = getattr(torch.optim, cls)(ms.parameters(), **src_kw)
                for x, y in data[:3]:
                    step_on(ms, src, x, y)
                sd = src.state_dict()
                mf = make_model(seed=5)
                of = getattr(ft, cls)(mf.parameters(), **dst_kw)
                for x, y in data[:trained]:
                    step_on(mf, of, x, y)
                with torch.no_grad():
                    for p, q in zip(mf.parameters(), ms.parameters()):
                        p.copy_(q)
                of.load_state_dict(sd)
                for x, y in data[3:]:
                    step_on(ms, src, x, y)
                    step_on(mf, of, x, y)
                assert_close(self, list(mf.parameters()), list(ms.parameters()),
                             "%s after %d steps" % (cls, trained))


class Groups(unittest.TestCase):
    def test_group_dicts_are_the_callers(self):
        a = torch.ones(2, requires_grad=True)
        b = torch.ones(2, requires_grad=True)
        g0, g1 = {"params": [a]}, {"params": [b], "lr": 0.5}
        opt = ft.SGD([g0], lr=0.1)
        opt.add_param_group(g1)
        self.assertIs(opt.param_groups[0], g0)
        self.assertIs(opt.param_groups[1], g1)
        g0["lr"] = 1.0
        a.grad.fill_(1.0)
        b.grad.fill_(1.0)
        opt.step()
        self.assertTrue(torch.equal(a.detach(), torch.zeros(2)))
        self.assertTrue(torch.equal(b.detach(), torch.full((2,), 0.5)))

    def test_add_param_group_after_skipped_steps(self):
        a = torch.ones(3, dtype=torch.float16, requires_grad=True)
        opt = ft.Adam([a], lr=1e-2, loss_scale=True)
        for _ in range(2):
            opt.zero_grad()
            a.grad.fill_(float("inf"))
            opt.step()
        info = opt.info()
        self.assertEqual((info.step, info.skipped_steps), (0, 2))
        with self.assertRaisesRegex(RuntimeError, "skipped step"):
            opt.add_param_group({"params": [torch.ones(2, dtype=torch.float16,
                                                       requires_grad=True)]})
        self.assertEqual(opt.info().loss_scale, info.loss_scale)
        self.assertEqual(len(opt.param_groups), 1)

    def test_bad_params(self):
        x = torch.ones(3, requires_grad=True)
        y = x * 2
        y.retain_grad()
        with self.assertRaisesRegex(ValueError, "non-leaf"):
            ft.SGD([y], lr=0.1)
        with self.assertRaisesRegex(ValueError, "twice"):
            ft.SGD([x, x], lr=0.1)
        self.assertIsNone(x.grad)


class OtherAlgorithms(unittest.TestCase):
    def test_empty_state_of_another_algorithm_refused(self):
        m = make_model()
        opt = ft.Adam(m.parameters(), lr=1e-2)
        for x, y in batches(2):
            step_on(m, opt, x, y)
        before = snapshot(opt, m)
        for other in (ft.SGD(make_model().parameters(), lr=0.5),
                      torch.optim.SGD(make_model().parameters(), lr=0.5, momentum=0.9),
                      torch.optim.RMSprop(make_model().parameters()),
                      ft.LAMB(make_model().parameters()),
                      ft.Lion(make_model().parameters())):
            with self.assertRaisesRegex(ValueError, "another algorithm"):
                opt.load_state_dict(other.state_dict())
            assert_same(self, before, snapshot(opt, m))
        # keys that are all another class's too: SGD's are LARS's
        m = make_model()
        lars = ft.LARS(m.parameters())
        src = torch.optim.SGD(make_model().parameters(), lr=0.5, momentum=0.9)
        before = snapshot(lars, m)
        with self.assertRaisesRegex(ValueError, "lacks"):
            lars.load_state_dict(src.state_dict())
        assert_same(self, before, snapshot(lars, m))

    def test_unreadable_state_refused_unchanged(self):
        """A state tensor that cannot be read (meta, sparse) is refused
        before anything changes, also by a load that would create the
        optimizer again (amsgrad)."""
        data = batches(3)
        for amsgrad in (False, True):
            ms = make_model()
            src = torch.optim.Adam(ms.parameters(), lr=1e-2, amsgrad=amsgrad)
            for x, y in data:
                step_on(ms, src, x, y)
            m, twin = make_model(), make_model()
            opt, opt_twin = ft.Adam(m.parameters(), lr=0.5), ft.Adam(twin.parameters(), lr=0.5)
            for x, y in data[:2]:
                step_on(m, opt, x, y)
                step_on(twin, opt_twin, x, y)
            before = snapshot(opt, m)
            for bad in (lambda t: torch.empty_like(t, device="meta"), lambda t: t.to_sparse()):
                sd = src.state_dict()
                sd["state"][0] = dict(sd["state"][0], exp_avg_sq=bad(sd["state"][0]["exp_avg_sq"]))
                with self.assertRaises(ValueError):
                    opt.load_state_dict(sd)
                assert_same(self, before, snapshot(opt, m))
                self.assertEqual(opt.param_groups[0]["lr"], 0.5)
            # the library still holds lr 0.5 and the state: the next step is
            # the twin's, which saw no load
            x, y = data[2]
            step_on(m, opt, x, y)
            step_on(twin, opt_twin, x, y)
            for p, q in zip(m.parameters(), twin.parameters()):
                self.assertTrue(torch.equal(p, q))


class StepState(OnDevice):
    """What torch's layout keeps outside the per-tensor tensors, through a
    state_dict() / load_state_dict() resume: the resumed run equals the
    uninterrupted one bit for bit."""

    def resume_equals_uninterrupted(self, make_opt, data, on_step=None, k=3, overflows=()):
        m1, m2 = self.model(), self.model()
        o1, o2 = make_opt(m1), make_opt(m2)
        for i, (x, y) in enumerate(data[:k]):
            for m, o in ((m1, o1), (m2, o2)):
                if on_step:
                    on_step(i, o)
                step_on(m, o, x, y, i in overflows)
        sd = o2.state_dict()
        m3 = self.model(seed=7)
        with torch.no_grad():
            for p, q in zip(m3.parameters(), m2.parameters()):
                p.copy_(q)
        o3 = make_opt(m3)
        o3.load_state_dict(sd)
        for i, (x, y) in enumerate(data[k:], k):
            for m, o in ((m1, o1), (m3, o3)):
                if on_step:
                    on_step(i, o)
                step_on(m, o, x, y, i in overflows)
        for p, q in zip(m1.parameters(), m3.parameters()):
            self.assertTrue(torch.equal(p, q), "resumed run differs")
        return o1, o3, sd

    @unittest.skipUnless("nadam" in fusedopt.algorithms(), "the library has no NAdam")
    def test_nadam_mu_product_with_changing_beta1(self):
        betas = [0.9, 0.8, 0.95, 0.85, 0.7, 0.9]
        psi = 4e-3

        def on_step(i, o):
            o.param_groups[0]["betas"] = (betas[i], 0.999)
        o1, o3, sd = self.resume_equals_uninterrupted(
            lambda m: ft.NAdam(m.parameters(), lr=1e-2, momentum_decay=psi), self.batches(6),
            on_step)
        want = 1.0
        for t in range(1, 4):
            want *= betas[t - 1] * (1.0 - 0.5 * 0.96 ** (t * psi))
        got = sd["state"][0]["mu_product"].item()
        self.assertAlmostEqual(got, want, delta=1e-6 * want)
        # a product from the step count and the last beta1 would differ
        self.assertGreater(abs(got - (0.85 * (1 - 0.5 * 0.96 ** psi)) ** 3), 1e-3)
        self.assertEqual(o1.state_dict()["state"][0]["mu_product"].item(),
                         o3.state_dict()["state"][0]["mu_product"].item())

    def test_loss_scaler_state(self):
        data = self.batches(8)

        def make(m):
            return ft.AdamW(m.to(torch.bfloat16).parameters(), lr=1e-2,
                            loss_scale=dict(init_scale=2.0**20, growth_interval=2,
                                            hysteresis=2))

        # overflows: steps 1 and 2 skipped, the second backs off
        # (hysteresis 2); the resumed run overflows at step 5 once more
        o1, o3, sd = self.resume_equals_uninterrupted(make, data, k=4, overflows=(1, 2, 5))
        entry = sd["fusedopt"]
        self.assertEqual(entry["skipped_steps"], 2)
        self.assertLess(entry["loss_scale"], 2.0**20)
        i1, i3 = o1.info(), o3.info()
        self.assertEqual((i1.loss_scale, i1.skipped_steps, i1.growth_tracker),
                         (i3.loss_scale, i3.skipped_steps, i3.growth_tracker))
        # torch's optimizer ignores the entry; a bad one is refused unchanged
        m = self.model()
        o = make(m)
        before = snapshot(o, m)
        bad = dict(sd, fusedopt=dict(entry, loss_scale=float("nan")))
        with self.assertRaises(ValueError):
            o.load_state_dict(bad)
        assert_same(self, before, snapshot(o, m))
        bad = dict(sd, fusedopt=dict(entry, hysteresis_left=0))
        with self.assertRaises(ValueError):
            o.load_state_dict(bad)
        assert_same(self, before, snapshot(o, m))
        # the same through a load that must create the optimizer again
        # (amsgrad): refused before it does
        m = self.model().to(torch.bfloat16)
        o = ft.AdamW(m.parameters(), lr=1e-2, loss_scale=dict(hysteresis=2))
        for x, y in data[:2]:
            step_on(m, o, x, y)
        ms = self.model().to(torch.bfloat16)
        src = ft.AdamW(ms.parameters(), lr=1e-2, amsgrad=True, loss_scale=dict(hysteresis=2))
        for x, y in data[:2]:
            step_on(ms, src, x, y)
        before = snapshot(o, m)
        for field, value in (("hysteresis_left", 3), ("growth_tracker", -1),
                             ("loss_scale", 1e39)):
            with self.assertRaisesRegex(ValueError, field):
                o.load_state_dict(dict(src.state_dict(),
                                       fusedopt=dict(entry, **{field: value})))
            assert_same(self, before, snapshot(o, m))
        o.load_state_dict(src.state_dict())  # and the good one loads
        self.assertIn("max_exp_avg_sq", o.state_dict()["state"][0])


class StateDictHooks(unittest.TestCase):
    """torch 2.x's state-dict hooks.  torch 1.x has no register_* methods:
    there the test fills the dicts torch 2.x keeps them in."""

    def register(self, opt, kind, hook):
        method = getattr(opt, "register_" + kind, None)
        if method is not None:
            return method(hook)
        name = "_optimizer_" + kind.replace("_hook", "_hooks")
        hooks = opt.__dict__.setdefault(name, collections.OrderedDict())
        hooks[len(hooks)] = hook
        return None

    def test_hooks_run(self):
        m = make_model()
        opt = ft.AdamW(m.parameters(), lr=1e-2)
        x, y = batches(1)[0]
        step_on(m, opt, x, y)
        calls = []
        self.register(opt, "state_dict_pre_hook", lambda o: calls.append("pre"))

        def post(o, sd):
            calls.append("post")
            sd = dict(sd)
            sd["extra"] = 1
            return sd
        self.register(opt, "state_dict_post_hook", post)

        def load_pre(o, sd):
            calls.append("load_pre")
            self.assertIn("extra", sd)
            sd = dict(sd)
            sd["param_groups"] = [dict(g, lr=0.25) for g in sd["param_groups"]]
            return sd
        self.register(opt, "load_state_dict_pre_hook", load_pre)
        self.register(opt, "load_state_dict_post_hook", lambda o: calls.append("load_post"))
        sd = opt.state_dict()
        self.assertEqual(sd["extra"], 1)
        opt.load_state_dict(sd)
        self.assertEqual(calls, ["pre", "post", "load_pre", "load_post"])
        self.assertEqual(opt.param_groups[0]["lr"], 0.25)
        self.assertEqual(sd["param_groups"][0]["lr"], 1e-2)  # the caller's dict untouched


class CudaMovedGradients(MovedGradients):
    device = "cuda"


class CudaFrozenParameters(FrozenParameters):
    device = "cuda"


class CudaStepState(StepState):
    device = "cuda"


class OptionsAndLoadGaps(unittest.TestCase):
    """Options that must reach the library, and state-dict rules, each
    one a bug no other test would notice."""

    def library_options(self, opt):
        from fusedopt import _ctypes as C
        out = C.FoOptions()
        out.struct_size = ctypes.sizeof(out)
        self.assertEqual(opt._lib.fo_optimizer_get_options(opt._handle, ctypes.byref(out)), 0)
        return out

    def test_options_reach_the_library(self):
        p = torch.nn.Parameter(torch.zeros(4, dtype=torch.bfloat16))
        opt = ft.SGD([p], lr=0.1, master_weights=False, num_threads=3, max_grad_norm=2.5)
        o = self.library_options(opt)
        self.assertEqual((o.master_weights, o.num_threads, o.max_grad_norm), (0, 3, 2.5))

    def test_max_grad_norm_clips(self):
        p = torch.nn.Parameter(torch.zeros(4))
        opt = ft.SGD([p], lr=1.0, max_grad_norm=1.5)
        opt.zero_grad()
        p.grad.fill_(3.0)  # norm 6: scaled by 1.5 / 6
        opt.step()
        self.assertAlmostEqual(opt.info().grad_norm, 6.0, places=4)
        assert_close(self, [p], [torch.full((4,), -0.75)], "clipped step")

    def test_bf16_without_master_weights_rounds_every_step(self):
        for master, moved in ((False, False), (True, True)):
            p = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
            opt = ft.SGD([p], lr=1e-3, master_weights=master)
            for _ in range(10):
                opt.zero_grad()
                p.grad.fill_(1.0)  # -0.001 a step: under half a bf16 ulp of 1.0
                opt.step()
            self.assertEqual(bool((p != 1.0).all()), moved, "master_weights=%s" % master)

    def test_gradient_of_another_dtype_refused(self):
        p = torch.nn.Parameter(torch.zeros(4))
        opt = ft.SGD([p], lr=0.1)
        opt.zero_grad()
        p.grad.data = torch.ones(4, dtype=torch.float64)  # torch allows it through .data
        with self.assertRaisesRegex(RuntimeError, "gradient is torch.float64"):
            opt.step()
        self.assertTrue(torch.equal(p.detach(), torch.zeros(4)))
        self.assertEqual(opt.step_count, 0)

    def test_skip_keeps_the_master_weights_of_a_skipped_parameter(self):
        a = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
        b = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
        opt = ft.AdamW([a, b], lr=0.1, weight_decay=0.5, missing_grad="skip")
        opt.zero_grad()
        a.grad.fill_(1.0)
        b.grad.fill_(1.0)
        opt.step()
        before = opt.state_dict()["state"][1]["master"].clone()
        b_before = b.detach().clone()
        opt.zero_grad()
        a.grad.fill_(1.0)
        b.grad = None  # skipped: weight decay must not move its master copy
        opt.step()
        self.assertTrue(torch.equal(b.detach(), b_before))
        self.assertTrue(torch.equal(opt.state_dict()["state"][1]["master"], before))

    def test_state_for_some_parameters_only_refused(self):
        m = make_model()
        opt = ft.Adam(m.parameters(), lr=1e-2)
        x, y = batches(1)[0]
        step_on(m, opt, x, y)
        sd = opt.state_dict()
        del sd["state"][1]
        before = snapshot(opt, m)
        with self.assertRaisesRegex(ValueError, "covers 3 of 4 parameters"):
            opt.load_state_dict(sd)
        assert_same(self, before, snapshot(opt, m))

    def test_adagrad_fresh_state_from_the_loaded_groups(self):
        p = torch.nn.Parameter(torch.zeros(3))
        opt = ft.Adagrad([p], lr=0.1, initial_accumulator_value=0.0)
        sd = opt.state_dict()
        sd["state"] = {}
        sd["param_groups"][0]["initial_accumulator_value"] = 0.5
        opt.load_state_dict(sd)
        self.assertTrue(torch.equal(opt.state_dict()["state"][0]["sum"], torch.full((3,), 0.5)))

    def test_centered_rmsprop_without_momentum_has_grad_avg(self):
        m1, m2 = make_model(), make_model()
        o1 = ft.RMSprop(m1.parameters(), lr=1e-2, centered=True)
        o2 = torch.optim.RMSprop(m2.parameters(), lr=1e-2, centered=True)
        for x, y in batches(2):
            step_on(m1, o1, x, y)
            step_on(m2, o2, x, y)
        sd = o1.state_dict()
        self.assertIn("grad_avg", sd["state"][0])
        assert_close(self, [sd["state"][i]["grad_avg"] for i in range(4)],
                     [o2.state[p]["grad_avg"] for p in m2.parameters()], "grad_avg")
        o1.load_state_dict(o2.state_dict())  # torch's centered state loads

    def test_failed_load_keeps_the_step_count(self):
        m = make_model()
        opt = ft.Adam(m.parameters(), lr=1e-2)
        data = batches(2)
        step_on(m, opt, *data[0])
        sd = opt.state_dict()
        step_on(m, opt, *data[1])

        def fail(*args, **kwargs):
            raise RuntimeError("the device failed")
        opt._init_state = fail  # fails after the step count was set
        with self.assertRaisesRegex(RuntimeError, "the device failed"):
            opt.load_state_dict(sd)
        self.assertEqual(opt.step_count, 2)

    def test_failed_rebuilding_load_keeps_the_library_hparams(self):
        from fusedopt import _ctypes as C
        ps = [torch.nn.Parameter(torch.zeros(2)) for _ in range(3)]
        opt = ft.Adam([{"params": [p]} for p in ps], lr=1e-2)
        sd = opt.state_dict()
        sd["param_groups"][0]["lr"] = 0.5       # pushed first
        sd["param_groups"][1]["amsgrad"] = True  # needs a buffer: the optimizer is made again
        sd["param_groups"][2]["eps"] = -1.0      # which the library refuses
        with self.assertRaises(fusedopt.InvalidArgument):
            opt.load_state_dict(sd)
        hp = C.FoHparams()
        opt._call("fo_optimizer_get_hparams", 0, ctypes.byref(hp))
        self.assertAlmostEqual(hp.lr, 1e-2, places=6)


if __name__ == "__main__":
    unittest.main()
