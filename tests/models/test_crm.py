from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from finecut.errors import ConfigError
from finecut.models.crm import CRM, CRMConfig, crm_loss, make_grid_coords, query_latent

# Tiny inputs and random-init encoders only: these tests run beside a training job on 2 cores.


def _model(seed: int = 0, **config) -> CRM:
    torch.manual_seed(seed)
    return CRM(CRMConfig(**config), pretrained=False)


def _inputs(b: int, h: int, w: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(b, 3, h, w, generator=g)
    coarse = (torch.rand(b, 1, h, w, generator=g) > 0.5).float()
    return image, coarse


def _cell_centre_queries(h: int, w: int, cells: list[tuple[int, int]], q_cell: float = 0.05):
    """[-1, 1] coordinates of latent cell centres, and a query cell size, as (1, Q, 2)."""
    coords = torch.tensor(
        [[(iy + 0.5) * 2.0 / h - 1.0, (ix + 0.5) * 2.0 / w - 1.0] for iy, ix in cells]
    ).unsqueeze(0)
    cell = torch.full_like(coords, q_cell)
    return coords, cell


# ------------------------------------------------------------------------------------- config


def test_config_round_trip() -> None:
    cfg = CRMConfig(
        encoder="mobilenet_v2",
        fuse_strides=(2, 4, 8),
        branch_channels=(8, 8, 16),
        latent_channels=24,
        hidden=(16, 8),
        dropout=0.0,
        coarse_skip=False,
    )
    data = cfg.to_dict()
    assert data["fuse_strides"] == [2, 4, 8]  # lists, so it serialises to JSON / YAML
    assert CRMConfig.from_dict(data) == cfg
    assert CRMConfig.from_dict(CRMConfig().to_dict()) == CRMConfig()


def test_config_unknown_key_is_named() -> None:
    data = dict(CRMConfig().to_dict(), latent_chanels=32, zzz=1)
    with pytest.raises(ConfigError, match="latent_chanels, zzz"):
        CRMConfig.from_dict(data)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"encoder": "vgg16"},
        {"fuse_strides": (2, 4), "branch_channels": (8,)},
        {"fuse_strides": (3,), "branch_channels": (8,)},
        {"hidden": ()},
    ],
)
def test_config_rejects_bad_values(kwargs) -> None:
    with pytest.raises(ConfigError):
        CRMConfig(**kwargs)


# ------------------------------------------------------------------------------------ forward


@pytest.mark.parametrize(
    ("size", "out_size"),
    [
        ((32, 32), None),
        ((40, 56), None),
        ((37, 45), None),
        ((32, 48), (80, 96)),
        ((32, 32), (33, 71)),
    ],
)
def test_forward_shape(size, out_size) -> None:
    model = _model().eval()
    image, coarse = _inputs(2, *size)
    with torch.no_grad():
        logits = model(image, coarse, out_size=out_size)
    want = out_size or size
    assert logits.shape == (2, 1, *want)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


def test_encode_shape_is_stride_two() -> None:
    model = _model().eval()
    image, coarse = _inputs(1, 37, 45)
    with torch.no_grad():
        cell_feat = model.encode(image, coarse)
    assert cell_feat.shape == (1, CRMConfig().hidden[0], 19, 23)


def test_untrained_coarse_skip_returns_the_coarse_mask() -> None:
    model = _model()  # train mode on purpose: dropout and batch statistics must not matter
    image, coarse = _inputs(2, 40, 56, seed=3)
    with torch.no_grad():
        logits = model(image, coarse)
    # the last MLP layer starts at zero, so the logit is skip_scale * (2c - 1) = +-3
    assert torch.equal(logits > 0, coarse > 0.5)
    torch.testing.assert_close(logits, 3.0 * (2.0 * coarse - 1.0), atol=1e-4, rtol=0)


def test_untrained_coarse_skip_at_a_finer_grid_follows_the_upsampled_coarse() -> None:
    model = _model().eval()
    image = torch.rand(1, 3, 32, 32)
    coarse = torch.zeros(1, 1, 32, 32)
    coarse[..., 8:24, 8:24] = 1.0
    with torch.no_grad():
        logits = model(image, coarse, out_size=(64, 64))
    want = F.interpolate(coarse, size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(logits, 3.0 * (2.0 * want - 1.0), atol=1e-5, rtol=0)


def test_query_without_coarse_is_refused_when_coarse_skip() -> None:
    model = _model().eval()
    image, coarse = _inputs(1, 32, 32)
    with torch.no_grad():
        cell_feat = model.encode(image, coarse)
    coords, cell = _cell_centre_queries(16, 16, [(3, 4)])
    with pytest.raises(ValueError, match="coarse="):
        model.query(cell_feat, coords, cell)
    # the paper's head (no skip) needs no coarse mask
    plain = _model(coarse_skip=False).eval()
    with torch.no_grad():
        assert plain.query(plain.encode(image, coarse), coords, cell).shape == (1, 1)


@pytest.mark.parametrize(
    ("image_shape", "coarse_shape", "match"),
    [
        ((1, 4, 32, 32), (1, 1, 32, 32), "image must be"),
        ((3, 32, 32), (1, 1, 32, 32), "image must be"),
        ((1, 3, 32, 32), (1, 1, 32, 30), "coarse must be"),
        ((1, 3, 32, 32), (1, 3, 32, 32), "coarse must be"),
        ((2, 3, 32, 32), (1, 1, 32, 32), "coarse must be"),
    ],
)
def test_wrong_input_shapes_raise(image_shape, coarse_shape, match) -> None:
    model = _model().eval()
    with pytest.raises(ValueError, match=match):
        model(torch.rand(image_shape), torch.rand(coarse_shape))


# ---------------------------------------------------------------------------- implicit head


def _latent_and_cell_feat(model: CRM, image: torch.Tensor, coarse: torch.Tensor):
    """F_latent (the input of ``cell_proj``, captured by a hook) and ``encode``'s output."""
    captured = {}

    def hook(module, args, output) -> None:  # returning None keeps the output as it is
        captured["latent"] = args[0]

    handle = model.cell_proj.register_forward_hook(hook)
    try:
        with torch.no_grad():
            cell_feat = model.encode(image, coarse)
    finally:
        handle.remove()
    return captured["latent"], cell_feat


def test_split_first_layer_equals_the_concatenated_linear() -> None:
    """W1 @ [f; pos] + b == cell_proj(f) + pos_proj(pos): the split is exact algebra."""
    model = _model(coarse_skip=False).eval()
    image, coarse = _inputs(1, 32, 32)
    latent, cell_feat = _latent_and_cell_feat(model, image, coarse)
    _, c, h, w = latent.shape
    hidden0 = model.config.hidden[0]
    # the paper's first layer, built by hand: Linear(latent + 6 -> hidden[0]) on the concatenation
    first = torch.nn.Linear(c + 6, hidden0)
    with torch.no_grad():
        first.weight.copy_(
            torch.cat([model.cell_proj.weight.view(hidden0, c), model.pos_proj.weight], dim=1)
        )
        first.bias.copy_(model.cell_proj.bias)

    cells = [(iy, ix) for iy in (1, 5, 10, 14) for ix in (2, 7, 13)]
    coords, cell = _cell_centre_queries(h, w, cells, q_cell=2.0 / 64)
    with torch.no_grad():
        got = model.query(cell_feat, coords, cell)[0]
        ref = []
        for q, (iy, ix) in enumerate(cells):
            # at a cell centre: offset 0, the absolute coordinate, the query cell in latent cells
            pos = torch.cat([torch.zeros(2), coords[0, q], cell[0, q] * torch.tensor([h, w])])
            ref.append(model.mlp(first(torch.cat([latent[0, :, iy, ix], pos]))).squeeze(-1))
    torch.testing.assert_close(got, torch.stack(ref), atol=1e-5, rtol=1e-5)


def test_query_at_a_cell_centre_uses_only_that_cell() -> None:
    model = _model(coarse_skip=False).eval()
    image, coarse = _inputs(1, 32, 32, seed=5)
    _, cell_feat = _latent_and_cell_feat(model, image, coarse)
    _, d, h, w = cell_feat.shape
    cells = [(3, 4), (8, 8), (12, 2), (7, 13)]
    coords, cell = _cell_centre_queries(h, w, cells)
    with torch.no_grad():
        got = query_latent(cell_feat, coords, cell, model.pos_proj, model.mlp)[0]
        for q, (iy, ix) in enumerate(cells):
            pos = torch.cat([torch.zeros(2), coords[0, q], cell[0, q] * torch.tensor([h, w])])
            want = model.mlp(cell_feat[0, :, iy, ix] + model.pos_proj(pos)).squeeze(-1)
            torch.testing.assert_close(got[q], want, atol=1e-5, rtol=1e-5)
        # weight 1 on that cell, 0 on the others: replacing every other cell changes nothing
        keep = torch.zeros(1, 1, h, w, dtype=torch.bool)
        for iy, ix in cells:
            keep[..., iy, ix] = True
        scrambled = torch.where(keep, cell_feat, 100.0 * torch.randn_like(cell_feat))
        again = query_latent(scrambled, coords, cell, model.pos_proj, model.mlp)[0]
    torch.testing.assert_close(again, got, atol=1e-5, rtol=1e-5)
    # ...whereas a query between cells does depend on its neighbours
    between = coords + torch.tensor([1.0 / h, 1.0 / w])
    with torch.no_grad():
        a = query_latent(cell_feat, between, cell, model.pos_proj, model.mlp)
        b = query_latent(scrambled, between, cell, model.pos_proj, model.mlp)
    assert not torch.allclose(a, b)


def test_query_between_cells_is_the_bilinear_blend_of_the_four() -> None:
    model = _model(coarse_skip=False).eval()
    image, coarse = _inputs(1, 32, 32, seed=6)
    _, cell_feat = _latent_and_cell_feat(model, image, coarse)
    _, _, h, w = cell_feat.shape
    iy, ix, fy, fx = 6, 9, 0.25, 0.625  # a quarter of a cell down, 5/8 right of (6, 9)
    coords = torch.tensor([[[(iy + fy + 0.5) * 2 / h - 1, (ix + fx + 0.5) * 2 / w - 1]]])
    cell = torch.full_like(coords, 0.1)
    size = torch.tensor([h, w])
    with torch.no_grad():
        got = query_latent(cell_feat, coords, cell, model.pos_proj, model.mlp)[0, 0]
        want = 0.0
        for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
            offset = torch.tensor([fy - dy, fx - dx])
            pos = torch.cat([offset, coords[0, 0], cell[0, 0] * size])
            logit = model.mlp(cell_feat[0, :, iy + dy, ix + dx] + model.pos_proj(pos))
            weight = (fy if dy else 1 - fy) * (fx if dx else 1 - fx)
            want = want + weight * logit.squeeze(-1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_make_grid_coords_are_pixel_centres() -> None:
    coords = make_grid_coords(2, 4)
    assert coords.shape == (8, 2)
    torch.testing.assert_close(coords[0], torch.tensor([-0.5, -0.75]))
    torch.testing.assert_close(coords[-1], torch.tensor([0.5, 0.75]))


# ----------------------------------------------------------------------------------- backward


def _backward(model: CRM, train: bool = True) -> dict[str, torch.Tensor | None]:
    model.train(train)
    image, coarse = _inputs(2, 32, 32)
    target = (torch.rand(2, 1, 48, 48) > 0.5).float()
    loss, _ = crm_loss(model(image, coarse, out_size=(48, 48)), target)
    loss.backward()
    return {name: p.grad for name, p in model.named_parameters() if p.requires_grad}


def _zero_grads(grads: dict[str, torch.Tensor | None]) -> list[str]:
    missing = [n for n, g in grads.items() if g is None]
    assert not missing, f"no gradient reached {missing}"
    assert all(torch.isfinite(g).all() for g in grads.values())
    return [n for n, g in grads.items() if not g.abs().sum() > 0]


# In train mode the bias of an MBConv block's projection BN (no activation after it) only shifts
# each channel by a constant, and everything downstream of it goes through 1x1/depthwise convs into
# another batch-normalised layer, which subtracts that constant again: its gradient is exactly 0
# wherever the map is small enough that padding does not break the constancy (the stride-16/32
# stages of a 32x32 input). This is BN algebra, not a dead parameter: in eval mode it gets a
# gradient (checked below).
_BN_SHIFT_BIASES = "project.bn.bias"


@pytest.mark.parametrize("train", [True, False])
def test_backward_reaches_every_parameter(train: bool) -> None:
    # The paper's head: every parameter is used (the encoder's 5 feature maps are all fused, so
    # no stage is dead), so each one must get a finite, non-zero gradient.
    zero = _zero_grads(_backward(_model(coarse_skip=False), train=train))
    if train:
        zero = [n for n in zero if not n.endswith(_BN_SHIFT_BIASES)]
    assert not zero, zero


def test_backward_with_coarse_skip_at_init() -> None:
    # With coarse_skip the last MLP layer starts at zero, so by design every parameter before it
    # gets a zero gradient at the first step (it is reached, but its effect is multiplied by 0);
    # only the last layer and the skip scale move. Once the last layer is non-zero, the gradient
    # flows everywhere again.
    model = _model()
    grads = _backward(model)
    zero = set(_zero_grads(grads))
    live = set(grads) - zero
    last = len(model.mlp) - 1
    assert live == {f"mlp.{last}.weight", f"mlp.{last}.bias", "skip_scale"}

    model = _model()
    with torch.no_grad():
        model.mlp[-1].weight.normal_(0.0, 0.5)
    zero = _zero_grads(_backward(model))
    assert not [n for n in zero if not n.endswith(_BN_SHIFT_BIASES)], zero


# --------------------------------------------------------------------------------------- loss


def test_crm_loss_is_zero_for_perfect_logits_and_grows_with_errors() -> None:
    target = torch.zeros(2, 1, 24, 24)
    target[..., 6:18, 4:16] = 1.0
    perfect = 30.0 * (2.0 * target - 1.0)
    total, terms = crm_loss(perfect, target)
    assert set(terms) == {"bce", "l1", "l2", "grad"}
    assert float(total) < 1e-3
    assert all(v < 1e-3 for v in terms.values())

    some_wrong = perfect.clone()
    some_wrong[..., 6:12, 4:16] *= -1.0  # half of the object missed
    all_wrong = -perfect
    partial, _ = crm_loss(some_wrong, target)
    worst, terms_worst = crm_loss(all_wrong, target)
    assert float(total) < float(partial) < float(worst)
    assert terms_worst["l1"] == pytest.approx(1.0, abs=1e-6)
    assert terms_worst["bce"] == pytest.approx(30.0, abs=1e-3)


def test_query_of_a_batch_equals_each_sample_in_either_memory_format() -> None:
    """Batched queries index each sample's own cells; channels-last latents give the same logits."""
    model = _model(coarse_skip=False).eval()
    torch.manual_seed(3)
    cell_feat = torch.randn(3, model.config.hidden[0], 9, 13)
    coords = torch.rand(3, 50, 2) * 2.2 - 1.1  # some queries outside [-1, 1]: clamped cells
    cell = torch.full_like(coords, 2.0 / 40)
    with torch.no_grad():
        batched = query_latent(cell_feat, coords, cell, model.pos_proj, model.mlp)
        last = cell_feat.contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(
            query_latent(last, coords, cell, model.pos_proj, model.mlp), batched
        )
        for i in range(3):
            one = query_latent(
                cell_feat[i : i + 1], coords[i : i + 1], cell[i : i + 1], model.pos_proj, model.mlp
            )
            torch.testing.assert_close(one[0], batched[i], atol=1e-6, rtol=1e-6)


def test_query_latent_gradcheck_float64() -> None:
    """Gradients of the head with respect to the cell features and the position weights."""
    torch.manual_seed(4)
    mlp = torch.nn.Sequential(
        torch.nn.ReLU(), torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1)
    ).double()
    cell_feat = torch.randn(2, 4, 3, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    coords = torch.rand(2, 7, 2, dtype=torch.float64) * 1.8 - 0.9
    cell = torch.full_like(coords, 0.1)
    assert torch.autograd.gradcheck(
        lambda feat, wt: query_latent(feat, coords, cell, _Fixed(wt), mlp), (cell_feat, weight)
    )


class _Fixed(torch.nn.Module):
    """A bias-free linear map whose weight is a given tensor (so gradcheck can vary it)."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, self.weight)
