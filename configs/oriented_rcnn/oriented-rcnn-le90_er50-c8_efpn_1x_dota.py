# Oriented R-CNN (le90, DOTA-v1.0 1024 patches, 1x schedule) of mmrotate with the equivariant backbone and FPN:
# only the data preprocessor (equivariant canvas 1025 for the P6 stride 64), backbone and neck are replaced, and the RoI
# bbox head's test-time rotated NMS is rotplugin's pruned one (PrunedNMSShared2FCBBoxHead: the same detections).
_base_ = ['mmrotate::oriented_rcnn/oriented-rcnn-le90_r50_fpn_1x_dota.py']

# The preprocessor / backbone / neck block below repeats in each shipped config: every config inherits its detector
# from mmrotate's, and mmengine cannot merge one `model` from two bases (duplicate keys among bases are an error).
custom_imports = dict(imports=['rotplugin.mm'], allow_failed_imports=False)
orientation = 8

model = dict(
    data_preprocessor=dict(type='EquivariantDetDataPreprocessor', pad_size_divisor=1, max_stride=64),
    backbone=dict(
        _delete_=True,
        type='EquivariantResNet',
        depth=50,
        orientation=orientation,
        out_indices=(0, 1, 2, 3),
        frozen_stages=1,
        norm_eval=True,
        init_cfg=None),
    neck=dict(
        _delete_=True,
        type='EquivariantFPN',
        in_channels=[256, 512, 1024, 2048],
        out_channels=256,
        orientation=orientation,
        num_outs=5),
    # aligned=False puts feature i of stride s at image coordinate s*i, like the anchors (center_offset=0) and the
    # feature grid of rotplugin.canvas: RoI pooling then commutes exactly with rotations about the canvas centre
    # (aligned=True shifts the grid by half a feature pixel, a different centre at every stride).
    roi_head=dict(
        bbox_roi_extractor=dict(roi_layer=dict(aligned=False)),
        bbox_head=dict(type='PrunedNMSShared2FCBBoxHead')))

# Rotation TTA the mmdet 3.x way: `tools/test.py CONFIG CKPT --tta` (mmdet's tools/test.py --tta too) tests
# dict(**tta_model, module=model): backbone + neck once, the heads on the rotated feature pyramids, the views merged by
# class-wise rotated NMS with the thresholds of the detector's own test_cfg. The views are made on the canvas, not by
# the data pipeline, so the TTA pipeline is the plain test pipeline.
tta_model = dict(type='FeatureRotationTTAModel', angles=[0, 90, 180, 270], iou_thr=0.1, score_thr=0.05,
                 max_per_img=2000)
tta_pipeline = {{_base_.val_pipeline}}
