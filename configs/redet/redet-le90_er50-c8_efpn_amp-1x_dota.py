# Mixed-precision training of the config in _base_, as mmrotate's own amp-1x configs do for the stock detector:
# mmengine's AmpOptimWrapper (float16 autocast with dynamic loss scaling on CUDA; the rest of the optimizer
# settings are inherited), and box decoding, losses and RoI pooling kept in float32 (Float32BoxCodingHook, what
# mmdet 2.x's force_fp32 did). mmengine builds the wrapper only where an accelerator is present; the CPU test runs it
# under bfloat16 autocast (tests/test_amp.py). The README ("Mixed precision") has the rounding's size.
_base_ = ['./redet-le90_er50-c8_efpn_1x_dota.py']

optim_wrapper = dict(type='AmpOptimWrapper', loss_scale='dynamic')
custom_hooks = [dict(type='Float32BoxCodingHook')]
