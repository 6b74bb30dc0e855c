"""Small EM cases and the result of one ``em_step`` on each, as computed by the
per-step-posterior EM of commit d6d5563 (before EM was split into ``e_step``/``m_step``).

The tests rebuild each case with :func:`build_case`, take one step through the
contract's default ``em_step`` and compare with ``em_reference.json``. Regenerate the
JSON only from code whose EM is known to be right: ``python -m tests.zoo.em_reference``.
"""

from __future__ import annotations

import json
import pathlib

import torch

from inference.batch import SequenceBatch

DTYPE = torch.float64
REFERENCE_PATH = pathlib.Path(__file__).with_name("em_reference.json")
HMM_CASES = ("categorical", "diag", "full", "poisson")
LGSSM_CASES = ("diag-weak", "full-weak", "diag-none", "full-none", "diffuse-diag")


def _padded(values: torch.Tensor, lengths: list[int]) -> SequenceBatch:
    return SequenceBatch(values, torch.tensor(lengths))


def build_case(name: str):
    """``(model, batch)`` of a named case: float64, padding and missing values where the
    family supports them."""
    from zoo.hmm import CategoricalHMM, GaussianHMM, PoissonHMM
    from zoo.lgssm import LinearGaussianSSM

    g = torch.Generator().manual_seed(11)
    initial = torch.tensor([0.6, 0.3, 0.1], dtype=DTYPE)
    transition = torch.tensor([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.25, 0.25, 0.5]], dtype=DTYPE)
    if name == "categorical":
        emission = torch.tensor([[0.5, 0.3, 0.1, 0.1], [0.1, 0.2, 0.6, 0.1], [0.25, 0.25, 0.25, 0.25]], dtype=DTYPE)
        model = CategoricalHMM.from_probs(initial, transition, emission, transition_concentration=1.5)
        values = torch.randint(4, (3, 12), generator=g)
        return model, _padded(values, [12, 7, 3])
    if name in ("diag", "full"):
        means = torch.tensor([[-1.0, 0.5], [1.0, -0.5], [0.0, 2.0]], dtype=DTYPE)
        if name == "diag":
            covariances = torch.tensor([[0.5, 1.0], [1.0, 0.3], [2.0, 2.0]], dtype=DTYPE)
        else:
            covariances = torch.tensor(
                [[[1.0, 0.3], [0.3, 0.5]], [[0.4, -0.1], [-0.1, 0.8]], [[2.0, 0.0], [0.0, 1.0]]], dtype=DTYPE
            )
        model = GaussianHMM.from_params(
            initial, transition, means, covariances, precision_shape=2.0, mean_prior_scale=3.0
        )
        with torch.no_grad():
            model.data_mean.copy_(torch.tensor([0.1, 0.2], dtype=DTYPE))
            model.data_var.copy_(torch.tensor([1.5, 0.7], dtype=DTYPE))
        values = 2 * torch.randn(3, 12, 2, generator=g, dtype=DTYPE)
        values[0, 3] = float("nan")  # a whole missing row
        if name == "diag":
            values[1, 4, 0] = values[2, 1, 1] = float("nan")  # single entries
        return model, _padded(values, [12, 9, 5])
    if name == "poisson":
        rates = torch.tensor([[1.0, 3.0], [5.0, 0.5], [2.0, 2.0]], dtype=DTYPE)
        model = PoissonHMM.from_params(initial, transition, rates, rate_shape=2.0, rate_rate=0.5)
        values = torch.poisson(3 * torch.ones(3, 12, 2, dtype=DTYPE), generator=g)
        values[1, 2, 1] = float("nan")
        return model, _padded(values, [12, 10, 4])
    # LGSSM cases: d = 2, p = 3.
    cov_type = "full" if name.startswith("full") else "diag"
    prior = "none" if name.endswith("none") else "weak"
    a = torch.tensor([[0.8, 0.1], [-0.2, 0.7]], dtype=DTYPE)
    b = torch.tensor([[1.0, 0.0], [0.5, 1.0], [-0.3, 0.8]], dtype=DTYPE)
    q = torch.tensor([[0.5, 0.1], [0.1, 0.3]], dtype=DTYPE)
    r = torch.tensor([[0.4, 0.05, 0.0], [0.05, 0.6, 0.1], [0.0, 0.1, 0.5]], dtype=DTYPE)
    m0 = torch.tensor([0.3, -0.2], dtype=DTYPE)
    p0 = torch.tensor([[1.0, 0.2], [0.2, 2.0]], dtype=DTYPE)
    if cov_type == "diag":
        q, r = torch.diag(q.diagonal()), torch.diag(r.diagonal())
    initial_kind = "diffuse" if name.startswith("diffuse") else "prior"
    model = LinearGaussianSSM.from_params(
        a,
        b,
        q,
        r,
        m0,
        p0,
        transition_cov_type=cov_type,
        observation_cov_type=cov_type,
        prior=prior,
        initial=initial_kind,
    )
    with torch.no_grad():
        model.data_mean.copy_(torch.tensor([0.1, -0.1, 0.2], dtype=DTYPE))
        model.data_var.copy_(torch.tensor([1.2, 0.8, 1.5], dtype=DTYPE))
    values = model.sample(3, 15, generator=g).values.clone()
    values[0, 4] = float("nan")  # a whole missing row
    if cov_type == "diag":
        values[1, 2, 0] = values[2, 6, 2] = float("nan")  # single entries
    return model, _padded(values, [15, 11, 6])


def state_of(model) -> dict[str, list]:
    """The point values EM changes, as nested lists."""
    from zoo.hmm import HiddenMarkovModel

    if isinstance(model, HiddenMarkovModel):
        return {name: value.tolist() for name, value in model.parameter_values().items()}
    return {name: value.tolist() for name, value in model._point().items()}


def compute() -> dict[str, dict]:
    reference = {}
    for name in HMM_CASES + LGSSM_CASES:
        model, batch = build_case(name)
        objective = model.em_step(batch)
        reference[name] = {"objective": float(objective), "after": state_of(model)}
    return reference


if __name__ == "__main__":
    REFERENCE_PATH.write_text(json.dumps(compute(), indent=1) + "\n")
    print(f"wrote {REFERENCE_PATH}")
