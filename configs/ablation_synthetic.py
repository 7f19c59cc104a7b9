# The multi-task ablations of docs/ablations.md (tools/ablate.py): the CPU demo model at the budget
# the tables were measured with -- 260 steps of batch 4 in fp32 with the default augmentation --
# kept apart from configs/bev_mtl_synthetic.py so that tuning the demo does not change them.
_base_ = ['_base_/synthetic_data.py', '_base_/model_r18_demo.py', '_base_/schedule_cpu.py']
train = dict(max_steps=260, precision='32-true')
notes = 'Ablation base: CPU demo model, 260 fp32 steps, default augmentation.'
