# Delineo: `make run` (web server + one Celery worker + the DICOM node) and `make test` set themselves up.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
APT_PACKAGES := dicom3tools plastimatch dcm2niix chromium chromium-driver redis-server elastix dcmtk orthanc orthanc-dicomweb openssl
APT_BINARIES := dciodvfy plastimatch dcm2niix chromium chromedriver redis-server elastix transformix storescu storescp echoscu Orthanc openssl
APT_FILES := /usr/share/orthanc/plugins/libOrthancDicomWeb.so

.PHONY: run test lint install system-packages bench bench-load train train-piece publish-hn clean

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

install: $(VENV)/.installed

# Debian tools the tests use: dciodvfy, plastimatch, dcm2niix, headless Chromium, redis-server (fault tests), elastix,
# dcmtk (storescu, storescp, echoscu) and Orthanc with its DICOMweb plugin: real DICOM peers of the node's tests
# (each test starts its own Orthanc on free loopback ports; the Debian package's own service is not used);
# openssl makes the certificates of the DICOM TLS tests.
system-packages:
	@missing=""; for b in $(APT_BINARIES); do command -v $$b >/dev/null || missing=1; done; \
	for f in $(APT_FILES); do test -e $$f || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(APT_PACKAGES); \
	fi

run: install
	mkdir -p var
	$(PY) manage.py migrate --noinput
	$(PY) manage.py ensure_local_account
	@echo "Starting one Celery worker (log: var/worker.log), the DICOM node (log: var/dicom-node.log) and the web server."
	@echo "Open http://$(HOST):$(PORT)/ and log in with the account above."
	@echo "DICOM node: AE title $${DICOM_NODE_AE_TITLE:-DELINEO} on $${DICOM_NODE_HOST:-127.0.0.1}:$${DICOM_NODE_PORT:-11112}; add peers with $(PY) manage.py dicom_peer add (docs/dicom-networking.md)."
	$(VENV)/bin/celery -A webapp worker -c 1 -l info > var/worker.log 2>&1 & \
	worker=$$!; \
	$(PY) manage.py dicom_node > var/dicom-node.log 2>&1 & \
	node=$$!; trap "kill $$worker $$node 2>/dev/null" EXIT INT TERM; \
	$(VENV)/bin/gunicorn -c webapp/gunicorn.conf.py -b $(HOST):$(PORT)

test: install system-packages lint
	$(PY) -m pytest

# Lint, format check and type check of engine/ (settings in pyproject.toml).
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: install
	$(PY) bench/upload_to_rtstruct.py

# 20 concurrent uploads, then a 50-job soak on two workers (PostgreSQL and Redis on 127.0.0.1).
bench-load: install
	$(PY) bench/load.py

# Training: RUN names experiments/configs/RUN.json; it goes on from var/experiments/RUN or
# experiments/state/RUN.pt and stops cleanly on Ctrl-C (docs/training.md; one training
# process at a time: "Sharing the CPU" there says why).
RUN ?= hn-oar
DATA ?= ../shared/data/openkbp
MINUTES ?= 7
train: install system-packages
	nice -n 10 $(PY) -m engine train experiments/configs/$(RUN).json --data $(DATA)

# One piece of at most MINUTES minutes on a lent GPU machine (CUDA and bfloat16 autocast
# are used when present), from the data and wheels of experiments/gpu_pack.py carried in
# .gpu/ (docs/training.md, "On a GPU"); the portable state is copied to $$OUT.
train-piece:
	python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/wheels/*.whl
	python3 experiments/gpu_pack.py unpack /tmp/openkbp
	PYTHONPATH=/tmp/site python3 -m engine train experiments/configs/$(RUN).json --data /tmp/openkbp --minutes $(MINUTES)
	if [ -n "$$OUT" ]; then cp experiments/state/$(RUN).pt var/experiments/$(RUN)/log.jsonl "$$OUT"/; fi

# Publish the long run HN_RUN (hn; docs/training.md, "The long run") as hn-rt and hn-oar (its organ
# channels) from its best checkpoint on val: test-time mirroring and bfloat16 inference
# chosen on val, test-split figures (float32) in the cards, the domain check's
# thresholds from val, the golden label maps (float32)
# regenerated, and the contour audit calibrated again for the new network (python -m engine calibrate-audit).
# About an hour on 2 cores.
HN_RUN ?= hn
HN_ORGANS := Brainstem SpinalCord Parotid_R Parotid_L Esophagus Larynx Mandible
publish-hn: install
	$(PY) -m engine publish --run var/experiments/$(HN_RUN) --model hn-rt --training docs/training/$(HN_RUN).json
	$(PY) -m engine publish --run var/experiments/$(HN_RUN) --model hn-oar --training docs/training/$(HN_RUN).json --structures $(HN_ORGANS)
	for model in hn-rt hn-oar; do \
	  $(PY) experiments/test_time_mirror.py $$model --data $(DATA) --write-card && \
	  $(PY) experiments/inference_settings.py $$model --data $(DATA) --write-card && \
	  DELINEO_INFERENCE_FLOAT32=1 $(PY) -m engine evaluate --model $$model --data $(DATA) --split test --card && \
	  DELINEO_INFERENCE_FLOAT32=1 $(PY) -m engine segment $(DATA)/pt_104/ct.nii.gz --model $$model --out var/golden/$$model && \
	  cp var/golden/$$model/labels.nii.gz tests/golden/$${model}_pt_104.nii.gz || exit 1; \
	done
	$(PY) experiments/domain_thresholds.py --write-cards
	$(PY) -m engine calibrate-audit --model hn-rt --data $(DATA)

clean:
	rm -rf $(VENV) var test-output
