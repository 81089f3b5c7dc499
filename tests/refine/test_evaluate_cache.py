"""evaluate_families with a CRM cache: the second run reads the cache and gives the same table."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from finecut.refine.api import Refiner
from finecut.refine.evaluate import evaluate_families
from finecut.train.coarse import seeded_coarse


def _folder(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir(parents=True)
    (tmp_path / "masks").mkdir()
    for stem in ("a", "b"):
        img = (rng.random((72, 96, 3)) * 60).astype(np.uint8)
        gt = np.zeros((72, 96), np.uint8)
        gt[15:55, 20:70] = 255
        img[gt > 0] += 150
        Image.fromarray(img).save(tmp_path / "images" / f"{stem}.png")
        Image.fromarray(gt).save(tmp_path / "masks" / f"{stem}.png")
    return tmp_path


def _run(data, weights, cache):
    return evaluate_families(
        data, seeded_coarse, families=("lowres", "sam"), scales=(1.0, 2.0),
        methods=("crm", "finecut", "finecut:keep_edges=0"), device="cpu", weights=weights,
        threads=1, cache=cache,
    )  # fmt: skip


def _table(results):
    return {k: [(r.iou, r.mba, r.iou_values) for r in rows] for k, rows in results.items()}


def test_cached_crm_gives_the_same_table(tmp_path, tiny_crm_weights, monkeypatch) -> None:
    data = _folder(tmp_path / "data")
    cache = tmp_path / "cache"
    first = _table(_run(data, tiny_crm_weights, cache))
    # one file per image, family and scale (rows that differ in the finishing share one CRM run)
    assert len(list(cache.glob("*.npy"))) == 2 * 2 * 2

    def no_crm(*args, **kwargs):
        raise AssertionError("the CRM ran although the cache holds its output")

    monkeypatch.setattr(Refiner, "_crm_probability", no_crm)
    assert _table(_run(data, tiny_crm_weights, cache)) == first
    with pytest.raises(AssertionError, match="CRM ran"):
        _run(data, tiny_crm_weights, tmp_path / "other")


def test_shards_merge_into_the_table_of_one_run(tmp_path, tiny_crm_weights) -> None:
    import json

    from finecut.refine.evaluate import family_results_to_json, merge_family_results

    data = _folder(tmp_path / "data")

    def run(stems):
        return evaluate_families(
            data, seeded_coarse, families=("lowres", "sam"), scales=(1.0,),
            methods=("snap", "finecut"), stems=stems, device="cpu", weights=tiny_crm_weights,
            threads=1,
        )  # fmt: skip

    whole = _table(run(["a", "b"]))
    parts = [json.loads(json.dumps(family_results_to_json(run([s])))) for s in ("a", "b")]
    assert _table(merge_family_results(parts)) == whole
    # shards of different methods or cells cannot be one table
    other = family_results_to_json(
        evaluate_families(
            data, seeded_coarse, families=("lowres",), scales=(1.0,), methods=("snap",),
            stems=["b"], threads=1,
        )  # fmt: skip
    )
    with pytest.raises(ValueError, match="methods"):
        merge_family_results([parts[0], other])


def test_the_finecut_rows_take_the_given_keep_model(tmp_path, tiny_crm_weights) -> None:
    # a keep model that trusts every change leaves the finecut row at the finishing without a
    # keep step; one that trusts none undoes changed regions (a file or the model alike)
    from finecut.refine.keep import FEATURES, KeepModel

    data = _folder(tmp_path / "data")
    f = len(FEATURES)

    def run(model):
        results = evaluate_families(
            data, seeded_coarse, families=("lowres",), scales=(1.0,),
            methods=("finecut:keep_learned=0:keep_edges=0", "finecut"), device="cpu",
            weights=tiny_crm_weights, threads=1, keep_model=model,
        )  # fmt: skip
        return [r.iou_values for r in results[(1.0, "lowres")]]

    never = KeepModel(np.zeros(f), np.ones(f), np.zeros(f), -50.0, 0.5)
    path = tmp_path / "never.safetensors"
    never.save(path)
    _, no_keep, always = run(KeepModel(np.zeros(f), np.ones(f), np.zeros(f), 50.0, 0.5))
    assert always == no_keep
    _, _, undone = run(never)
    assert undone != no_keep and run(path)[2] == undone
