# A CPU-sized multi-task model: ResNet-18 trunk at 256x96, 0.8 m BEV cells over +-51.2 m, narrow
# BEV encoder and heads. Sized for training on a 2-core CPU: ~0.47 s per sample and step
# (forward + backward, batch 4); the full-width variant (352x128, 64-channel BEV) costs ~1.05 s.
model = dict(
    num_cameras=6,
    input_size=[256, 96],  # (W, H) network input; images are resized / cropped to it
    image_encoder=dict(trunk='resnet18', out_channels=64, out_stride=16, pretrained=None, freeze_stages=-1),
    view_transform=dict(
        out_channels=32,
        grid=dict(x_range=[-51.2, 51.2], y_range=[-51.2, 51.2], resolution=0.8),
        depth_bins=dict(start=4.0, stop=45.0, step=1.0)),
    bev_encoder=dict(channels=[48, 96, 192], out_channels=48),
    heads=dict(
        # one class group (CenterPoint uses six on GPUs): each group costs 6 conv branches at full grid size
        det=dict(tasks=[['car', 'truck', 'construction_vehicle', 'bus', 'trailer', 'barrier', 'motorcycle',
                         'bicycle', 'pedestrian', 'traffic_cone', 'traffic_light']],
                 traffic_light=True, shared_channels=48, head_channels=32, score_threshold=0.05, top_k=300,
                 nms_radius=dict(car=4.0, truck=6.0, construction_vehicle=6.0, bus=8.0, trailer=8.0, barrier=1.0,
                                 motorcycle=1.0, bicycle=1.0, pedestrian=0.5, traffic_cone=0.5,
                                 traffic_light=1.0)),
        map=dict(classes=['drivable_area', 'ped_crossing', 'walkway', 'carpark_area', 'divider', 'curb'],
                 grid=dict(x_range=[-50.0, 50.0], y_range=[-50.0, 50.0], resolution=0.5),
                 hidden_channels=32)),
    use_depth_supervision=True,
    depth_weight=1.0,
    loss_weights=dict(),
)
