"""The shared parameter helpers: constrained storage round trips, the declarative
ParameterSpec, point accessors and mean-field factors centred on point values."""

import doctest
import math

import pyro.distributions as dist
import pytest
import torch
from torch import nn

import zoo.params
from zoo.params import (
    Constraint,
    ParameterSpec,
    PointParameters,
    Role,
    constrain_tril,
    dirichlet_factor,
    dirichlet_factor_values,
    inverse_wishart_factor,
    inverse_wishart_factor_values,
    lognormal_factor,
    lognormal_factor_values,
    normal_factor,
    normal_factor_values,
    point_property,
    positive_definite_matrix,
    symmetrise,
    unconstrain_tril,
    wishart_factor,
    wishart_factor_values,
    write_parameters,
)

DTYPE = torch.float64


def spd(dim, seed):
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(dim, dim, generator=g, dtype=DTYPE)
    return m @ m.T + 0.5 * torch.eye(dim, dtype=DTYPE)


def test_lower_triangular_storage_round_trips_and_has_a_positive_diagonal():
    raw = torch.randn(4, 3, 3, dtype=DTYPE, generator=torch.Generator().manual_seed(0))
    tril = constrain_tril(raw)
    assert torch.equal(tril, tril.tril()) and (tril.diagonal(dim1=-2, dim2=-1) > 0).all()
    assert torch.allclose(unconstrain_tril(tril), raw.tril(), atol=1e-14)  # the upper part is ignored
    cov = spd(3, 1)
    assert torch.allclose(
        symmetrise(cov + torch.triu(torch.ones(3, 3, dtype=DTYPE), 1)),
        cov + 0.5 * (torch.ones(3, 3, dtype=DTYPE) - torch.eye(3, dtype=DTYPE)),
    )


@pytest.mark.parametrize(
    "constraint, value, num_free, site_shape",
    [
        (Constraint.FREE, torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=DTYPE), 4, (2, 2)),
        (Constraint.POSITIVE_DIAG, torch.diag(torch.tensor([0.5, 4.0], dtype=DTYPE)), 2, (2,)),
        (Constraint.LOWER_CHOLESKY, torch.tensor([[2.0, 0.0], [-1.0, 0.3]], dtype=DTYPE), 3, (2, 2)),
        (Constraint.POSITIVE_DEFINITE, spd(2, 0), 3, (2, 2)),
    ],
)
def test_parameter_spec_stores_reads_and_writes_each_constraint(constraint, value, num_free, site_shape):
    spec = ParameterSpec("weights", (2, 2), constraint, Role.LEARNED, "weights_storage", "weights_site")
    module = nn.Module()
    spec.register(module, torch.eye(2, dtype=DTYPE))
    assert isinstance(module.weights_storage, nn.Parameter)
    spec.write(module, value)
    assert torch.allclose(spec.read(module), value, atol=1e-12)
    assert spec.num_free == num_free and spec.site_shape == site_shape
    site = spec.site_value(value)
    assert site.shape == site_shape and torch.equal(spec.value_from_site(site), value)
    # With no prior, the site's density is flat on the constraint's support.
    prior = spec.site_prior(module)
    assert isinstance(prior, dist.ImproperUniform) and prior.event_shape == site_shape
    assert bool(prior.support.check(site).all())


def test_parameter_spec_roles_and_bad_values():
    held = ParameterSpec("cov", (2, 2), Constraint.POSITIVE_DEFINITE, Role.HELD, "cov_raw", "cov")
    fixed = ParameterSpec("cov", (2, 2), Constraint.POSITIVE_DEFINITE, Role.FIXED, "fixed_cov", "cov")
    module = nn.Module()
    held.register(module, spd(2, 3))
    fixed.register(module, spd(2, 4))
    assert "cov_raw" in dict(module.named_buffers()) and not list(module.parameters())
    assert torch.equal(module.fixed_cov, spd(2, 4))  # a fixed value is kept as given
    assert not held.learned and not fixed.learned
    with pytest.raises(ValueError, match="'cov' is fixed"):
        fixed.write(module, spd(2, 5))
    with pytest.raises(ValueError, match="expected shape"):
        held.write(module, torch.eye(3, dtype=DTYPE))
    with pytest.raises(ValueError, match="positive-definite"):
        held.write(module, -torch.eye(2, dtype=DTYPE))
    with pytest.raises(ValueError, match="symmetric"):
        held.write(module, torch.tensor([[1.0, 0.5], [0.0, 1.0]], dtype=DTYPE))
    diagonal = ParameterSpec("var", (2, 2), Constraint.POSITIVE_DIAG, Role.LEARNED, "log_var", "var")
    diagonal.register(module, torch.eye(2, dtype=DTYPE))
    with pytest.raises(ValueError, match="diagonal"):
        diagonal.write(module, spd(2, 6))
    with pytest.raises(ValueError, match="finite"):
        diagonal.write(module, torch.full((2, 2), float("nan"), dtype=DTYPE))


def test_point_property_and_placement_read_the_family_point():
    class Family(PointParameters, nn.Module):
        _placement_tensor = "loc"
        scale = point_property("scale", "the scale")

        def __init__(self):
            super().__init__()
            self.loc = nn.Parameter(torch.zeros(2, dtype=DTYPE))
            self.log_scale = nn.Parameter(torch.tensor([0.0, math.log(3.0)], dtype=DTYPE))

        def _point(self):
            return {"scale": self.log_scale.exp()}

    family = Family()
    assert torch.allclose(family.scale, torch.tensor([1.0, 3.0], dtype=DTYPE))
    assert Family.scale.__doc__ == "the scale"
    assert family._dtype == DTYPE and family._device == torch.device("cpu")
    write_parameters(family, {"guide_loc": torch.ones(2, dtype=DTYPE)}, create=True)
    write_parameters(family, {"guide_loc": torch.full((2,), 5.0, dtype=DTYPE)}, create=False)
    assert isinstance(family.guide_loc, nn.Parameter) and torch.equal(
        family.guide_loc.data, torch.full((2,), 5.0, dtype=DTYPE)
    )


@pytest.mark.parametrize("kind", ["normal", "lognormal", "dirichlet", "wishart", "inverse_wishart"])
def test_mean_field_factors_are_centred_on_the_point_value(kind):
    """Each factor built from its ``*_factor_values`` has the point value as its mean (a
    Dirichlet to within 1e-3), checked on the distribution's own mean and on draws."""
    module = nn.Module()
    if kind == "normal":
        value = torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=DTYPE)
        write_parameters(module, normal_factor_values("w", value), create=True)
        factor = normal_factor(module, "w", 2)
    elif kind == "lognormal":
        value = torch.tensor([0.2, 5.0], dtype=DTYPE)
        write_parameters(module, lognormal_factor_values("w", value), create=True)
        factor = lognormal_factor(module, "w", 1)
    elif kind == "dirichlet":
        value = torch.tensor([[0.7, 0.2, 0.1], [0.0, 0.5, 0.5]], dtype=DTYPE)
        write_parameters(module, dirichlet_factor_values("w", value), create=True)
        factor = dirichlet_factor(module, "w")
    elif kind == "wishart":
        value = torch.stack([spd(2, 7), spd(2, 8)])
        write_parameters(module, wishart_factor_values("w", value), create=True)
        factor = wishart_factor(module, "w")
    else:
        value = spd(3, 9)
        write_parameters(module, inverse_wishart_factor_values("w", value), create=True)
        factor = inverse_wishart_factor(module, "w")
    tolerance = 1e-3 if kind == "dirichlet" else 1e-10
    assert factor.event_shape == value.shape
    assert torch.allclose(factor.mean, value, atol=tolerance, rtol=tolerance)
    torch.manual_seed(0)
    draws = factor.rsample((4000,))
    assert torch.allclose(draws.mean(0), value, rtol=0.05, atol=0.01)


def test_positive_definite_constraint_has_a_bijection():
    transform = torch.distributions.transform_to(positive_definite_matrix)
    vector = torch.randn(10, 6, dtype=DTYPE, generator=torch.Generator().manual_seed(0))
    matrices = transform(vector)
    assert bool(positive_definite_matrix.check(matrices).all())
    assert torch.allclose(transform.inv(matrices), vector, atol=1e-10)


def test_docstring_examples_run():
    failures, attempted = doctest.testmod(zoo.params, optionflags=doctest.ELLIPSIS)
    assert attempted >= 3 and failures == 0
