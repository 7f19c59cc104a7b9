# A seconds-per-step model for engine tests on the `tiny_synthetic` fixture (set data.root).
_base_ = ['../../configs/_base_/synthetic_data.py', '../../configs/_base_/model_r18_demo.py',
          '../../configs/_base_/schedule_cpu.py']
data = dict(root='', batch_size=2, val_batch_size=2, num_workers=0, map_line_width=0.8)
model = dict(
    input_size=[192, 64],
    image_encoder=dict(trunk='resnet18', out_channels=16),
    view_transform=dict(out_channels=16, grid=dict(x_range=[-25.6, 25.6], y_range=[-25.6, 25.6], resolution=0.8),
                        depth_bins=dict(start=4.0, stop=36.0, step=2.0)),
    bev_encoder=dict(channels=[16, 32], out_channels=16),
    heads=dict(det=dict(shared_channels=16, head_channels=16, sub_hidden=16),
               map=dict(grid=dict(x_range=[-25.6, 25.6], y_range=[-25.6, 25.6], resolution=0.8), hidden_channels=16)),
)
train = dict(max_steps=5, checkpoint_every_steps=2, log_every_steps=1)
