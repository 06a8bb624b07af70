"""``tools/export.py``'s work: a trained rotplugin detector to a folder that stock mmrotate and ONNX Runtime load.

:func:`export_detector` builds the config's detector, loads the checkpoint (strictly: another architecture's is an
error naming what does not fit), makes the stock detector (:mod:`rotplugin.deploy.stock`), checks it against the
source model, optionally exports and checks the ONNX graphs (:mod:`rotplugin.deploy.onnx`), and writes everything
at once (a temporary folder renamed to ``OUT_DIR``: an error or an interruption leaves no partial folder).
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from rotplugin.deploy.stock import ExportError, check_state_dict_fits, export_stock
from rotplugin.io import write_folder_atomic

__all__ = ["export_detector", "build_detector", "DEFAULT_TTA_ANGLES", "GRAPH_TOL"]

DEFAULT_TTA_ANGLES = (0, 90, 180, 270)
# relative, ONNX Runtime's outputs against PyTorch's on a random batch: a wrong graph differs by O(1), float32
# rounding of a deep network on noise reaches ~1e-4 (on real images ~1e-5; the tests assert 1e-4 there)
GRAPH_TOL = 1e-3
FLOAT64_TOL = 1e-9    # relative: the stock model's features against the source's, both in float64


def build_detector(config, checkpoint: Optional[str] = None):
    """``(cfg, model)``: the config's detector in eval mode with the checkpoint's weights (strict)."""
    from mmrotate.registry import MODELS

    from rotplugin.convert.redet import load_checkpoint_file, unwrap_state_dict
    from rotplugin.mm import register_all_modules
    from rotplugin.presets import load_config

    register_all_modules()
    cfg = load_config(str(config)) if not hasattr(config, "model") else config
    if "model" not in cfg:
        raise ExportError(f"{config} has no model")
    model = MODELS.build(cfg.model)
    if checkpoint is not None:
        try:
            state = unwrap_state_dict(load_checkpoint_file(str(checkpoint)))
        except (FileNotFoundError, IsADirectoryError) as err:
            raise ExportError(f"checkpoint {checkpoint} cannot be read: {err}") from None
        check_state_dict_fits(model, state, f"checkpoint {checkpoint}")
        model.load_state_dict(state, strict=True)
    return cfg, model.eval()


def _classes(cfg):
    """The class names of the config's test dataset (its ``metainfo``, else its dataset class's), or None."""
    from mmrotate.registry import DATASETS

    dataset = (cfg.get("test_dataloader") or {}).get("dataset") or {}
    classes = (dataset.get("metainfo") or cfg.get("metainfo") or {}).get("classes")
    if classes is None and isinstance(dataset.get("type"), str):
        cls = DATASETS.get(dataset["type"])
        classes = getattr(cls, "METAINFO", {}).get("classes") if cls is not None else None
    return list(classes) if classes else None


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    from rotplugin.equivariance import max_relative_error

    return max_relative_error(a.float(), b.float())


def _stock_model(export, dtype=torch.float32):
    from mmrotate.registry import MODELS

    model = MODELS.build(export.config.model).to(dtype)
    model.load_state_dict(export.state_dict, strict=True)
    return model.eval()


@torch.no_grad()
def _check_features(model, stock, shape, dtype=torch.float32, seed: int = 0) -> float:
    """Largest relative difference over the pyramid levels of the source and the stock detector on one random
    preprocessed batch of ``shape`` ``(H, W)``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 3, *shape, generator=g, dtype=torch.float64).to(dtype)
    return max(_relative(b.double(), a.double()) for a, b in zip(model.extract_feat(x), stock.extract_feat(x)))


def check_export(cfg, model, export, stock, fold_bn=True) -> dict:
    """How far the stock model's features are from the source model's on a random batch (2·max_stride + 1)²: in
    float64, with the export made in float64 too, which tests the mapping and the folding themselves (rounding
    ~1e-12; :class:`ExportError` beyond ``FLOAT64_TOL``), and in float32 (the files as written; folding rounds
    differently from the source's batch norms, by ~1e-5 relative in a random deep network)."""
    max_stride = getattr(model.data_preprocessor, "max_stride", 32)
    shape = (2 * max_stride + 1, 2 * max_stride + 1)
    err32 = _check_features(model, stock, shape)
    try:
        model.double()
        export64 = export_stock(cfg, model, canvas=export.canvas, fold_bn=fold_bn)
        err64 = _check_features(model, _stock_model(export64, torch.float64), shape, torch.float64)
    finally:
        model.float()
    if not err64 <= FLOAT64_TOL:
        raise ExportError(f"the stock model's features differ from the source model's by {err64:.2e} in float64 "
                          f"(relative, allowed {FLOAT64_TOL:g}): the export is wrong for this model")
    return {"check_input": list(shape), "float64_rel_error": err64, "float32_rel_error": err32}


def export_detector(config, checkpoint, out_dir, *, fold_bn: bool = True, canvas: Optional[Sequence[int]] = None,
                    onnx: bool = False, tta_angles: Optional[Sequence[float]] = DEFAULT_TTA_ANGLES,
                    threads: Optional[int] = None, overwrite: bool = False, log=print) -> dict:
    """Export ``checkpoint`` of ``config`` to ``out_dir`` (``model.py``, ``model.pth``, ``export.json``; with
    ``onnx`` also ``model.onnx``, ``model_tta.onnx`` for ``tta_angles`` (None: none), ``roi_bbox_head.onnx`` for
    two-stage detectors and ``deploy.json``). Returns the report written to ``export.json``."""
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise ExportError(f"{out_dir} exists and is not an empty folder: choose another OUT_DIR or pass --overwrite")
    cfg, model = build_detector(config, checkpoint)
    export = export_stock(cfg, model, canvas=canvas, fold_bn=fold_bn, source=str(config))
    stock = _stock_model(export)
    check = check_export(cfg, model, export, stock, fold_bn=fold_bn)
    log(f"stock model: features within {check['float64_rel_error']:.1e} (float64) / "
        f"{check['float32_rel_error']:.1e} (float32, as written) of the source model's, relative, on a random "
        f"{check['check_input'][0]}² input")
    classes = _classes(cfg)
    meta = {"exported_by": "rotplugin tools/export.py", "source_config": str(config),
            "source_checkpoint": str(checkpoint), "fold_bn": fold_bn, "canvas": list(export.canvas)}
    if classes:
        meta["dataset_meta"] = {"classes": tuple(classes)}
    report = {"canvas": list(export.canvas), "fold_bn": fold_bn, "kept_rotplugin_pieces": export.kept,
              "stock_features": check, "files": ["model.py", "model.pth", "export.json"]}
    writers = {
        "model.py": lambda p: p.write_text(export.text()),
        "model.pth": lambda p: torch.save({"meta": meta, "state_dict": export.state_dict}, str(p)),
    }
    graphs_dir = None
    if onnx:
        graphs_dir = Path(tempfile.mkdtemp(prefix="rotplugin-onnx-"))
        report["onnx"] = _export_graphs(model, stock, export.canvas, cfg, graphs_dir, tta_angles, threads, log)
        for name in sorted(p.name for p in graphs_dir.iterdir()):
            writers[name] = (lambda src: lambda p: shutil.move(str(src), str(p)))(graphs_dir / name)
            report["files"].append(name)
    report["seconds"] = round(time.perf_counter() - t_start, 2)
    writers["export.json"] = lambda p: p.write_text(json.dumps(report, indent=2) + "\n")
    try:
        write_folder_atomic(out_dir, writers, overwrite=overwrite)
    finally:
        if graphs_dir is not None:
            shutil.rmtree(graphs_dir, ignore_errors=True)
    return report


def _export_graphs(model, stock, canvas, cfg, folder: Path, tta_angles, threads, log) -> dict:
    """Write and check the ONNX graphs (outputs against PyTorch on one random canvas batch)."""
    from rotplugin.deploy.onnx import (DEFAULT_MERGE, FeatureTTATensorPart, RoIBBoxHeadPart, TensorPart,
                                       export_graph, output_layout, quarter_turns)
    from rotplugin.equivariance import feature_pyramid

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, *canvas, generator=g)
    part = TensorPart(stock).eval()
    with torch.no_grad():
        feats = stock.extract_feat(x)
    layout = output_layout(stock, len(feats))
    info = {"canvas": list(canvas), "input": "inputs", "batch": 1, "opset": 17, **layout, "graphs": {}}
    t0 = time.perf_counter()
    export_graph(part, x, folder / "model.onnx", "inputs", layout["outputs"])
    info["graphs"]["model.onnx"] = _check_graph(part, x, folder / "model.onnx", layout["outputs"], threads)
    log(f"model.onnx: outputs within {info['graphs']['model.onnx']['max_rel_error']:.1e} of PyTorch "
        f"({time.perf_counter() - t0:.1f} s)")
    if layout["two_stage"]:
        head = RoIBBoxHeadPart(stock).eval()
        out_size = _roi_out_size(stock)
        rois = torch.randn(8, stock.roi_head.bbox_head.in_channels, out_size, out_size, generator=g)
        export_graph(head, rois, folder / "roi_bbox_head.onnx", "rois_feats", ["cls_score", "bbox_pred"],
                     dynamic_batch_axis=True)
        info["graphs"]["roi_bbox_head.onnx"] = _check_graph(head, rois[:5], folder / "roi_bbox_head.onnx",
                                                            ["cls_score", "bbox_pred"], threads)
    if tta_angles:
        try:
            pyramid = feature_pyramid(model, "the feature-TTA graph")
        except ValueError as err:
            raise ExportError(str(err)) from None
        quarter_turns(tta_angles)   # an error naming an angle that is not a quarter turn
        tta = FeatureTTATensorPart(stock, pyramid.field_types, tta_angles).eval()
        names = tta.names()
        t0 = time.perf_counter()
        export_graph(tta, x, folder / "model_tta.onnx", "inputs", names)
        info["graphs"]["model_tta.onnx"] = _check_graph(tta, x, folder / "model_tta.onnx", names, threads)
        log(f"model_tta.onnx ({len(tta.angles)} views): outputs within "
            f"{info['graphs']['model_tta.onnx']['max_rel_error']:.1e} of PyTorch ({time.perf_counter() - t0:.1f} s)")
        merge = dict((cfg.get("tta_model") or {}))
        info["tta"] = {"angles": tta.angles, **{k: merge.get(k, v) for k, v in DEFAULT_MERGE.items()}}
    (folder / "deploy.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def _roi_out_size(det) -> int:
    extractor = det.roi_head.bbox_roi_extractor
    size = extractor.roi_layers[0].output_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def _check_graph(module, x, path: Path, names, threads) -> dict:
    from rotplugin.deploy.onnx import OrtSession

    with torch.no_grad():
        expected = module(x)
    got = OrtSession(path, threads)(x)
    errors = {n: _relative(got[n], e) for n, e in zip(names, expected)}
    worst = max(errors, key=errors.get)
    if not errors[worst] <= GRAPH_TOL:
        raise ExportError(f"{path.name}: ONNX Runtime's {worst} differs from PyTorch's by {errors[worst]:.2e} "
                          f"(relative, allowed {GRAPH_TOL:g})")
    return {"max_rel_error": errors[worst], "outputs": len(names), "bytes": path.stat().st_size}
