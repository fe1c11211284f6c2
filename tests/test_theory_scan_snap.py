"""Scan&Snap closed forms against hand-computed values and limits (theory.md 1.3)."""

import numpy as np
import pytest

from sslens.theory import scan_snap as th


@pytest.mark.parametrize("M,eta_Y", [(2, 1.0), (34, 1.0), (1000, 5.0)])
def test_h_solves_its_equation(M, eta_Y):
    s = np.concatenate([[0.0], np.geomspace(1e-4, 1e4, 50)])
    hh = th.h(s, M, eta_Y)
    lhs = np.exp(M * hh) + (M - 1) * M * hh
    np.testing.assert_allclose(lhs, M * eta_Y * s + 1, rtol=1e-10)
    assert hh[0] == 0 and np.all(np.diff(hh) > 0)


def test_h_hand_value_and_limits():
    # M = 2, eta_Y = 1, h = 1/2: e^1 + 2 * 1/2 = 2 s + 1  ->  s = e/2
    assert th.h(np.e / 2, 2, 1.0) == pytest.approx(0.5, abs=1e-12)
    M, eta_Y = 34, 2.0
    # small s: h'(0) = eta_Y / M (differentiate the defining equation at h = 0)
    assert th.h(1e-7, M, eta_Y) / 1e-7 == pytest.approx(eta_Y / M, rel=1e-5)
    # large s: e^{Mh} dominates, h ~ ln(M eta_Y s) / M
    s = 1e12
    assert th.h(s, M, eta_Y) == pytest.approx(np.log(M * eta_Y * s) / M, rel=1e-2)


def test_gamma_growth_then_decay():
    M, K, eta_Y = 34, 2, 1.0
    t = 1e-6
    # small t: gamma = (M-1)^2 h / M with h = eta_Y t / (K M): ~ eta_Y t / K up to ((M-1)/M)^2
    assert th.gamma(t, M, K, eta_Y) / (eta_Y * t / K) == pytest.approx(((M - 1) / M) ** 2, rel=1e-4)
    tt = np.linspace(0.01, 200, 20000)
    peak = tt[np.argmax(th.gamma(tt, M, K, eta_Y))]
    # the peak sits between half the scan time K ln M / eta_Y and the snap time 2 K ln M / eta_Y
    assert 0.5 * th.scan_time(M, K, eta_Y) < peak < th.snap_time(M, K, eta_Y)
    # after ~2 K ln M / eta_Y: decays like K ln(eta_Y t / K) / (eta_Y t) (ratio stays bounded, within 3x)
    late = np.array([1e3, 1e4, 1e5])
    ratio = th.gamma(late, M, K, eta_Y) / (K * np.log(eta_Y * late / K) / (eta_Y * late))
    assert np.all((ratio > 1 / 3) & (ratio < 3))


def test_snap_time_B_and_chi():
    assert th.snap_time(34, 2, 1.0) == pytest.approx(4 * np.log(34))
    assert th.snap_time(34, 2, 10.0) == pytest.approx(0.4 * np.log(34))  # (a) larger eta_Y snaps earlier
    t = np.linspace(0, 700, 200)
    B = th.B_n(t, 1000, 10, 1.0, 0.5)
    assert B[0] == 0 and np.all(np.diff(B) > 0)
    np.testing.assert_allclose(th.chi(t, 1000, 10, 1.0, 0.5), np.exp(2 * B))
    # hand value: B = 1/4 ln(C0 + 2 (eta_Z/eta_Y) K (M-1)^2 h^2) at M=2, K=1, eta_Y=1, h(e/2) = 1/2
    assert th.B_n(np.e / 2, 2, 1, 1.0, 0.5, C0=1.0) == pytest.approx(0.25 * np.log(1 + 2 * 0.5 * 1 * 1 * 0.25), abs=1e-12)
    # (c) fixed eta_Z, larger eta_Y: attention freezes at a smaller chi (denser)
    assert th.chi(700, 1000, 10, 5.0, 0.5) < th.chi(700, 1000, 10, 0.5, 0.5)
    # after the snap chi grows like O(ln t): chi(t)/ln(t) stays bounded over decades
    late = np.array([1e4, 1e6, 1e8])
    r = th.chi(late, 1000, 10, 1.0, 0.5) / np.log(late)
    assert r.max() / r.min() < 2


def test_thm3_prediction_from_one_token():
    P = np.array([0.1, 0.2, 0.4])
    z_ref = 0.3
    z = th.thm3_z_from_one(z_ref, 0.4, P)
    assert z[-1] == pytest.approx(z_ref)
    inv = th.thm3_invariant(z, P)
    np.testing.assert_allclose(inv, inv[-1], rtol=1e-12)
    # small z: z_l proportional to P_l^2
    zs = th.thm3_z_from_one(1e-6, 0.4, P)
    np.testing.assert_allclose(zs / 1e-6, (P / 0.4) ** 2, rtol=1e-5)
    # a token more frequent than the reference can diverge first
    assert np.isinf(th.thm3_z_from_one(2.0, 0.1, np.array([0.4]))[0])


def test_thm2_signs():
    np.testing.assert_array_equal(th.thm2_signs([True, False, True]), [1, -1, 1])


def test_thm3_general_form_reduces_and_satisfies_its_relation():
    rng = np.random.default_rng(0)
    P = np.array([0.05, 0.1, 0.2, 0.4])
    # zero init: identical to the zero-init form
    np.testing.assert_allclose(th.thm3_z_general(0.7, 0.0, 0.4, P, np.zeros(4)), th.thm3_z_from_one(0.7, 0.4, P), rtol=1e-12)
    # random init: f_l^2/f_ref^2 - 1 = (same at 0) e^{2 (z_l(t) - z_l(0))}, f_l proportional to P_l e^{z_l}
    z0 = rng.normal(0, 0.3, 4)
    zr0, zr1 = z0[-1], z0[-1] + 0.5
    z1 = th.thm3_z_general(zr1, zr0, 0.4, P, z0)
    assert z1[-1] == pytest.approx(zr1)  # the reference token predicts itself
    lhs = (P / 0.4) ** 2 * np.exp(2 * (z1 - zr1)) - 1
    rhs = ((P / 0.4) ** 2 * np.exp(2 * (z0 - zr0)) - 1) * np.exp(2 * (z1 - z0))
    np.testing.assert_allclose(lhs, rhs, atol=1e-12)


def test_momentum_time_known_values():
    # beta = 0.5: step factors 1, 1.5, 1.75 -> tau = 1, 2.5, 4.25
    np.testing.assert_allclose(th.momentum_time([0, 1, 2, 3], 0.5), [0, 1, 2.5, 4.25], rtol=1e-12)
    np.testing.assert_array_equal(th.momentum_time([0, 7], 0.0), [0, 7])
    # large k: tau ~ k / (1 - beta) - beta / (1 - beta)^2
    assert th.momentum_time(1000, 0.9) == pytest.approx(1000 / 0.1 - 0.9 / 0.01, rel=1e-12)
    assert th.steps_for_time(4.25, 0.5) == pytest.approx(3.0, abs=1e-9)
    assert th.steps_for_time(3.0, 0.0) == 3.0


def test_bad_input_is_one_line_error():
    from sslens.errors import SslensError

    for call, field in [(lambda: th.h(1.0, 1, 1.0), "M"), (lambda: th.h(-1.0, 34, 1.0), "s"),
                        (lambda: th.gamma(1.0, 34, 0, 1.0), "K"), (lambda: th.snap_time(34, 2, 0.0), "eta_Y"),
                        (lambda: th.momentum_time(3, 1.0), "momentum")]:
        with pytest.raises(SslensError) as e:
            call()
        assert str(e.value).startswith(field + ":") and "\n" not in str(e.value)
