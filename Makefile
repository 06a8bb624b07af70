# The README's commands. Each one makes sure the environment exists first (`make install` is idempotent).
PY := .venv/bin/python
export PYTHONUNBUFFERED := 1
# torch's OpenMP threads sleep instead of spinning while they wait: on a machine whose cores are busy with other
# processes, spinning threads made a CPU training step of the demo model 10x slower (4.5 s against 0.43 s).
export OMP_WAIT_POLICY := PASSIVE
# escnn warns at import that py3nj (only used for SO(3)) is missing.
export PYTHONWARNINGS := ignore::UserWarning:escnn.group.groups.so3group

.PHONY: install test demo clean-venv gpu-wheels gpu-check gpu-check-cpu

install:
	bash tools/install_env.sh

test: install
	$(PY) -m pytest -q --durations=25 tests

demo: install
	$(PY) tools/demo.py

# The GPU check (tools/gpu_check.py): gpu-wheels here (network), gpu-check on the GPU machine, gpu-check-cpu its dry run.
gpu-wheels: install
	$(PY) tools/gpu_check.py collect

gpu-check:
	bash tools/gpu_check.sh run

gpu-check-cpu: install
	bash tools/gpu_check.sh run --cpu --quick

clean-venv:
	rm -rf .venv
