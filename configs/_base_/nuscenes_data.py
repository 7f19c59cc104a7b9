# Dataset section for real nuScenes (see docs/getting_started.md for the download layout).
data = dict(
    root='data/nuscenes',
    version='v1.0-trainval',
    train_split='train',
    val_split='val',
    cameras=['CAM_FRONT', 'CAM_FRONT_RIGHT', 'CAM_FRONT_LEFT', 'CAM_BACK', 'CAM_BACK_LEFT', 'CAM_BACK_RIGHT'],
    augment=dict(image=dict(), bev=dict()),
    map_line_width=0.5,
    depth_stride=16,
    cbgs=True,                  # CBGS resampling (about 4.5x the samples per epoch on nuScenes)
    batch_size=4,               # per GPU
    val_batch_size=4,
    num_workers=6,
    val_max_samples=1000,       # validation during training on 1000 val samples; tools/test.py uses all
    labelled=dict(scheme='full', seed=0, batching='mixed'),
    # keep finished training items in <work_dir>/item_cache when they cannot change between epochs
    # (augment='off'): later epochs skip JPEG decoding, LiDAR projection and map rasterising
    cache_items=True,
)
