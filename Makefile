# The README's commands. Each one makes sure the environment exists first (`make install` is idempotent).
PY := .venv/bin/python
export PYTHONUNBUFFERED := 1
# escnn warns at import that py3nj (only used for SO(3)) is missing.
export PYTHONWARNINGS := ignore::UserWarning:escnn.group.groups.so3group

.PHONY: install test demo clean-venv

install:
	bash tools/install_env.sh

test: install
	$(PY) -m pytest -q tests

demo: install
	$(PY) tools/demo.py

clean-venv:
	rm -rf .venv
