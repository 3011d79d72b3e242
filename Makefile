# lavise-nb: `make demo`, `make test` and `make lab` set everything up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= outputs
STAMP := $(VENV)/.installed

.PHONY: setup demo run test lab quality bench bench-scale bench-cuda clean-outputs

setup: $(STAMP)

# torch and torchvision are installed in one call so they resolve to a matching pair. uv (from PyPI, into the venv)
# installs about 4x faster than pip; it reads no pip.conf, so pip's configured indexes and constraints are handed
# to it. Where uv cannot install, pip does the same install.
PACKAGES := "torch>=2.1" "torchvision>=0.16" -e ".[test]"
PIP_SETTING = $(shell $(PYTHON) -m pip config list 2>/dev/null | sed -n "s/^global\.$(1)='\(.*\)'$$/\1/p")
UV_FLAGS = --index-strategy unsafe-best-match $(foreach url,$(call PIP_SETTING,extra-index-url),--extra-index-url $(url)) \
	$(foreach file,$(call PIP_SETTING,constraint),--constraint $(file))

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip uv
	$(VENV)/bin/uv pip install -q --python $(PY) $(UV_FLAGS) $(PACKAGES) || $(PY) -m pip install -q $(PACKAGES)
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	$(PY) -m ipykernel install --sys-prefix $(KERNEL) >/dev/null
	touch $(STAMP)

# The notebooks' kernel, lavise-nb, lives in the venv: Jupyter run from this venv prefers it over any user-level
# one, so each checkout's papermill and JupyterLab run its own package. `make lab` also registers it for the user,
# for a JupyterLab installed elsewhere (that one runs the checkout that last ran `make lab`).
KERNEL := --name lavise-nb --display-name "Python (lavise-nb)"
REGISTER_KERNEL = $(PY) -m ipykernel install --user $(KERNEL) >/dev/null

# glibc keeps large buffers for reuse (about 2x faster CPU forward passes, more peak memory): lavise_nb/_utils/allocator.py
FAST_MALLOC := LAVISE_NB_MALLOC=fast

demo: $(STAMP)
	$(FAST_MALLOC) $(PY) scripts/demo.py --output-dir $(OUT)

# the three notebooks in order with your parameters: make run ARGS="-p model resnet18 -p weights ckpt.pth ..."
run: $(STAMP)
	$(FAST_MALLOC) $(PY) scripts/demo.py --output-dir $(OUT) $(ARGS)

test: $(STAMP)
	$(FAST_MALLOC) $(PY) -m pytest -q tests

# JupyterLab on notebooks/ at http://127.0.0.1:$(LAB_PORT) (the URL with its token is printed), kernel lavise-nb.
# It registers the user-level kernel again, pointing it at this checkout's venv. More options: make lab LAB_ARGS="--token T".
LAB_PORT ?= 8888
lab: $(STAMP)
	$(REGISTER_KERNEL)
	$(PY) scripts/lab.py --port $(LAB_PORT) $(LAB_ARGS)

# recall (quality.py), the faithfulness of each method's first word, and the planted-detector benchmark
quality: $(STAMP)
	$(FAST_MALLOC) $(PY) scripts/quality.py --output-dir $(OUT)/quality
	$(FAST_MALLOC) $(PY) scripts/faithfulness.py --output-dir $(OUT)/quality
	$(FAST_MALLOC) $(PY) scripts/planted_benchmark.py --output-dir $(OUT)/quality

bench: $(STAMP)
	$(PY) benchmarks/bench.py --output-dir $(OUT)/bench

# COCO-sized synthetic stores (12,500 and 50,000 images x 2,048 x 7 x 7; about 13 GB of disk, 30 min on 2 cores)
bench-scale: $(STAMP)
	$(PY) benchmarks/scale.py --output-dir $(OUT)/bench $(SCALE_ARGS)

# the pipeline's stages on a GPU with nothing to download (ShapesWorld, random word vectors); CUDA_ARGS="--images 500"
bench-cuda: $(STAMP)
	$(PY) benchmarks/cuda_check.py --output-dir $(OUT)/cuda_check $(CUDA_ARGS)

clean-outputs:
	rm -rf $(OUT)
