"""ONNX graphs of a stock detector's tensor part, feature-rotation TTA inside one graph, and their ONNX Runtime runner.

What is in a graph and what stays in Python: the graphs hold the network (backbone, neck and the heads' convolutions
or fully connected layers); box decoding and NMS stay in Python, in the stock heads' own ``predict_by_feat``
(mmrotate's decoders and mmcv's rotated NMS), so the runner gives the detections the PyTorch model gives. mmdeploy,
the ecosystem's exporter that puts decoding and NMS into the graph, needs patching to run on this stack and then
selects other boxes than mmdet (``tools/export.py``'s docstring says what was tried).

Graphs (input ``inputs``: the preprocessed ``(1, 3, H, W)`` batch on the fixed canvas of
:mod:`rotplugin.deploy.stock`; outputs named ``<kind>_<level>`` in the order of the head's ``forward``):

* ``model.onnx``: a dense head's outputs (Rotated RetinaNet: ``cls_score_*``, ``bbox_pred_*``; Rotated FCOS adds
  ``angle_pred_*``, ``centerness_*``); a two-stage detector's feature pyramid (``feat_*``) and RPN outputs.
* ``roi_bbox_head.onnx`` (two-stage): the RoI bbox head on pooled RoI features ``rois_feats`` ``(n, C, 7, 7)``,
  ``n`` dynamic: ``cls_score``, ``bbox_pred``. The rotated RoI pooling between the two is mmcv's op, in Python.
* ``model_tta.onnx``: backbone and neck once, then for each view of ``angles`` (multiples of 90°) the passive
  rotation of the pyramid as index operations (``transpose``/``flip`` of the spatial axes and one
  ``index_select`` of the channels: the regular fields' permutation of :func:`rotplugin.fields.fibre_operator`), and
  the heads on every view; outputs ``v<i>_<kind>_<level>`` per view ``i``. One ONNX Runtime call gives all views.
  The runner maps each view's boxes back (:func:`rotplugin.boxes.unrotate_rboxes`) and merges them as
  :class:`rotplugin.models.FeatureRotationTTAModel` does.

The file ``deploy.json`` beside them records the canvas, the output layout and the angles.
"""
from __future__ import annotations

import json
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["quarter_turns", "quarter_turn_permutations", "TensorPart", "RoIBBoxHeadPart", "FeatureTTATensorPart",
           "export_graph", "OrtSession", "OnnxDetector", "output_layout", "DEFAULT_MERGE"]


def quarter_turns(angles: Sequence[float]) -> List[int]:
    """``k`` (0..3) of each angle, which must be a multiple of 90° (the angles an index-op graph can hold)."""
    from rotplugin.canvas import _quarter_turns
    from rotplugin.models.tta_views import parse_angles

    out = []
    for a in parse_angles(angles):
        k = _quarter_turns(a)
        if k is None:
            raise ValueError(f"the ONNX feature-TTA graph holds quarter turns only (index operations); angle {a}° "
                             f"is not a multiple of 90°")
        out.append(k)
    return out


def quarter_turn_permutations(field_types, k: int) -> List[torch.Tensor]:
    """Per level, the channel index of the rotation by ``90°·k`` (``out[:, c] = in[:, index[c]]``): the fibre
    operator of a regular (or other permutation) field type, which must be an unsigned permutation."""
    from rotplugin.fields import fibre_operator

    out = []
    for i, ft in enumerate(field_types):
        op = fibre_operator(ft, 90.0 * k)
        if op.kind == "identity":
            out.append(torch.arange(op.size))
            continue
        if op.kind != "permutation" or (op.sign < 0).any():
            raise ValueError(f"level {i}: the rotation by {90 * k}° of its fields is not a channel permutation "
                             f"({op}); only permutation fields (regular, trivial) rotate by index operations")
        out.append(torch.as_tensor(op.index, dtype=torch.long))
    return out


def _rot90(x: torch.Tensor, k: int) -> torch.Tensor:
    """``torch.rot90(x, k, (-2, -1))`` written as transposes and flips (every ONNX exporter knows these)."""
    if k == 0:
        return x
    if k == 1:
        return x.transpose(-2, -1).flip(-2)
    if k == 2:
        return x.flip(-2).flip(-1)
    return x.transpose(-2, -1).flip(-1)


def _flatten(outputs, kinds: Sequence[str], prefix: str = ""):
    """A head's ``forward`` result (a tuple of per-level lists) as a flat list, with the names ``<kind>_<level>``."""
    tensors, names = [], []
    for kind, per_level in zip(kinds, outputs):
        for level, t in enumerate(per_level):
            tensors.append(t)
            names.append(f"{prefix}{kind}_{level}")
    return tensors, names


# the kinds of each head's forward outputs, in order
_HEAD_KINDS = {
    "RetinaHead": ("cls_score", "bbox_pred"),
    "RotatedRetinaHead": ("cls_score", "bbox_pred"),
    "RotatedFCOSHead": ("cls_score", "bbox_pred", "angle_pred", "centerness"),
    "OrientedRPNHead": ("rpn_cls_score", "rpn_bbox_pred"),
    "RPNHead": ("rpn_cls_score", "rpn_bbox_pred"),
}


def _kinds(head: nn.Module) -> Sequence[str]:
    for cls in type(head).__mro__:
        if cls.__name__ in _HEAD_KINDS:
            return _HEAD_KINDS[cls.__name__]
    raise ValueError(f"no ONNX output layout known for the head {type(head).__name__}: known are "
                     f"{sorted(_HEAD_KINDS)} and their subclasses")


def _two_stage(det) -> bool:
    return getattr(det, "with_rpn", False) or hasattr(det, "roi_head")


def output_layout(det, levels: int) -> Dict[str, list]:
    """The output names of ``model.onnx`` for the detector ``det`` with ``levels`` pyramid levels."""
    head = det.rpn_head if _two_stage(det) else det.bbox_head
    names = [f"{k}_{i}" for k in _kinds(head) for i in range(levels)]
    if _two_stage(det):
        names = [f"feat_{i}" for i in range(levels)] + names
    return {"outputs": names, "kinds": list(_kinds(head)), "levels": levels, "two_stage": _two_stage(det)}


class TensorPart(nn.Module):
    """The network of a detector as one tensor function: ``inputs -> (feats,) head outputs`` (flat; names
    :func:`output_layout`)."""

    def __init__(self, det):
        super().__init__()
        self.det = det
        self.two_stage = _two_stage(det)
        self.head = det.rpn_head if self.two_stage else det.bbox_head
        self.kinds = _kinds(self.head)

    def heads(self, feats, prefix: str = ""):
        tensors, names = _flatten(self.head(list(feats)), self.kinds, prefix)
        if self.two_stage:
            tensors = list(feats) + tensors
            names = [f"{prefix}feat_{i}" for i in range(len(feats))] + names
        return tensors, names

    def forward(self, inputs):
        return tuple(self.heads(self.det.extract_feat(inputs))[0])


class RoIBBoxHeadPart(nn.Module):
    """A two-stage detector's RoI bbox head on pooled RoI features: ``rois_feats -> (cls_score, bbox_pred)``."""

    def __init__(self, det):
        super().__init__()
        self.bbox_head = det.roi_head.bbox_head

    def forward(self, rois_feats):
        cls_score, bbox_pred = self.bbox_head(rois_feats)
        return cls_score, bbox_pred


class FeatureTTATensorPart(TensorPart):
    """Backbone and neck once, the quarter-turned pyramids by index operations, the heads on every view (outputs
    ``v<i>_<name>``). ``field_types``: the pyramid's field types (of the equivariant model the stock one was
    exported from); ``angles``: multiples of 90°."""

    def __init__(self, det, field_types, angles: Sequence[float]):
        super().__init__(det)
        self.turns = quarter_turns(angles)
        self.angles = [90.0 * k for k in self.turns]
        for k in sorted(set(self.turns)):
            for level, idx in enumerate(quarter_turn_permutations(field_types, k)):
                self.register_buffer(f"perm_{k}_{level}", idx, persistent=False)
        self.levels = len(field_types)

    def view(self, feats, k: int):
        if k == 0:
            return list(feats)
        return [_rot90(f.index_select(1, getattr(self, f"perm_{k}_{i}")), k) for i, f in enumerate(feats)]

    def forward(self, inputs):
        feats = self.det.extract_feat(inputs)
        out = []
        for i, k in enumerate(self.turns):
            out += self.heads(self.view(feats, k), f"v{i}_")[0]
        return tuple(out)

    def names(self) -> List[str]:
        return [f"v{i}_{n}" for i in range(len(self.turns)) for n in output_layout(self.det, self.levels)["outputs"]]


def export_graph(module: nn.Module, example: torch.Tensor, path, input_name: str, output_names: List[str],
                 dynamic_batch_axis: bool = False, opset: int = 17) -> None:
    """``torch.onnx.export`` (TorchScript exporter, constant folding: eval-mode batch norms fold into the
    convolutions) of ``module`` on ``example``; axis 0 of the input and outputs dynamic when
    ``dynamic_batch_axis``."""
    import warnings

    dynamic = None
    if dynamic_batch_axis:
        dynamic = {input_name: {0: "n"}, **{n: {0: "n"} for n in output_names}}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(module.eval(), (example,), str(path), input_names=[input_name], output_names=output_names,
                          opset_version=opset, dynamo=False, do_constant_folding=True, dynamic_axes=dynamic)


class OrtSession:
    """An ONNX Runtime CPU session with ``threads`` intra-op threads: ``session(x) -> {name: torch tensor}``."""

    def __init__(self, path, threads: Optional[int] = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        arrays = self.session.run(None, {self.input_name: np.ascontiguousarray(x.detach().cpu().numpy())})
        return {n: torch.from_numpy(a) for n, a in zip(self.output_names, arrays)}


# the TTA views' merge when neither deploy.json nor the caller sets it (FeatureRotationTTAModel's own defaults)
DEFAULT_MERGE = dict(iou_thr=0.1, score_thr=0.05, max_per_img=2000)


class OnnxDetector:
    """Detections from the ONNX graphs: ``predict(inputs, data_samples)`` like the detector's ``predict`` (boxes
    rescaled to the original image), the graphs run by ONNX Runtime and the decoding / NMS by the stock ``det``'s
    heads. ``folder``: what ``tools/export.py --onnx`` wrote (``deploy.json``, ``model.onnx``, ...).

    ``tta=True`` runs ``model_tta.onnx`` (all views in one call) and merges the views like
    :class:`rotplugin.models.FeatureRotationTTAModel` with ``iou_thr``, ``score_thr``, ``max_per_img``
    (default: ``deploy.json``'s ``tta``, else :data:`DEFAULT_MERGE`). :meth:`predict_image_tta` is the baseline
    it replaces: ``model.onnx`` on each quarter-turned input, merged the same way.
    """

    def __init__(self, det, folder, threads: Optional[int] = None, tta: bool = False, **merge):
        from pathlib import Path

        self.det = det.eval()
        self.folder = Path(folder)
        self.meta = json.loads((self.folder / "deploy.json").read_text())
        self.tta = tta
        graph = "model_tta.onnx" if tta else "model.onnx"
        if not (self.folder / graph).is_file():
            raise FileNotFoundError(f"{self.folder / graph} does not exist: export with tools/export.py --onnx"
                                    + (" --tta-angles ..." if tta else ""))
        self.session = OrtSession(self.folder / graph, threads)
        self.roi_session = None
        if self.meta["two_stage"]:
            self.roi_session = OrtSession(self.folder / "roi_bbox_head.onnx", threads)
        self.timings: Dict[str, float] = {}
        self.merge = {k: v for k, v in dict(DEFAULT_MERGE, **self.meta.get("tta", {}), **merge).items()
                      if k in DEFAULT_MERGE}

    # ---------------------------------------------------------------------------------------------------------
    def _roi_forward(self, rois_feats):
        out = self.roi_session(rois_feats.contiguous())
        return out["cls_score"], out["bbox_pred"]

    def decode(self, outs: Dict[str, torch.Tensor], prefix: str, samples, rescale: bool = False) -> list:
        """The detections of one view's graph outputs ``outs`` (names ``<prefix><kind>_<level>``) for the data
        samples ``samples`` (the view's metainfo): boxes on the view's canvas, or with ``rescale`` on the original
        image."""
        levels, kinds = self.meta["levels"], self.meta["kinds"]
        grouped = [[outs[f"{prefix}{k}_{i}"] for i in range(levels)] for k in kinds]
        metas = [s.metainfo for s in samples]
        det = self.det
        if not self.meta["two_stage"]:
            return det.bbox_head.predict_by_feat(*grouped, batch_img_metas=metas, rescale=rescale)
        feats = tuple(outs[f"{prefix}feat_{i}"] for i in range(levels))
        proposals = det.rpn_head.predict_by_feat(*grouped, batch_img_metas=metas, rescale=False)
        head = det.roi_head.bbox_head
        head.forward = self._roi_forward      # the RoI head's layers run in ONNX Runtime (instance attribute)
        try:
            return det.roi_head.predict(feats, proposals, samples, rescale=rescale)
        finally:
            del head.forward

    def _check_canvas(self, inputs: torch.Tensor) -> None:
        if tuple(inputs.shape[-2:]) != tuple(self.meta["canvas"]):
            raise ValueError(f"the ONNX graphs were exported for the canvas {tuple(self.meta['canvas'])}; got a batch "
                             f"of {tuple(inputs.shape[-2:])}")

    @torch.no_grad()
    def predict(self, inputs: torch.Tensor, data_samples) -> list:
        self._check_canvas(inputs)
        t0 = time.perf_counter()
        outs = self.session(inputs)
        self.timings["graph"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if not self.tta:
            out = []
            for sample, res in zip(data_samples, self.decode(outs, "", data_samples, rescale=True)):
                sample = sample.clone()
                sample.pred_instances = res
                out.append(sample)
        else:
            canvas = tuple(inputs.shape[-2:])
            out = self._merge_views(self.meta["tta"]["angles"], self.view_results(outs, canvas, data_samples),
                                    canvas, data_samples)
        self.timings["decode"] = time.perf_counter() - t0
        return out

    @torch.no_grad()
    def predict_image_tta(self, inputs: torch.Tensor, data_samples, angles: Sequence[float] = (0, 90, 180, 270)) \
            -> list:
        """Image-rotation TTA on ``model.onnx`` (a runner made with ``tta=False``): one graph call per quarter-turned
        input of ``angles``, the views merged as with ``tta=True``. On the canvas its detections equal the TTA
        graph's, at the cost of a backbone pass per view."""
        from rotplugin.models.tta_views import view_sample

        if self.tta:
            raise ValueError("predict_image_tta runs model.onnx: make the OnnxDetector with tta=False")
        self._check_canvas(inputs)
        turns = quarter_turns(angles)
        angles = [90.0 * k for k in turns]
        canvas = tuple(inputs.shape[-2:])
        views, t_graph, t0 = [], 0.0, time.perf_counter()
        for angle, k in zip(angles, turns):
            t1 = time.perf_counter()
            outs = self.session(_rot90(inputs, k).contiguous())
            t_graph += time.perf_counter() - t1
            views.append(self.decode(outs, "", [view_sample(s, angle, canvas) for s in data_samples]))
        out = self._merge_views(angles, views, canvas, data_samples)
        self.timings.update(graph=t_graph, decode=time.perf_counter() - t0 - t_graph)
        return out

    def view_results(self, outs, canvas, data_samples) -> List[list]:
        """Per view (``deploy.json``'s ``tta.angles``), the detections of every image on the view's canvas."""
        from rotplugin.models.tta_views import view_sample

        views = []
        for i, angle in enumerate(self.meta["tta"]["angles"]):
            samples = [view_sample(s, angle, canvas) for s in data_samples]
            views.append(self.decode(outs, f"v{i}_", samples))
        return views

    def _merge_views(self, angles, views, canvas, data_samples):
        """Every image's views (``views[v][i]``: view ``v``'s detections of image ``i`` on the view's canvas) mapped
        back to the canvas and merged."""
        from rotplugin.models.tta_views import merge_views, views_to_original

        per_image = [[] for _ in data_samples]
        for angle, results in zip(angles, views):
            for i, view in enumerate(views_to_original(results, angle, canvas, data_samples)):
                per_image[i].append(view)
        return [merge_views(views, self.merge["iou_thr"], self.merge["score_thr"], self.merge["max_per_img"])
                for views in per_image]
