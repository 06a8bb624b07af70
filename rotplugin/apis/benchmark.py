"""Benchmark a detector without TTA, with image-rotation TTA and with feature-rotation TTA on one DOTA-format set.

:func:`run_benchmark` measures, for every mode of ``modes``:

* ``mAP`` and ``per_class_AP`` (DOTA mAP at IoU 0.5, VOC07 11 points, of :class:`rotplugin.evaluation.
  DOTAClassAPMetric`, i.e. mmrotate's ``eval_rbbox_map``; ``per_class_AP`` holds the classes with ground truth,
  whose mean is the mAP), and ``num_gts`` per class;
* ``sec_per_img``: wall time of the model step (data preprocessor + prediction + merge) per image, data loading and
  evaluation excluded, after ``warmup`` untimed images per mode (the first eval-mode pass expands the equivariant
  filters once);
* ``time_split`` (seconds per image): ``backbone_neck`` (``extract_feat``), ``heads`` (dense head, or RPN + RoI
  head; all views), ``rotation`` (rotating the feature pyramid, or the input image, for the views), ``merge``
  (the views' boxes, mapped back, merged by rotated NMS or fused) and ``other`` (the rest of the step: preprocessing, view
  metadata, mapping boxes back); they add up to ``sec_per_img``. Without TTA (``none``) the detector's own
  prediction is split into ``extract_feat`` and its heads (what ``detector.predict`` does, timed piece by piece),
  ``rotation = merge = 0``.

The TTA views are merged with the detector's own test settings (``score_thr``, NMS IoU, ``max_per_img`` of
``test_cfg``, or ``test_cfg.rcnn``) so that the three modes keep the same detections' thresholds.

Outputs in ``out_dir``: ``benchmark.json`` (one entry per mode, see :func:`run_benchmark`) and ``benchmark.png``
(mAP per mode; seconds per image stacked by the time split), both written atomically (temp file + rename). The
JSON is resumable: a mode already in it with the same settings (config and checkpoint contents, data, angles,
merge thresholds) is skipped (and said so) unless ``force``.

Data: a DOTA-format folder with ``images/`` and ``labelTxt/`` (what ``tools/make_synthetic_dota.py`` and
``tools/dota_split.py`` write), loaded with the config's test dataset type, classes and pipeline (a
``LoadAnnotations`` step is added before ``PackDetInputs`` when the pipeline has none, so that ground truth stays in
original image coordinates), batch size 1, in sorted image order; or, with ``data_root=None``, the config's own
test dataset.
"""
from __future__ import annotations

import copy
import datetime
import hashlib
import itertools
import json
import os
import os.path as osp
import time
import warnings
from collections import defaultdict
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.evaluator import Evaluator
from mmengine.runner import load_checkpoint
from mmrotate.registry import DATASETS, MODELS

import rotplugin.mm  # noqa: F401  (registers the components, also for configs without custom_imports)
from rotplugin.data.dota_split import parse_dota_txt
from rotplugin.equivariance import feature_pyramid
from rotplugin.evaluation import DOTAClassAPMetric
from rotplugin.io import ResumableResults, sha256_file, write_atomic
from rotplugin.models.tta import FeatureRotationTTAModel, ImageRotationTTAModel, parse_angles
from rotplugin.models.tta_views import parse_merge
from rotplugin.presets import load_config

__all__ = ["run_benchmark", "format_table", "plot_benchmark", "PlainTimedModel", "check_data_root", "MODES",
           "TIME_KEYS", "JSON_NAME", "PNG_NAME"]

MODES = ("none", "image", "feature")
TIME_KEYS = ("backbone_neck", "heads", "rotation", "merge", "other")
JSON_NAME, PNG_NAME = "benchmark.json", "benchmark.png"


# ---------------------------------------------------------------------------------------------------------------
# the plain detector, timed piece by piece
# ---------------------------------------------------------------------------------------------------------------
def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


class PlainTimedModel:
    """``detector.test_step`` without TTA (``extract_feat``, then the dense head or RPN + RoI head, boxes rescaled
    to the original image), with ``timings['backbone_neck']`` and ``timings['heads']`` accumulated like the TTA
    models' ``timings``. Single-stage (``bbox_head``) and two-stage (``rpn_head`` + ``roi_head``) detectors."""

    def __init__(self, detector):
        if not (hasattr(detector, "bbox_head") or hasattr(detector, "roi_head")):
            raise ValueError(f"PlainTimedModel: {type(detector).__name__} has neither bbox_head nor roi_head; only "
                             f"single-stage and two-stage detectors are supported")
        self.module = detector
        self.timings: Dict[str, float] = defaultdict(float)

    def _device(self):
        return next(self.module.parameters()).device

    @torch.no_grad()
    def test_step(self, data):
        det = self.module
        device = self._device()
        data = det.data_preprocessor(data, False)
        inputs, samples = data["inputs"], data["data_samples"]
        for s in samples:
            # a pipeline without Resize records no scale_factor, which mmdet's rescale asserts; unresized = 1
            if s.metainfo.get("scale_factor") is None:
                if tuple(s.metainfo.get("img_shape", ())) != tuple(s.metainfo.get("ori_shape", ())):
                    raise ValueError(f"sample {s.metainfo.get('img_id')}: img_shape differs from ori_shape but the "
                                     f"pipeline recorded no scale_factor; add it to PackDetInputs' meta_keys")
                s.set_metainfo({"scale_factor": (1.0, 1.0)})
        _sync(device)
        t0 = time.perf_counter()
        feats = det.extract_feat(inputs)
        _sync(device)
        t1 = time.perf_counter()
        if hasattr(det, "roi_head"):
            if samples[0].get("proposals", None) is None:
                proposals = det.rpn_head.predict(feats, samples, rescale=False)
            else:
                proposals = [s.proposals for s in samples]
            results = det.roi_head.predict(feats, proposals, samples, rescale=True)
        else:
            results = det.bbox_head.predict(feats, samples, rescale=True)
        _sync(device)
        t2 = time.perf_counter()
        self.timings["backbone_neck"] += t1 - t0
        self.timings["heads"] += t2 - t1
        return det.add_pred_to_datasample(samples, results)


# ---------------------------------------------------------------------------------------------------------------
# inputs: checks and identities
# ---------------------------------------------------------------------------------------------------------------
def _config_digest(cfg) -> str:
    text = json.dumps(cfg.to_dict(), sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def check_data_root(img_dir: str, ann_dir: str, img_suffix: str = "png", classes: Optional[Sequence[str]] = None,
                    log: Callable[[str], object] = print) -> List[str]:
    """The sorted image ids of a DOTA-format set that have both ``img_dir/<id>.<img_suffix>`` and
    ``ann_dir/<id>.txt``; clear errors for a missing folder, no images, no labels, labels without image, classes
    outside ``classes``; images without labels are left out with a message."""
    if not osp.isdir(img_dir):
        raise FileNotFoundError(f"image folder {img_dir!r} does not exist: a DOTA-format data root holds images/ "
                                f"and labelTxt/ (tools/make_synthetic_dota.py or tools/dota_split.py write them)")
    suffix = "." + img_suffix.lstrip(".")
    images = sorted(n[: -len(suffix)] for n in os.listdir(img_dir) if n.endswith(suffix))
    if not images:
        raise ValueError(f"no *{suffix} images in {img_dir!r}")
    if not osp.isdir(ann_dir):
        raise FileNotFoundError(f"label folder {ann_dir!r} does not exist: the benchmark needs labelTxt/ for mAP (a "
                                f"test set without labels: tools/test.py --submission-dir)")
    labels = sorted(n[:-4] for n in os.listdir(ann_dir) if n.endswith(".txt"))
    if not labels:
        raise ValueError(f"no label files (*.txt) in {ann_dir!r}")
    image_set = set(images)
    orphans = [i for i in labels if i not in image_set]
    if orphans:
        raise ValueError(f"{len(orphans)} label file(s) without image in {img_dir!r}, e.g. {orphans[0]}.txt")
    unlabelled = sorted(image_set - set(labels))
    if unlabelled:
        log(f"[benchmark] {len(unlabelled)} image(s) without label file left out, e.g. {unlabelled[0]}{suffix}")
    for i in labels:  # DOTADataset would stop with a bare KeyError on a class the config does not know
        parse_dota_txt(osp.join(ann_dir, i + ".txt"), classes=classes)
    return labels


def _data_digest(img_dir, ann_dir, ids, img_suffix) -> str:
    h = hashlib.sha256()
    for i in ids:
        st = os.stat(osp.join(img_dir, f"{i}.{img_suffix}"))
        h.update(f"{i}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        with open(osp.join(ann_dir, i + ".txt"), "rb") as fh:
            h.update(fh.read())
    return h.hexdigest()


def _with_annotations(pipeline: list) -> list:
    """The pipeline, with rotated-box annotations loaded right before ``PackDetInputs`` when it loads none (after
    any resize: ground truth stays in original image coordinates, where the predictions are rescaled to)."""
    pipeline = [copy.deepcopy(dict(t)) for t in pipeline]
    if any(str(t.get("type", "")).endswith("LoadAnnotations") for t in pipeline):
        return pipeline
    pack = next((k for k, t in enumerate(pipeline) if str(t.get("type", "")).endswith("PackDetInputs")), None)
    if pack is None:
        raise ValueError("the test pipeline has no PackDetInputs step; cannot add annotation loading for mAP")
    pipeline[pack:pack] = [dict(type="mmdet.LoadAnnotations", with_bbox=True, box_type="qbox"),
                           dict(type="ConvertBoxType", box_type_mapping=dict(gt_bboxes="rbox"))]
    return pipeline


def _merge_settings(cfg) -> dict:
    """score_thr / NMS IoU / max_per_img of the detector's final test stage (``test_cfg.rcnn`` for two-stage)."""
    test_cfg = cfg.model.get("test_cfg") or {}
    stage = test_cfg.get("rcnn", test_cfg) or {}
    nms = stage.get("nms") or {}
    return dict(score_thr=float(stage.get("score_thr", 0.05)), iou_thr=float(nms.get("iou_threshold", 0.1)),
                max_per_img=int(stage.get("max_per_img", 2000)))


def _parse_modes(modes) -> List[str]:
    if isinstance(modes, str):
        modes = modes.replace(",", " ").split()
    out: List[str] = []
    for m in modes:
        if m not in MODES:
            raise ValueError(f"unknown mode {m!r}: modes are {', '.join(MODES)} (no TTA, image-rotation TTA, "
                             f"feature-rotation TTA)")
        if m not in out:
            out.append(m)
    if not out:
        raise ValueError(f"no mode given: choose from {', '.join(MODES)}")
    return out


# ---------------------------------------------------------------------------------------------------------------
# outputs
# ---------------------------------------------------------------------------------------------------------------
def format_table(results: Dict[str, dict]) -> str:
    """One table: a column per mode, rows mAP, AP per class, seconds per image and its split, images."""
    modes = list(results)
    classes: List[str] = []
    for r in results.values():
        classes += [c for c in r.get("per_class_AP", {}) if c not in classes]
    rows = [("mAP", [f"{r['mAP']:.4f}" for r in results.values()])]
    for c in classes:
        rows.append((f"  AP {c}", [f"{r['per_class_AP'][c]:.4f}" if c in r.get("per_class_AP", {}) else "-"
                                   for r in results.values()]))
    rows.append(("s/img", [f"{r['sec_per_img']:.4f}" for r in results.values()]))
    names = {"backbone_neck": "backbone+neck"}
    for k in TIME_KEYS:
        rows.append((f"  {names.get(k, k)}", [f"{r['time_split'].get(k, 0.0):.4f}" for r in results.values()]))
    rows.append(("images", [str(r["num_images"]) for r in results.values()]))
    width = max(len(name) for name, _ in rows)
    cols = [max(len(m), *(len(v[j]) for _, v in rows)) for j, m in enumerate(modes)]
    lines = [" " * width + "  " + "  ".join(m.rjust(w) for m, w in zip(modes, cols))]
    lines += [name.ljust(width) + "  " + "  ".join(v.rjust(w) for v, w in zip(vals, cols)) for name, vals in rows]
    return "\n".join(lines)


def plot_benchmark(results: Dict[str, dict], path, title: str = "") -> None:
    """Bar chart (PNG, matplotlib Agg, no pyplot state): mAP per mode, and seconds per image per mode stacked by
    the time split. Written through a temp file and a rename."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # matplotlib (~0.5 s) only when a chart is drawn
    from matplotlib.figure import Figure

    modes = list(results)
    fig = Figure(figsize=(10.0, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax_map, ax_t = fig.subplots(1, 2)
    maps = [results[m]["mAP"] for m in modes]
    bars = ax_map.bar(modes, maps, color="#4878a8")
    ax_map.bar_label(bars, labels=[f"{v:.3f}" for v in maps], padding=2)
    ax_map.set_ylabel("mAP (IoU 0.5)")
    ax_map.set_ylim(0, max(1e-3, max(maps)) * 1.2)
    ax_map.set_title("accuracy")
    bottom = [0.0] * len(modes)
    colours = dict(backbone_neck="#4c72b0", heads="#dd8452", rotation="#55a868", merge="#c44e52", other="#8c8c8c")
    for k in TIME_KEYS:
        vals = [results[m]["time_split"].get(k, 0.0) for m in modes]
        ax_t.bar(modes, vals, bottom=bottom, label=k.replace("_", "+"), color=colours[k])
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax_t.set_ylabel("seconds per image")
    ax_t.set_title("time")
    ax_t.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))   # beside the bars, not on them
    if title:
        fig.suptitle(title, fontsize="small")
    fig.tight_layout()
    write_atomic(path, lambda fh: fig.savefig(fh, format="png"), "wb")


# ---------------------------------------------------------------------------------------------------------------
# the benchmark
# ---------------------------------------------------------------------------------------------------------------
def _measure(model, loader, evaluators: dict, num_images: int, warmup: int, device, merges=None) -> dict:
    """Run the model on every batch (after ``warmup`` untimed ones), evaluate, return ``{key: numbers}``.

    Without ``merges``: ``model.test_step``, one evaluator (key ``None``). With ``merges`` (a TTA model): the views
    are predicted once per image and merged by each merge of ``merges`` (``evaluators[merge]``); each merge's entry
    is timed as the shared step (preprocessing, views) plus its own merge."""
    step = model.test_step_views if merges else model.test_step
    it = iter(loader)
    warm = []
    for _ in range(min(warmup, num_images)):  # untimed; the same batches are measured afterwards
        warm.append(next(it))
    for data in warm:
        step(data)
    model.timings.clear()
    counts = getattr(model, "counts", None)
    if counts is not None:
        counts.clear()
    total = 0.0
    merge_s: Dict[str, float] = defaultdict(float)
    t_start = time.perf_counter()
    for data in itertools.chain(warm, it):
        _sync(device)
        t0 = time.perf_counter()
        outputs = step(data)
        _sync(device)
        total += time.perf_counter() - t0
        if not merges:
            evaluators[None].process(data_samples=outputs, data_batch=data)
            continue
        merged, seconds = model.merge_each(outputs, merges)
        for merge in merges:
            merge_s[merge] += seconds[merge]
            evaluators[merge].process(data_samples=merged[merge], data_batch=data)
    passes = counts["backbone_passes"] / num_images if counts is not None else 1.0
    wall = time.perf_counter() - t_start
    out = {}
    for key, evaluator in evaluators.items():
        metrics = evaluator.evaluate(num_images)
        timings = {k: float(model.timings.get(k, 0.0)) / num_images for k in TIME_KEYS[:-1]}
        sec = total / num_images
        if merges:
            timings["merge"] = merge_s[key] / num_images
            sec += timings["merge"]
        timings["other"] = max(0.0, sec - sum(timings.values()))
        metric = evaluator.metrics[0]
        per_class = {c: r["ap"] for c, r in metric.class_results.items() if r["num_gts"] > 0}
        out[key] = dict(mAP=float(metrics["dota/mAP"]), per_class_AP=per_class,
                        num_gts={c: r["num_gts"] for c, r in metric.class_results.items() if r["num_gts"] > 0},
                        sec_per_img=sec, time_split=timings, backbone_passes=passes, num_images=num_images,
                        wall_seconds=wall)
    return out


TTA_OPTIONS = ("flips", "scales", "merge", "fusion_iou_thr", "fibre_interp")


def run_benchmark(config, checkpoint: str, data_root: Optional[str],
                  modes: Union[str, Sequence[str]] = MODES, angles=(0, 90, 180, 270),
                  out_dir: Optional[str] = None, max_images: Optional[int] = None, force: bool = False,
                  warmup: int = 1, device: str = "cpu", cfg_options: Optional[dict] = None,
                  log: Callable[[str], object] = print, tta: Optional[dict] = None,
                  merges: Optional[Sequence[str]] = None) -> dict:
    """Measure ``modes`` (``'none'``, ``'image'``, ``'feature'``) of a detector on a DOTA-format set.

    Args:
        config: config path or ``mmengine.Config`` (``cfg_options`` merged into it).
        checkpoint: weights (an mmengine checkpoint or a bare ``state_dict``); must fit the config's model.
        data_root: folder with ``images/`` and ``labelTxt/``; ``None``: the config's test dataset.
        modes, angles: what to measure; angles (degrees) of the TTA views.
        tta: more options of both TTA models (``flips``, ``scales``, ``merge``, ``fusion_iou_thr``,
            ``fibre_interp``; :class:`rotplugin.models.FeatureRotationTTAModel`), the same for image and feature TTA.
        merges: measure each TTA mode once per image and merge its views by each of these (``'nms'``,
            ``'fusion'``): entries ``'<mode>+<merge>'`` (each timed as the shared pass plus its own merge) instead of
            ``'<mode>'`` merged by ``tta['merge']``.
        out_dir: where ``benchmark.json`` and ``benchmark.png`` go (``None``: nothing written, nothing resumed).
        max_images: only the first ``N`` images (sorted by id).
        force: measure modes again although the JSON holds them with the same settings.
        warmup: untimed images per mode before the timed pass.
        device: ``'cpu'`` or ``'cuda'``; on CUDA the step time is synchronised, the TTA models' split is not
            (approximate).

    Returns ``dict(results={key: entry}, skipped=[keys taken from the JSON], table=str, json=path|None,
    png=path|None)``. An entry (also what ``benchmark.json`` holds under the mode's name) has ``mAP``,
    ``per_class_AP``, ``num_gts``, ``sec_per_img``, ``time_split`` ({backbone_neck, heads, rotation, merge, other},
    seconds per image), ``backbone_passes`` (per image), ``num_images``, ``config``, ``checkpoint``, ``data``,
    ``angles`` and ``tta`` (``None`` for ``none``),
    ``merge`` (TTA merge thresholds), ``device``, ``torch_threads``, ``measured_at`` and ``settings`` (what decides
    whether a rerun skips it).
    """
    modes = _parse_modes(modes)
    angles = parse_angles(angles)
    tta = dict(tta or {})
    unknown = sorted(set(tta) - set(TTA_OPTIONS))
    if unknown:
        raise ValueError(f"unknown tta options {unknown}: known are {', '.join(TTA_OPTIONS)}")
    if merges is not None:
        merges = [parse_merge(m) for m in merges]
        if not merges or "merge" in tta:
            raise ValueError("merges: give one or more of nms, fusion (and no tta['merge'] beside it)")
    if max_images is not None and (not isinstance(max_images, int) or max_images < 1):
        raise ValueError(f"max_images must be a positive integer, got {max_images!r}")
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an integer >= 0, got {warmup!r}")

    # -- config, checkpoint, data: checked before anything runs --------------------------------------------------
    if isinstance(config, Config):
        rotplugin.mm.register_all_modules(init_default_scope=True)  # what load_config does for a path
        cfg, config_name = copy.deepcopy(config), config.filename or "<Config object>"
    else:
        if not osp.isfile(str(config)):
            raise FileNotFoundError(f"config {config} not found")
        cfg, config_name = load_config(str(config)), osp.abspath(str(config))
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if not osp.isfile(str(checkpoint)):
        raise FileNotFoundError(f"checkpoint {checkpoint} not found")
    dataset_cfg = copy.deepcopy(cfg.test_dataloader.dataset)
    if data_root is not None:
        data_root = osp.abspath(str(data_root))
        if not osp.isdir(data_root):
            raise FileNotFoundError(f"data root {data_root} does not exist (a folder with images/ and labelTxt/)")
        dataset_cfg.update(data_root=data_root, ann_file="labelTxt/", data_prefix=dict(img_path="images/"))
        img_dir, ann_dir = osp.join(data_root, "images"), osp.join(data_root, "labelTxt")
    else:
        root = dataset_cfg.get("data_root") or ""
        img_dir = osp.join(root, dataset_cfg.get("data_prefix", {}).get("img_path", ""))
        ann_dir = osp.join(root, dataset_cfg.get("ann_file", ""))
        if not dataset_cfg.get("ann_file"):
            raise ValueError("the config's test dataset has no annotations (ann_file=''); give a data root with "
                             "labelTxt/")
    dataset_cfg.update(test_mode=True, pipeline=_with_annotations(dataset_cfg.get("pipeline", [])))
    dataset_cfg.pop("indices", None)
    img_suffix = dataset_cfg.get("img_suffix", "png")
    classes = (dataset_cfg.get("metainfo") or {}).get("classes")
    if classes is None:
        classes = DATASETS.get(dataset_cfg["type"]).METAINFO["classes"]
    ids = check_data_root(img_dir, ann_dir, img_suffix, classes, log=log)
    if max_images is not None:
        ids = ids[:max_images]

    merge = _merge_settings(cfg)
    common = dict(config=config_name, config_sha256=_config_digest(cfg), checkpoint=osp.abspath(str(checkpoint)),
                  checkpoint_sha256=sha256_file(checkpoint), data=osp.abspath(img_dir),
                  data_sha256=_data_digest(img_dir, ann_dir, ids, img_suffix), num_images=len(ids))
    keys = {}   # entry key -> (mode, merge of its views, or None: the tta options' own)
    for m in modes:
        for g in ([None] if m == "none" or merges is None else merges):
            keys[m if g is None else f"{m}+{g}"] = (m, g)
    settings = {}
    for key, (m, g) in keys.items():
        opts = tta if g is None else dict(tta, merge=g)
        settings[key] = dict(common, mode=m, angles=None if m == "none" else angles,
                             merge=None if m == "none" else merge, **({} if m == "none" or not opts else {"tta": opts}))

    json_path = osp.join(str(out_dir), JSON_NAME) if out_dir is not None else None
    store = ResumableResults(json_path, force=force, log=lambda msg: log(f"[benchmark] {msg}"))
    todo = [k for k in keys if not store.done(k, settings[k])]

    if todo:
        _run_modes(cfg, checkpoint, dataset_cfg, ids, {k: keys[k] for k in todo}, angles, dict(merge, **tta),
                   settings, store, warmup, device, log)

    results = {k: store.get(k) for k in keys}
    table = format_table(results)
    png_path = None
    if out_dir is not None:
        png_path = osp.join(str(out_dir), PNG_NAME)
        title = (f"{osp.basename(config_name)}  |  {len(ids)} images  |  TTA angles "
                 f"{', '.join(f'{a:g}' for a in angles)}")
        plot_benchmark(results, png_path, title=title)
    return dict(results=results, skipped=[k for k in keys if k not in todo], table=table, json=json_path,
                png=png_path)


def _run_modes(cfg, checkpoint, dataset_cfg, ids, todo, angles, merge, settings, store, warmup, device, log):
    """Measure the entries ``todo`` (key -> (mode, merge or None)) and put them into ``store``."""
    detector = MODELS.build(cfg.model)
    if any(m == "feature" for m, _ in todo.values()):
        feature_pyramid(detector, "feature TTA")  # clear error for a model whose features cannot be rotated
    try:  # a Runner checkpoint loads with weights_only: this module imports rotplugin.mm
        load_checkpoint(detector, str(checkpoint), map_location="cpu", strict=True, logger="silent")
    except RuntimeError as err:
        raise ValueError(f"checkpoint {checkpoint} does not fit the model of the config: {err}") from None
    detector = detector.to(device).eval()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mmengine warns that lazy init is off etc.
        dataset = DATASETS.build(dataset_cfg)
    by_id = {dataset.get_data_info(k)["img_id"]: k for k in range(len(dataset))}
    order = [by_id[i] for i in ids]
    subset = torch.utils.data.Subset(dataset, order)
    loader = torch.utils.data.DataLoader(subset, batch_size=1, shuffle=False, num_workers=0,
                                         collate_fn=pseudo_collate)
    makers = {"none": lambda: PlainTimedModel(detector),
              "image": lambda: ImageRotationTTAModel(detector, angles=angles, **merge),
              "feature": lambda: FeatureRotationTTAModel(detector, angles=angles, **merge)}
    for mode in dict.fromkeys(m for m, _ in todo.values()):
        mine = {k: g for k, (m, g) in todo.items() if m == mode}
        merges = None if None in mine.values() else list(mine.values())
        log(f"[benchmark] {mode}: {len(ids)} images" + ("" if mode == "none" else f", angles {angles}")
            + ("" if mode == "none" or len(merge) == 3 else f", {dict((k, merge[k]) for k in TTA_OPTIONS if k in merge)}")
            + (f", merged by {', '.join(merges)}" if merges else ""))
        evaluators = {}
        for g in merges or [None]:
            evaluators[g] = Evaluator(DOTAClassAPMetric(metric="mAP", silent=True))
            evaluators[g].dataset_meta = dataset.metainfo
        measured = _measure(makers[mode](), loader, evaluators, len(ids), warmup, device, merges)
        for key, g in mine.items():
            numbers, s = measured[g], settings[key]
            entry = dict(numbers, config=s["config"], checkpoint=s["checkpoint"], data=s["data"], angles=s["angles"],
                         merge=s["merge"], tta=s.get("tta"), device=str(device),
                         torch_threads=torch.get_num_threads(),
                         measured_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds"))
            store.put(key, entry, s)
            log(f"[benchmark] {key}: mAP {numbers['mAP']:.4f}, {numbers['sec_per_img']:.3f} s/img")
