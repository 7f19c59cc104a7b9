# Dataset section for the synthetic nuScenes-format world (tools/create_data.py synthetic).
# Input size, BEV range and map grid are not repeated here: they come from the model section.
data = dict(
    root='data/synthetic',      # nuScenes-format dataroot; info files bev_mtl_infos_<split>.pkl go here
    version='auto',             # table folder (v1.0-mini / v1.0-trainval); auto = the only one present
    train_split='synth_train',  # split names from <root>/<version>/splits.json (or the devkit's)
    val_split='synth_val',
    cameras=['CAM_FRONT', 'CAM_FRONT_RIGHT', 'CAM_FRONT_LEFT', 'CAM_BACK', 'CAM_BACK_LEFT', 'CAM_BACK_RIGHT'],
    augment=dict(image=dict(), bev=dict()),  # AugmentConfig fields (bev_mtl/data/augment.py); {} = defaults
    map_line_width=0.5,         # divider / curb band width of the map targets (metres)
    depth_stride=16,            # LiDAR depth targets at the feature stride (if model.use_depth_supervision)
    cbgs=False,                 # class-balanced grouping and sampling of the training set
    batch_size=4,
    val_batch_size=2,
    num_workers=2,
    val_max_samples=0,          # validation during training on the first N val samples (0 = all)
    # which training scenes keep which labels: full | half (half the scenes unlabelled) |
    # disjoint (half the scenes boxes only, the other half maps only); batching of the
    # differently labelled samples: mixed | alternating
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
