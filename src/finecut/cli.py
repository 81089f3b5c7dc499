"""The `finecut` command line. Imports everything; imported by nothing.

Every user error (bad image, wrong mask size, missing weights, bad option) is one line on stderr
and exit status 2; an interrupted run exits 130; a folder run where some files failed exits 1
after finishing all the others.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

from finecut import __version__
from finecut.errors import FinecutError, ImageError

log = logging.getLogger("finecut")


def _stems_arg(text: str) -> list[str]:
    """--stems: see :func:`finecut.data.folders.parse_stems`."""
    from finecut.data.folders import parse_stems

    return parse_stems(text)


# ----------------------------------------------------------------------------------------- refine
#: What the refusal of a label map given as --mask suggests.
_LABELS_HINT = "pass it with --instances to refine each label into a label map"


def _finite_float(text: str) -> float:
    """argparse type: a float that is not NaN or infinite (argparse reports the refusal)."""
    import math

    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _add_precision(p) -> None:
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default=None,
        help="the refiner encoder's arithmetic (default auto: bfloat16 on a CPU with native "
        "bfloat16, e.g. AVX-512 BF16 or AMX, float32 elsewhere)",
    )


def _add_refine(sub) -> None:
    p = sub.add_parser(
        "refine",
        help="refine a coarse mask (or every instance of a label map) at full resolution (CRM)",
        description="Refine a coarse binary mask of IMAGE at full resolution (--mask), or every "
        "instance of a label map (--instances: 0 is background, each other value one object; "
        "the output is a label map). IMAGE and the mask may be files or folders (folder mode "
        "pairs files by stem).",
    )
    p.add_argument("image", type=Path, help="image file or folder of images")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--mask",
        "-m",
        type=Path,
        help="coarse binary mask file or folder (0/255, 0/1, or 8-bit soft: foreground > 127)",
    )
    source.add_argument(
        "--instances",
        type=Path,
        help="label map file or folder (8/16-bit grey, palette or colour-coded PNG): each "
        "instance is refined, overlaps go to the most probable, the output is a label map",
    )
    p.add_argument("-o", "--output", type=Path, required=True, help="output file or folder")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available)")
    p.add_argument("--soft", action="store_true", help="write the probability as 8-bit alpha")
    p.add_argument(
        "--overlay",
        type=Path,
        default=None,
        help="also write a picture of the result over the image (file, or folder in folder mode)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument(
        "--resize-mask",
        action="store_true",
        help="resize a mask of another size to the image instead of failing",
    )
    p.add_argument("--weights", default=None, help="weights file (default: the embedded model)")
    _add_precision(p)
    p.add_argument(
        "--full-query",
        action="store_true",
        help="query every pixel at every scale (CRM's own inference; slower)",
    )
    p.add_argument(
        "--no-snap",
        action="store_true",
        help="skip edge snapping (matting in a thin band after CRM): the CRM output alone",
    )
    p.add_argument(
        "--edge-margin",
        type=_finite_float,
        default=None,
        metavar="M",
        help="use the edge check instead of the learned keep model: a changed region is kept "
        "only if its new boundary lies on edges (1 + M) times as strong as the input's there "
        "(1.0 was its default; a negative M keeps every change: no do-no-harm step at all)",
    )
    p.add_argument(
        "--keep-threshold",
        type=_finite_float,
        default=None,
        metavar="T",
        help="do-no-harm by the learned keep model (the default): a changed region is kept when "
        "the model's probability that the change is right is at least T (default 0.75, chosen "
        "on training-side photos and video frames; lower changes more, higher is safer: 0.9 "
        "leaves near-perfect masks as they are)",
    )
    p.add_argument(
        "--keep-model",
        type=Path,
        default=None,
        metavar="FILE",
        help="the keep step's model: a .safetensors file of 'finecut train keep' (default: the "
        "embedded gradient-boosted trees; its own threshold applies unless --keep-threshold)",
    )
    p.add_argument(
        "--snap-opinion",
        type=_finite_float,
        default=None,
        metavar="T",
        help="a second opinion after the keep model (off by default; 0.7 helps photos, chosen "
        "on training-side photos, but harms more video frames): where the mask is still the "
        "input's, snapping alone's changes are taken when a model fitted on them trusts them at "
        "T or more; a negative T turns it off (it costs about 1.5 s on a 3492x2328 photo)",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="CPU threads (torch, or ONNX Runtime with --onnx)"
    )
    p.add_argument(
        "--onnx",
        type=Path,
        default=None,
        metavar="DIR",
        help="run the networks that 'finecut export onnx' wrote to DIR in ONNX Runtime (CPU, "
        "no torch; needs pip install 'finecut[onnx]')",
    )
    p.set_defaults(func=_cmd_refine)


def _load_pair(image_path: Path, mask_path: Path, resize: bool, instances: bool = False):
    """The image and its coarse input: a bool mask, or with ``instances`` a label map.

    A label map given as a mask is refused here, before any model is loaded."""
    import cv2

    from finecut.data.io import read_image, read_labels, read_mask
    from finecut.data.masks import binary_mask

    image = read_image(image_path)
    h, w = image.shape[:2]
    kind = "label map" if instances else "mask"
    read = read_labels if instances else read_mask
    if resize:
        mask = read(mask_path)
        if mask.shape != (h, w):
            log.info(
                "resizing %s %s from %dx%d to %dx%d",
                kind,
                mask_path.name,
                mask.shape[1],
                mask.shape[0],
                w,
                h,
            )
            # labels must stay labels: nearest neighbour; a mask keeps its soft edges
            interpolation = cv2.INTER_NEAREST if instances else cv2.INTER_LINEAR
            mask = cv2.resize(mask, (w, h), interpolation=interpolation)
    else:
        try:
            mask = read(mask_path, shape=(h, w), image_path=image_path)
        except ImageError as exc:
            if "but image" in str(exc):
                raise ImageError(f"{exc} (pass --resize-mask to resize it)") from None
            raise
    if instances:
        return image, mask
    return image, binary_mask(mask, name=f"mask {str(mask_path)!r}", hint=_LABELS_HINT)


def _refine_loaded(refiner, image, coarse, args):
    """The refined mask (uint8 0/255 or, with --soft, 0..255 alpha) or label map."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if args.instances is not None:
            result = refiner.refine_instances(
                image, coarse, full_query=args.full_query, snap=not args.no_snap
            )
        else:
            result = refiner.refine(
                image, coarse, soft=args.soft, full_query=args.full_query, snap=not args.no_snap
            )
    if args.soft:
        result = (result * 255.0).round().astype("uint8")
    return result, [str(w.message) for w in caught]


def _write_result(image, result, out: Path, overlay: Path | None, protect, args) -> None:
    from finecut.data.io import write_image, write_labels, write_mask
    from finecut.viz import overlay_labels, overlay_mask

    if args.instances is not None:
        write_labels(out, result, overwrite=args.overwrite, protect=protect)
        picture = overlay_labels(image, result) if overlay is not None else None
    else:
        write_mask(out, result, overwrite=args.overwrite, protect=protect)
        picture = overlay_mask(image, result) if overlay is not None else None
    if overlay is not None:
        write_image(overlay, picture, overwrite=args.overwrite, protect=protect)


def _refine_one(
    refiner, image_path: Path, mask_path: Path, out: Path, overlay: Path | None, args
) -> None:
    image, coarse = _load_pair(image_path, mask_path, args.resize_mask, args.instances is not None)
    result, messages = _refine_loaded(refiner, image, coarse, args)
    for message in messages:
        log.warning("%s: %s", image_path.name, message)
    _write_result(image, result, out, overlay, (image_path, mask_path), args)


def _refiner(args, config=None, keep_model=None):
    """The Refiner of ``args``; ``config`` and ``keep_model`` from :func:`_keep_options`
    (None: the Refiner's defaults)."""
    # imported here, after _cmd_refine's checks of the paths and flags: the refiner loads torch
    # (seconds), and a wrong path or flag should be reported at once
    from finecut.refine import Refiner

    many = args.command == "refine-coco" or getattr(args, "instances", None) is not None
    if many and not args.verbose:
        # one INFO line per small instance ("copied through") would drown the useful ones
        logging.getLogger("finecut.refine.api").setLevel(logging.WARNING)

    # None: the Refiner's own default (refine and refine-coco have --precision)
    precision = getattr(args, "precision", None)
    onnx = getattr(args, "onnx", None)  # only `finecut refine` has --onnx
    if onnx is not None:
        from finecut.errors import ConfigError

        if args.weights is not None or args.device not in (None, "cpu"):
            raise ConfigError(
                "--onnx runs on the CPU with the weights exported to DIR: drop --weights and "
                "--device (export other weights with finecut export onnx --weights)"
            )
        if precision not in (None, "auto", "fp32"):
            raise ConfigError("--onnx runs in float32: drop --precision")
        return Refiner(onnx=onnx, threads=args.threads, config=config, keep_model=keep_model)
    return Refiner(
        args.device,
        weights=args.weights,
        threads=args.threads,
        config=config,
        precision=precision,
        keep_model=keep_model,
    )


def _keep_options(args):
    """``finecut refine``'s do-no-harm flags, checked before any image or torch is loaded: the
    InferenceConfig they ask for and the --keep-model (each None: the Refiner's default)."""
    margin, threshold = args.edge_margin, args.keep_threshold
    opinion, path = args.snap_opinion, args.keep_model
    if margin is None and threshold is None and opinion is None and path is None:
        return None, None
    from finecut.errors import ConfigError
    from finecut.refine.inference import InferenceConfig
    from finecut.refine.keep import load_keep_model

    if margin is not None and threshold is not None:
        raise ConfigError("give --edge-margin (the edge check) or --keep-threshold, not both")
    for flag, value in (("--snap-opinion", opinion), ("--keep-model", path)):
        if margin is not None and value is not None:
            raise ConfigError(
                f"{flag} is part of the learned keep step, which --edge-margin replaces: "
                "give one of them, not both"
            )
    if threshold is not None and not 0 <= threshold <= 1:
        raise ConfigError(f"--keep-threshold must be in [0, 1], not {threshold}")
    if opinion is not None and opinion > 1:
        raise ConfigError(f"--snap-opinion must be in [0, 1] (negative: off), not {opinion}")
    keep_model = None if path is None else load_keep_model(path)
    if margin is not None:
        config = InferenceConfig(
            keep_learned=False, keep_edges=margin >= 0, keep_edge_margin=max(margin, 0.0)
        )
    else:
        # any negative --snap-opinion is off, stored as -1
        opinion_t = None if opinion is None else max(opinion, -1.0)
        given = {"keep_threshold": threshold, "keep_snap_threshold": opinion_t}
        given = {k: v for k, v in given.items() if v is not None}
        config = InferenceConfig(**given) if given else None
    return config, keep_model


def _check_file_outputs(args, inputs: tuple[Path, Path], kind: str) -> None:
    """Every check the writers would make, before any work (a bad -o fails in milliseconds)."""
    from finecut.data.io import check_output

    check_output(args.output, kind, protect=inputs)
    if args.output.exists() and not args.overwrite:
        raise ImageError(f"output {str(args.output)!r} exists (pass --overwrite to replace it)")
    if args.overlay is None:
        return
    check_output(args.overlay, "overlay", protect=inputs)
    if args.overlay.resolve() == args.output.resolve():
        raise ImageError(
            f"--overlay {str(args.overlay)!r} is the output file; give the overlay its own path"
        )
    if args.overlay.exists() and not args.overwrite:
        raise ImageError(f"overlay {str(args.overlay)!r} exists (pass --overwrite to replace it)")


def _cmd_refine(args) -> int:
    from finecut.data.io import check_output, check_output_folder, list_images, pair_by_stem
    from finecut.errors import ConfigError

    instances = args.instances is not None
    kind = "label map" if instances else "mask"
    source = args.instances if instances else args.mask
    option = "--instances" if instances else "--mask"
    if instances and args.soft:
        raise ConfigError("--soft cannot be used with --instances: the output is a label map")
    if not args.image.exists():
        raise ImageError(f"{str(args.image)!r} not found")
    if not source.exists():
        raise ImageError(f"{kind} {str(source)!r} not found")
    folder = args.image.is_dir()
    if folder != source.is_dir():
        raise ImageError(f"IMAGE and {option} must both be files or both be folders")
    if not folder:
        _check_file_outputs(args, (args.image, source), kind)
        config, keep_model = _keep_options(args)
        image, coarse = _load_pair(args.image, source, args.resize_mask, instances)
        refiner = _refiner(args, config, keep_model)
        result, messages = _refine_loaded(refiner, image, coarse, args)
        for message in messages:
            log.warning("%s: %s", args.image.name, message)
        _write_result(image, result, args.output, args.overlay, (args.image, source), args)
        log.info("wrote %s", args.output)
        return 0

    check_output_folder(args.output, "output")
    if args.overlay is not None:
        check_output_folder(args.overlay, "overlay")
    config, keep_model = _keep_options(args)
    pairs, unmatched = pair_by_stem(args.image, source)
    if not pairs:
        n = len(list_images(args.image))
        raise ImageError(
            f"no image in {str(args.image)!r} has a {kind} of the same stem in "
            f"{str(source)!r} ({n} images)"
        )
    for p in unmatched:
        log.warning("no %s for %s: skipped", kind, p.name)
    todo = []
    for img, msk in pairs:
        out = args.output / f"{img.stem}.png"
        overlay = args.overlay / f"{img.stem}.png" if args.overlay is not None else None
        check_output(out, kind, protect=(img, msk))  # an output that is an input: stop now
        if overlay is not None:
            check_output(overlay, "overlay", protect=(img, msk))
        if out.exists() and not args.overwrite:
            continue
        todo.append((img, msk, out, overlay))
    skipped = len(pairs) - len(todo)
    if skipped:
        log.info("%d outputs already exist and are kept (pass --overwrite to redo them)", skipped)
    if not todo:
        return 0
    args.output.mkdir(parents=True, exist_ok=True)
    if args.overlay is not None:
        args.overlay.mkdir(parents=True, exist_ok=True)
    refiner = _refiner(args, config, keep_model)
    failures: list[tuple[str, str]] = []
    from tqdm import tqdm

    for img, msk, out, overlay in tqdm(todo, unit="img", disable=not sys.stderr.isatty()):
        try:
            _refine_one(refiner, img, msk, out, overlay, args)
        except FinecutError as exc:
            failures.append((img.name, str(exc)))
            log.error("%s", exc)
    done = len(todo) - len(failures)
    log.info("refined %d of %d images into %s", done, len(todo), args.output)
    return _report_failures(failures, len(todo), "images")


def _report_failures(
    failures: list[tuple[str, str]], total: int, what: str, most: int | None = None
) -> int:
    """Print the failures (at most ``most`` of them) as ``name: error`` lines; 1 if any."""
    if not failures:
        return 0
    print(f"finecut: {len(failures)} of {total} {what} failed:", file=sys.stderr)
    for name, msg in failures[:most]:
        print(f"  {name}: {msg}", file=sys.stderr)
    if most is not None and len(failures) > most:
        print(f"  ... and {len(failures) - most} more", file=sys.stderr)
    return 1


# --------------------------------------------------------------------------------- refine-dataset
def _add_refine_dataset(sub) -> None:
    p = sub.add_parser(
        "refine-dataset",
        help="refine a folder tree or manifest of image/mask pairs on Ray Data (any fsspec URL)",
        description="Refine every image/mask pair of SOURCE on Ray Data, each worker keeping one "
        "model loaded. SOURCE is a folder of images (searched recursively; the masks are in "
        "--mask DIR at the same relative paths, paired by stem as in 'finecut refine' folder "
        "mode, or beside the images as NAME_mask.png) or, with --manifest, a CSV file with a "
        "header (or JSON lines, .jsonl) with the columns image, mask and optionally output. "
        "Paths may be local or fsspec URLs (s3://, gs://, ...). Each output mask goes to "
        "OUT_PREFIX at the item's relative path, as PNG; items whose output exists are skipped, "
        "so a rerun resumes. Needs: pip install 'finecut[ray]'.",
    )
    p.add_argument("source", help="folder of images, or with --manifest a CSV/JSONL manifest")
    p.add_argument("-o", "--output", required=True, metavar="OUT_PREFIX", help="output prefix")
    p.add_argument(
        "--mask",
        "-m",
        default=None,
        metavar="DIR",
        help="folder of masks (default: beside the images, named NAME_mask.EXT)",
    )
    p.add_argument("--manifest", action="store_true", help="SOURCE is a CSV or JSONL manifest")
    p.add_argument("--workers", type=int, default=2, help="refiners at once (default 2)")
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join: auto, ray://HOST:10001, HOST:6379 (default: $RAY_ADDRESS, "
        "else a local Ray with WORKERS x THREADS CPUs)",
    )
    p.add_argument("--batch-size", type=int, default=4, help="items per worker call (default 4)")
    p.add_argument(
        "--threads", type=int, default=1, help="CPUs and torch threads per worker (default 1)"
    )
    p.add_argument("--limit", type=int, default=None, help="refine at most N of the items to do")
    p.add_argument(
        "--failures",
        default=None,
        metavar="CSV",
        help="write the failed items (image, mask, output, error) to this CSV file (path or URL)",
    )
    p.add_argument("--overwrite", action="store_true", help="redo items whose output exists")
    p.add_argument("--soft", action="store_true", help="write the probability as 8-bit alpha")
    p.add_argument("--resize-mask", action="store_true", help="resize masks of another size")
    p.add_argument("--no-snap", action="store_true", help="skip edge snapping")
    p.add_argument("--full-query", action="store_true", help="CRM's own inference (slower)")
    p.add_argument(
        "--weights",
        default=None,
        help="weights file, at the same path on every worker (default: the embedded model)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda (default: cuda if available)")
    p.set_defaults(func=_cmd_refine_dataset)


def _cmd_refine_dataset(args) -> int:
    import os
    import time

    from finecut.cluster.items import is_local, list_folder, read_manifest, split_done, url_fs
    from finecut.cluster.ray_job import RayConfig, require_ray, run_on_ray
    from finecut.cluster.work import RefineOptions
    from finecut.data.io import check_output_folder
    from finecut.errors import ConfigError

    require_ray()  # before any listing: without Ray nothing can run
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be at least 1; got {args.limit}")
    config = RayConfig(
        workers=args.workers,
        address=args.address or os.environ.get("RAY_ADDRESS") or None,
        batch_size=args.batch_size,
        threads=args.threads,
    )
    options = RefineOptions(
        soft=args.soft,
        snap=not args.no_snap,
        full_query=args.full_query,
        resize_mask=args.resize_mask,
        weights=args.weights,
        device=args.device,
        threads=args.threads,
    )
    if config.address is None and args.weights and Path(args.weights).suffix:
        if not Path(args.weights).is_file():  # local workers would each fail on it
            from finecut.errors import WeightsError

            raise WeightsError(f"weights file {args.weights!r} not found")
    if args.manifest:
        if args.mask is not None:
            raise ConfigError("--mask is for a folder SOURCE; a manifest names each mask")
        listing = read_manifest(args.source, args.output)
    else:
        listing = list_folder(args.source, args.output, masks_url=args.mask)
    ofs, oroot = url_fs(args.output)
    if is_local(ofs):
        check_output_folder(oroot, "output prefix")
    if listing.unmatched:
        shown = ", ".join(listing.unmatched[:3])
        log.warning("%d images have no mask and are skipped (%s)", len(listing.unmatched), shown)
    items = listing.items
    todo, done = (items, 0) if args.overwrite else split_done(items, args.output)
    if done:
        log.info(
            "%d of %d items are done (their outputs exist) and skipped; pass --overwrite to "
            "redo them",
            done,
            len(items),
        )
    if args.limit is not None:
        todo = todo[: args.limit]
    if not todo:
        log.info("nothing to refine: all %d items are done", len(items))
        _write_failures(args.failures, [])
        return 0
    where = config.address or f"a local Ray ({config.workers * config.threads} CPUs)"
    log.info("refining %d items with %d workers on %s", len(todo), config.workers, where)
    from tqdm import tqdm

    start = time.perf_counter()
    with tqdm(total=len(todo), unit="img", disable=not sys.stderr.isatty()) as bar:
        rows = run_on_ray(todo, options, config, progress=bar.update)
    elapsed = time.perf_counter() - start
    by_output = {item.output: item for item in todo}
    failed = [by_output[out] for out, ok in zip(rows["output"], rows["ok"], strict=True) if not ok]
    errors = {out: err for out, err in zip(rows["output"], rows["error"], strict=True) if err}
    warned = [(img, w) for img, w in zip(rows["image"], rows["warning"], strict=True) if w]
    for image, warning in warned[:10]:
        log.warning("%s: %s", _shown(image), warning)
    if len(warned) > 10:
        log.warning("... and %d more items with warnings", len(warned) - 10)
    n_ok = len(todo) - len(failed)
    log.info(
        "refined %d of %d items into %s in %.1f s (%.2f items/s, %.2f s per item on a worker)",
        n_ok,
        len(todo),
        args.output,
        elapsed,
        len(todo) / elapsed,
        float(sum(rows["seconds"])) / len(todo),
    )
    _write_failures(args.failures, [(item, errors[item.output]) for item in failed])
    table = [(_shown(item.image), errors[item.output]) for item in failed]
    return _report_failures(table, len(todo), "items", most=20)


def _shown(url: str) -> str:
    """A URL as a user gave it: local files without ``file://``."""
    return url.removeprefix("file://")


def _write_failures(url: str | None, failures: list) -> None:
    """--failures: a CSV of (image, mask, output, error); written (empty) even with none."""
    if url is None:
        return
    import csv

    import fsspec

    try:
        with fsspec.open(url, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["image", "mask", "output", "error"])
            for item, error in failures:
                writer.writerow([_shown(item.image), _shown(item.mask), _shown(item.output), error])
    except OSError as exc:
        raise ImageError(f"cannot write --failures {url!r}: {' '.join(str(exc).split())}") from None
    log.info("wrote the failure table (%d items) to %s", len(failures), url)


# ------------------------------------------------------------------------------------ refine-coco
def _add_refine_coco(sub) -> None:
    p = sub.add_parser(
        "refine-coco",
        help="refine every mask of a COCO annotation file (polygons or RLE in, RLE out)",
        description="Refine every annotation's mask of a COCO instances file. The output keeps "
        "every field (ids, category_id, image_id, ...) and gives each refined annotation an RLE "
        "segmentation with its area and bbox; crowd annotations are kept as given. Finished "
        "images are recorded in OUTPUT.partial: an interrupted run resumes where it stopped "
        "when the same command is run again. Needs pycocotools (pip install 'finecut[coco]').",
    )
    p.add_argument("annotations", type=Path, help="COCO instances JSON")
    p.add_argument(
        "--images", type=Path, required=True, help="folder the images' file_name are relative to"
    )
    p.add_argument("-o", "--output", type=Path, required=True, help="refined JSON")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing output and start over (the journal of an earlier run is dropped)",
    )
    p.add_argument(
        "--skip-failed",
        action="store_true",
        help="write the output even when some images fail (their annotations are kept as given)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available)")
    p.add_argument("--weights", default=None, help="weights file (default: the embedded model)")
    p.add_argument("--full-query", action="store_true", help="CRM's own inference (slower)")
    p.add_argument("--no-snap", action="store_true", help="skip edge snapping")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    _add_precision(p)
    p.set_defaults(func=_cmd_refine_coco)


def _cmd_refine_coco(args) -> int:
    from finecut.data.coco import Journal, file_sha256, load_coco, mask_api, write_json
    from finecut.data.io import check_output
    from finecut.refine.coco import apply_results, pending_images, refine_coco

    coco = load_coco(args.annotations)
    check_output(args.output, "output", any_extension=True, protect=[args.annotations])
    if args.output.exists() and not args.overwrite:
        raise ImageError(f"output {str(args.output)!r} exists (pass --overwrite to replace it)")
    if not args.images.is_dir():
        raise ImageError(f"--images {str(args.images)!r} is not a folder")
    api = mask_api()
    journal_path = args.output.with_name(args.output.name + ".partial")
    header = {
        "annotations_sha256": file_sha256(args.annotations),
        "weights": args.weights,
        "full_query": args.full_query,
        "snap": not args.no_snap,
    }
    journal = Journal(journal_path, header, restart=args.overwrite)
    total = len(pending_images(coco, journal)) + len(journal.done)
    failures: list[tuple[str, str]] = []
    if len(journal.done) < total:
        from tqdm import tqdm

        failures = refine_coco(
            _refiner(args),
            coco,
            args.images,
            journal,
            api,
            full_query=args.full_query,
            snap=not args.no_snap,
            progress=lambda items: tqdm(items, unit="img", disable=not sys.stderr.isatty()),
        )
    if failures and not args.skip_failed:
        code = _report_failures(failures, total, "images")
        print(
            f"finecut: the {len(journal.done)} images done are kept in {str(journal_path)!r}; "
            "run the same command again to refine only the others, or pass --skip-failed to "
            "write the output with the failed images' annotations as given",
            file=sys.stderr,
        )
        return code
    write_json(args.output, apply_results(coco, journal.done), protect=[args.annotations])
    journal.remove()
    refined = sum(len(results) for results in journal.done.values())
    log.info("refined %d annotations of %d images into %s", refined, len(journal.done), args.output)
    return _report_failures(failures, total, "images")


# ------------------------------------------------------------------------------------------- soft
#: Largest image each mode takes at full resolution (pixels); larger ones need --max-side.
SOFT_MAX_PIXELS = {"fast": 4_200_000, "faithful": 640 * 480}


def _add_soft(sub) -> None:
    p = sub.add_parser(
        "soft",
        help="split an image into soft alpha layers (semantic soft segmentation)",
        description="Semantic soft segmentation (Aksoy et al. 2018): IMAGE -> N soft layers whose "
        "alphas sum to one at every pixel. Writes DIR/layer_K.png (RGBA: the image with the "
        "layer's alpha), DIR/composite.png (layers colour-coded) and DIR/alphas.npy "
        "((H, W, N) float32).",
    )
    p.add_argument("image", type=Path, help="image file")
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    p.add_argument("--layers", type=int, default=5, help="number of layers (default 5)")
    p.add_argument("--mode", choices=("fast", "faithful"), default="fast")
    p.add_argument(
        "--features",
        default="auto",
        help="semantic features: 'auto' (finecut's embedding network when its weights are "
        "installed, else colour + position), 'embedding', 'none' (colour + position), or a "
        "file: .npy (H, W, D) raw features, or an image holding 3-channel preprocessed features",
    )
    p.add_argument(
        "--preprocessed",
        action="store_true",
        help="the .npy features are already the paper's 3 channels in [0, 1]",
    )
    p.add_argument("--embedding", default=None, help="embedding weights (default: embedded)")
    p.add_argument(
        "--max-side",
        type=int,
        default=None,
        help="solve at this longer side and upsample the layers (needed for large images)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="device of the embedding network")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.set_defaults(func=_cmd_soft)


def _soft_outputs(out: Path, n: int) -> list[Path]:
    return [out / f"layer_{k}.png" for k in range(n)] + [out / "composite.png", out / "alphas.npy"]


def _soft_features(args, image, shape):
    """(features, preprocessed) at the size of ``image`` (the solving size), or (None, False)
    for colour + position. Feature files must have the input's full size ``shape``."""
    import numpy as np

    from finecut.errors import ConfigError, WeightsError

    choice = args.features
    if choice == "none":
        return None, False
    if choice in ("auto", "embedding"):
        from finecut.soft.semantic import embedding_features, has_embedded_embedding

        if args.embedding is None and not has_embedded_embedding():
            if choice == "embedding":
                raise WeightsError(
                    "this finecut has no embedded embedding weights; pass --embedding FILE, "
                    "--features FILE.npy or --features none"
                )
            log.warning(
                "no embedded embedding network in this finecut: using colour + position "
                "features (pass --features FILE.npy for semantic features)"
            )
            return None, False
        return embedding_features(image, weights=args.embedding, device=args.device), False
    path = Path(choice)
    if not path.is_file():
        raise ConfigError(
            f"--features {choice!r}: not a file, and not one of auto, embedding, none"
        )
    if path.suffix.lower() == ".npy":
        try:
            feats = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ImageError(f"features file {str(path)!r} cannot be read: {exc}") from None
        if feats.ndim == 2:
            feats = feats[..., None]
        if feats.ndim != 3 or feats.shape[:2] != shape:
            raise ImageError(
                f"features {str(path)!r} are {feats.shape}, expected (H, W, D) with "
                f"(H, W) = {shape} like the image"
            )
        return _resize_channels(feats, image.shape[:2]), args.preprocessed
    from finecut.data.io import read_image

    feats = read_image(path)
    if feats.shape[:2] != shape:
        raise ImageError(
            f"features image {str(path)!r} is {feats.shape[1]}x{feats.shape[0]} but the image is "
            f"{shape[1]}x{shape[0]}"
        )
    return _resize_channels(feats, image.shape[:2]), True


def _resize_channels(features, shape):
    """(H, W, D) features resized (area) to ``shape`` = (h, w), channel by channel."""
    import cv2
    import numpy as np

    if features.shape[:2] == tuple(shape):
        return features
    size = (shape[1], shape[0])
    return np.stack(
        [
            cv2.resize(np.ascontiguousarray(features[..., c]), size, interpolation=cv2.INTER_AREA)
            for c in range(features.shape[2])
        ],
        axis=2,
    )


def _cmd_soft(args) -> int:
    import cv2
    import numpy as np

    from finecut.data.io import read_image, write_image
    from finecut.errors import ConfigError
    from finecut.soft import soft_segment
    from finecut.viz import soft_composite

    if args.layers < 1:
        raise ConfigError(f"--layers must be >= 1, got {args.layers}")
    if args.max_side is not None and args.max_side < 16:
        raise ConfigError(f"--max-side must be >= 16, got {args.max_side}")
    if args.output.exists() and not args.output.is_dir():
        raise ImageError(f"output {str(args.output)!r} exists and is not a folder")
    existing = [p for p in _soft_outputs(args.output, args.layers) if p.exists()]
    if existing and not args.overwrite:
        raise ImageError(
            f"{str(existing[0])!r} exists (pass --overwrite to replace the outputs in "
            f"{str(args.output)!r})"
        )
    image = read_image(args.image)
    h, w = image.shape[:2]
    work_image = image
    if args.max_side is not None and max(h, w) > args.max_side:
        scale = args.max_side / max(h, w)
        size = (max(16, round(w * scale)), max(16, round(h * scale)))
        work_image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    limit = SOFT_MAX_PIXELS[args.mode]
    if work_image.shape[0] * work_image.shape[1] > limit:
        side = int((limit * max(h, w) / min(h, w)) ** 0.5)
        raise ImageError(
            f"{args.image.name} is {w}x{h}: {args.mode} mode takes at most {limit:,} pixels "
            f"(pass --max-side {side} or less to solve at a lower resolution)"
        )
    # after the size check and at the solving size: the embedding of an 8K image would take GBs
    features, preprocessed = _soft_features(args, work_image, (h, w))
    from tqdm import tqdm

    bar = tqdm(total=9, unit="step", disable=not sys.stderr.isatty())

    def progress(step: str, done: int, total: int) -> None:
        bar.total = total
        bar.set_postfix_str(step)
        bar.update(done - bar.n)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = soft_segment(
            work_image,
            "none" if features is None else features,
            n_layers=args.layers,
            mode=args.mode,
            progress=progress,
            preprocessed=preprocessed,
            seed=args.seed,
        )
    bar.close()
    for wmsg in caught:
        log.warning("%s", wmsg.message)
    alphas = result.alphas
    if alphas.shape[:2] != (h, w):
        alphas = cv2.resize(alphas, (w, h), interpolation=cv2.INTER_LINEAR)
        if alphas.ndim == 2:
            alphas = alphas[..., None]
        alphas = np.clip(alphas, 0.0, 1.0)
        alphas /= np.maximum(alphas.sum(2, keepdims=True), 1e-12)
    protect = [args.image] + ([Path(args.features)] if Path(args.features).is_file() else [])
    args.output.mkdir(parents=True, exist_ok=True)
    k = alphas.shape[2]
    for i in range(k):
        a = np.round(alphas[..., i] * 255.0).astype(np.uint8)
        rgba = np.concatenate([image, a[..., None]], axis=2)
        write_image(args.output / f"layer_{i}.png", rgba, overwrite=True, protect=protect)
    write_image(args.output / "composite.png", soft_composite(alphas), protect=protect)
    _save_npy(args.output / "alphas.npy", alphas.astype(np.float32))
    log.info(
        "%d soft layers of %s (%s mode, %.1f s) in %s: layer_0..%d.png, composite.png, "
        "alphas.npy",
        k, args.image.name, result.mode, result.seconds, args.output, k - 1,
    )
    if k < args.layers:
        log.warning("%d layers asked, the image gave %d", args.layers, k)
    return 0


def _save_npy(path: Path, array) -> None:
    """Write an .npy atomically (temporary file in the same folder, then rename)."""
    import os
    import tempfile

    import numpy as np

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, array, allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------------------------------ train
def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model")
    tsub = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    r = tsub.add_parser(
        "refine",
        help="train the CRM refiner on a folder with images/ and masks/",
        description="Train the CRM refiner. Resumes from OUT/last.pt if present. "
        "Multi-GPU: torchrun --nproc_per_node N -m finecut train refine ...",
    )
    r.add_argument("--data", type=Path, default=None, help="folder with images/ and masks/")
    r.add_argument(
        "--mix",
        type=Path,
        default=None,
        metavar="YAML",
        help="training sources instead of --data: a YAML file with 'sources' (kind, path, weight, "
        "stems, exclude), trained at many scales with every coarse-mask family "
        "(e.g. configs/refine/mix.yaml)",
    )
    r.add_argument("--out", type=Path, default=Path("runs/refine"), help="run folder")
    r.add_argument(
        "--stems",
        type=_stems_arg,
        default=None,
        help="which files: '1-800', 'a,b,c' or '@list.txt' (default: all)",
    )
    r.add_argument("--iters", type=int, default=45_000)
    r.add_argument("--batch-size", type=int, default=12)
    r.add_argument("--crop", type=int, default=224)
    r.add_argument("--lr", type=float, default=2.25e-4)
    r.add_argument("--workers", type=int, default=2)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--device", default=None)
    r.add_argument("--threads", type=int, default=None)
    r.add_argument("--ckpt-every", type=int, default=250)
    r.add_argument("--no-pretrained", action="store_true", help="random encoder init (tests)")
    r.add_argument("--latent-channels", type=int, default=None)
    r.add_argument(
        "--init",
        default=None,
        metavar="WEIGHTS",
        help="start from trained weights (embedded name, .safetensors with manifest, or a .pt "
        "checkpoint) with a fresh optimizer and schedule, e.g. to fine-tune crm_lite0",
    )
    r.set_defaults(func=_cmd_train_refine)

    e = tsub.add_parser(
        "embedding",
        help="train the semantic embedding network (soft segmentation) with the L2 N-pair loss",
        description="Train the per-pixel embedding of semantic soft segmentation on label maps "
        "(CamVid layout) and/or binary masks (images/ + masks/). Resumes from OUT/last.pt.",
    )
    e.add_argument("--labels", type=Path, default=None, help="CamVid-layout folder (class ids)")
    e.add_argument("--masks", type=Path, default=None, help="folder with images/ and masks/")
    e.add_argument("--mask-stems", type=_stems_arg, default=None)
    e.add_argument(
        "--mix",
        type=Path,
        default=None,
        help="YAML with a 'sources' list of {kind: labels|masks, path, weight, stems, exclude, "
        "splits} and optional paste_prob, paste_size, paste_max (copy-paste of small objects) "
        "(configs/soft/mix.yaml); instead of --labels / --masks",
    )
    e.add_argument(
        "--init",
        default=None,
        metavar="WEIGHTS",
        help="start a new run from these weights (embedded name, .safetensors with manifest, "
        ".pt checkpoint) with a fresh optimiser and schedule",
    )
    e.add_argument("--out", type=Path, default=Path("runs/embedding"))
    e.add_argument("--iters", type=int, default=2000, help="length of the lr schedule")
    e.add_argument(
        "--stop-at", type=int, default=None, help="end this run at this step (resume later)"
    )
    e.add_argument("--batch-size", type=int, default=4)
    e.add_argument("--crop", type=int, default=256)
    e.add_argument("--lr", type=float, default=1e-3)
    e.add_argument("--pixels", type=int, default=250, help="P_pix, pixels per instance")
    e.add_argument("--workers", type=int, default=1)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--device", default=None)
    e.add_argument("--threads", type=int, default=None)
    e.add_argument("--ckpt-every", type=int, default=100)
    e.add_argument("--no-pretrained", action="store_true", help="random encoder init (tests)")
    e.set_defaults(func=_cmd_train_embedding)

    k = tsub.add_parser(
        "keep",
        help="train the refiner's keep model (which changed regions to trust) on training images",
        description="Refine coarse masks of every family made from the ground truth of a folder "
        "with images/ and masks/ (one scale and photo condition drawn per image), and fit the "
        "keep model (logistic, or gradient-boosted trees with --form trees) on the changed "
        "regions. Writes OUT.safetensors and OUT.json.",
    )
    k.add_argument("--data", type=Path, required=True, help="folder with images/ and masks/")
    k.add_argument("--exclude", type=Path, default=None, help="a file of stems to leave out")
    k.add_argument("--images", type=int, default=120)
    k.add_argument("--seed", type=int, default=0)
    k.add_argument("--threshold", type=float, default=0.5, help="keep a region at p >= this")
    k.add_argument("--l2", type=float, default=1e-2)
    k.add_argument(
        "--tile", type=float, default=0.0,
        help="cut changed regions into cells of this share of the long side (0: whole regions)",
    )  # fmt: skip
    k.add_argument(
        "--candidate", default="finecut",
        help="finecut or snap: whose changes to judge: the refiner's (the keep model) or "
        "snapping alone's (the model of the second opinion)",
    )  # fmt: skip
    k.add_argument(
        "--form", default="logistic",
        help="logistic (L2-regularised logistic regression) or trees (gradient-boosted trees; "
        "fitting them needs scikit-learn: pip install 'finecut[train]')",
    )  # fmt: skip
    k.add_argument("--weights", default=None, help="refiner weights (default: embedded)")
    k.add_argument("--cache", type=Path, default=None, help="folder caching CRM probabilities")
    k.add_argument("--out", type=Path, default=Path("runs/keep/refine_keep"))
    k.add_argument("--threads", type=int, default=None)
    k.set_defaults(func=_cmd_train_keep)

    from finecut.segment.commands import add_train_parser

    add_train_parser(tsub)


def _read_mix(path: Path, source_cls, options: tuple[str, ...] = ()):
    """``--mix`` YAML -> (tuple of ``source_cls``, {option: value}); unknown keys refused.

    ``source_cls`` is the dataclass of one entry of ``sources``; ``options`` are the other
    top-level keys allowed.
    """
    import dataclasses

    import yaml

    from finecut.errors import ConfigError

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        why = " ".join(str(exc).split())
        raise ConfigError(f"cannot read --mix {str(path)!r}: {why}") from None
    if not isinstance(data, dict) or not isinstance(data.get("sources"), list):
        raise ConfigError(f"--mix {str(path)!r} must be a mapping with a 'sources' list")
    unknown = set(data) - {"sources", *options}
    if unknown:
        raise ConfigError(f"--mix {str(path)!r}: unknown keys {sorted(unknown)}")
    names = {f.name for f in dataclasses.fields(source_cls)}
    sources = []
    for entry in data["sources"]:
        if not isinstance(entry, dict) or set(entry) - names:
            raise ConfigError(f"--mix {str(path)!r}: bad source {entry!r} (keys: {sorted(names)})")
        sources.append(source_cls(**entry))
    return tuple(sources), {k: data[k] for k in options if k in data}


def _cmd_train_refine(args) -> int:
    from dataclasses import replace

    from finecut.errors import ConfigError
    from finecut.models.crm import CRMConfig
    from finecut.train.refine import RefineTrainConfig, train_refine
    from finecut.train.refine_data import RefineSource

    if (args.data is None) == (args.mix is None):
        raise ConfigError("give either --data or --mix")
    mix_keys = ("epoch_size", "max_scale", "native_artefacts")
    sources, mix_opts = _read_mix(args.mix, RefineSource, mix_keys) if args.mix else ((), {})
    model = CRMConfig()
    if args.latent_channels:
        model = replace(model, latent_channels=args.latent_channels)
    cfg = RefineTrainConfig(
        data=str(args.data) if args.data else None,
        out=str(args.out),
        stems=tuple(args.stems) if args.stems else None,
        sources=sources,
        **mix_opts,
        model=model,
        iters=args.iters,
        batch_size=args.batch_size,
        crop=args.crop,
        lr=args.lr,
        workers=args.workers,
        seed=args.seed,
        device=args.device,
        ckpt_every=args.ckpt_every,
        pretrained=not args.no_pretrained,
        threads=args.threads,
        init=args.init,
    )
    last = train_refine(cfg, progress=sys.stderr.isatty())
    log.info("checkpoint: %s", last)
    return 0


def _cmd_train_embedding(args) -> int:
    from finecut.errors import ConfigError
    from finecut.train.embedding import EmbeddingTrainConfig, train_embedding
    from finecut.train.embedding_data import EmbeddingSource

    if args.mix is not None and (args.labels is not None or args.masks is not None):
        raise ConfigError("give either --mix or --labels / --masks, not both")
    if args.mix is None and args.labels is None and args.masks is None:
        raise ConfigError("give --labels and/or --masks, or --mix")
    sources, mix_opts = (
        _read_mix(args.mix, EmbeddingSource, ("paste_prob", "paste_size", "paste_max"))
        if args.mix
        else ((), {})
    )
    cfg = EmbeddingTrainConfig(
        **mix_opts,
        label_data=str(args.labels) if args.labels else None,
        mask_data=str(args.masks) if args.masks else None,
        mask_stems=tuple(args.mask_stems) if args.mask_stems else None,
        sources=sources, init=args.init, stop_at=args.stop_at,
        out=str(args.out), iters=args.iters, batch_size=args.batch_size, crop=args.crop,
        lr=args.lr, n_pixels=args.pixels, workers=args.workers, seed=args.seed,
        device=args.device, ckpt_every=args.ckpt_every, pretrained=not args.no_pretrained,
        threads=args.threads,
    )
    last = train_embedding(cfg, progress=sys.stderr.isatty())
    log.info("checkpoint: %s", last)
    return 0


def _cmd_train_keep(args) -> int:
    from finecut.errors import ConfigError
    from finecut.refine.api import Refiner
    from finecut.train.keep import (
        CANDIDATES,
        FORMS,
        KeepTrainConfig,
        keep_output,
        require_scikit_learn,
        train_keep,
    )

    if not 0 < args.threshold < 1:
        raise ConfigError(f"--threshold must be in (0, 1), not {args.threshold}")
    if args.images < 1:
        raise ConfigError(f"--images must be at least 1, not {args.images}")
    if not args.l2 >= 0:  # also NaN
        raise ConfigError(f"--l2 must be a number >= 0, not {args.l2}")
    if not 0 <= args.tile < 1:  # also NaN
        raise ConfigError(f"--tile must be in [0, 1), not {args.tile}")
    if args.exclude is not None and not args.exclude.is_file():
        raise ConfigError(f"--exclude {str(args.exclude)!r} is not a file")
    if args.candidate not in CANDIDATES:
        raise ConfigError(f"--candidate must be {' or '.join(CANDIDATES)}, not {args.candidate!r}")
    if args.form not in FORMS:
        raise ConfigError(f"--form must be {' or '.join(FORMS)}, not {args.form!r}")
    if args.form == "trees":
        require_scikit_learn()  # before an hour of gathering regions
    cfg = KeepTrainConfig(
        images=args.images, seed=args.seed, l2=args.l2, tile=args.tile,
        candidate=args.candidate, form=args.form,
    )  # fmt: skip
    # float32: the shipped keep models were fitted on float32 CRM outputs, and their recorded
    # commands must give the same files on any CPU
    refiner = Refiner("cpu", weights=args.weights, threads=args.threads, precision="fp32")
    command = "finecut " + " ".join(args.argv)
    try:
        _, info = train_keep(
            args.data, args.out, refiner, cfg, exclude=args.exclude, threshold=args.threshold,
            cache=args.cache, manifest={"command": command},
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    fit = info["fit"]
    log.info(
        "%d regions of %d cases: weighted accuracy %.3f (right share %.3f); wrote %s",
        fit["regions"], info["cases"], fit["weighted_accuracy"], fit["weighted_right_share"],
        keep_output(args.out, ".safetensors"),
    )
    return 0


# ------------------------------------------------------------------------------------------- eval
def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="measure a model against ground truth")
    esub = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    r = esub.add_parser(
        "refine",
        help="IoU and mBA of coarse masks and each refinement method",
        description="Evaluate refinement on a folder with images/ and masks/ "
        "(ground truth). Coarse inputs come from --coarse (a folder of masks, "
        "paired by stem) or are synthesised from the ground truth with a fixed seed.",
    )
    r.add_argument("--data", type=Path, required=True)
    r.add_argument("--coarse", type=Path, default=None, help="folder of coarse masks")
    r.add_argument("--stems", type=_stems_arg, default=None)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument(
        "--methods",
        default="finecut",
        help="comma list of: finecut, finecut-nosnap, finecut-full, guided, matting "
        "(default: finecut)",
    )
    r.add_argument(
        "--upscale",
        type=float,
        default=1.0,
        help="resize images (Lanczos) and masks by this factor first",
    )
    r.add_argument("--device", default=None)
    r.add_argument("--weights", default=None)
    r.add_argument("--threads", type=int, default=None)
    r.set_defaults(func=_cmd_eval_refine)

    from finecut.segment.commands import add_eval_parser

    add_eval_parser(esub)


def _cmd_eval_refine(args) -> int:
    from finecut.refine.evaluate import evaluate_refine, format_table

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    rows = evaluate_refine(
        args.data,
        methods=methods,
        coarse_dir=args.coarse,
        stems=args.stems,
        seed=args.seed,
        upscale=args.upscale,
        device=args.device,
        weights=args.weights,
        threads=args.threads,
        progress=sys.stderr.isatty(),
    )
    print(format_table(rows))
    return 0


# ------------------------------------------------------------------------------------------- demo
def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="refine a deliberately coarse mask of a sample photo")
    p.add_argument("-o", "--output", type=Path, default=Path("demo_out"))
    p.add_argument("--device", default=None)
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args) -> int:
    from finecut.demo import run_demo

    paths = run_demo(args.output, device=args.device)
    print("finecut demo: refined a deliberately coarse mask of scikit-image's 'coffee' photo")
    for name, path in paths.items():
        print(f"  {name:<8} {path}")
    print(f"look at {paths['compare']} (coarse input, finecut's refinement, its soft alpha)")
    return 0


# ----------------------------------------------------------------------------------------- export
def _add_export(sub) -> None:
    p = sub.add_parser("export", help="export a network for another runtime")
    esub = p.add_subparsers(dest="what", metavar="FORMAT", required=True)
    o = esub.add_parser(
        "onnx",
        help="the refiner's encoder and implicit head as ONNX (for finecut refine --onnx)",
        description="Write DIR/encoder.onnx (image + coarse mask -> per-cell features, any size "
        "multiple of 32), DIR/head.onnx (the implicit head at any number of query points) and "
        "DIR/manifest.json (opset, input and output names, sha256 of each file, the CRM config, "
        "the finecut version, the source weights' sha256), from the BatchNorm-folded refiner, "
        "then check them against torch. Needs: pip install 'finecut[onnx]'.",
    )
    o.add_argument("-o", "--output", type=Path, required=True, metavar="DIR", help="folder")
    o.add_argument("--weights", default=None, help="weights file (default: the embedded model)")
    o.add_argument("--opset", type=int, default=None, help="ONNX opset (default 18)")
    o.add_argument("--overwrite", action="store_true", help="replace an earlier export in DIR")
    o.set_defaults(func=_cmd_export_onnx)


def _cmd_export_onnx(args) -> int:
    from finecut.export.onnx import DEFAULT_OPSET, export_onnx

    manifest = export_onnx(
        args.output,
        weights=args.weights,
        opset=args.opset or DEFAULT_OPSET,
        overwrite=args.overwrite,
    )
    print(f"finecut export onnx: wrote {args.output} (manifest {manifest.name})")
    return 0


# ------------------------------------------------------------------------------------------ serve
def _add_serve(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="a local web page and HTTP API on the embedded models",
        description="Serve a page (open a photo, brush or box the object, get the cut-out; soft "
        "layers) and an HTTP API (/api/refine, /api/cutout, /api/grabcut, /api/soft, /healthz; "
        "description at /openapi.json). The refiner is loaded at start, the soft-segmentation "
        "network on the first /api/soft request. Ctrl-C stops. Needs: pip install "
        "'finecut[serve]'.",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only)",
    )
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0: any free)")
    p.add_argument(
        "--max-upload-mb", type=float, default=50.0, help="largest request body in MB (default 50)"
    )
    p.add_argument(
        "--max-pixels",
        type=float,
        default=40.0,
        help="largest image in megapixels, checked from its header (default 40)",
    )
    p.add_argument(
        "--queue",
        type=int,
        default=8,
        help="requests that may wait for a worker; more get 503 (default 8)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="requests computed at once (default 1: one uses every CPU core)",
    )
    p.add_argument(
        "--soft-max-side",
        type=int,
        default=640,
        help="soft layers are solved at most at this longer side (default 640)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available)")
    p.add_argument("--weights", default=None, help="refiner weights (default: the embedded model)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.set_defaults(func=_cmd_serve)


def _cmd_serve(args) -> int:
    from finecut.errors import ConfigError
    from finecut.serve import ServeConfig, missing_requirements

    missing = missing_requirements()
    if missing:
        raise ConfigError(f"finecut serve needs {', '.join(missing)}: pip install 'finecut[serve]'")
    config = ServeConfig(
        host=args.host,
        port=args.port,
        max_upload_mb=args.max_upload_mb,
        max_pixels=int(args.max_pixels * 1_000_000),
        queue=args.queue,
        workers=args.workers,
        soft_max_side=args.soft_max_side,
        device=args.device,
        weights=args.weights,
        threads=args.threads,
    )
    from finecut.serve import run

    try:
        run(config)
    except KeyboardInterrupt:
        pass
    print("finecut serve: stopped", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="finecut", description="Segmentation that gets the details right."
    )
    parser.add_argument("--version", action="version", version=f"finecut {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_refine(sub)
    _add_refine_coco(sub)
    _add_refine_dataset(sub)
    _add_soft(sub)
    _add_train(sub)
    _add_eval(sub)
    _add_demo(sub)
    _add_export(sub)
    _add_serve(sub)
    from finecut.segment.commands import add_top_parsers

    add_top_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded by training commands
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s: %(message)s"
    )
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except FinecutError as exc:
        print(f"finecut: error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        print(f"finecut: error: {exc}", file=sys.stderr)
        return 2
    except MemoryError:
        print(
            "finecut: error: out of memory (try a smaller image or --device cpu)", file=sys.stderr
        )
        return 2
    except KeyboardInterrupt:
        print("finecut: interrupted", file=sys.stderr)
        return 130
