"""A trained rotplugin detector as a *stock* mmrotate detector: mmdet's ``ResNet`` and ``FPN`` carrying the exported
weights, a stock data preprocessor, and no escnn or rotplugin import where a stock module fits.

What changes, and why the detections stay the same:

* **Backbone.** :class:`~rotplugin.models.EquivariantResNet` has ResNet's structure (7×7 stem, max-pool, bottleneck
  or basic blocks with the stride on the 3×3 convolution, 1×1 downsample convolutions), so its exported convolutions
  and batch norms (:meth:`~rotplugin.models.EquivariantResNet.export`) are mmdet ``ResNet`` weights once renamed
  (``normK`` -> ``bnK``). By default every batch norm is *folded* into the preceding convolution (eval mode:
  ``W' = W γ/√(σ²+ε)``, shift ``β - μγ/√(σ²+ε)``). mmdet's ``ResNet`` has no convolution bias and no way to build
  a block without a norm, so the folded shift stays in the batch norm module, whose statistics become the identity
  (mean 0, variance ``1 - ε``, weight 1): ``mmcv.cnn.fuse_conv_bn(model)`` (stock mmcv) then turns every pair into
  one biased convolution without any arithmetic left over, and the ONNX export folds them in the graph.
  ``fold_bn=False`` keeps the batch norms' statistics (to fine-tune).
* **Neck.** :class:`~rotplugin.models.EquivariantFPN` is mmdet's ``FPN`` layer for layer (1×1 laterals and 3×3
  outputs with bias, no norm, no activation, the same extra levels); its ``upsample_mode='bilinear'`` is
  ``upsample_cfg=dict(mode='bilinear', align_corners=True)``, ``'nearest'`` mmdet's default.
* **Canvas.** :class:`~rotplugin.models.EquivariantDetDataPreprocessor` pads each batch to an equivariant canvas
  (:mod:`rotplugin.canvas`), which no stock preprocessor does. The exported pipelines normalise
  (``Normalize``, mmcv) and then pad every image to one fixed canvas (``mmdet.Pad``, zeros after normalisation, at
  the bottom and right, as the preprocessor does; inside mmcv's ``KeyMapper`` so that ``img_shape`` stays the
  resized image's, to which the heads clip boxes); the stock ``DetDataPreprocessor`` then neither normalises nor
  pads. The fixed canvas is that of the largest image the test ``Resize`` produces (1025² for DOTA's 1024 patches):
  the exported model sees exactly the original's input for those images; a smaller image is padded further than the
  original would pad it (more zero border).
* **Heads** keep their weights. rotplugin's :class:`~rotplugin.models.PrunedNMSShared2FCBBoxHead` becomes
  ``mmdet.Shared2FCBBoxHead`` (the same detections, mmcv's NMS); the training-only
  :class:`~rotplugin.models.CircumscribedHBoxOverlaps2D` becomes mmrotate's ``FakeRBboxOverlaps2D`` (equal IoUs).
* **Kept.** Where no stock module fits, the smallest registered rotplugin piece stays and the exported config
  imports only it: ReDet's ``RiRoIExtractor`` (mmcv's ``RiRoIAlignRotated`` has no CPU kernel), from
  :mod:`rotplugin.models.roi_extractors` (no escnn). Rotation TTA (``tta_model``) is rotplugin's and is dropped: the
  ONNX feature-TTA graph (:mod:`rotplugin.deploy.onnx`) carries it instead.
"""
from __future__ import annotations

import inspect
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from mmengine.config import Config
from torch import nn

from rotplugin.canvas import equivariant_canvas_shape, is_equivariant_canvas

__all__ = ["ExportError", "StockExport", "STOCK_EQUIVALENTS", "KEPT_PIECES", "rotplugin_types", "fold_batch_norm",
           "stock_resnet_config", "stock_fpn_config", "stock_resnet_state_dict", "stock_fpn_state_dict",
           "fixed_canvas", "export_stock", "check_state_dict_fits"]

PLAIN_BACKBONE, PLAIN_NECK = "mmdet.ResNet", "mmdet.FPN"
# rotplugin types with a stock equivalent of the same weights and results
STOCK_EQUIVALENTS = {"PrunedNMSShared2FCBBoxHead": "mmdet.Shared2FCBBoxHead",
                     "CircumscribedHBoxOverlaps2D": "FakeRBboxOverlaps2D"}
# rotplugin types without one: kept, with the module the exported config imports (it must not load escnn)
KEPT_PIECES = {"RiRoIExtractor": "rotplugin.models.roi_extractors"}
_DROPPED_KEYS = ("custom_imports", "tta_model", "tta_pipeline")
_PREPROCESSOR_EXTRAS = ("max_stride", "check_finite", "min_gt_size")


class ExportError(ValueError):
    """What ``tools/export.py`` reports (exit status 2): the input cannot be exported as asked."""


def rotplugin_types() -> Dict[str, str]:
    """``{type name: module}`` of every class rotplugin registers in mmrotate's registries (after
    :mod:`rotplugin.mm` is imported)."""
    import rotplugin.mm  # noqa: F401  (registers them)
    from mmengine.registry import Registry
    from mmrotate import registry

    out = {}
    for value in vars(registry).values():
        if isinstance(value, Registry):
            for name, cls in value.module_dict.items():
                if getattr(cls, "__module__", "").startswith("rotplugin"):
                    out[name] = cls.__module__
    return out


def _bare(type_name) -> str:
    return type_name.split(".")[-1] if isinstance(type_name, str) else getattr(type_name, "__name__", "")


def _arguments(cls, cfg: dict) -> dict:
    """The constructor arguments of ``cls`` a config ``cfg`` gives, with the constructor's defaults filled in."""
    params = inspect.signature(cls.__init__).parameters
    out = {k: p.default for k, p in params.items() if k != "self" and p.default is not inspect.Parameter.empty}
    out.update({k: v for k, v in cfg.items() if k != "type"})
    return out


# ---------------------------------------------------------------------------------------------------------------
# backbone and neck
# ---------------------------------------------------------------------------------------------------------------

def stock_resnet_config(backbone_cfg: dict) -> dict:
    """mmdet ``ResNet`` config of an :class:`EquivariantResNet` config (same depth, widths, strides, stages, outputs,
    freezing; ``init_cfg=None``: the weights come from the exported checkpoint)."""
    from rotplugin.models.backbones.equivariant_resnet import EquivariantResNet

    a = _arguments(EquivariantResNet, backbone_cfg)
    return dict(type=PLAIN_BACKBONE, depth=a["depth"], in_channels=a["in_channels"],
                stem_channels=a["stem_channels"], base_channels=a["base_channels"], num_stages=a["num_stages"],
                strides=tuple(a["strides"])[:a["num_stages"]], dilations=(1,) * a["num_stages"],
                out_indices=tuple(a["out_indices"]), style="pytorch", deep_stem=False, avg_down=False,
                frozen_stages=a["frozen_stages"], norm_cfg=dict(type="BN", requires_grad=True),
                norm_eval=a["norm_eval"], with_cp=a["with_cp"], zero_init_residual=False, init_cfg=None)


def stock_fpn_config(neck_cfg: dict) -> dict:
    """mmdet ``FPN`` config of an :class:`EquivariantFPN` config."""
    from rotplugin.models.necks.equivariant_fpn import EquivariantFPN

    a = _arguments(EquivariantFPN, neck_cfg)
    upsample = dict(mode="bilinear", align_corners=True) if a["upsample_mode"] == "bilinear" else dict(mode="nearest")
    return dict(type=PLAIN_NECK, in_channels=list(a["in_channels"]), out_channels=a["out_channels"],
                num_outs=a["num_outs"], start_level=a["start_level"], end_level=a["end_level"],
                add_extra_convs=a["add_extra_convs"], relu_before_extra_convs=a["relu_before_extra_convs"],
                upsample_cfg=upsample)


def fold_batch_norm(weight: torch.Tensor, bn: Dict[str, torch.Tensor], eps: float):
    """Fold an eval-mode batch norm (``weight``, ``bias``, ``running_mean``, ``running_var`` of ``bn``) into the
    bias-free convolution ``weight`` before it: ``(W', b')`` with ``conv(x, W') + b' = bn(conv(x, W))``, computed
    in float64."""
    scale = bn["weight"].double() / torch.sqrt(bn["running_var"].double() + eps)
    w = weight.double() * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    b = bn["bias"].double() - bn["running_mean"].double() * scale
    return w.to(weight.dtype), b.to(weight.dtype)


_NORM = re.compile(r"(^|\.)norm(\d+)\.")


def _conv_of(bn_prefix: str) -> str:
    """The convolution before a batch norm of mmdet's ResNet: ``bnK`` follows ``convK``, ``downsample.1``
    follows ``downsample.0``."""
    if bn_prefix.endswith("downsample.1."):
        return bn_prefix[:-2] + "0."
    m = re.search(r"bn(\d+)\.$", bn_prefix)
    return bn_prefix[:m.start()] + f"conv{m.group(1)}."


def stock_resnet_state_dict(backbone: nn.Module, fold_bn: bool = True) -> "OrderedDict[str, torch.Tensor]":
    """The state dict of mmdet's ``ResNet`` (keys without ``backbone.``) equal to the :class:`EquivariantResNet`
    ``backbone`` in eval mode, batch norms folded (module docstring) or kept."""
    plain = backbone.export()
    eps = {name: m.eps for name, m in plain.named_modules() if isinstance(m, nn.BatchNorm2d)}
    sd = OrderedDict((_NORM.sub(r"\1bn\2.", k), v.detach().clone()) for k, v in plain.state_dict().items())
    if not fold_bn:
        return sd
    for name, e in eps.items():
        prefix = _NORM.sub(r"\1bn\2.", name + ".")
        conv = _conv_of(prefix)
        bn = {k: sd[prefix + k] for k in ("weight", "bias", "running_mean", "running_var")}
        w, b = fold_batch_norm(sd[conv + "weight"], bn, e)
        sd[conv + "weight"] = w
        sd[prefix + "weight"] = torch.ones_like(b)
        sd[prefix + "bias"] = b
        sd[prefix + "running_mean"] = torch.zeros_like(b)
        sd[prefix + "running_var"] = torch.full_like(b, 1.0 - e)   # sqrt(var + eps) = 1: the identity scale
    return sd


_FPN_CONV = re.compile(r"^(lateral_convs|fpn_convs)\.(\d+)\.(weight|bias)$")


def stock_fpn_state_dict(neck: nn.Module) -> "OrderedDict[str, torch.Tensor]":
    """The state dict of mmdet's ``FPN`` (keys without ``neck.``; its ``ConvModule`` puts the convolution at
    ``.conv``) equal to the :class:`EquivariantFPN` ``neck``."""
    out = OrderedDict()
    for k, v in neck.export().state_dict().items():
        m = _FPN_CONV.match(k)
        if m is None:
            raise ExportError(f"EquivariantFPN export has an unexpected parameter {k!r}")
        out[f"{m.group(1)}.{m.group(2)}.conv.{m.group(3)}"] = v.detach().clone()
    return out


# ---------------------------------------------------------------------------------------------------------------
# the config
# ---------------------------------------------------------------------------------------------------------------

def _pipelines(cfg) -> List[list]:
    """Every pipeline (a list of transform dicts) of a config: the dataloaders' datasets (wrappers and
    concatenations too) and the top-level ``*_pipeline`` variables."""
    found = []

    def dataset(d):
        if not isinstance(d, dict):
            return
        if isinstance(d.get("pipeline"), list):
            found.append(d["pipeline"])
        dataset(d.get("dataset"))
        for sub in d.get("datasets", []) or []:
            dataset(sub)

    for key in ("train_dataloader", "val_dataloader", "test_dataloader"):
        if isinstance(cfg.get(key), dict):
            dataset(cfg[key].get("dataset"))
    for key, value in cfg.items():
        if key.endswith("_pipeline") and isinstance(value, list) and all(isinstance(t, dict) for t in value):
            found.append(value)
    return found


def fixed_canvas(cfg, max_stride: int) -> Tuple[int, int]:
    """The canvas ``(H, W)`` of the largest image the test pipeline's ``Resize`` produces: its ``scale`` (both sides
    its longer one with ``keep_ratio``), made equivariant for ``max_stride``. :class:`ExportError` without one."""
    pipeline = (cfg.get("test_dataloader") or {}).get("dataset", {}).get("pipeline", [])
    sizes = [t for t in pipeline if isinstance(t, dict) and _bare(t.get("type")) == "Resize" and t.get("scale")]
    if not sizes:
        raise ExportError("the test pipeline has no Resize with a fixed scale, so the canvas the exported model pads "
                          "to is not known: pass the canvas (tools/export.py --canvas H W)")
    scale = sizes[-1]["scale"]
    scale = (scale, scale) if isinstance(scale, int) else tuple(scale)
    w, h = scale
    if sizes[-1].get("keep_ratio", False):
        h = w = max(h, w)
    return equivariant_canvas_shape((int(h), int(w)), max_stride)


def _replace_types(node, swapped: set, kept: Dict[str, str], remaining: Dict[str, str], rp_types: Dict[str, str],
                   path=""):
    """Swap rotplugin types with a stock equivalent in place (recorded in ``swapped``); record kept pieces and what
    has neither."""
    if isinstance(node, dict):
        t = node.get("type")
        if isinstance(t, str) and _bare(t) in rp_types:
            name = _bare(t)
            if name in STOCK_EQUIVALENTS:
                node["type"] = STOCK_EQUIVALENTS[name]
                swapped.add(name)
            elif name in KEPT_PIECES:
                kept[name] = KEPT_PIECES[name]
            else:
                remaining.setdefault(name, path or "(top level)")
        for k, v in node.items():
            _replace_types(v, swapped, kept, remaining, rp_types, f"{path}.{k}" if path else k)
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            _replace_types(v, swapped, kept, remaining, rp_types, f"{path}[{i}]")


@dataclass
class StockExport:
    """What :func:`export_stock` returns: the stock config (``config.pretty_text`` is ``model.py``), the full
    detector state dict, the canvas, the rotplugin pieces kept (type -> module) and the header lines."""
    config: Config
    state_dict: "OrderedDict[str, torch.Tensor]"
    canvas: Tuple[int, int]
    kept: Dict[str, str] = field(default_factory=dict)
    header: List[str] = field(default_factory=list)

    def text(self) -> str:
        """``model.py``: the header as comments, then the config."""
        return "".join(f"# {line}\n" if line else "#\n" for line in self.header) + "\n" + self.config.pretty_text


def _kind(module) -> str:
    mod = type(module).__module__
    if mod.startswith("rotplugin"):
        return "rotplugin"
    if mod.split(".")[0] in ("mmdet", "mmrotate", "mmcv", "mmengine", "torch"):
        return "stock"
    return "other"


def export_stock(cfg: Config, model: nn.Module, canvas: Optional[Sequence[int]] = None, fold_bn: bool = True,
                 source: str = "") -> StockExport:
    """The stock mmrotate detector of ``cfg`` whose weights are those of ``model`` (``cfg``'s detector, weights
    loaded). ``canvas``: the fixed canvas ``(H, W)`` (default :func:`fixed_canvas`). :class:`ExportError` for a
    config that is already plain, a backbone or neck without an export, or a rotplugin type with neither a stock
    equivalent nor a kept piece."""
    from rotplugin.models.backbones.equivariant_resnet import EquivariantResNet
    from rotplugin.models.data_preprocessor import EquivariantDetDataPreprocessor
    from rotplugin.models.necks.equivariant_fpn import EquivariantFPN

    from rotplugin.models.necks.feature_rotation_neck import FeatureRotationNeck

    backbone, neck = getattr(model, "backbone", None), getattr(model, "neck", None)
    neck_cfg = cfg.model.get("neck")
    if isinstance(neck, FeatureRotationNeck) and neck.angle % 360 == 0:   # angle 0: the inner neck as it is
        neck, neck_cfg = neck.neck, neck_cfg["neck"]
    parts = {"backbone": backbone, "neck": neck}
    if all(m is None or _kind(m) == "stock" for m in parts.values()) \
            and _kind(getattr(model, "data_preprocessor", None)) != "rotplugin":
        names = ", ".join(f"{k} {type(m).__name__}" for k, m in parts.items() if m is not None)
        raise ExportError(f"the model is already plain ({names}): there is nothing to export; stock mmrotate runs "
                          f"this config as it is")
    known = {"backbone": EquivariantResNet, "neck": EquivariantFPN}
    for name, m in parts.items():
        if m is not None and _kind(m) != "stock" and not isinstance(m, known[name]):
            has = "has an export() but no stock equivalent" if callable(getattr(m, "export", None)) \
                else "has no export() and no stock equivalent"
            raise ExportError(f"{name} {type(m).__name__} {has}: tools/export.py maps {known[name].__name__} onto "
                              f"{ {'backbone': PLAIN_BACKBONE, 'neck': PLAIN_NECK}[name]} only")

    model = model.eval()
    out = Config(cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg))
    for key in _DROPPED_KEYS:
        out.pop(key, None)
    mcfg = out.model
    sd = OrderedDict((k, v.detach().clone()) for k, v in model.state_dict().items()
                     if not (k.startswith("backbone.") and isinstance(backbone, EquivariantResNet))
                     and not (k.startswith("neck.") and isinstance(neck, EquivariantFPN)))
    replaced = []
    if isinstance(backbone, EquivariantResNet):
        mcfg.backbone = stock_resnet_config(mcfg.backbone)
        sd.update(("backbone." + k, v) for k, v in stock_resnet_state_dict(backbone, fold_bn).items())
        replaced.append(f"backbone EquivariantResNet-{backbone.depth} ({'D' if backbone.flip else 'C'}"
                        f"{backbone.orientation}) -> {PLAIN_BACKBONE}, batch norms "
                        + ("folded into the convolutions (see below)" if fold_bn else "kept with their statistics"))
    if isinstance(neck, EquivariantFPN):
        mcfg.neck = stock_fpn_config(neck_cfg)
        sd.update(("neck." + k, v) for k, v in stock_fpn_state_dict(neck).items())
        replaced.append(f"neck EquivariantFPN ({neck.upsample_mode} upsampling) -> {PLAIN_NECK} "
                        f"(upsample_cfg={mcfg.neck['upsample_cfg']})")

    pre = model.data_preprocessor
    max_stride = getattr(pre, "max_stride", None)
    if canvas is None:
        if max_stride is None:
            raise ExportError("the data preprocessor declares no max_stride: pass the canvas (--canvas H W)")
        canvas = fixed_canvas(cfg, max_stride)
    canvas = (int(canvas[0]), int(canvas[1]))
    if max_stride is not None and not is_equivariant_canvas(canvas, max_stride):
        raise ExportError(f"canvas {canvas} is not equivariant for the model's max_stride {max_stride} (each side "
                          f"≡ 1 mod {max_stride}, e.g. {equivariant_canvas_shape(canvas, max_stride)})")
    if isinstance(pre, EquivariantDetDataPreprocessor):
        pcfg = {k: v for k, v in mcfg.data_preprocessor.items() if k not in _PREPROCESSOR_EXTRAS}
        mean, std = pre.mean.flatten().tolist(), pre.std.flatten().tolist()
        to_rgb = bool(getattr(pre, "_channel_conversion", pcfg.get("bgr_to_rgb", False)))
        pcfg.update(type="mmdet.DetDataPreprocessor", mean=None, std=None, bgr_to_rgb=False, rgb_to_bgr=False,
                    pad_size_divisor=1)
        mcfg.data_preprocessor = pcfg
        # the pad is wrapped in mmcv's KeyMapper so that it changes the image (and records pad_shape) but leaves
        # img_shape the resized image's, as the canvas preprocessor does: the heads clip boxes to img_shape
        steps = [dict(type="Normalize", mean=mean, std=std, to_rgb=to_rgb),
                 dict(type="KeyMapper", mapping=dict(img="img", pad_shape="pad_shape"), allow_nonexist_keys=True,
                      transforms=[dict(type="mmdet.Pad", size=(canvas[1], canvas[0]), pad_val=dict(img=0))])]
        for pipeline in _pipelines(out):
            at = [i for i, t in enumerate(pipeline) if _bare(t.get("type")) == "PackDetInputs"]
            if at:
                pipeline[at[0]:at[0]] = [dict(s) for s in steps]
        replaced.append(f"data preprocessor EquivariantDetDataPreprocessor -> mmdet.DetDataPreprocessor without "
                        f"normalisation or padding; every pipeline normalises (mean {[round(m, 3) for m in mean]}, "
                        f"std {[round(s, 3) for s in std]}, to_rgb={to_rgb}) and pads to the fixed canvas "
                        f"{canvas[0]}x{canvas[1]} (H x W) before PackDetInputs")

    rp_types = rotplugin_types()
    swapped, kept, remaining = set(), {}, {}
    _replace_types(out._cfg_dict, swapped, kept, remaining, rp_types)
    if remaining:
        listed = ", ".join(f"{t} (at {p})" for t, p in remaining.items())
        raise ExportError(f"the config uses rotplugin types with no stock equivalent: {listed}")
    if kept:
        out.custom_imports = dict(imports=sorted(set(kept.values())), allow_failed_imports=False)

    header = [f"Stock mmrotate detector exported by rotplugin's tools/export.py{(' from ' + source) if source else ''}.",
              "Load it with stock mmrotate 1.x (no escnn" + ("" if kept else ", no rotplugin") + "):",
              "    from mmrotate.utils import register_all_modules; register_all_modules()",
              "    from mmdet.apis import init_detector, inference_detector",
              "    model = init_detector('model.py', 'model.pth', device='cpu')",
              "", "What changed against the source config:"]
    header += [f"  - {r}" for r in replaced]
    if fold_bn and isinstance(backbone, EquivariantResNet):
        header += ["  - folded batch norms: each BN holds only the folded shift (mean 0, variance 1 - eps, weight 1);",
                   "    mmcv.cnn.fuse_conv_bn(model) merges it into the convolution's bias; not for fine-tuning",
                   "    (export with --keep-bn for that)"]
    header += [f"  - {name} -> {STOCK_EQUIVALENTS[name]} (same weights and results)" for name in sorted(swapped)]
    header += [f"  - kept rotplugin piece: {name} from {module} (no stock module fits: mmcv's RiRoIAlignRotated is "
               f"CUDA-only); it imports no escnn" for name, module in kept.items()]
    header += ["  - dropped: rotation TTA (tta_model / tta_pipeline are rotplugin's; model.onnx's feature-TTA graph, "
               "if exported, carries it)", "",
               f"Inputs: images up to the canvas {canvas[0]}x{canvas[1]}; detections equal the source model's for",
               "images whose original canvas is this one (e.g. full-size patches)."]
    return StockExport(out, sd, canvas, kept, header)


# ---------------------------------------------------------------------------------------------------------------
# checkpoints and files
# ---------------------------------------------------------------------------------------------------------------

def check_state_dict_fits(model: nn.Module, state_dict: dict, what: str) -> None:
    """:class:`ExportError` naming ``what`` unless ``state_dict`` has exactly ``model``'s keys and shapes (a
    checkpoint of another architecture, or a config that does not describe it)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state_dict and hasattr(state_dict[k], "shape") and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    if not (missing or unexpected or shapes):
        return

    def few(keys):
        return ", ".join(keys[:3]) + (f", ... ({len(keys)} in all)" if len(keys) > 3 else "")

    parts = []
    if missing:
        parts.append(f"{len(missing)} of the model's keys missing ({few(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys ({few(unexpected)})")
    if shapes:
        parts.append(f"{len(shapes)} with other shapes ({few(shapes)})")
    from rotplugin.convert.redet import is_redet_state_dict

    hint = ("; it is an e2cnn ReDet checkpoint: convert it first with tools/convert_redet_checkpoint.py"
            if is_redet_state_dict(state_dict) else "")
    raise ExportError(f"{what} does not fit the config's model: {'; '.join(parts)}. Is it a checkpoint of another "
                      f"architecture?{hint}")
