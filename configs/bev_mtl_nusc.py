# Real-nuScenes recipe (GPU-sized): 6 cameras, ResNet-50 at 704x256, 0.5 m BEV cells.
#   8 GPUs:  bash tools/dist_train.sh configs/bev_mtl_nusc.py 8
#   smoke test on the synthetic world (CPU):
#   python tools/train.py configs/bev_mtl_nusc.py --cfg-options data.root=data/synthetic data.version=auto \
#       data.train_split=synth_train data.val_split=synth_val train.max_steps=1 data.batch_size=1
# The BEV spans +-51 m (204 x 204 cells of 0.5 m): 102.4 m is no whole number of 0.5 m cells, and
# the nuScenes detection range ends at 50 m. Map targets use the BEVFusion 200 x 200 grid (+-50 m).
_base_ = ['_base_/nuscenes_data.py']
model = dict(
    num_cameras=6,
    input_size=[704, 256],
    # ImageNet ResNet-50 through torchvision's own cache ($TORCH_HOME/hub/checkpoints/resnet50-11ad3fa6.pth,
    # downloaded once with its hash check; offline clusters pre-seed it: docs/getting_started.md)
    image_encoder=dict(trunk='resnet50', out_channels=256, out_stride=16,
                       pretrained='torchvision:ResNet50_Weights.IMAGENET1K_V2', freeze_stages=-1),
    view_transform=dict(out_channels=80, grid=dict(x_range=[-51.0, 51.0], y_range=[-51.0, 51.0], resolution=0.5),
                        depth_bins=dict(start=1.0, stop=60.0, step=0.5)),
    bev_encoder=dict(channels=[160, 320, 640], out_channels=256),
    heads=dict(
        det=dict(out_stride=1, shared_channels=64, head_channels=64, score_threshold=0.05, top_k=500,
                 traffic_light=False,
                 nms_radius=dict(car=4.0, truck=12.0, construction_vehicle=12.0, bus=10.0, trailer=10.0, barrier=1.0,
                                 motorcycle=0.85, bicycle=0.85, pedestrian=0.175, traffic_cone=0.175)),
        map=dict(classes=['drivable_area', 'ped_crossing', 'walkway', 'stop_line', 'carpark_area', 'divider'],
                 grid=dict(x_range=[-50.0, 50.0], y_range=[-50.0, 50.0], resolution=0.5), hidden_channels=128)),
    use_depth_supervision=True,
    depth_weight=3.0,
    loss_weights=dict(),
)
optim = dict(type='AdamW', lr=2e-4, weight_decay=1e-2, betas=[0.9, 0.999])
schedule = dict(type='cosine', warmup=0.02)
# ~20 epochs of the CBGS-resampled train split (~128k samples) at 8 GPUs x 4 = 32 per step
train = dict(max_steps=80000, val_every_steps=8000, log_every_steps=50, grad_clip=35.0, precision='16-mixed',
             ema=dict(enabled=True, decay=0.9999), checkpoint_every_steps=2000, deterministic=False)
mtl = dict(weighting=dict(type='fixed'), tasks=None, distill=dict(enabled=False))
seed = 0
notes = 'nuScenes recipe: ResNet-50 704x256, 0.5 m BEV, det + map, CBGS, AdamW cosine, EMA.'
