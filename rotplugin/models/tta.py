"""Rotation test-time augmentation: rotate the *features* (one backbone pass) or the *image* (one pass per view).

Both models run the wrapped detector's data preprocessor once, then for every angle of ``angles`` (degrees, the
sign convention of :mod:`rotplugin.canvas`) obtain the feature pyramid of the view rotated about the canvas centre,
run only the detector's heads on it (dense head, or RPN + RoI head), map the boxes back to the original canvas
(:func:`rotplugin.boxes.unrotate_rboxes`, le90 kept), merge the views by class-wise rotated NMS
(:func:`rotplugin.models.rotated_nms.batched_rotated_nms`: mmcv's kept set and order, IoU only for the pairs that can
reach the threshold) and rescale to the original image. The heads see ``img_shape = batch_input_shape = the view's
canvas``.

* :class:`FeatureRotationTTAModel`: ``extract_feat`` once, then the passive rotation of the pyramid
  (:func:`rotplugin.fields.rotate_pyramid`): needs an equivariant neck (or backbone) that declares its
  ``out_field_types`` and ``out_strides``.
* :class:`ImageRotationTTAModel`: the baseline; rotates the input tensor (exact index ops for multiples of 90°,
  bilinear otherwise) and runs ``extract_feat`` per view.

On an equivariant canvas and multiples of 90° the two give the same detections up to float rounding.
"""
from __future__ import annotations

import time
from collections import defaultdict
from typing import Dict, List, Optional, Sequence

import torch
from mmdet.structures import DetDataSample
from mmengine.model import BaseTTAModel, is_model_wrapper
from mmengine.structures import InstanceData

from rotplugin.canvas import rotated_canvas_size
from rotplugin.equivariance import feature_pyramid
from rotplugin.fields import rotate_fields, rotate_pyramid
from rotplugin.models.tta_views import merge_views, parse_angles, view_sample, views_to_original
from rotplugin.nn.field_layers import make_gspace, trivial_field_type
from rotplugin.registry import MODELS

__all__ = ["FeatureRotationTTAModel", "ImageRotationTTAModel", "parse_angles", "unwrap_model", "DEFAULT_TTA_MODEL",
           "views_to_original", "merge_views"]

# what tools/test.py --tta and RotationTTAHook use for a config without tta_model
DEFAULT_TTA_MODEL = dict(type="FeatureRotationTTAModel", angles=[0, 90, 180, 270])


def unwrap_model(model):
    """The module inside a model wrapper (DDP, ...), else the model itself."""
    return model.module if is_model_wrapper(model) else model


class _RotationTTAModel(BaseTTAModel):
    """Shared machinery: views, heads, box mapping, merge. Subclasses say how a view's features are made
    (:meth:`view_features`).

    mmdet 3.x's TTA convention: a config's ``tta_model = dict(type='FeatureRotationTTAModel', angles=[...])`` and
    ``tools/test.py CONFIG CKPT --tta`` (ours, or mmdet's own) build ``dict(**cfg.tta_model, module=cfg.model)``.
    Unlike mmdet's ``DetTTAModel`` the views are not made by the data pipeline: every batch is the plain test batch
    (``tta_pipeline`` = the test pipeline) and the views are made here, on the preprocessed canvas. As a
    ``BaseTTAModel``, mmengine loads a detector checkpoint into ``module`` without prefixes.

    Per-view API (what :meth:`predict` composes; the benchmarks time its pieces): :meth:`view_sample`,
    :meth:`view_features` (:meth:`views_features` for a batch of views, :meth:`view_chunks`), :meth:`predict_view`,
    :meth:`predict_views` and :meth:`merge_preds`.
    """

    def __init__(self, module, angles: Sequence[float] = (0, 90, 180, 270), iou_thr: float = 0.1,
                 score_thr: float = 0.05, max_per_img: int = 2000, fibre_interp: Optional[str] = None,
                 view_batch: Optional[int] = None, data_preprocessor=None):
        if isinstance(module, dict):   # mmrotate's registry (BaseTTAModel would build from mmengine's root one)
            if data_preprocessor is not None:
                module = dict(module, data_preprocessor=data_preprocessor)
            module = MODELS.build(module)
        super().__init__(module=unwrap_model(module))
        self.angles = parse_angles(angles)
        if not 0 <= iou_thr <= 1:
            raise ValueError(f"iou_thr must be in [0, 1], got {iou_thr}")
        self.iou_thr, self.score_thr, self.max_per_img = iou_thr, score_thr, max_per_img
        self.fibre_interp = fibre_interp
        if view_batch is not None and (isinstance(view_batch, bool) or not isinstance(view_batch, int)
                                       or view_batch < 1):
            raise ValueError(f"view_batch must be None (the default for the device) or an int >= 1, "
                             f"got {view_batch!r}")
        self.view_batch = view_batch
        self.timings: Dict[str, float] = defaultdict(float)

    cpu_view_batch: Optional[int] = None   # the CPU default of view_batch (None: all views)

    # -- subclasses ------------------------------------------------------------------------------------------------
    def view_features(self, inputs: torch.Tensor, angle: float, cache: Optional[dict] = None):
        """The feature pyramid of the view ``angle`` of the preprocessed batch ``inputs`` (``cache``: a dict shared
        by the views of one batch, for what they have in common)."""
        raise NotImplementedError

    # -- mmengine API ----------------------------------------------------------------------------------------------
    def forward(self, inputs, data_samples=None, mode: str = "predict"):
        if mode != "predict":
            raise ValueError(f"{type(self).__name__} only predicts (mode='predict'), got mode={mode!r}")
        return self.predict(inputs, data_samples)

    def test_step(self, data):
        if isinstance(data, dict) and isinstance(data.get("inputs"), list) and data["inputs"] \
                and isinstance(data["inputs"][0], list):
            raise ValueError(f"{type(self).__name__} got a batch of TestTimeAug views (a tta_pipeline with "
                             f"TestTimeAug): it makes its views itself; set tta_pipeline to the plain test pipeline")
        data = self.module.data_preprocessor(data, False)
        return self.predict(data["inputs"], data["data_samples"])

    val_step = test_step

    @torch.no_grad()
    def predict(self, inputs: torch.Tensor, data_samples: List[DetDataSample]) -> List[DetDataSample]:
        """The merged detections of every view, rescaled to the original images."""
        per_image = self.predict_views(inputs, data_samples)
        t0 = time.perf_counter()
        out = self.merge_preds(per_image)
        self.timings["merge"] += time.perf_counter() - t0
        return out

    @torch.no_grad()
    def predict_views(self, inputs: torch.Tensor, data_samples: List[DetDataSample]) -> List[List[DetDataSample]]:
        """Per image, one :class:`DetDataSample` per view (in the order of ``angles``, ``metainfo['tta_angle']``)
        whose ``pred_instances`` are the view's detections mapped back to the original canvas (not yet rescaled to
        the image); the image's ground truth, if any, is carried along."""
        canvas = tuple(inputs.shape[-2:])
        for s in data_samples:
            shape = tuple(s.metainfo.get("batch_input_shape", canvas))
            if shape != canvas:
                raise ValueError(f"rotation TTA: batch with mixed canvas sizes: sample {s.metainfo.get('img_id')} "
                                 f"has batch_input_shape {shape} but the batch tensor is {canvas}; rotations are "
                                 f"about one canvas centre per batch")
        by_view: Dict[int, List[DetDataSample]] = {}
        cache: dict = {}
        n = len(data_samples)
        for chunk in self.view_chunks(canvas, inputs.device):
            angles = [self.angles[v] for v in chunk]
            feats = self.views_features(inputs, angles, cache)
            view_samples = [self.view_sample(s, angle, canvas) for angle in angles for s in data_samples]
            t0 = time.perf_counter()
            results = self.predict_view(feats, view_samples)
            self.timings["heads"] += time.perf_counter() - t0
            for j, (v, angle) in enumerate(zip(chunk, angles)):
                by_view[v] = views_to_original(results[j * n:(j + 1) * n], angle, canvas, data_samples)
        return [[by_view[v][i] for v in range(len(self.angles))] for i in range(n)]

    def view_chunks(self, canvas, device) -> List[List[int]]:
        """The views (indices into ``angles``) cut into the groups whose heads run as one batch: views whose rotated
        canvases have one shape (a non-square canvas turns by odd quarter turns into its transpose), in the order of
        ``angles``, at most ``view_batch`` per group (default: all on CUDA; on the CPU ``cpu_view_batch``, what
        tools/benchmark_tta.py --view-batch measured faster there, see the README's TTA timings)."""
        size = self.view_batch
        if size is None:
            size = self.cpu_view_batch if torch.device(device).type == "cpu" else None
        size = size or len(self.angles)
        open_chunk: Dict[tuple, List[int]] = {}
        chunks: List[List[int]] = []
        for v, angle in enumerate(self.angles):
            shape = tuple(rotated_canvas_size(canvas, angle))
            if shape in open_chunk and len(open_chunk[shape]) < size:
                open_chunk[shape].append(v)
            else:
                open_chunk[shape] = [v]
                chunks.append(open_chunk[shape])
        return chunks

    def views_features(self, inputs: torch.Tensor, angles: Sequence[float], cache: Optional[dict] = None):
        """The pyramids of the views ``angles`` stacked along the batch (view-major: all images of the first view,
        then of the second...); one view: :meth:`view_features` itself."""
        pyramids = [self.view_features(inputs, a, cache) for a in angles]
        if len(pyramids) == 1:
            return pyramids[0]
        t0 = time.perf_counter()
        out = tuple(torch.cat(levels) for levels in zip(*pyramids))
        self.timings["stack"] += time.perf_counter() - t0
        return out

    # -- pieces ----------------------------------------------------------------------------------------------------
    view_sample = staticmethod(view_sample)

    def predict_view(self, feats, view_samples: List[DetDataSample]) -> List[InstanceData]:
        """The detector's heads (dense head, or RPN + RoI head) on one view's features, boxes in the view's canvas
        (not rescaled)."""
        det = self.module
        if getattr(det, "with_rpn", False) or hasattr(det, "roi_head"):
            rpn = det.rpn_head.predict(feats, view_samples, rescale=False)
            return det.roi_head.predict(feats, rpn, view_samples, rescale=False)
        return det.bbox_head.predict(feats, view_samples, rescale=False)

    def _extract(self, inputs):
        t0 = time.perf_counter()
        feats = self.module.extract_feat(inputs)
        self.timings["backbone_neck"] += time.perf_counter() - t0
        return feats

    def merge_preds(self, data_samples_list: List[List[DetDataSample]]) -> List[DetDataSample]:
        """Merge each image's views (what :meth:`predict_views` returns) by class-wise rotated NMS (mmcv's
        ``batched_nms(nms_rotated)`` kept set and order, exact IoU only for pairs that can reach ``iou_thr``) after
        ``score_thr``, keep ``max_per_img`` and rescale to the original image."""
        return [self._merge(views) for views in data_samples_list]

    def _merge(self, views: List[DetDataSample]) -> DetDataSample:
        return merge_views(views, self.iou_thr, self.score_thr, self.max_per_img)


@MODELS.register_module()
class FeatureRotationTTAModel(_RotationTTAModel):
    """Rotation TTA that runs the backbone and neck once and rotates the feature pyramid for every view.

    Args:
        module: the detector (or its config); its neck (or backbone) must be equivariant.
        angles: view angles in degrees (default 0, 90, 180, 270; 45° steps for C8; any angle with
            ``fibre_interp``).
        iou_thr, score_thr, max_per_img: the class-wise rotated NMS that merges the views.
        fibre_interp: rule for angles between orientation steps (see :func:`rotplugin.fields.fibre_operator`).
        view_batch: views whose heads run as one batch (the pyramids stacked; :meth:`view_chunks`); default all
            (on the CPU too, where it measured 0.90-0.98x the time of one view at a time). The detections equal
            those of one view at a time up to float rounding.
    """

    def __init__(self, module, **kwargs):
        super().__init__(module, **kwargs)
        try:
            pyramid = feature_pyramid(self.module, "feature-rotation TTA")
        except ValueError as err:
            raise ValueError(f"{err}, so they cannot be rotated passively. Use ImageRotationTTAModel (--tta image) "
                             f"for such models.") from None
        self.field_types, self.strides = pyramid.field_types, pyramid.strides

    def view_features(self, inputs, angle, cache=None):
        cache = {} if cache is None else cache
        if "feats" not in cache:
            cache["feats"] = self._extract(inputs)
        t0 = time.perf_counter()
        # contiguous: heads run compiled ops (mmcv's RoIAlignRotated on CPU) that read raw memory
        out = tuple(rotate_pyramid(cache["feats"], self.field_types, self.strides, angle,
                                   canvas_size=tuple(inputs.shape[-2:]), fibre_interp=self.fibre_interp,
                                   contiguous=True))
        self.timings["rotation"] += time.perf_counter() - t0
        return out


@MODELS.register_module()
class ImageRotationTTAModel(_RotationTTAModel):
    """The baseline: rotate the (preprocessed, canvas-padded) input for every view and run the whole detector
    (batched views, ``view_batch``: the rotated inputs stacked, one backbone pass over all of them; on the CPU one
    view at a time by default, batching measured 1.07-1.08x slower there)."""

    cpu_view_batch = 1

    def view_features(self, inputs, angle, cache=None):
        return self.views_features(inputs, [angle], cache)

    def views_features(self, inputs, angles, cache=None):
        if len(angles) == 1 and angles[0] % 360 == 0:
            return self._extract(inputs)
        t0 = time.perf_counter()
        gspace = getattr(getattr(self.module, "backbone", None), "gspace", None)
        if gspace is None:  # a plain backbone: any C_N gspace describes the image's scalar channels
            gspace = make_gspace(4)
        ft = trivial_field_type(gspace, inputs.shape[1])
        views = [rotate_fields(inputs, ft, a) for a in angles]
        rotated = views[0].contiguous() if len(views) == 1 else torch.cat(views)   # cat: a new, contiguous tensor
        self.timings["rotation"] += time.perf_counter() - t0
        return self._extract(rotated)
