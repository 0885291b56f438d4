# gpufleet: the two commands a new user needs are `make rehearse` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# HOSTS=N: N identical simulated A100 hosts instead of the mixed rehearsal fleet (make sim-up
# HOSTS=8, then make rehearse HOSTS=8); their fleet file is written by simctl.
SIM_FLEET := $(if $(HOSTS),tests/sim/build/scale-fleet.toml,inventory/sim.toml)

.PHONY: rehearse test unit sim-up sim-down sim-status lint host-tools validators venv clean \
        python-locks python-locks-check wheelhouse bench check-fleet engine-wheels

# Controller tooling, installed from the hash-locked requirements file; then gpufleet itself,
# editable (the `gpufleet` command runs this checkout's deploys and tools), built by the locked
# setuptools: no dependency and no build tool comes from outside the lock.
$(VENV)/.installed: requirements/controller.lock pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || \
	  { echo "gpufleet: Python >= 3.10 is needed (found $$($(PYTHON) --version 2>&1))"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	@# A machine-wide pip constraint file must not change what the lock installs. -qq: pip's
	@# warnings about the machine's own pip configuration (an index folder that does not
	@# exist) are not gpufleet's to show; its errors (a hash that does not match) still are.
	PIP_CONSTRAINT= $(BIN)/pip install -qq --disable-pip-version-check \
	  --require-hashes -r requirements/controller.lock
	PIP_CONSTRAINT= $(BIN)/pip install -qq --disable-pip-version-check \
	  --no-deps --no-build-isolation --no-index -e .
	touch $@

venv: $(VENV)/.installed

host-tools:
	@./tools/ensure-host-tools.sh

# promtool and amtool for the unit tests, from Debian's packages (unpacked into .tools/).
validators:
	@./tools/ensure-validators.sh

# The released engines' wheels the conformance tests re-read (tests/conformance/released.py),
# hash-locked, cached outside the checkout: without them those tests could only skip.
engine-wheels: venv
	@$(BIN)/python -m tests.conformance.released fetch

## The main job: bring the simulated fleet up and provision it (the built-in default).
rehearse: venv host-tools sim-up
	GPUFLEET_FLEET=$(SIM_FLEET) $(BIN)/pyinfra -y inventory.py deploys/gpu_host.py
	@echo "--> Smoke test of the endpoints (a chat completion on each, then a short latency probe):"
	$(BIN)/python tools/smoke.py --fleet $(SIM_FLEET) --requests 5 --seconds 10

## All the tests: unit tests, then the simulator end-to-end tests.
# Four workers, a whole test file each: every e2e module runs on its own copies of the hosts.
# On the 2-core machine two workers left the CPU 40 % idle (the e2e tests wait on reboots,
# engines starting, alerts firing), so four fill those waits. Files go out longest first
# (tests/conftest.py), not xdist's most-tests-first. TEST_WORKERS=N to change it.
TEST_WORKERS ?= 4
test: venv host-tools validators engine-wheels
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

unit: venv validators engine-wheels
	$(BIN)/pytest tests/unit

sim-up: venv host-tools
	$(BIN)/python tests/sim/simctl.py up $(if $(HOSTS),--hosts $(HOSTS))

sim-down: venv
	$(BIN)/python tests/sim/simctl.py down

sim-status: venv
	$(BIN)/python tests/sim/simctl.py status

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy components deploys facts gpufleet inventory operations rules tools benchmarks tests
	$(BIN)/mypy inventory.py  # a script beside the package of the same name: checked alone

## Validate the fleet file offline, no host contacted ($GPUFLEET_FLEET, else inventory/fleet.toml).
check-fleet: venv
	$(BIN)/python inventory.py

## Converge / no-op times and remote commands per host on the simulated fleet.
bench: venv host-tools sim-up
	$(BIN)/python benchmarks/fleet.py

## Python environment locks (inventory/locks/): regenerate after changing pins.toml.
python-locks: venv
	$(BIN)/python tools/lock_python.py

python-locks-check: venv
	$(BIN)/python tools/lock_python.py --check

## Fetch the locked wheels once on the controller (settings.python_env.wheelhouse).
wheelhouse: venv
	$(BIN)/python tools/wheelhouse.py

clean: sim-down
	rm -rf $(VENV) tests/sim/build
