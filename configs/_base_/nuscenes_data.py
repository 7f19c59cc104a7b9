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
    # info files: 'auto' reads bev_mtl_infos_<split>.pkl, else mmdetection3d's nuscenes_infos_<split>.pkl
    # (v1.0-mini: mini_train / mini_val as _train / _val); 'bev_mtl' / 'mmdet3d' pick one format (a
    # missing file is created in it). info_files names other files per split, relative to root:
    # e.g. info_files=dict(train='my_infos_train.pkl')
    info_format='auto',
    info_files=dict(),
)
