# bev-mtl: two commands. `make demo` and `make test`; both build the venv from scratch if needed.
PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DATA   ?= data/synthetic
WORK   ?= work_dirs/demo

.PHONY: venv demo test clean-venv

$(STAMP): requirements.txt setup.py
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --disable-pip-version-check -q -r requirements.txt
	$(VPY) -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

# The demo: synthetic world (24 scenes x 20 samples, nuScenes 6-camera rig, 800x450) -> train the
# CPU demo config -> official nuScenes metrics + map IoU + attribute accuracy -> BEV pictures.
# Re-running continues from $(WORK)/last.ckpt (--resume auto) instead of training again.
demo: venv
	$(VPY) tools/create_data.py synthetic --root $(DATA) --scenes 24 --samples-per-scene 20 \
		--rig nuscenes6 --image-size 800x450 --seed 0 --skip-if-exists
	$(VPY) tools/train.py configs/bev_mtl_synthetic.py --work-dir $(WORK) --resume auto \
		--cfg-options data.root=$(DATA)
	$(VPY) tools/test.py configs/bev_mtl_synthetic.py $(WORK)/last.ckpt --out $(WORK)/test \
		--cfg-options data.root=$(DATA)
	$(VPY) tools/visualize.py configs/bev_mtl_synthetic.py --ckpt $(WORK)/last.ckpt --out $(WORK)/vis \
		--samples 4 --cfg-options data.root=$(DATA)
	@echo "demo: metrics $(WORK)/test/metrics.md, pictures $(WORK)/vis/"

# pytest exits 5 when it collects no test; that is not a failure of the suite.
test: venv
	$(VPY) -m pytest -q tests; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

clean-venv:
	rm -rf $(VENV)
