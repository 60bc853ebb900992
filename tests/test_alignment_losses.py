"""Alignment losses against hand-computed values (plain `math`, one pair at a time)."""
import math

import pytest
import torch

import lmzoo
from lmzoo.hooks import get_registry
from lmzoo.registry import RegistryError

# two pairs: (policy chosen, policy rejected, ref chosen, ref rejected, len chosen, len rejected)
PC = torch.tensor([-10.0, -4.0], dtype=torch.float64)
PR = torch.tensor([-12.0, -3.0], dtype=torch.float64)
RC = torch.tensor([-11.0, -5.0], dtype=torch.float64)
RR = torch.tensor([-11.5, -2.0], dtype=torch.float64)
LC = torch.tensor([5.0, 2.0], dtype=torch.float64)
LR = torch.tensor([6.0, 4.0], dtype=torch.float64)


def logsig(x):
    return -math.log1p(math.exp(-x))


def call(name, **params):
    fn = lmzoo.create("alignment_loss", name, **params)
    return fn(PC, PR, RC, RR, LC, LR)


def rows():
    return [(PC[i].item(), PR[i].item(), RC[i].item(), RR[i].item(), LC[i].item(), LR[i].item()) for i in range(2)]


def test_all_registered_with_described_params():
    entries = get_registry().list("alignment_loss")
    assert {"dpo", "ipo", "simpo", "orpo"} <= {e.name for e in entries}
    for e in entries:
        for field in e.params.model_fields.values():
            assert field.description


@pytest.mark.parametrize("beta,eps", [(0.1, 0.0), (0.5, 0.2)])
def test_dpo_hand_computed(beta, eps):
    loss, m = call("dpo", beta=beta, label_smoothing=eps)
    want, margins = [], []
    for pc, pr, rc, rr, _, _ in rows():
        h = (pc - rc) - (pr - rr)  # pair 0: 1 - (-0.5) = 1.5; pair 1: 1 - (-1) = 2
        want.append(-(1 - eps) * logsig(beta * h) - eps * logsig(-beta * h))
        margins.append(beta * h)
    assert loss.item() == pytest.approx(sum(want) / 2, rel=1e-12)
    assert m["reward_margin"].item() == pytest.approx(sum(margins) / 2)
    assert m["chosen_reward"].item() == pytest.approx(beta * ((-10 + 11) + (-4 + 5)) / 2)
    assert m["rejected_reward"].item() == pytest.approx(beta * ((-12 + 11.5) + (-3 + 2)) / 2)
    assert m["accuracy"].item() == 1.0


def test_dpo_value_by_hand_number():
    # pair 0 alone, β = 0.1: h = 1.5 → −log σ(0.15) = log(1 + e^−0.15) = log(1.860708) = 0.620957
    fn = lmzoo.create("alignment_loss", "dpo", beta=0.1)
    loss, _ = fn(PC[:1], PR[:1], RC[:1], RR[:1], LC[:1], LR[:1])
    assert loss.item() == pytest.approx(0.620957, abs=1e-6)


@pytest.mark.parametrize("eps", [0.0, 0.3])
def test_dpo_is_log2_when_policy_equals_reference(eps):
    fn = lmzoo.create("alignment_loss", "dpo", beta=0.7, label_smoothing=eps)
    loss, m = fn(PC, PR, PC.clone(), PR.clone(), LC, LR)
    assert loss.item() == pytest.approx(math.log(2), rel=1e-12)
    assert m["reward_margin"].item() == 0.0
    assert m["accuracy"].item() == 0.5  # ties count half


@pytest.mark.parametrize("length_normalize", [False, True])
def test_ipo_hand_computed(length_normalize):
    beta = 0.25
    loss, m = call("ipo", beta=beta, length_normalize=length_normalize)
    want = []
    for pc, pr, rc, rr, lc, lr in rows():
        a, b = pc - rc, pr - rr
        if length_normalize:
            a, b = a / lc, b / lr
        want.append((a - b - 1 / (2 * beta)) ** 2)  # target 1/(2τ) = 2
    assert loss.item() == pytest.approx(sum(want) / 2, rel=1e-12)
    # summed: pair 0 h = 1.5 → 0.25, pair 1 h = 2 → 0 ; mean 0.125
    if not length_normalize:
        assert loss.item() == pytest.approx(0.125)


def test_simpo_hand_computed_and_reference_free():
    beta, gamma = 2.0, 0.5
    loss, m = call("simpo", beta=beta, gamma=gamma)
    want = []
    for pc, pr, _, _, lc, lr in rows():
        want.append(-logsig(beta * pc / lc - beta * pr / lr - gamma))
    assert loss.item() == pytest.approx(sum(want) / 2, rel=1e-12)
    # pair 0: 2(-2) - 2(-2) = 0 → margin 0; pair 1: 2(-2) - 2(-0.75) = -2.5
    assert m["reward_margin"].item() == pytest.approx((0 - 2.5) / 2)
    assert m["accuracy"].item() == pytest.approx(0.25)  # a tie (half) and a loss
    fn = lmzoo.create("alignment_loss", "simpo", beta=beta, gamma=gamma)
    assert fn.reference_free
    loss2, _ = fn(PC, PR, None, None, LC, LR)  # needs no reference at all
    assert loss2.item() == pytest.approx(loss.item())


def test_orpo_hand_computed():
    lam = 0.2
    loss, m = call("orpo", beta=lam)
    want = []
    for pc, pr, _, _, lc, lr in rows():
        mc, mr = pc / lc, pr / lr
        pw, pl = math.exp(mc), math.exp(mr)
        log_or = math.log(pw / (1 - pw)) - math.log(pl / (1 - pl))
        want.append(-mc - lam * logsig(log_or))
    assert loss.item() == pytest.approx(sum(want) / 2, rel=1e-10)
    assert m["chosen_reward"].item() == pytest.approx(lam * (-2 + -2) / 2)


@pytest.mark.parametrize("name", ["dpo", "ipo", "simpo", "orpo"])
def test_gradients_push_chosen_up_rejected_down(name):
    pc = PC.clone().requires_grad_(True)
    pr = PR.clone().requires_grad_(True)
    fn = lmzoo.create("alignment_loss", name)
    # start from policy == reference so IPO sits below its target margin
    loss, _ = fn(pc, pr, PC.clone(), PR.clone(), LC, LR)
    loss.backward()
    assert (pc.grad < 0).all(), pc.grad  # descending the loss raises log π(y_w)
    assert (pr.grad > 0).all(), pr.grad  # ... and lowers log π(y_l)


def test_orpo_stable_near_certain_response():
    fn = lmzoo.create("alignment_loss", "orpo")
    pc = torch.tensor([0.0, -1e-9], requires_grad=True)
    loss, _ = fn(pc, torch.tensor([-5.0, -5.0]), None, None, torch.tensor([3.0, 3.0]), torch.tensor([3.0, 3.0]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pc.grad).all()


def test_bad_params_name_field():
    with pytest.raises(RegistryError, match="beta"):
        lmzoo.create("alignment_loss", "dpo", beta=-1.0)
    with pytest.raises(RegistryError, match="label_smoothing"):
        lmzoo.create("alignment_loss", "dpo", label_smoothing=0.5)
    with pytest.raises(RegistryError, match="did you mean 'dpo'"):
        lmzoo.create("alignment_loss", "dpp")


def test_missing_reference_is_a_clear_error():
    fn = lmzoo.create("alignment_loss", "dpo")
    with pytest.raises(ValueError, match="reference log-probs"):
        fn(PC, PR, None, None, LC, LR)
