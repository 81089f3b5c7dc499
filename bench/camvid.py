"""CamVid ablation: encoder downsampling, SparseMask-pruned decoder and SPN head (issue 5).

    .venv/bin/python bench/camvid.py                              # every row, defaults
    .venv/bin/python bench/camvid.py --device cuda --iters 10000 --batch-size 8
    .venv/bin/python bench/camvid.py --rows max,poly --threads 1  # a subset

Rows (same schedule ``--iters / --batch-size / --crop`` and ``--seed`` for all):

* ``strided``: the encoder's stride-2 convolutions + fully dense decoder (FDN);
* ``max`` / ``avg`` / ``poly``: stride-1 convolutions + 2x2 max, average or polynomial pooling
  + FDN (``configs/segment/camvid_*_fdn.yaml``);
* ``pruned``: polynomial pooling + FDN trained in SparseMask's search mode
  (``configs/segment/camvid_poly_search.yaml``), pruned (``finecut prune``), and the pruned
  decoder retrained with the task loss only (the same schedule again);
* ``pruned_spn``: the same pruned architecture with the SPN head, retrained the same way.

Columns: CamVid test mIoU (every test image whole, void ignored), decoder parameters (SPN head
separately), CPU images/s at 360x480 (batch 1, eval mode, ``--threads`` torch threads, median of
``--speed-runs`` timed forward passes after ``--warmup`` untimed ones; measured on the CPU even
when training on CUDA), training iterations and wall seconds of ``train_segment`` (the final
validation pass included; for the pruned rows the search and the retraining).

Every training run has its own folder under ``--out`` and resumes from its ``last.pt`` when
interrupted. A row whose final checkpoint is at ``--iters`` and whose ``results.json`` matches the
requested settings is not run again, so rerunning the same command finishes an interrupted
ablation. A run folder trained with another schedule is refused (use another ``--out``).
The report (machine, command line, table) is printed and written to ``<out>/table.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "segment"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "camvid"
DEFAULT_OUT = ROOT / "runs" / "camvid_ablation"
SPEED_SIZE = (360, 480)
RESULTS = "results.json"
TIMES = "bench_time.json"
# Settings of a run that may change between sessions without changing what is trained.
RUNTIME_KEYS = frozenset(
    {"data", "out", "device", "threads", "workers", "ckpt_every", "log_every", "tensorboard"}
)
log = logging.getLogger("camvid")


@dataclass(frozen=True)
class Row:
    name: str
    label: str
    folder: str
    config: str | None = None  # configs/segment file of an FDN row


ROWS: tuple[Row, ...] = (
    Row("strided", "strided convolutions + FDN", "strided_fdn", "camvid_strided_fdn.yaml"),
    Row("max", "max pooling + FDN", "max_fdn", "camvid_max_fdn.yaml"),
    Row("avg", "average pooling + FDN", "avg_fdn", "camvid_avg_fdn.yaml"),
    Row("poly", "polynomial pooling + FDN", "poly_fdn", "camvid_poly_fdn.yaml"),
    Row("pruned", "polynomial pooling + SparseMask-pruned decoder", "poly_pruned"),
    Row("pruned_spn", "polynomial pooling + pruned decoder + SPN head", "poly_pruned_spn"),
)
ROW_NAMES = tuple(r.name for r in ROWS)
SEARCH_FOLDER = "poly_search"
SEARCH_CONFIG = "camvid_poly_search.yaml"


# --------------------------------------------------------------------------------------------------
# Arguments and machine
# --------------------------------------------------------------------------------------------------


def _rows(values: list[str]) -> list[Row]:
    names = {n.strip() for v in values for n in v.split(",") if n.strip()}
    unknown = sorted(names - set(ROW_NAMES))
    if unknown:
        raise SystemExit(f"unknown rows: {', '.join(unknown)} (choose from {', '.join(ROW_NAMES)})")
    return [r for r in ROWS if r.name in names]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    import torch

    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CamVid-layout folder")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="one run folder per row in here")
    p.add_argument(
        "--rows", nargs="+", default=[",".join(ROW_NAMES)],
        help=f"rows to run, comma- or space-separated: {', '.join(ROW_NAMES)} (default: all)",
    )  # fmt: skip
    p.add_argument("--iters", type=int, default=10_000, help="optimiser steps of every run")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--crop", type=int, nargs=2, default=(360, 480), metavar=("H", "W"), help="training crop"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="training and test evaluation (cpu, cuda)")
    p.add_argument(
        "--pretrained", action=argparse.BooleanOptionalAction, default=True,
        help="ImageNet encoder weights (--no-pretrained: random init, for smoke tests)",
    )  # fmt: skip
    p.add_argument(
        "--threads", type=int, default=torch.get_num_threads(),
        help="torch CPU threads of the images/s measurement (default: torch's, %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--train-threads",
        type=int,
        default=None,
        help="torch threads of training (default: torch's)",
    )
    p.add_argument("--workers", type=int, default=None, help="data loader workers (config: 2)")
    p.add_argument("--ckpt-every", type=int, default=None, help="checkpoint period (config: 500)")
    p.add_argument(
        "--sparse-weight", type=float, default=None,
        help="lambda of SparseMask's sparsity loss in the search run (default: the config's, "
        "the paper's 0.01; a short schedule needs more for the weights to reach 0 or 2)",
    )  # fmt: skip
    p.add_argument(
        "--loss", choices=("ce", "mfb", "ohem"), default=None,
        help="task loss of every run (default: the configs', plain cross-entropy; mfb: weighted "
        "by median frequency balancing, as the shipped segmenter_camvid was trained)",
    )  # fmt: skip
    p.add_argument("--warmup", type=int, default=2, help="untimed forward passes before timing")
    p.add_argument("--speed-runs", type=int, default=5, help="timed forward passes (median)")
    p.add_argument(
        "--speed-only", action="store_true",
        help="no training or evaluation: re-time the finished rows' CPU images/s in one process, "
        "one forward pass of each row in turn (so load on the machine hits every row alike), "
        "update their results.json and rewrite the table",
    )  # fmt: skip
    args = p.parse_args(argv)
    args.rows = _rows(args.rows)
    if not args.rows:
        p.error("--rows names no row")
    for name in ("iters", "batch_size", "threads", "speed_runs"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    args.crop = tuple(args.crop)
    from finecut.devices import resolve_device
    from finecut.errors import FinecutError

    try:
        resolve_device(args.device)
    except FinecutError as exc:
        p.error(str(exc))
    return args


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_lines(args: argparse.Namespace) -> list[str]:
    import torch

    device = args.device
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        device += f" ({torch.cuda.get_device_name(torch.device(device))})"
    env = [
        f"{k}={os.environ[k]}"
        for k in ("OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES")
        if k in os.environ
    ]
    command = shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    return [
        f"- machine: {platform.platform()}, {_cpu_model()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, torch {torch.__version__}",
        f"- device: {device}",
        f"- command: `{' '.join([*env, command])}` (in {Path.cwd()})",
    ]


# --------------------------------------------------------------------------------------------------
# Training runs
# --------------------------------------------------------------------------------------------------


def _overrides(args: argparse.Namespace, folder: str) -> dict:
    return {
        "data": str(args.data),
        "out": str(args.out / folder),
        "iters": args.iters,
        "batch_size": args.batch_size,
        "crop": list(args.crop),
        "seed": args.seed,
        "device": args.device,
        "pretrained": args.pretrained,
        "threads": args.train_threads,
        "workers": args.workers,
        "ckpt_every": args.ckpt_every,
        "loss": args.loss,
    }


def _config_file_run(args: argparse.Namespace, config: str, folder: str):
    from finecut.train.segment import load_train_config

    return load_train_config(CONFIGS / config, **_overrides(args, folder))


def _with_runtime(cfg, args: argparse.Namespace, folder: str):
    """``cfg`` (e.g. written by ``finecut prune``) with this invocation's runtime settings."""
    values = {k: v for k, v in _overrides(args, folder).items() if v is not None}
    return replace(cfg, **{k: v for k, v in values.items() if k in RUNTIME_KEYS})


def _trained_state(cfg) -> dict | None:
    """The run's ``last.pt`` (None if there is none); refuse one trained with another schedule."""
    from finecut.train.common import load_checkpoint

    last = Path(cfg.out) / "last.pt"
    if not last.exists():
        return None
    state = load_checkpoint(last)
    want = {k: v for k, v in cfg.to_dict().items() if k not in RUNTIME_KEYS}
    have = {k: v for k, v in state.get("config", {}).items() if k not in RUNTIME_KEYS}
    diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
    if diff:
        raise SystemExit(
            f"{last} was trained with other settings ({', '.join(diff)}); rerun with the same "
            "ones, or use another --out"
        )
    return state


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def train(cfg) -> dict:
    """Train (or resume, or do nothing if finished) one run; return its iterations and seconds.

    The seconds add up every session of ``train_segment`` on this run (``OUT/bench_time.json``),
    an interrupted one included; they are None for a run trained outside this script.
    """
    from finecut.train.segment import train_segment

    out = Path(cfg.out)
    state = _trained_state(cfg)
    step = int(state["step"]) if state else 0
    times = _read_json(out / TIMES) or {"seconds": 0.0 if step == 0 else None, "sessions": []}
    if step < cfg.iters:
        log.info("training %s: step %d -> %d", out, step, cfg.iters)
        start = time.perf_counter()
        try:
            train_segment(cfg, progress=sys.stderr.isatty())
        finally:
            seconds = time.perf_counter() - start
            state = _trained_state(cfg)
            end = int(state["step"]) if state else 0
            times["sessions"].append({"from_step": step, "to_step": end, "seconds": seconds})
            if times["seconds"] is not None:
                times["seconds"] += seconds
            _write_json(out / TIMES, times)
        step = end
    if step != cfg.iters:
        raise SystemExit(f"{out}/last.pt is at step {step}, not {cfg.iters}")
    return {"iters": step, "seconds": times["seconds"]}


def pruned_config(args: argparse.Namespace, cache: dict) -> tuple:
    """Run the SparseMask search (resuming), prune it; the retraining config and prune summary."""
    if "pruned" in cache:
        return cache["pruned"]
    from finecut.models.segmenter import Segmenter
    from finecut.segment.prune import prune_checkpoint

    search = _config_file_run(args, SEARCH_CONFIG, SEARCH_FOLDER)
    if args.sparse_weight is not None:
        search = replace(search, sparse_weight=args.sparse_weight)
    search_run = train(search)
    cfg, result = prune_checkpoint(
        Path(search.out) / "last.pt",
        args.out / "poly_pruned.yaml",
        out_dir=str(args.out / "poly_pruned"),
    )
    cfg = _with_runtime(cfg, args, "poly_pruned")
    full = Segmenter(search.model, pretrained=False)
    graph = full.decoder.graph
    summary = {
        "search_iters": search_run["iters"],
        "search_seconds": search_run["seconds"],
        "fdn_stages": len(graph.stages),
        "fdn_connections": sum(len(s.inputs) for s in graph.stages),
        "stages": len(result.graph.stages),
        "connections": sum(len(s.inputs) for s in result.graph.stages),
        "removed": list(result.removed),
    }
    log.info(
        "pruned decoder: %d of %d stages, %d of %d connections",
        summary["stages"], summary["fdn_stages"], summary["connections"],
        summary["fdn_connections"],
    )  # fmt: skip
    cache["pruned"] = cfg, summary
    return cache["pruned"]


def row_config(row: Row, args: argparse.Namespace, cache: dict) -> tuple:
    """The training config of a row and, for the pruned rows, the search / prune summary."""
    if row.config is not None:
        return _config_file_run(args, row.config, row.folder), None
    cfg, summary = pruned_config(args, cache)
    if row.name == "pruned_spn":
        model = replace(cfg.model, spn_head=True)
        cfg = replace(cfg, model=model, out=str(args.out / row.folder))
    return cfg, summary


# --------------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------------


def _images_per_s(models: list, args: argparse.Namespace) -> list[float]:
    """Batch-1 eval-mode forward passes at 360x480 on the CPU, one pass of each model in turn
    (so the machine's load hits every model alike): 1 / median seconds of each."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    models = [m.cpu().eval() for m in models]
    x = torch.rand(1, 3, *SPEED_SIZE, generator=torch.Generator().manual_seed(0))
    times: list[list[float]] = [[] for _ in models]
    try:
        with torch.inference_mode():
            for i in range(args.warmup + args.speed_runs):
                for model, model_times in zip(models, times, strict=True):
                    start = time.perf_counter()
                    model(x)
                    if i >= args.warmup:
                        model_times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return [1.0 / statistics.median(t) for t in times]


def cpu_images_per_s(model, args: argparse.Namespace) -> float:
    """Batch-1 eval-mode forward passes at 360x480 on the CPU: 1 / median seconds."""
    return _images_per_s([model], args)[0]


def retime_rows(rows: list[Row], args: argparse.Namespace) -> list[dict]:
    """``--speed-only``: CPU images/s of finished rows, timed round-robin in this process."""
    from finecut.segment.predict import load_segmenter

    results, models = [], []
    for row in rows:
        done = finished(row, args)
        if done is None:
            raise SystemExit(f"{row.name}: no finished results in {args.out / row.folder}")
        results.append(done)
        models.append(load_segmenter(Path(done["checkpoint"]), device="cpu"))
    speeds = _images_per_s(models, args)
    for row, done, speed in zip(rows, results, speeds, strict=True):
        done["cpu_images_per_s"] = speed
        done["speed"] = "round-robin over the rows in one process (--speed-only)"
        _write_json(args.out / row.folder / RESULTS, done)
    return results


def _val_miou(out: Path) -> float | None:
    value = None
    try:
        for line in (out / "log.jsonl").read_text().splitlines():
            if line.strip():
                value = json.loads(line).get("val_miou", value)
    except (OSError, ValueError):
        return None
    return value


def measure(row: Row, cfg, args: argparse.Namespace, runs: list[dict], summary: dict | None):
    """Evaluate a trained row on the test split and time it; the row's results."""
    from finecut.segment.evaluate import evaluate_model
    from finecut.segment.predict import load_segmenter

    out = Path(cfg.out)
    model = load_segmenter(out / "last.pt", device=args.device)
    test = evaluate_model(model, args.data, "test", device=args.device)
    spn = 0 if model.spn is None else sum(p.numel() for p in model.spn.parameters())
    return {
        "row": row.name,
        "label": row.label,
        "settings": _settings(args, row),
        "checkpoint": str(out / "last.pt"),
        "test_miou": test.miou,
        "test_images": test.images,
        "per_class": test.to_dict()["per_class"],
        "val_miou": _val_miou(out),
        "decoder_params": model.decoder_num_parameters(),
        "spn_params": spn,
        "params": sum(p.numel() for p in model.parameters()),
        "cpu_images_per_s": cpu_images_per_s(model, args),
        "train_iters": [r["iters"] for r in runs],
        "train_seconds": [r["seconds"] for r in runs],
        "prune": summary,
    }


def _settings(args: argparse.Namespace, row: Row) -> dict:
    """What a row's results depend on (a results.json with other values is measured again)."""
    return {
        "iters": args.iters,
        "batch_size": args.batch_size,
        "crop": list(args.crop),
        "seed": args.seed,
        "pretrained": args.pretrained,
        "threads": args.threads,
        "warmup": args.warmup,
        "speed_runs": args.speed_runs,
        **({"sparse_weight": args.sparse_weight} if row.config is None else {}),
        # only when given, so that the results of runs made before the option still count
        **({"loss": args.loss} if args.loss is not None else {}),
    }


def finished(row: Row, args: argparse.Namespace) -> dict | None:
    """The saved results of a row that needs nothing more, or None."""
    from finecut.train.common import load_checkpoint

    out = args.out / row.folder
    results = _read_json(out / RESULTS)
    if not results or results.get("settings") != _settings(args, row):
        return None
    if not (out / "last.pt").exists():
        return None
    state = load_checkpoint(out / "last.pt")
    return results if int(state.get("step", -1)) == args.iters else None


def run_row(row: Row, args: argparse.Namespace, cache: dict) -> dict:
    done = finished(row, args)
    if done is not None:
        log.info("%s: finished, results from %s", row.name, args.out / row.folder / RESULTS)
        return done
    cfg, summary = row_config(row, args, cache)
    runs = [train(cfg)]
    if summary is not None:
        runs.insert(0, {"iters": summary["search_iters"], "seconds": summary["search_seconds"]})
    results = measure(row, cfg, args, runs, summary)
    _write_json(Path(cfg.out) / RESULTS, results)
    log.info("%s: test mIoU %.2f%%", row.name, 100 * results["test_miou"])
    return results


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def _seconds(values: list) -> str:
    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.0f}" if v >= 100 else f"{v:.1f}"

    text = " + ".join(fmt(v) for v in values)
    if len(values) > 1 and None not in values:
        text += f" = {fmt(sum(values))}"
    return text


def table(results: list[dict]) -> list[str]:
    lines = [
        "| row | test mIoU % | decoder params | SPN head params | CPU images/s (360x480) "
        "| training iters | training s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        iters = " + ".join(str(i) for i in r["train_iters"])
        spn = f"{r['spn_params']:,}" if r["spn_params"] else "-"
        lines.append(
            f"| {r['label']} | {100 * r['test_miou']:.2f} | {r['decoder_params']:,} | {spn} "
            f"| {r['cpu_images_per_s']:.2f} | {iters} | {_seconds(r['train_seconds'])} |"
        )
    return lines


def notes(results: list[dict], args: argparse.Namespace, train_images: int) -> list[str]:
    by = {r["row"]: r for r in results}
    epochs = args.iters * args.batch_size / train_images
    lines = [
        f"- schedule of every run: {args.iters} iterations x batch {args.batch_size}, crops "
        f"{args.crop[0]}x{args.crop[1]}, seed {args.seed} = {epochs:.1f} epochs of the "
        f"{train_images} training images; encoder "
        f"{'ImageNet weights' if args.pretrained else 'randomly initialised'}; loss "
        f"{args.loss or 'ce, the configs default'}",
        f"- images/s: CPU, batch 1, eval mode, {args.threads} torch thread(s), median of "
        f"{args.speed_runs} after {args.warmup} warm-up pass(es); training seconds: wall time "
        "of train_segment (final val pass included)",
    ]
    prune = next((by[n]["prune"] for n in ("pruned", "pruned_spn") if n in by), None)
    if prune:
        weight = "the config's" if args.sparse_weight is None else f"{args.sparse_weight:g}"
        lines.append(
            f"- pruned rows: SparseMask search ({prune['search_iters']} iterations, sparsity "
            f"weight {weight}) then "
            f"retraining; the pruned decoder keeps {prune['stages']} of {prune['fdn_stages']} "
            f"stages and {prune['connections']} of {prune['fdn_connections']} connections"
        )
    best = max(results, key=lambda r: r["test_miou"])
    lines.append(f"- best row: {best['label']}, {100 * best['test_miou']:.2f}% (aim: >= 65%)")
    if "poly" in by and "max" in by:
        gap = 100 * (by["poly"]["test_miou"] - by["max"]["test_miou"])
        lines.append(f"- polynomial - max pooling: {gap:+.2f} mIoU points (aim: > 0)")
    if "poly" in by and "pruned" in by:
        gap = 100 * (by["pruned"]["test_miou"] - by["poly"]["test_miou"])
        share = by["pruned"]["decoder_params"] / by["poly"]["decoder_params"]
        lines.append(
            f"- pruned - full FDN: {gap:+.2f} mIoU points (aim: >= -0.5) with {share:.1%} of its "
            "decoder parameters (aim: < 33.3%)"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    from finecut.errors import FinecutError
    from finecut.train.segment_data import segment_items

    header = ["# CamVid ablation", "", *machine_lines(args), ""]
    print("\n".join(header), flush=True)
    try:
        train_images = len(segment_items(args.data, "train"))
        segment_items(args.data, "test")  # fail now, not after training
        cache: dict = {}
        if args.speed_only:
            results = retime_rows(args.rows, args)
        else:
            results = [run_row(row, args, cache) for row in args.rows]
    except FinecutError as exc:  # bad data folder, unreadable checkpoint, nothing left to prune
        raise SystemExit(f"error: {exc}") from None
    report = [*header, *table(results), "", *notes(results, args, train_images)]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text("\n".join(report) + "\n")
    print("\n".join(report[len(header) :]))
    print(f"\n(written to {args.out / 'table.md'})")


if __name__ == "__main__":
    main()
