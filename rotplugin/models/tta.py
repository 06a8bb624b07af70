"""Rotation test-time augmentation: rotate (and mirror, and resize) the *features* (one backbone pass per scale) or the
*image* (one pass per view).

Both models run the wrapped detector's data preprocessor once, then for every view of ``angles`` x ``flips`` x
``scales`` (:mod:`rotplugin.models.tta_views`: degrees with the sign convention of :mod:`rotplugin.canvas`, mirrors
named as mmdet's ``RandomFlip``, scales as mmdet's TTA ``Resize``) obtain the feature pyramid of the view, run only
the detector's heads on it (dense head, or RPN + RoI head), map the boxes back to the original canvas
(:func:`rotplugin.boxes.unrotate_rboxes`, le90 kept; a scaled view's boxes rescaled by mmdet's rule), merge the views
(``merge='nms'``: class-wise rotated NMS, :func:`rotplugin.models.rotated_nms.batched_rotated_nms`, mmcv's kept set and
order; ``merge='fusion'``: rotated weighted box fusion, :mod:`rotplugin.models.rotated_fusion`) and rescale to the
original image. The heads see ``img_shape = batch_input_shape = the view's canvas``.

A scale ``s != 1`` resizes each preprocessed image (its ``img_shape`` at the top left of the canvas) by ``s``
(bilinear, half-pixel centres as ``cv2.resize`` / mmcv's ``imresize``; sizes rounded) onto a new canvas by the data
preprocessor's rule (:func:`rotplugin.canvas.equivariant_canvas_shape` with its ``max_stride``, or its
``pad_size_divisor``), so that every scale is rotated about the centre of an equivariant canvas.

* :class:`FeatureRotationTTAModel`: ``extract_feat`` once per scale, then the passive rotation of the pyramid
  (:func:`rotplugin.fields.rotate_pyramid`): needs an equivariant neck (or backbone) that declares its
  ``out_field_types`` and ``out_strides``. Mirrors are passive too for a D_N model (``flip=True``); a C_N model
  cannot mirror its fields, so its mirrored views get one more backbone pass on the mirrored image per scale
  (rotations of that pass are passive again). ``counts['backbone_passes']`` counts the passes.
* :class:`ImageRotationTTAModel`: the baseline; resizes, mirrors and rotates the input tensor (exact index ops for
  mirrors and multiples of 90°, bilinear otherwise) and runs ``extract_feat`` per view.

On an equivariant canvas, for multiples of 90° and mirrors (D_N), the two give the same detections up to float
rounding.
"""
from __future__ import annotations

import functools
import time
from collections import defaultdict
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmdet.structures import DetDataSample
from mmengine.model import BaseTTAModel, is_model_wrapper
from mmengine.structures import InstanceData

from rotplugin.canvas import equivariant_canvas_shape, rotated_canvas_size
from rotplugin.equivariance import feature_pyramid
from rotplugin.fields import group_of, rotate_fields, rotate_pyramid
from rotplugin.models.tta_views import (View, make_views, merge_views, parse_angles, parse_merge, view_sample,
                                        views_to_original)
from rotplugin.nn.field_layers import make_gspace, trivial_field_type
from rotplugin.registry import MODELS

__all__ = ["FeatureRotationTTAModel", "ImageRotationTTAModel", "parse_angles", "unwrap_model", "DEFAULT_TTA_MODEL",
           "views_to_original", "merge_views", "resize_on_canvas"]

# what tools/test.py --tta and RotationTTAHook use for a config without tta_model
DEFAULT_TTA_MODEL = dict(type="FeatureRotationTTAModel", angles=[0, 90, 180, 270])


def unwrap_model(model):
    """The module inside a model wrapper (DDP, ...), else the model itself."""
    return model.module if is_model_wrapper(model) else model


@functools.lru_cache(maxsize=16)
def _image_field_type(channels: int):
    """The input image's channels as scalar fields of D4: any rotation and the mirror act on them spatially only."""
    return trivial_field_type(make_gspace(4, flip=True), channels)


def _as_view(view) -> View:
    return view if isinstance(view, View) else View(float(view))


def resize_on_canvas(inputs: torch.Tensor, data_samples: List[DetDataSample], scale: float, canvas_of,
                     pad_value: float = 0.0):
    """Each image of a preprocessed batch (its ``img_shape`` region at the top left of the canvas) resized by
    ``scale`` (bilinear with half-pixel centres, as ``cv2.resize``; the new sizes rounded, at least 1) and placed at
    the top left of a new canvas ``canvas_of((largest new h, largest new w))`` filled with ``pad_value``.

    Returns ``(batch, canvas, factors)``: ``factors[i] = (new w / w, new h / h)`` of image ``i`` (mmdet's
    ``scale_factor`` order)."""
    sizes = []
    for s in data_samples:
        h, w = (int(v) for v in s.metainfo.get("img_shape", inputs.shape[-2:])[:2])
        sizes.append((h, w, max(1, int(round(h * scale))), max(1, int(round(w * scale)))))
    canvas = tuple(int(v) for v in canvas_of((max(z[2] for z in sizes), max(z[3] for z in sizes))))
    out = inputs.new_full((inputs.shape[0], inputs.shape[1], *canvas), float(pad_value))
    factors = []
    for i, (h, w, nh, nw) in enumerate(sizes):
        out[i, :, :nh, :nw] = F.interpolate(inputs[i:i + 1, :, :h, :w], size=(nh, nw), mode="bilinear",
                                            align_corners=False)[0]
        factors.append((nw / w, nh / h))
    return out, canvas, factors


class _RotationTTAModel(BaseTTAModel):
    """Shared machinery: views, heads, box mapping, merge. Subclasses say how a view's features are made
    (:meth:`view_features`).

    mmdet 3.x's TTA convention: a config's ``tta_model = dict(type='FeatureRotationTTAModel', angles=[...])`` and
    ``tools/test.py CONFIG CKPT --tta`` (ours, or mmdet's own) build ``dict(**cfg.tta_model, module=cfg.model)``.
    Unlike mmdet's ``DetTTAModel`` the views are not made by the data pipeline: every batch is the plain test batch
    (``tta_pipeline`` = the test pipeline) and the views are made here, on the preprocessed canvas. As a
    ``BaseTTAModel``, mmengine loads a detector checkpoint into ``module`` without prefixes.

    Per-view API (what :meth:`predict` composes; the benchmarks time its pieces): :meth:`view_sample`,
    :meth:`scaled_input`, :meth:`view_features` (:meth:`views_features` for a batch of views, :meth:`view_chunks`),
    :meth:`predict_view`, :meth:`predict_views` (:meth:`test_step_views` from a test batch) and :meth:`merge_preds`
    (:meth:`merge_each`: one set of views merged by several merges).

    Args (both models):
        angles, flips, scales: the views, ``scales`` x ``flips`` x ``angles`` (:func:`rotplugin.models.tta_views.
            make_views`; default the four quarter turns, no mirror, scale 1).
        merge: ``'nms'`` (default) or ``'fusion'`` (:func:`rotplugin.models.tta_views.merge_views`);
            ``fusion_iou_thr`` the IoU that clusters boxes for the fusion (default ``iou_thr``).
        iou_thr, score_thr, max_per_img: the merge's NMS IoU, score threshold and number of detections kept.
        fibre_interp: rule for feature rotations between orientation steps (feature TTA).
        view_batch: views whose heads run as one batch (:meth:`view_chunks`).
    """

    def __init__(self, module, angles: Sequence[float] = (0, 90, 180, 270), iou_thr: float = 0.1,
                 score_thr: float = 0.05, max_per_img: int = 2000, fibre_interp: Optional[str] = None,
                 view_batch: Optional[int] = None, flips: Sequence[str] = ("none",),
                 scales: Sequence[float] = (1.0,), merge: str = "nms", fusion_iou_thr: Optional[float] = None,
                 data_preprocessor=None):
        if isinstance(module, dict):   # mmrotate's registry (BaseTTAModel would build from mmengine's root one)
            if data_preprocessor is not None:
                module = dict(module, data_preprocessor=data_preprocessor)
            module = MODELS.build(module)
        super().__init__(module=unwrap_model(module))
        self.angles = parse_angles(angles)
        self.views: List[View] = make_views(self.angles, flips, scales)
        self.merge = parse_merge(merge)
        if not 0 <= iou_thr <= 1:
            raise ValueError(f"iou_thr must be in [0, 1], got {iou_thr}")
        if fusion_iou_thr is not None and not 0 < fusion_iou_thr <= 1:
            raise ValueError(f"fusion_iou_thr must be in (0, 1], got {fusion_iou_thr}")
        self.fusion_iou_thr = fusion_iou_thr
        self.iou_thr, self.score_thr, self.max_per_img = iou_thr, score_thr, max_per_img
        self.fibre_interp = fibre_interp
        if view_batch is not None and (isinstance(view_batch, bool) or not isinstance(view_batch, int)
                                       or view_batch < 1):
            raise ValueError(f"view_batch must be None (the default for the device) or an int >= 1, "
                             f"got {view_batch!r}")
        self.view_batch = view_batch
        self.timings: Dict[str, float] = defaultdict(float)
        self.counts: Dict[str, int] = defaultdict(int)

    cpu_view_batch: Optional[int] = None   # the CPU default of view_batch (None: all views)

    # -- subclasses ------------------------------------------------------------------------------------------------
    def view_features(self, inputs: torch.Tensor, view, cache: Optional[dict] = None):
        """The feature pyramid of the view ``view`` (a :class:`View`, or an angle: no mirror, scale 1) of the batch
        ``inputs`` (already resized to the view's scale, :meth:`scaled_input`); ``cache``: a dict shared by the views
        of one batch, for what they have in common."""
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
        """Per image, one :class:`DetDataSample` per view (in the order of ``views``; ``metainfo['tta_angle']``,
        ``'tta_flip'``, and ``'tta_scale'`` for scaled views) whose ``pred_instances`` are the view's detections
        mapped back to the original canvas (not yet rescaled to the image); the image's ground truth, if any, is
        carried along."""
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
            views = [self.views[v] for v in chunk]
            x, view_canvas, factors = self.scaled_input(inputs, data_samples, views[0].scale, cache)
            feats = self.views_features(x, views, cache)
            view_samples = [self.view_sample(s, view.angle, view_canvas) for view in views for s in data_samples]
            t0 = time.perf_counter()
            results = self.predict_view(feats, view_samples)
            self.timings["heads"] += time.perf_counter() - t0
            for j, (v, view) in enumerate(zip(chunk, views)):
                by_view[v] = views_to_original(results[j * n:(j + 1) * n], view.angle, view_canvas, data_samples,
                                               flip=view.flip, scale_factors=factors)
        return [[by_view[v][i] for v in range(len(self.views))] for i in range(n)]

    def view_chunks(self, canvas, device) -> List[List[int]]:
        """The views (indices into ``views``) cut into the groups whose heads run as one batch: views of one scale
        whose rotated canvases have one shape (a non-square canvas turns by odd quarter turns into its transpose),
        in the order of ``views``, at most ``view_batch`` per group (default: all on CUDA; on the CPU
        ``cpu_view_batch``, what tools/benchmark_tta.py --view-batch measured faster there, see the README's TTA
        timings)."""
        size = self.view_batch
        if size is None:
            size = self.cpu_view_batch if torch.device(device).type == "cpu" else None
        size = size or len(self.views)
        open_chunk: Dict[tuple, List[int]] = {}
        chunks: List[List[int]] = []
        for v, view in enumerate(self.views):
            key = (view.scale, tuple(rotated_canvas_size(canvas, view.angle)))
            if key in open_chunk and len(open_chunk[key]) < size:
                open_chunk[key].append(v)
            else:
                open_chunk[key] = [v]
                chunks.append(open_chunk[key])
        return chunks

    def scaled_input(self, inputs: torch.Tensor, data_samples: List[DetDataSample], scale: float,
                     cache: Optional[dict] = None):
        """``(batch, canvas, factors)`` of the views of ``scale``: for 1, ``inputs`` on its canvas and ``None``;
        otherwise :func:`resize_on_canvas` onto the canvas the data preprocessor would pad that size to (kept in
        ``cache``)."""
        if scale == 1.0:
            return inputs, tuple(inputs.shape[-2:]), None
        cache = {} if cache is None else cache
        key = ("input", scale)
        if key not in cache:
            t0 = time.perf_counter()
            pre = self.module.data_preprocessor
            cache[key] = resize_on_canvas(inputs, data_samples, scale, self._canvas_of,
                                          float(getattr(pre, "pad_value", 0.0)))
            self.timings["rotation"] += time.perf_counter() - t0
        return cache[key]

    def _canvas_of(self, shape):
        """The canvas the detector's data preprocessor pads an image of ``shape`` to."""
        pre = self.module.data_preprocessor
        max_stride = getattr(pre, "max_stride", None)
        if max_stride:
            return equivariant_canvas_shape(shape, max_stride)
        d = int(getattr(pre, "pad_size_divisor", 1) or 1)
        return tuple(-(-int(v) // d) * d for v in shape)

    def views_features(self, inputs: torch.Tensor, views: Sequence, cache: Optional[dict] = None):
        """The pyramids of the views ``views`` (of one scale; :class:`View` s or angles) stacked along the batch
        (view-major: all images of the first view, then of the second...); one view: :meth:`view_features`
        itself."""
        pyramids = [self.view_features(inputs, v, cache) for v in views]
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
        self.counts["backbone_passes"] += 1
        return feats

    def merge_preds(self, data_samples_list: List[List[DetDataSample]], merge: Optional[str] = None
                    ) -> List[DetDataSample]:
        """Merge each image's views (what :meth:`predict_views` returns) by ``merge`` (default the model's:
        class-wise rotated NMS, or the rotated weighted box fusion) after ``score_thr``, keep ``max_per_img`` and
        rescale to the original image (:func:`rotplugin.models.tta_views.merge_views`)."""
        merge = self.merge if merge is None else parse_merge(merge)
        return [merge_views(views, self.iou_thr, self.score_thr, self.max_per_img, merge, self.fusion_iou_thr)
                for views in data_samples_list]

    @torch.no_grad()
    def test_step_views(self, data) -> List[List[DetDataSample]]:
        """:meth:`test_step` without the merge: the test batch ``data`` through the data preprocessor, then
        :meth:`predict_views`."""
        data = self.module.data_preprocessor(data, False)
        return self.predict_views(data["inputs"], data["data_samples"])

    def merge_each(self, data_samples_list: List[List[DetDataSample]], merges: Sequence[str]
                   ) -> Tuple[Dict[str, List[DetDataSample]], Dict[str, float]]:
        """One set of views (:meth:`predict_views`) merged by each of ``merges`` in turn (what the benchmarks
        compare from one pass): ``({merge: merged}, {merge: its seconds})``; the model's own ``merge`` is left as
        it was."""
        merged, seconds = {}, {}
        for merge in merges:
            t0 = time.perf_counter()
            merged[merge] = self.merge_preds(data_samples_list, merge)
            seconds[merge] = time.perf_counter() - t0
        return merged, seconds


@MODELS.register_module()
class FeatureRotationTTAModel(_RotationTTAModel):
    """Rotation TTA that runs the backbone and neck once per scale and rotates (D_N: and mirrors) the feature
    pyramid for every view.

    Args:
        module: the detector (or its config); its neck (or backbone) must be equivariant.
        angles: view angles in degrees (default 0, 90, 180, 270; 45° steps for C8; any angle with
            ``fibre_interp``).
        flips, scales, merge, fusion_iou_thr, iou_thr, score_thr, max_per_img: see :class:`_RotationTTAModel`.
            Mirrored views of a C_N model cost one more backbone pass per scale (module doc).
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
        # D_N fields mirror passively; C_N ones need the backbone on the mirrored image
        self.dihedral = all(group_of(ft)[1] for ft in self.field_types)

    def view_features(self, inputs, view, cache=None):
        view = _as_view(view)
        cache = {} if cache is None else cache
        mirror_input = view.flip and not self.dihedral
        key = ("feats", view.scale, mirror_input)
        if key not in cache:
            x = inputs
            if mirror_input:
                t0 = time.perf_counter()
                x = rotate_fields(inputs, _image_field_type(inputs.shape[1]), 0.0, flip=True).contiguous()
                self.timings["rotation"] += time.perf_counter() - t0
            cache[key] = self._extract(x)
        t0 = time.perf_counter()
        # contiguous: heads run compiled ops (mmcv's RoIAlignRotated on CPU) that read raw memory
        out = tuple(rotate_pyramid(cache[key], self.field_types, self.strides, view.angle,
                                   canvas_size=tuple(inputs.shape[-2:]), fibre_interp=self.fibre_interp,
                                   flip=view.flip and not mirror_input, contiguous=True))
        self.timings["rotation"] += time.perf_counter() - t0
        return out


@MODELS.register_module()
class ImageRotationTTAModel(_RotationTTAModel):
    """The baseline: resize, mirror and rotate the (preprocessed, canvas-padded) input for every view and run the
    whole detector (batched views, ``view_batch``: the views' inputs stacked, one backbone pass over all of them;
    on the CPU one view at a time by default, batching measured 1.07-1.08x slower there)."""

    cpu_view_batch = 1

    def view_features(self, inputs, view, cache=None):
        return self.views_features(inputs, [view], cache)

    def views_features(self, inputs, views, cache=None):
        views = [_as_view(v) for v in views]
        if len(views) == 1 and views[0].angle % 360 == 0 and not views[0].flip:
            return self._extract(inputs)
        t0 = time.perf_counter()
        ft = _image_field_type(inputs.shape[1])
        rotated = [rotate_fields(inputs, ft, v.angle, flip=v.flip) for v in views]
        rotated = rotated[0].contiguous() if len(rotated) == 1 else torch.cat(rotated)  # cat: new, contiguous
        self.timings["rotation"] += time.perf_counter() - t0
        return self._extract(rotated)
