"""Training the refiner's keep model: the fit, the region labels, and `finecut train keep`."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from finecut.cli import main
from finecut.refine.keep import FEATURES, KeepTrees, load_keep_model
from finecut.train.keep import degrade_photo, fit_keep, fit_keep_trees, region_accuracy


def test_fit_recovers_a_linear_rule() -> None:
    # y = 1 where 2 x0 - x3 + 0.5 > 0 (plus 5% label noise): the fitted direction matches
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, len(FEATURES))) * 3 + 1
    score = 2 * (x[:, 0] - 1) / 3 - (x[:, 3] - 1) / 3 + 0.5
    y = (score > 0).astype(float)
    flip = rng.random(len(y)) < 0.05
    y[flip] = 1 - y[flip]
    model = fit_keep(x, y, np.ones(len(y)), l2=1e-4)
    w = model.weight / np.linalg.norm(model.weight)
    expect = np.zeros(len(FEATURES))
    expect[[0, 3]] = [2, -1]
    assert w @ expect / np.linalg.norm(expect) > 0.99
    acc = region_accuracy(model, {"x": x, "y": y, "w": np.ones(len(y))})
    assert acc["weighted_accuracy"] > 0.93 and acc["regions"] == 4000


def test_trees_learn_a_rule_no_logistic_model_can() -> None:
    # keep exactly where x0 and x1 share a sign (an XOR of signs): no linear rule beats a coin
    pytest.importorskip("sklearn")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6000, len(FEATURES)))
    y = (x[:, 0] * x[:, 1] > 0).astype(float)
    w = np.ones(len(y))
    test = {"x": x[4000:], "y": y[4000:], "w": w[4000:]}
    trees = fit_keep_trees(x[:4000], y[:4000], w[:4000], threshold=0.5)
    assert region_accuracy(trees, test)["weighted_accuracy"] > 0.9
    linear = fit_keep(x[:4000], y[:4000], w[:4000])
    assert region_accuracy(linear, test)["weighted_accuracy"] < 0.6


def test_weights_count_in_the_fit() -> None:
    # the same feature with contradicting labels: the heavier examples win
    x = np.zeros((4, len(FEATURES)))
    x[:, 0] = [1, 1, -1, -1]
    y = np.array([1.0, 0.0, 0.0, 1.0])
    heavy_first = fit_keep(x, y, np.array([10.0, 1.0, 10.0, 1.0]), l2=1e-3)
    assert heavy_first.probability(np.eye(len(FEATURES))[:1])[0] > 0.5


def test_degrade_photo() -> None:
    rng = np.random.default_rng(0)
    img = (rng.random((40, 50, 3)) * 255).astype(np.uint8)
    assert degrade_photo(img, "clean") is img
    video = degrade_photo(img, "video")
    assert video.shape == img.shape and video.dtype == np.uint8
    assert video.std() < img.std()  # blurred
    with pytest.raises(ValueError, match="condition"):
        degrade_photo(img, "fog")


def test_ecssd_held_out_images_are_never_drawn(shared_data) -> None:
    from finecut.train.keep import training_pairs

    pairs = training_pairs(shared_data / "ecssd", None, images=5000, seed=0)
    stems = sorted(p[0].stem for p in pairs)
    assert len(stems) == 800 and stems[-1] == "0800"


def test_cli_train_keep_writes_a_loadable_model(tmp_path, shared_data, capsys) -> None:
    ecssd = shared_data / "ecssd"
    exclude = tmp_path / "exclude.txt"
    stems = sorted(p.stem for p in (ecssd / "images").iterdir())
    exclude.write_text("\n".join(stems[4:]) + "\n")  # leave four images
    out = tmp_path / "keep" / "model"

    def train(name: str, *extra: str) -> int:
        # two images, seed 3, one shared cache of CRM outputs
        return main(
            [
                "train", "keep", "--data", str(ecssd), "--exclude", str(exclude), "--images", "2",
                "--seed", "3", "--threads", "1", "--out", str(out) + name,
                "--cache", str(tmp_path / "c"), *extra,
            ]
        )  # fmt: skip

    assert train("") == 0
    manifest = json.loads(out.with_suffix(".json").read_text())
    model = load_keep_model(out.with_suffix(".safetensors"), manifest["sha256"])
    assert manifest["images"] == 2 and manifest["cases"] == 12  # six families each
    assert manifest["fit"]["regions"] > 0 and manifest["exclude"] == str(exclude)
    assert model.threshold == 0.5 and manifest["command"].startswith("finecut train keep")
    # the cached CRM probabilities are reused: a second run gives the same model
    train("2")
    again = load_keep_model(str(out) + "2.safetensors")
    assert np.array_equal(again.weight, model.weight)
    # --tile cuts the regions into cells: more (smaller) regions, and the model keeps its tile
    train("_t0.05", "--tile", "0.05")
    # a dot in the name is kept: model_t0.05.json, not model_t0.json
    tiled = json.loads((tmp_path / "keep" / "model_t0.05.json").read_text())
    assert tiled["train_config"]["tile"] == 0.05
    assert tiled["fit"]["regions"] > manifest["fit"]["regions"]
    assert load_keep_model(str(out) + "_t0.05.safetensors").tile == 0.05
    # --form trees fits gradient-boosted trees on the same (cached) regions; the file loads as
    # trees and the manifest records the form
    if importlib.util.find_spec("sklearn") is not None:
        assert train("_trees", "--form", "trees") == 0
        trees = json.loads((tmp_path / "keep" / "model_trees.json").read_text())
        assert trees["train_config"]["form"] == "trees"
        assert trees["fit"]["regions"] == manifest["fit"]["regions"]
        fitted = load_keep_model(str(out) + "_trees.safetensors", trees["sha256"])
        assert isinstance(fitted, KeepTrees)
    # --candidate snap judges snapping alone's changes where the keep step left the input:
    # other regions (snapping alone cached apart), and the manifest says so
    assert train("_snap", "--candidate", "snap") == 0
    snap = json.loads((tmp_path / "keep" / "model_snap.json").read_text())
    assert snap["train_config"]["candidate"] == "snap" and snap["cases"] == 12
    assert snap["model"] == "refine_keep_snap" and manifest["model"] == "refine_keep"
    assert snap["fit"]["regions"] > 0 and snap["fit"]["regions"] != manifest["fit"]["regions"]
    assert len(list((tmp_path / "c").glob("*_snapalone.npy"))) == 12
    assert not np.array_equal(load_keep_model(str(out) + "_snap.safetensors").weight, model.weight)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--threshold", "1.5"], "--threshold"),
        (["--images", "0"], "--images"),
        (["--exclude", "/nonexistent/list.txt"], "--exclude"),
        (["--l2", "-1"], "--l2"),
        (["--l2", "nan"], "--l2"),
        (["--tile", "1.5"], "--tile"),
        (["--tile", "-0.1"], "--tile"),
        (["--tile", "nan"], "--tile"),
        (["--candidate", "crm"], "--candidate"),
        (["--form", "forest"], "--form"),
    ],
)
def test_cli_train_keep_refuses_bad_arguments(tmp_path, capsys, extra, message) -> None:
    code = main(["train", "keep", "--data", str(tmp_path), *extra])
    err = capsys.readouterr().err
    assert code != 0 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
