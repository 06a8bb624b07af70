# Rotated RetinaNet (le90, DOTA-v1.0 1024 patches, 1x schedule) of mmrotate with the equivariant backbone and FPN:
# only the data preprocessor (equivariant canvas 1025 for the P7 stride 128), backbone and neck are replaced.
_base_ = ['mmrotate::rotated_retinanet/rotated-retinanet-rbox-le90_r50_fpn_1x_dota.py']

custom_imports = dict(imports=['rotplugin'], allow_failed_imports=False)
orientation = 8  # C8: every 256 channels are 32 regular fields of 8 orientation channels

model = dict(
    data_preprocessor=dict(type='EquivariantDetDataPreprocessor', pad_size_divisor=1, max_stride=128),
    backbone=dict(
        _delete_=True,
        type='EquivariantResNet',
        depth=50,
        orientation=orientation,
        out_indices=(0, 1, 2, 3),
        frozen_stages=1,
        norm_eval=True,
        # ReDet's ImageNet ReR50 (converted, or the original e2cnn file) goes here:
        # init_cfg=dict(type='Pretrained', checkpoint='re_resnet50_c8_batch256-25b16846.pth'),
        init_cfg=None),
    neck=dict(
        _delete_=True,
        type='EquivariantFPN',
        in_channels=[256, 512, 1024, 2048],
        out_channels=256,
        orientation=orientation,
        start_level=1,
        add_extra_convs='on_input',
        num_outs=5))
