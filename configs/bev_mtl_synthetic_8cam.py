# The CPU demo on an 8-camera ring rig:
#   python tools/create_data.py synthetic --root data/synthetic_8cam --rig ring8
#   python tools/train.py configs/bev_mtl_synthetic_8cam.py
# The demo's recipe (configs/bev_mtl_synthetic.py: model, no augmentation, steps), on its own set and rig.
_base_ = ['bev_mtl_synthetic.py']
data = dict(root='data/synthetic_8cam',
            cameras=['CAM_FRONT', 'CAM_FRONT_LEFT', 'CAM_LEFT', 'CAM_BACK_LEFT', 'CAM_BACK', 'CAM_BACK_RIGHT',
                     'CAM_RIGHT', 'CAM_FRONT_RIGHT'])
model = dict(num_cameras=8)
notes = 'CPU demo, 8-camera ring rig (ring8).'
