"""The embedded semantic-embedding weights (soft segmentation): present, traceable, still good.

Quality: on held-out images (ECSSD 801-820, never trained on) the embedding separates the salient
object from the background: the mean scaled squared distance between object and background
pixels over the mean distance within them (``pair_distance_stats``'s ratio), averaged over the
images, is held to the value recorded in docs/training_embedding.md, minus a margin.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from finecut.models.embedding import (
    DEFAULT_EMBEDDING_WEIGHTS,
    MANIFEST_MODEL,
    load_embedding_model,
    pair_distance_stats,
    sample_pixels,
)
from finecut.weights import WEIGHTS_DIR, load_manifest, sha256_file

HELD_OUT = [f"{i:04d}" for i in range(801, 821)]
RECORDED_RATIO = 14.460  # docs/training_embedding.md (before issue 14: 11.240; ImageNet: 1.156)
MARGIN = 0.03  # relative

pytestmark = pytest.mark.skipif(
    not (WEIGHTS_DIR / f"{DEFAULT_EMBEDDING_WEIGHTS}.json").is_file(),
    reason="this finecut ships no embedding weights",
)


def separation(model, ecssd, stems, seed: int = 0) -> float:
    """Mean over images of inter / intra distance of 400 object and 400 background pixels."""
    from finecut.data.io import read_image, read_mask

    ratios = []
    for stem in stems:
        image = read_image(ecssd / "images" / f"{stem}.jpg")
        mask = read_mask(ecssd / "masks" / f"{stem}.png", shape=image.shape[:2]) > 127
        feats = model.embed(image)
        index, labels = sample_pixels(
            mask.astype(np.int64), np.random.default_rng([seed, int(stem)]), 2, 400
        )
        emb = torch.from_numpy(feats.reshape(-1, feats.shape[2])[index])
        ratios.append(pair_distance_stats(emb, torch.from_numpy(labels))["ratio"])
    return float(np.mean(ratios))


def test_manifest_names_its_file_sha_and_command() -> None:
    manifest = load_manifest(DEFAULT_EMBEDDING_WEIGHTS)
    assert manifest["model"] == MANIFEST_MODEL
    path = WEIGHTS_DIR / manifest["file"]
    assert sha256_file(path) == manifest["sha256"]
    assert "finecut train embedding" in manifest["command"]
    train = manifest["train_config"]
    assert "ecssd" in json.dumps(train).lower()
    assert "davis" not in json.dumps(train).lower(), "DAVIS is the held-out benchmark"
    if train.get("sources"):  # a weighted mix (configs/soft/mix.yaml)
        from finecut.data.folders import parse_stems

        for source in train["sources"]:
            if Path(source["path"]).name.lower() == "ecssd":
                stems = parse_stems(source["stems"]) if source["stems"] else []
                assert stems and max(int(s) for s in stems) <= 800, "ECSSD 801-1000 is held out"
            if Path(source["path"]).name.lower() == "camvid":
                assert list(source["splits"]) == ["train"], "CamVid val / test are held out"
        return
    stems = train["mask_stems"]
    assert stems and max(int(s) for s in stems) <= 800, "ECSSD 801-1000 must never be trained on"


def test_embedded_embedding_separates_held_out_objects(shared_data) -> None:
    model = load_embedding_model(None, "cpu")
    ratio = separation(model, shared_data / "ecssd", HELD_OUT)
    assert RECORDED_RATIO is not None, "record the ratio in docs/training_embedding.md and here"
    assert ratio >= RECORDED_RATIO * (1 - MARGIN)


def test_training_beat_the_imagenet_features(shared_data) -> None:
    """The same network with its ImageNet encoder and an untrained head separates less."""
    from finecut.models.embedding import EmbeddingConfig, SemanticEmbedding

    manifest = load_manifest(DEFAULT_EMBEDDING_WEIGHTS)
    torch.manual_seed(0)
    untrained = SemanticEmbedding(EmbeddingConfig.from_dict(manifest["config"]), pretrained=True)
    trained = load_embedding_model(None, "cpu")
    stems = HELD_OUT[:8]
    assert separation(trained, shared_data / "ecssd", stems) > separation(
        untrained.eval(), shared_data / "ecssd", stems
    )


# DAVIS frames of bench/soft_quality.py's 115-frame table (every 3rd), 640 px, fast mode, 5 layers:
# the mean IoU of the best layer or pair of layers with the object, recorded in
# docs/training_embedding.md from that run's per-frame numbers for these frames.
DAVIS_FRAMES = ("000", "060", "120", "180", "240", "300")
# The shipped stage 1 with the fast mode's colour-linear basis and every segment alike in the
# grouping (frames 0.912, 0.419, 0.219, 0.660, 0.845, 0.532); grouped by segment mass it gave
# 0.603, with the superpixel-constant basis 0.529, the network before it 0.493.
RECORDED_DAVIS_PAIR_IOU = 0.598
DAVIS_MARGIN = 0.03  # absolute


def test_embedded_features_give_layers_that_hold_davis_objects(shared_data) -> None:
    import cv2
    from threadpoolctl import threadpool_limits

    from finecut.data.io import read_image, read_mask
    from finecut.metrics import binarize
    from finecut.soft import soft_segment
    from finecut.soft.compare import object_layers

    davis = shared_data / "davis"
    if not (davis / "images").is_dir():
        pytest.skip("no DAVIS frames in the shared data")

    def resized(array, interpolation):
        h, w = array.shape[:2]
        scale = 640 / max(h, w)
        return cv2.resize(array, (round(w * scale), round(h * scale)), interpolation=interpolation)

    model = load_embedding_model(None, "cpu")
    scores = []
    with threadpool_limits(limits=1):
        for stem in DAVIS_FRAMES:
            image = resized(read_image(davis / "images" / f"{stem}.jpg"), cv2.INTER_AREA)
            mask = binarize(read_mask(davis / "masks" / f"{stem}.png")).astype(np.float32)
            mask = resized(mask, cv2.INTER_AREA) > 0.5
            result = soft_segment(image, model.embed(image), n_layers=5, mode="fast")
            assert result.alphas.min() >= 0 and result.alphas.max() <= 1
            np.testing.assert_allclose(result.alphas.sum(2), 1.0, atol=1e-5)
            scores.append(object_layers(result.alphas, mask).pair.iou)
    assert RECORDED_DAVIS_PAIR_IOU is not None, "record the figure in docs and here"
    assert np.mean(scores) >= RECORDED_DAVIS_PAIR_IOU - DAVIS_MARGIN
