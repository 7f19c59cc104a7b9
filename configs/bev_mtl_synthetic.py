# CPU demo on the synthetic world: `make demo` trains and tests this config.
_base_ = ['_base_/synthetic_data.py', '_base_/model_r18_demo.py', '_base_/schedule_cpu.py']
notes = 'CPU demo: ResNet-18 at 352x128, 0.8 m BEV, det + map heads, trained from scratch.'
