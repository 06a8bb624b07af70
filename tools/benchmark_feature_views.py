"""Rotation augmentation in training, by rotating the images or the features: cost and value, measured side by side.

    python tools/benchmark_feature_views.py [--out work_dirs/feature_views] [--data DIR] [--settings ...]
                                            [--seeds 0 1] [--epochs E | --budget-min M] [--test-images N]
                                            [--json OUT] [--force]
    python tools/benchmark_feature_views.py --real ../shared/data/dota_real (--budget-min M | --iters N)
                                            [--settings ...] [--seeds 0 1] [--out DIR] [--json OUT]

Trains the demo detector (``configs/demo/...``: Rotated RetinaNet, EquivariantResNet-18 C4 + EquivariantFPN, from
scratch, CPU) on the demo's synthetic DOTA set (``DIR/train``, ``DIR/test``; default the demo's data, generated
as ``make demo`` does when missing) once per setting and seed:

* ``none``: no rotation augmentation;
* ``image``: mmrotate's ``RandomChoiceRotate`` (90°, 180°, 270° with probability 3/4 together: each of the four
  quarter turns of a scene equally likely), one view per image and step;
* ``k1``, ``k2``, ``k4``: :class:`rotplugin.engine.FeatureRotationViewsHook` with K = 1, 2, 4 of the angles
  0/90/180/270 per step, from one backbone pass.

Every setting keeps the demo's horizontal and vertical flips and drops its ``diagonal`` flip (a 180° rotation), so
that rotations come from the setting alone. Training length: ``--epochs`` (the same number of passes over the data
for all), or ``--budget-min`` (equal wall clock, exactly: each run trains until ``--budget-min`` minutes have passed
since its first iteration, the learning rate following the demo's schedule as a function of the elapsed time
(:class:`WallClockSchedule`: linear warm-up from 0.1x over the first 100 iterations, cosine to 0.05x at the
budget), so that every setting gets the whole schedule in the same time, however fast its iterations are; the
number of iterations is what the budget bought and varies a little with the machine's speed). Iteration-count
budgets from short probes were tried first and missed: a 10-iteration probe put K = 4 at 1.62 s/iteration against
0.91 over a whole run, a 40-iteration probe put no rotation at 0.47 against 0.60. ``--probe-only``
measures only the cost: probes' s/iteration and the cost per view, no training runs.

``--real DIR`` (a DOTA folder with P0003, P0004, P0005, P0706, as ``tools/benchmark_real.py --data-dir``): the
same settings on the real-image training of :mod:`rotplugin.apis.real_benchmark` instead, model (a) (EquivariantResNet-18 C4 +
EquivariantFPN, batch 4 of 256² patches of P0003, P0004 and the top of P0706, AdamW), its data prepared below
``OUT/data`` by :func:`~rotplugin.apis.real_benchmark.prepare_data`, scored on its held-out regions (P0005, the
bottom of P0706) by :func:`~rotplugin.apis.real_benchmark.evaluate_views` (no TTA, and feature TTA 4 × 90° merged
by NMS); ``--test-images`` does not apply. That training's own augmentation, ``RandomRotate`` by any angle, is
replaced by the setting's (and its diagonal flip dropped, as above). Its length: ``--budget-min`` (equal wall
clock, as above; default out ``work_dirs/feature_views_real``) or ``--iters`` (equal optimizer steps, with that
training's own warm-up and cosine by iteration: what the views add per step, whatever they cost; default out
``work_dirs/feature_views_real_iters``).

Per run: ``sec_per_iter`` (the training's wall time / iterations, data loading included), ``epochs``, ``train_s``, mAP (DOTA, IoU 0.5) without TTA and with feature-rotation TTA (4 × 90°) on the first
``--test-images`` test scenes (``rotplugin.apis.benchmark.run_benchmark``). ``summary``: per setting the mean and
spread (max − min) over the seeds, and the cost per view against image rotation, ``(s/iter(kK) / K) /
s/iter(image)`` (issue 18's goal: K = 4 at most 0.6 while reaching image rotation's mAP). Resumable: each run's
weights and entry are kept (``--force`` redoes them).
"""
from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import torch
from mmengine.hooks import Hook

from rotplugin.apis.demo import DEMO_CONFIG, DEMO_WORK_DIR, DemoLayout, demo_config
from rotplugin.io import ResumableResults, write_atomic

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ("none", "image", "k1", "k2", "k4")
UNBOUNDED = 10 ** 9   # the iterations of a wall-clock run: it stops at its budget
ANGLES = [0, 90, 180, 270]


ROTATIONS = ("RandomRotate", "RandomChoiceRotate", "Rotate")   # mmrotate's rotation transforms


def apply_setting(cfg, setting: str, seed: int):
    """Give the training config ``cfg`` ``setting``'s rotation augmentation, in place: every rotation transform of
    its training pipeline removed, its flips horizontal and vertical only (p 0.5: a diagonal flip is a 180°
    rotation), then for ``image`` ``RandomChoiceRotate`` by 90°/180°/270° (p 3/4) after ``ConvertBoxType``, for
    ``kK`` a :class:`rotplugin.engine.FeatureRotationViewsHook` of K views of 0/90/180/270° seeded by ``seed``."""
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}: choose from {', '.join(SETTINGS)}")
    pipeline = []
    for step in cfg.train_dataloader.dataset.pipeline:
        if step["type"] in ROTATIONS:
            continue
        if step["type"] == "mmdet.RandomFlip":
            step = dict(type="mmdet.RandomFlip", prob=0.5, direction=["horizontal", "vertical"])
        pipeline.append(step)
        if step["type"] == "ConvertBoxType" and setting == "image":
            pipeline.append(dict(type="RandomChoiceRotate", angles=[90, 180, 270], prob=0.75,
                                 rotate_type="Rotate"))
    cfg.train_dataloader.dataset.pipeline = pipeline
    if cfg.get("train_pipeline") is not None:
        cfg.train_pipeline = pipeline
    hooks = [h for h in cfg.get("custom_hooks", []) if h.get("type") != "FeatureRotationViewsHook"]
    if setting.startswith("k"):
        hooks.append(dict(type="FeatureRotationViewsHook", angles=ANGLES, views=int(setting[1:]), seed=seed))
    cfg.custom_hooks = hooks
    cfg.randomness = dict(seed=seed)
    return cfg


def _check_iters(iters) -> None:
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters must be a positive integer, got {iters}")


def setting_config(setting: str, data: Path, out: Path, seed: int, epochs: int = 12, size: int = 256,
                   iters: int | None = None):
    """The demo config trained with ``setting``'s rotation augmentation for ``epochs``, or, given ``iters``, for that
    many iterations (mmengine's ``IterBasedTrainLoop``, no LR schedule: what the probes and, with
    :class:`WallClockSchedule`, the budget runs use)."""
    cfg = demo_config(ROOT / DEMO_CONFIG, out, size, None if iters is not None else epochs, data=data)
    if iters is not None:
        _check_iters(iters)
        cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=iters, val_interval=10 ** 6)
        cfg.param_scheduler = []
        cfg.log_processor = dict(by_epoch=False)   # the log counts iterations (a budget run's ETA is meaningless)
    apply_setting(cfg, setting, seed)
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    cfg.train_cfg.val_interval = 10 ** 6
    cfg.default_hooks.logger.interval = 50
    cfg.default_hooks.checkpoint = dict(type="CheckpointHook", interval=-1, save_last=False)
    cfg.work_dir = str(out / f"{setting}_seed{seed}")
    return cfg


def real_setting_config(setting: str, data: Path, out: Path, seed: int, iters: int, scheduled: bool = False):
    """:func:`rotplugin.apis.real_benchmark.build_config`'s training of model (a) on the prepared real data
    ``data`` (``data/train_patches``) with ``setting``'s rotation augmentation instead of its own, for ``iters``
    iterations, with that training's warm-up and cosine by iteration if ``scheduled``, else with no LR schedule
    (a budget run's is :class:`WallClockSchedule`'s, of the same shape)."""
    from rotplugin.apis.real_benchmark import MODEL_SPECS, RealBenchmarkSettings, build_config

    _check_iters(iters)
    cfg = build_config(str(ROOT / DEMO_CONFIG), MODEL_SPECS["a"], seed, iters, RealBenchmarkSettings.batch_size,
                       Path(data) / "train_patches", out / f"{setting}_seed{seed}")   # that benchmark's batch
    if not scheduled:
        cfg.param_scheduler = []
    return apply_setting(cfg, setting, seed)


class WallClockSchedule(Hook):
    """Train for ``seconds`` of wall clock with the demo's learning-rate schedule laid over that time: the rate is
    ``base x warm-up x cosine``, warm-up linear from ``warmup_ratio`` to 1 over the first ``warmup_iters``
    iterations (as the demo's ``LinearLR``), cosine from 1 to ``eta_min_ratio`` over the elapsed fraction of
    ``seconds`` (the demo's ``CosineAnnealingLR``, by time instead of by epoch). Training stops at the end of the
    first iteration past ``seconds``; the clock starts at ``before_train``."""
    priority = "HIGH"   # before the loggers read the rate

    def __init__(self, seconds: float, warmup_iters: int = 100, warmup_ratio: float = 0.1,
                 eta_min_ratio: float = 0.05):
        if not seconds > 0:
            raise ValueError(f"seconds must be positive, got {seconds}")
        self.seconds, self.warmup_iters = float(seconds), warmup_iters
        self.warmup_ratio, self.eta_min_ratio = warmup_ratio, eta_min_ratio

    def factor(self, iteration: int, elapsed: float) -> float:
        frac = min(1.0, elapsed / self.seconds)
        cosine = self.eta_min_ratio + (1 - self.eta_min_ratio) * 0.5 * (1 + math.cos(math.pi * frac))
        warm = min(1.0, self.warmup_ratio + (1 - self.warmup_ratio) * iteration / self.warmup_iters)
        return warm * cosine

    def before_train(self, runner):
        self.t0 = time.perf_counter()
        self.base = [g["lr"] for g in runner.optim_wrapper.param_groups]

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        f = self.factor(runner.iter, time.perf_counter() - self.t0)
        for group, base in zip(runner.optim_wrapper.param_groups, self.base):
            group["lr"] = base * f

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if time.perf_counter() - self.t0 >= self.seconds:
            runner.train_loop.stop_training = True


def probe(setting: str, data: Path, out: Path, iters: int = 40, warmup: int = 5, real: bool = False) -> float:
    """Seconds per training iteration of ``setting`` (on the real-image training if ``real``): the mean wall time
    between the ends of consecutive iterations (data loading included, as in a run's ``sec_per_iter``) over
    ``iters`` iterations after ``warmup`` untimed."""
    from mmengine.runner import Runner

    make = real_setting_config if real else setting_config
    cfg = make(setting, data, out / "probe", 0, iters=warmup + iters)
    runner = Runner.from_cfg(cfg)
    ends = []

    class IterEnds(Hook):
        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            ends.append(time.perf_counter())

    runner.register_hook(IterEnds(), priority="LOWEST")
    runner.train()
    return (ends[-1] - ends[warmup - 1]) / iters


def train_and_test(setting, seed, epochs, data: Path, out: Path, test_images, log=print,
                   budget_s: float | None = None, real: bool = False, iters: int | None = None) -> dict:
    """Train ``setting`` with ``seed`` for ``epochs``, or for ``budget_s`` seconds of wall clock
    (:class:`WallClockSchedule`), then its mAP without and with feature TTA: on ``test_images`` synthetic test
    scenes, or, if ``real`` (``budget_s`` or ``iters`` instead of epochs), on the real benchmark's held-out regions
    below ``data``."""
    from mmengine.runner import Runner

    from rotplugin.models.tta import unwrap_model

    if real:
        if not budget_s and not iters:
            raise ValueError("the real-image training is given a budget_s (--budget-min) or iters (--iters), "
                             "not epochs")
        cfg = real_setting_config(setting, data, out, seed, iters or UNBOUNDED, scheduled=not budget_s)
    else:
        cfg = setting_config(setting, data, out, seed, epochs, iters=UNBOUNDED if budget_s else None)
    runner = Runner.from_cfg(cfg)
    if budget_s:
        runner.register_hook(WallClockSchedule(budget_s))
    t0 = time.perf_counter()
    runner.train()
    seconds = time.perf_counter() - t0
    per_epoch = len(runner.train_loop.dataloader)   # batches per pass over the data
    ckpt = Path(cfg.work_dir) / "model.pth"
    state = {"state_dict": unwrap_model(runner.model).state_dict(), "meta": {"setting": setting, "seed": seed}}
    write_atomic(ckpt, lambda fh: torch.save(state, fh), "wb")
    log(f"{setting} seed {seed}: {runner.iter} iterations in {seconds / 60:.1f} min")
    if real:
        from rotplugin.apis.real_benchmark import evaluate_views

        res = evaluate_views(cfg, str(ckpt), data, angles=ANGLES, modes=["none", "feature"], merges=["nms"], log=log)
        scores = res["none"]["mAP"], res["feature+nms"]["mAP"], None
    else:
        from rotplugin.apis.benchmark import run_benchmark

        res = run_benchmark(cfg, str(ckpt), str(data / "test"), modes=["none", "feature"], angles=ANGLES,
                            max_images=test_images, log=log)["results"]
        scores = res["none"]["mAP"], res["feature"]["mAP"], res["none"]["num_images"]
    return {"epochs": runner.iter / per_epoch, "iterations": runner.iter, "train_s": seconds,
            "sec_per_iter": seconds / runner.iter, "mAP_none": scores[0], "mAP_feature_tta": scores[1],
            "test_images": scores[2]}


def summarise(entries: dict, settings, seeds) -> dict:
    out = {}
    for s in settings:
        runs = [entries[f"{s}/seed{seed}"] for seed in seeds if f"{s}/seed{seed}" in entries]
        if not runs:
            continue
        row = {"runs": len(runs)}
        for key in ("mAP_none", "mAP_feature_tta", "sec_per_iter", "epochs", "train_s"):
            vals = [r[key] for r in runs]
            row[key] = statistics.mean(vals)
            row[f"{key}_spread"] = max(vals) - min(vals)
        out[s] = row
    _add_cost_per_view(out)
    return out


def _add_cost_per_view(rows: dict) -> None:
    """``rows[kK]["cost_per_view_over_image"] = (s/iter(kK) / K) / s/iter(image)`` where both are there."""
    if "image" in rows:
        for s, row in rows.items():
            if s.startswith("k"):
                row["cost_per_view_over_image"] = row["sec_per_iter"] / int(s[1:]) / rows["image"]["sec_per_iter"]


def _ensure_data(data: Path, log=print) -> None:
    if (data / "train" / "labelTxt").is_dir() and (data / "test" / "labelTxt").is_dir():
        return
    from rotplugin.data.dota_synth import generate_dataset

    log(f"generating the demo's synthetic set in {data} (600 train / 150 test scenes of 256², as make demo does)")
    for split, num, seed in (("train", 600, 0), ("test", 150, 1)):
        generate_dataset(str(data / split), num_images=num, size=256, seed=seed, workers=2, progress=False)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="default work_dirs/feature_views; with --real work_dirs/feature_views_real, with "
                                 "--real --iters work_dirs/feature_views_real_iters")
    p.add_argument("--data", default=str(DemoLayout(ROOT / DEMO_WORK_DIR).data))
    p.add_argument("--real", metavar="DIR", help="train and score on real DOTA imagery instead: DIR holds images/ "
                                                 "and labelTxt/ of P0003, P0004, P0005, P0706")
    p.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int, help="epochs for every setting")
    length.add_argument("--budget-min", type=float, help="equal wall-clock training minutes per run")
    length.add_argument("--iters", type=int, help="equal iterations per run (--real only)")
    p.add_argument("--probe-only", action="store_true",
                   help="only the cost: each setting's s/iteration from a probe, no training runs")
    p.add_argument("--probe-iters", type=int, default=40, help="timed iterations per probe (default 40)")
    p.add_argument("--test-images", type=int, default=150)
    p.add_argument("--json", help="default OUT/feature_views.json")
    p.add_argument("--force", action="store_true")
    args = p.parse_args(argv)
    if args.real is not None and args.epochs is not None:
        p.error("--real trains for --budget-min minutes or --iters iterations (its loop counts iterations, not "
                "epochs): drop --epochs")
    if args.real is None and args.iters is not None:
        p.error("--iters is for --real (the synthetic set trains for --epochs or --budget-min)")
    if args.real is not None and args.budget_min is None and args.iters is None and not args.probe_only:
        p.error("--real needs --budget-min (equal wall-clock training minutes per run) or --iters")
    if args.iters is not None and args.iters < 1:
        p.error("--iters must be at least 1")
    if args.epochs is None and args.budget_min is None and args.real is None:
        args.epochs = 12
    if (args.epochs is not None and args.epochs < 1) or (args.budget_min is not None and not args.budget_min > 0):
        p.error("--epochs must be at least 1 and --budget-min positive")
    if args.test_images < 1:
        p.error("--test-images must be at least 1")
    if args.probe_iters < 1:
        p.error("--probe-iters must be at least 1")
    real = args.real is not None
    out = Path(args.out or ROOT / "work_dirs" / ("feature_views" + "_real" * real + "_iters" * bool(args.iters)))
    if real:
        from rotplugin.apis.real_benchmark import prepare_data
        from rotplugin.data.dota_split import DOTAFormatError

        try:
            source = prepare_data(args.real, out)["settings"]["source"]
        except (FileNotFoundError, FileExistsError, DOTAFormatError) as err:   # bad data / out dir: named in err
            p.error(f"--real: {err}")
        data, args.test_images = out / "data", None
    else:
        data, source = Path(args.data), None
        _ensure_data(data)
    origin = {"real_source": source} if real else {}   # real runs: retrained when the source images change
    if args.iters:
        origin["iters"] = args.iters
    results = ResumableResults(args.json or str(out / "feature_views.json"), force=args.force)
    for setting in args.settings:
        if args.probe_only:
            key = f"probe/{setting}"
            probe_settings = {**origin, "setting": setting, "iters": args.probe_iters}   # a probe's own iters
            if not results.done(key, probe_settings):
                results.put(key, {"sec_per_iter": probe(setting, data, out, args.probe_iters, real=real)},
                            probe_settings)
            continue
        for seed in args.seeds:
            key = f"{setting}/seed{seed}"
            settings = {"setting": setting, "seed": seed, "epochs": args.epochs, "budget_min": args.budget_min,
                        "test_images": args.test_images, "data": str(data.resolve()), **origin}
            if results.done(key, settings):
                continue
            results.put(key, train_and_test(setting, seed, args.epochs, data, out, args.test_images,
                                            budget_s=args.budget_min and args.budget_min * 60, real=real,
                                            iters=args.iters), settings)
    if args.probe_only:
        summary = {s: {"sec_per_iter": results.data[f"probe/{s}"]["sec_per_iter"]} for s in args.settings}
        _add_cost_per_view(summary)
        results.data["probe_summary"] = summary
        results.save()
        for s, row in summary.items():
            print(f"{s:>8}: {row['sec_per_iter']:.3f} s/iteration" + (
                f", per view / image rotation {row['cost_per_view_over_image']:.2f}"
                if "cost_per_view_over_image" in row else ""))
        return results.data
    results.data["summary"] = summarise(results.data, args.settings, args.seeds)
    results.save()
    print(f"{'setting':>8} | runs | epochs | s/iter | mAP no TTA (spread) | mAP feature TTA (spread) | per view / image")
    for s, row in results.data["summary"].items():
        ratio = row.get("cost_per_view_over_image")
        print(f"{s:>8} | {row['runs']:4d} | {row['epochs']:6.1f} | {row['sec_per_iter']:6.3f} | "
              f"{row['mAP_none']:.3f} ({row['mAP_none_spread']:.3f}) | {row['mAP_feature_tta']:.3f} "
              f"({row['mAP_feature_tta_spread']:.3f}) | {'' if ratio is None else f'{ratio:.2f}'}")
    return results.data


if __name__ == "__main__":
    main()
