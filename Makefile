# The README's commands. Each one makes sure the environment exists first (`make install` is idempotent).
PY := .venv/bin/python
export PYTHONUNBUFFERED := 1
# torch's OpenMP threads sleep instead of spinning while they wait: on a machine whose cores are busy with other
# processes, spinning threads made a CPU training step of the demo model 10x slower (4.5 s against 0.43 s).
export OMP_WAIT_POLICY := PASSIVE
# escnn warns at import that py3nj (only used for SO(3)) is missing.
export PYTHONWARNINGS := ignore::UserWarning:escnn.group.groups.so3group

.PHONY: install test demo clean-venv

install:
	bash tools/install_env.sh

test: install
	$(PY) -m pytest -q --durations=25 tests

demo: install
	$(PY) tools/demo.py

clean-venv:
	rm -rf .venv
