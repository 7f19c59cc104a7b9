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

# Default synthetic set (24 scenes x 20 samples, nuScenes 6-camera rig, 800x450), then a picture.
demo: venv
	$(VPY) tools/create_data.py synthetic --root $(DATA) --scenes 24 --samples-per-scene 20 \
		--rig nuscenes6 --image-size 800x450 --seed 0 --skip-if-exists
	$(VPY) tools/show_sample.py --root $(DATA) --out $(WORK)/sample.png
	@echo "demo picture: $(WORK)/sample.png"

# pytest exits 5 when it collects no test; that is not a failure of the suite.
test: venv
	$(VPY) -m pytest -q tests; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

clean-venv:
	rm -rf $(VENV)
