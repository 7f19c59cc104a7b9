# The CPU demo on an 8-camera ring rig:
#   python tools/create_data.py synthetic --root data/synthetic_8cam --rig ring8
#   python tools/train.py configs/bev_mtl_synthetic_8cam.py
_base_ = ['_base_/synthetic_data.py', '_base_/model_r18_demo.py', '_base_/schedule_cpu.py']
# Same short-run recipe as configs/bev_mtl_synthetic.py (stride-8 features, no augmentation; see why there).
data = dict(root='data/synthetic_8cam',
            cameras=['CAM_FRONT', 'CAM_FRONT_LEFT', 'CAM_LEFT', 'CAM_BACK_LEFT', 'CAM_BACK', 'CAM_BACK_RIGHT',
                     'CAM_RIGHT', 'CAM_FRONT_RIGHT'],
            depth_stride=8, augment='off')
model = dict(num_cameras=8, image_encoder=dict(out_stride=8))
notes = 'CPU demo, 8-camera ring rig (ring8).'
