from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from finecut.errors import ConfigError, ImageError
from finecut.models.embedding import (
    EmbeddingConfig,
    SemanticEmbedding,
    gather_pixel_embeddings,
    npair_l2_loss,
    pair_distance_stats,
    sample_pixels,
)

# Tiny inputs and random-init encoders only: these tests run beside a training job on 2 cores.


def _model(seed: int = 0, **config) -> SemanticEmbedding:
    torch.manual_seed(seed)
    return SemanticEmbedding(EmbeddingConfig(**config), pretrained=False)


# ------------------------------------------------------------------------------------- config


def test_config_round_trip() -> None:
    cfg = EmbeddingConfig(
        encoder="mobilenet_v2",
        strides=(4, 16),
        branch_channels=(8, 16),
        out_stride=2,
        head_channels=12,
        head_convs=1,
        out_dim=32,
        dropout=0.0,
    )
    data = cfg.to_dict()
    assert data["strides"] == [4, 16]  # lists, so it serialises to JSON / YAML
    assert EmbeddingConfig.from_dict(data) == cfg
    assert EmbeddingConfig.from_dict(EmbeddingConfig().to_dict()) == EmbeddingConfig()
    assert EmbeddingConfig().out_dim == 128


def test_config_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError, match="out_dims, zzz"):
        EmbeddingConfig.from_dict(dict(EmbeddingConfig().to_dict(), out_dims=3, zzz=1))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"encoder": "vgg16"},
        {"strides": (), "branch_channels": ()},
        {"strides": (4, 8), "branch_channels": (8,)},
        {"strides": (3,), "branch_channels": (8,)},
        {"strides": (4, 4), "branch_channels": (8, 8)},
        {"out_stride": 8},
        {"out_dim": 0},
        {"head_convs": -1},
        {"dropout": 1.0},
    ],
)
def test_config_rejects_bad_values(kwargs) -> None:
    with pytest.raises(ConfigError):
        EmbeddingConfig(**kwargs)


# ------------------------------------------------------------------------------------ forward


@pytest.mark.parametrize(
    ("config", "size", "want"),
    [
        ({}, (64, 96), (16, 24)),
        ({}, (37, 45), (10, 12)),
        ({"out_stride": 2, "out_dim": 16}, (32, 64), (16, 32)),
        ({"strides": (8, 32), "branch_channels": (8, 8), "head_convs": 0}, (64, 64), (16, 16)),
    ],
)
def test_forward_shape(config, size, want) -> None:
    model = _model(**config).eval()
    with torch.no_grad():
        feat = model(torch.rand(2, 3, *size))
    assert feat.shape == (2, model.out_dim, *want)
    assert feat.dtype == torch.float32
    assert torch.isfinite(feat).all()


def test_forward_rejects_a_bad_shape() -> None:
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        _model()(torch.rand(1, 4, 32, 32))


def test_backward_reaches_every_parameter() -> None:
    model = _model().train()
    feat = model(torch.rand(2, 3, 64, 64))
    feat.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert all(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "head" in n)


def test_save_load_round_trip() -> None:
    model, other = _model(0).eval(), _model(1).eval()
    x = torch.rand(1, 3, 32, 32)
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(other(x), model(x))


@pytest.mark.parametrize(("h", "w"), [(37, 53), (32, 32), (1, 5), (70, 33)])
def test_embed_returns_full_resolution_features(h: int, w: int) -> None:
    model = _model().train()
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    out = model.embed(image)
    assert out.shape == (h, w, 128)
    assert out.dtype == np.float32
    assert np.isfinite(out).all()
    assert model.training  # the mode is restored


def test_embed_matches_the_upsampled_forward_on_aligned_sizes() -> None:
    model = _model().eval()
    image = np.random.default_rng(1).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
    with torch.no_grad():
        want = F.interpolate(model(x), size=(64, 96), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(model.embed(image), want[0].permute(1, 2, 0).numpy(), atol=1e-5)


def test_embed_with_max_side_keeps_the_output_size() -> None:
    model = _model().eval()
    image = np.random.default_rng(2).integers(0, 256, (50, 120, 3), dtype=np.uint8)
    out = model.embed(image, max_side=64)
    assert out.shape == (50, 120, 128)
    assert np.isfinite(out).all()


def test_embed_scale_is_the_forward_of_the_resized_image() -> None:
    """scale=2 equals the features of the image enlarged twice (bilinear), computed by embed at
    scale 1 and shrunk back to (H, W); max_side still bounds the network's input."""
    model = _model().eval()
    image = np.random.default_rng(3).integers(0, 256, (32, 64, 3), dtype=np.uint8)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
    with torch.no_grad():
        big = F.interpolate(x, size=(64, 128), mode="bilinear", align_corners=False)
        want = F.interpolate(model(big), size=(32, 64), mode="bilinear", align_corners=False)
    got = model.embed(image, scale=2.0)
    np.testing.assert_allclose(got, want[0].permute(1, 2, 0).numpy(), atol=1e-5)
    assert not np.allclose(got, model.embed(image), atol=1e-3)
    np.testing.assert_allclose(model.embed(image, scale=2.0, max_side=64), model.embed(image))
    for bad in (0.0, -1.0, float("nan"), 9.0):
        with pytest.raises(ConfigError, match="scale"):
            model.embed(image, scale=bad)


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((8, 8), np.uint8),
        np.zeros((8, 8, 4), np.uint8),
        np.zeros((8, 8, 3), np.float32),
        np.zeros((0, 8, 3), np.uint8),
    ],
)
def test_embed_rejects_bad_images(image) -> None:
    with pytest.raises(ImageError, match=r"\(H, W, 3\) uint8"):
        _model().embed(image)


# -------------------------------------------------------------------------------------- gather


@pytest.mark.parametrize("stride", [2, 4])
def test_gather_equals_upsample_then_index(stride: int) -> None:
    g = torch.Generator().manual_seed(0)
    h, w = 8 * stride, 12 * stride
    feat = torch.randn(5, h // stride, w // stride, generator=g)
    index = torch.randint(0, h * w, (50,), generator=g)
    full = F.interpolate(feat[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    want = full.flatten(1)[:, index].t()
    torch.testing.assert_close(gather_pixel_embeddings(feat, index, (h, w)), want)


def test_gather_non_contiguous_map_and_gradient() -> None:
    feat = torch.randn(6, 5, 3, dtype=torch.float64).transpose(1, 2)  # (6, 3, 5), strided
    feat.requires_grad_(True)
    index = torch.tensor([0, 7, 11, 59])
    out = gather_pixel_embeddings(feat, index, (12, 20))
    assert out.shape == (4, 6)
    assert torch.autograd.gradcheck(lambda f: gather_pixel_embeddings(f, index, (12, 20)), (feat,))


# ---------------------------------------------------------------------------------------- loss


def _clusters(spread: float, n: int = 30, d: int = 16, k: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=g) * 6.0
    labels = torch.arange(k).repeat_interleave(n)
    emb = centres[labels] + spread * torch.randn(k * n, d, generator=g)
    return emb, labels


def test_loss_is_lower_for_separated_clusters_than_for_mixed_ones() -> None:
    emb, labels = _clusters(spread=0.3)
    separated = npair_l2_loss(emb, labels)
    shuffled = labels[torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(1))]
    mixed = npair_l2_loss(emb, shuffled)
    assert separated < 0.1 * mixed
    # tighter clusters lower it further
    assert npair_l2_loss(*_clusters(spread=0.05)) < separated


def test_loss_known_values_on_two_points() -> None:
    emb = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=torch.float64)  # ||f1 - f2||^2 = 2
    dist = 2.0 / 2  # divided by d = 2
    a = 2.0 / (1.0 + math.exp(dist))
    same = npair_l2_loss(emb, torch.tensor([5, 5]))
    diff = npair_l2_loss(emb, torch.tensor([5, 6]))
    assert float(same) == pytest.approx(-math.log(a), rel=1e-12)
    assert float(diff) == pytest.approx(-math.log(1.0 - a), rel=1e-12)
    assert float(npair_l2_loss(emb, torch.tensor([0, 0]), scale=1.0)) == pytest.approx(
        -math.log(2.0 / (1.0 + math.exp(2.0))), rel=1e-12
    )


def test_loss_balances_the_two_terms() -> None:
    emb, labels = _clusters(spread=1.0, n=5, d=4)
    n, d = emb.shape
    dist = torch.cdist(emb.double(), emb.double()).pow(2) / d
    a = 2.0 / (1.0 + torch.exp(dist))
    same = labels[:, None] == labels[None, :]
    pos = same & ~torch.eye(n, dtype=torch.bool)
    want = -torch.log(a[pos]).mean() * 2.0 - torch.log(1.0 - a[~same]).mean()
    got = npair_l2_loss(emb.double(), labels, pos_weight=2.0)
    torch.testing.assert_close(got, want)


def test_loss_gradcheck_float64() -> None:
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(7, 3, dtype=torch.float64, generator=g).requires_grad_(True)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    assert torch.autograd.gradcheck(lambda e: npair_l2_loss(e, labels), (emb,))
    assert torch.autograd.gradgradcheck(lambda e: npair_l2_loss(e, labels), (emb,))


def test_loss_is_invariant_to_the_order_of_pixels_and_to_label_values() -> None:
    emb, labels = _clusters(spread=1.0, n=6)
    perm = torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(2))
    base = npair_l2_loss(emb, labels)
    torch.testing.assert_close(npair_l2_loss(emb[perm], labels[perm]), base)
    torch.testing.assert_close(npair_l2_loss(emb, labels * 7 + 100), base)


def test_loss_with_one_label_has_only_the_positive_term_and_is_finite_at_zero() -> None:
    emb = torch.zeros(4, 8, requires_grad=True)
    only_pos = npair_l2_loss(emb, torch.zeros(4, dtype=torch.long)).detach()
    assert float(only_pos) == pytest.approx(0.0)
    loss = npair_l2_loss(emb, torch.tensor([0, 1, 0, 1]))  # coincident negatives: capped
    loss.backward()
    assert torch.isfinite(loss) and float(loss.detach()) > 9.0
    assert torch.isfinite(emb.grad).all()


def test_loss_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        npair_l2_loss(torch.zeros(4, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        npair_l2_loss(torch.zeros(4), torch.zeros(4, dtype=torch.long))


def test_pair_distance_stats() -> None:
    emb = torch.tensor([[0.0, 0.0], [0.0, 2.0], [4.0, 0.0]])
    stats = pair_distance_stats(emb, torch.tensor([0, 0, 1]), scale=1.0)
    assert stats["intra"] == pytest.approx(4.0)
    assert stats["inter"] == pytest.approx((16.0 + 20.0) / 2)
    assert stats["ratio"] == pytest.approx(18.0 / 4.0)
    assert math.isnan(pair_distance_stats(emb, torch.tensor([0, 1, 2]))["intra"])


# ------------------------------------------------------------------------------------ sampling


def _label_map() -> np.ndarray:
    labels = np.full((20, 30), -1, np.int64)
    labels[:10, :10] = 0
    labels[:10, 10:] = 3
    labels[10:, :15] = 7
    labels[10:, 15:29] = 9
    return labels  # column 29 of the lower half stays void


def test_sampling_counts_and_balance() -> None:
    labels = _label_map()
    index, lab = sample_pixels(labels, np.random.default_rng(0), n_instances=3, n_pixels=100)
    assert index.shape == lab.shape == (300,)
    assert index.dtype == lab.dtype == np.int64
    values, counts = np.unique(lab, return_counts=True)
    assert len(values) == 3 and set(values) <= {0, 3, 7, 9}
    assert (counts == 100).all()
    np.testing.assert_array_equal(labels.ravel()[index], lab)  # each pixel is in its instance


def test_sampling_never_draws_ignored_pixels() -> None:
    labels = _label_map()
    labels[labels == 9] = 255
    for seed in range(5):
        index, lab = sample_pixels(labels, np.random.default_rng(seed), 4, 200, ignore_label=255)
        assert set(np.unique(lab)) == {0, 3, 7}  # fewer instances than asked: all of them
        assert (labels.ravel()[index] >= 0).all()
        assert not np.isin(labels.ravel()[index], [255, -1]).any()


def test_sampling_is_deterministic_given_the_generator() -> None:
    a = sample_pixels(_label_map(), np.random.default_rng(5))
    b = sample_pixels(_label_map(), np.random.default_rng(5))
    c = sample_pixels(_label_map(), np.random.default_rng(6))
    assert a[0].shape == (3000,)  # the paper's defaults: 3 instances x 1000 pixels
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])


def test_sampling_an_all_void_map_gives_nothing() -> None:
    index, lab = sample_pixels(np.full((4, 4), -1), np.random.default_rng(0))
    assert index.size == 0 and lab.size == 0
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        sample_pixels(np.zeros(5), np.random.default_rng(0))
