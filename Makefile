# Two commands set everything up from nothing: `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
PIP     := $(VPY) -m pip
STAMP   := $(VENV)/.installed

.PHONY: install demo test bench clean

install: $(STAMP)

# Order matters (see ../shared/DESIGN.md): the CPU torch wheel first, so nothing pulls a CUDA build;
# spikingjelly and lava-nc last, without their declared dependencies.
$(STAMP): pyproject.toml Makefile
	rm -rf $(VENV)
	$(PY) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[dev,lava,spikingjelly]'
	$(PIP) install --quiet --no-deps spikingjelly==2.0.0
	$(PIP) install --quiet --no-deps --ignore-requires-python lava-nc==0.10.0
	$(VPY) -c "import torch, spikingjelly.activation_based.neuron, snntorch, spiking_attn; print('torch', torch.__version__)"
	$(VPY) -c "from spiking_attn.lif_kernel import kernel_status; print('LIF kernel:', kernel_status())"
	$(VPY) -c "from spiking_attn.native_ops import status; print('LIF torch operator:', status())"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/spiking-attn demo --out runs/demo --overwrite

test: $(STAMP)
	$(VPY) -m pytest -q tests

bench: $(STAMP)
	$(VPY) benchmarks/bench_attention_block.py

clean:
	rm -rf $(VENV) runs build *.egg-info
