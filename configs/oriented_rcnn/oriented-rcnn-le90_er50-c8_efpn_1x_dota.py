# Oriented R-CNN (le90, DOTA-v1.0 1024 patches, 1x schedule) of mmrotate with the equivariant backbone and FPN:
# only the data preprocessor (equivariant canvas 1025 for the P6 stride 64), backbone and neck are replaced, and the RoI
# bbox head's test-time rotated NMS is rotplugin's pruned one (FastNMSShared2FCBBoxHead: the same detections).
_base_ = ['mmrotate::oriented_rcnn/oriented-rcnn-le90_r50_fpn_1x_dota.py']

custom_imports = dict(imports=['rotplugin'], allow_failed_imports=False)
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
        bbox_head=dict(type='FastNMSShared2FCBBoxHead')))
