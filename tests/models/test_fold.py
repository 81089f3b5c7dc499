"""Folding BatchNorm into convolutions: the same function, fewer passes, the original untouched."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from finecut.models.crm import CRM, CRMConfig
from finecut.models.fold import fold_batchnorm


def _randomise_batchnorm(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial running statistics and affine parameters, as a trained model has."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) * 2 + 0.1)
                m.weight.copy_(torch.randn(m.num_features, generator=gen))
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.2)


@pytest.mark.parametrize("encoder", ["efficientnet_lite0", "mobilenet_v2"])
def test_folded_crm_computes_the_same_latent_and_logits(encoder: str) -> None:
    torch.manual_seed(0)
    model = CRM(CRMConfig(encoder=encoder), pretrained=False)
    _randomise_batchnorm(model)
    with torch.no_grad():
        model.mlp[-1].weight.normal_()
    model.eval()
    folded = fold_batchnorm(model)
    image, coarse = torch.rand(2, 3, 64, 96), (torch.rand(2, 1, 64, 96) > 0.5).float()
    with torch.no_grad():
        want, got = model.encode(image, coarse), folded.encode(image, coarse)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(
            folded(image, coarse), model(image, coarse), atol=1e-4, rtol=1e-4
        )
    # every BatchNorm that follows a convolution is gone
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules()), encoder


def test_the_original_is_not_changed_and_keeps_its_state_dict() -> None:
    torch.manual_seed(1)
    model = CRM(CRMConfig(), pretrained=False).train()
    _randomise_batchnorm(model, seed=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batchnorm(model)
    assert model.training and not folded.training
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_a_batchnorm_without_a_convolution_before_it_is_kept() -> None:
    net = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4))
    _randomise_batchnorm(net, seed=2)
    folded = fold_batchnorm(net)
    assert [type(m) for m in folded] == [nn.BatchNorm2d, nn.Conv2d, nn.ReLU, nn.BatchNorm2d]
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net.eval()(x))
