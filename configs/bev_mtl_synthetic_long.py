# The demo model over 4x the demo's budget, validated every 240 steps: the learning curve of
# docs/ablations.md ("what more compute buys"). Resumable across sessions:
#   python tools/train.py configs/bev_mtl_synthetic_long.py --work-dir work_dirs/long --resume auto
#   python tools/learning_curve.py work_dirs/long --png docs/images/learning_curve.png --doc docs/ablations.md
# The one-cycle schedule spans all 1920 steps, so a point at step 480 is *not* the demo's result
# (the demo anneals its learning rate by step 480); the last point is what 4x the compute reaches.
_base_ = ['bev_mtl_synthetic.py']
notes = 'The demo model trained for 1920 steps (4x the demo), validated on synth_val every 240 steps.'
train = dict(max_steps=1920, val_every_steps=240, checkpoint_every_steps=120)
