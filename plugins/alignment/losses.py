"""Preference-optimisation losses: `dpo`, `ipo`, `simpo`, `orpo` (parameters and registration
are in `__init__.py`).

Every loss takes *summed* response log-probabilities, shape (B,), of the chosen (y_w) and
rejected (y_l) responses under the policy and the frozen reference, plus the response
lengths in tokens, and returns `(loss, metrics)` with metrics `chosen_reward`,
`rejected_reward`, `reward_margin` (batch means) and `accuracy` (the fraction of pairs whose
implicit reward ranks y_w above y_l; an exact tie counts one half, so a policy equal to its
reference scores chance, 0.5, not 0).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _accuracy(margin: torch.Tensor) -> torch.Tensor:
    # ties (e.g. policy == reference under DPO) count half: chance, not failure
    return ((margin > 0).float() + 0.5 * (margin == 0).float()).mean()


def _metrics(chosen_reward: torch.Tensor, rejected_reward: torch.Tensor) -> dict[str, torch.Tensor]:
    chosen_reward, rejected_reward = chosen_reward.detach(), rejected_reward.detach()
    margin = chosen_reward - rejected_reward
    return {
        "chosen_reward": chosen_reward.mean(),
        "rejected_reward": rejected_reward.mean(),
        "reward_margin": margin.mean(),
        "accuracy": _accuracy(margin),
    }


class AlignmentLoss:
    """Base class. `reference_free` losses never read the reference log-probs (the stage then
    skips the reference forward pass during training)."""

    name = "?"
    reference_free = False

    def __call__(self, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps=None, ref_rejected_logps=None,
                 chosen_lengths=None, rejected_lengths=None):
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


def _need(x, what: str, loss: str):
    if x is None:
        raise ValueError(f"alignment loss {loss!r} needs {what}; pass it (the stage computes it from the batch)")
    return x


class DPOLoss(AlignmentLoss):
    """Direct Preference Optimisation (Rafailov et al. 2023):
    −log σ(β[(log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))]);
    with label smoothing ε (cDPO): −(1−ε)·log σ(βh) − ε·log σ(−βh)."""

    name = "dpo"

    def __init__(self, beta: float = 0.1, label_smoothing: float = 0.0):
        self.beta, self.label_smoothing = beta, label_smoothing

    def __call__(self, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps=None, ref_rejected_logps=None,
                 chosen_lengths=None, rejected_lengths=None):
        ref_c = _need(ref_chosen_logps, "reference log-probs", self.name)
        ref_r = _need(ref_rejected_logps, "reference log-probs", self.name)
        chosen_logratio = policy_chosen_logps - ref_c  # (B,)
        rejected_logratio = policy_rejected_logps - ref_r
        logits = self.beta * (chosen_logratio - rejected_logratio)
        eps = self.label_smoothing
        losses = -(1 - eps) * F.logsigmoid(logits) - eps * F.logsigmoid(-logits)
        return losses.mean(), _metrics(self.beta * chosen_logratio, self.beta * rejected_logratio)


class IPOLoss(AlignmentLoss):
    """Identity Preference Optimisation (Azar et al. 2023, eq. 17):
    (h − 1/(2τ))² with h = log π(y_w)/π_ref(y_w) − log π(y_l)/π_ref(y_l).
    A squared error instead of a log-sigmoid, so the margin is pulled to a finite target and
    does not run off to infinity on deterministic preferences (the failure mode IPO fixes)."""

    name = "ipo"

    def __init__(self, beta: float = 0.1, length_normalize: bool = False):
        self.beta, self.length_normalize = beta, length_normalize

    def __call__(self, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps=None, ref_rejected_logps=None,
                 chosen_lengths=None, rejected_lengths=None):
        ref_c = _need(ref_chosen_logps, "reference log-probs", self.name)
        ref_r = _need(ref_rejected_logps, "reference log-probs", self.name)
        chosen_logratio = policy_chosen_logps - ref_c
        rejected_logratio = policy_rejected_logps - ref_r
        if self.length_normalize:
            chosen_logratio = chosen_logratio / _need(chosen_lengths, "chosen_lengths", self.name)
            rejected_logratio = rejected_logratio / _need(rejected_lengths, "rejected_lengths", self.name)
        h = chosen_logratio - rejected_logratio
        losses = (h - 1 / (2 * self.beta)) ** 2
        return losses.mean(), _metrics(self.beta * chosen_logratio, self.beta * rejected_logratio)


class SimPOLoss(AlignmentLoss):
    """SimPO (Meng et al. 2024): reference-free, length-normalised reward r = β/|y|·log π(y|x),
    loss −log σ(r(y_w) − r(y_l) − γ)."""

    name = "simpo"
    reference_free = True

    def __init__(self, beta: float = 2.0, gamma: float = 1.0):
        self.beta, self.gamma = beta, gamma

    def __call__(self, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps=None, ref_rejected_logps=None,
                 chosen_lengths=None, rejected_lengths=None):
        chosen_reward = self.beta * policy_chosen_logps / _need(chosen_lengths, "chosen_lengths", self.name)
        rejected_reward = self.beta * policy_rejected_logps / _need(rejected_lengths, "rejected_lengths", self.name)
        losses = -F.logsigmoid(chosen_reward - rejected_reward - self.gamma)
        return losses.mean(), _metrics(chosen_reward, rejected_reward)


class ORPOLoss(AlignmentLoss):
    """ORPO (Hong et al. 2024): reference-free; SFT on the chosen response plus an odds-ratio
    penalty. With p = exp(mean token log-prob), odds(y) = p/(1−p):
    L = −log π(y_w)/|y_w| − λ·log σ(log odds(y_w) − log odds(y_l)).
    Chosen over KTO because it fits paired data as is (KTO wants unpaired desirable/undesirable
    examples and a batch-level KL baseline). The NLL term is averaged per sequence."""

    name = "orpo"
    reference_free = True

    def __init__(self, beta: float = 0.1):
        self.beta = beta

    @staticmethod
    def _log_odds(mean_logp: torch.Tensor) -> torch.Tensor:
        # log(p/(1-p)) = log p − log(1 − exp(log p)); log(-expm1(x)) is exact for x near 0.
        # Clamp away from 0 so a (numerically) certain response gives a large finite log-odds.
        mean_logp = mean_logp.clamp(max=-1e-6)
        return mean_logp - torch.log(-torch.expm1(mean_logp))

    def __call__(self, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps=None, ref_rejected_logps=None,
                 chosen_lengths=None, rejected_lengths=None):
        chosen_mean = policy_chosen_logps / _need(chosen_lengths, "chosen_lengths", self.name)
        rejected_mean = policy_rejected_logps / _need(rejected_lengths, "rejected_lengths", self.name)
        log_odds_ratio = self._log_odds(chosen_mean) - self._log_odds(rejected_mean)
        nll = -chosen_mean
        losses = nll - self.beta * F.logsigmoid(log_odds_ratio)
        # TRL logs β·(mean log-prob) as ORPO's implicit reward
        return losses.mean(), _metrics(self.beta * chosen_mean, self.beta * rejected_mean)
