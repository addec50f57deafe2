# The two commands of the README: `make demo` and `make test`. Everything else is a step of them.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
export PATH := $(CURDIR)/.venv/bin:$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export ANSIBLE_COLLECTIONS_PATH := $(CURDIR)/collections
export ANSIBLE_NOCOLOR := 1
PLAYBOOK := ansible-playbook
# MariaDB backup type of the demo's backup (auto, full or incremental)
BACKUP_TYPE ?= auto
# PROFILE=1: the per-task timing profile (ansible.posix.profile_tasks) after every playbook, e.g. make demo PROFILE=1
PROFILE ?= 0
ifeq ($(PROFILE),1)
export ANSIBLE_CALLBACKS_ENABLED := ansible.posix.profile_tasks
endif

.PHONY: demo test bootstrap engine images lab-up lab-seed lab-down lint sanity molecule pytest clean bench fault-matrix \
  dr-rebuild

## demo: bootstrap, lab up with sample data, a backup, a DR drill, summary
demo: lab-seed
	$(PLAYBOOK) playbooks/backup.yml -e backup_type=$(BACKUP_TYPE)
	$(PLAYBOOK) playbooks/drill.yml
	$(PLAYBOOK) playbooks/health.yml
	$(PLAYBOOK) playbooks/lab_status.yml

## test: every quality gate, then the molecule scenarios and the whole test suite against the running lab side by
## side (they share nothing: molecule's containers have their own names, ports and data); fails when either fails
## (every test's time: .state/pytest-junit.xml)
test: lab-seed lint sanity
	scripts/images.sh molecule-host
	scripts/molecule.sh > .state/molecule.log 2>&1 & molecule=$$!; \
	  pytest_rc=0; python -m pytest --junitxml=.state/pytest-junit.xml || pytest_rc=$$?; \
	  molecule_rc=0; wait $$molecule || molecule_rc=$$?; \
	  cat .state/molecule.log; \
	  echo "test: pytest exit $$pytest_rc, molecule exit $$molecule_rc"; \
	  [ $$pytest_rc -eq 0 ] && [ $$molecule_rc -eq 0 ]

bootstrap:
	scripts/bootstrap.sh

engine: bootstrap
	scripts/engine.sh up

images: engine
	scripts/images.sh

lab-up: images
	$(PLAYBOOK) playbooks/stack.yml

lab-seed: lab-up
	$(PLAYBOOK) playbooks/lab_seed.yml

## lab-down: stop and remove the lab's containers (data stays under .state/lab/)
lab-down:
	@if [ -x .venv/bin/ansible-playbook ] && scripts/engine.sh status >/dev/null 2>&1; then \
	  $(PLAYBOOK) playbooks/stack.yml -e stack_state=absent; \
	else echo "lab-down: no engine or no venv: nothing is running"; fi

lint: bootstrap
	scripts/lint.sh

sanity: bootstrap
	scripts/sanity.sh

## molecule: every role scenario and site.yml on fresh Debian 12 containers (molecule/)
molecule: images
	scripts/images.sh molecule-host
	scripts/molecule.sh

pytest: bootstrap
	python -m pytest

## fault-matrix: run the fault tests against the lab and regenerate tests/faults/MATRIX.md from the run
fault-matrix: lab-seed
	LLMOPS_FAULT_MATRIX=write python -m pytest tests/faults

## dr-rebuild: playbooks/rebuild.yml onto the (new or scratch) host of DR_INVENTORY from the off-site copy, then the
## RTO / RPO chart of the reports it copied to .state/rebuild/. It replaces that host's data: CONFIRM=yes is required.
##   make dr-rebuild DR_INVENTORY=inventories/dr-scratch CONFIRM=yes DR_ARGS='--vault-password-file /path/to/file'
## (the quarterly DR drill's self-hosted job, .github/workflows/dr-drill.yml; tests/integration/test_rebuild.py)
dr-rebuild: bootstrap
	@[ -n "$(DR_INVENTORY)" ] || { echo "dr-rebuild: set DR_INVENTORY to the inventory of the host to rebuild"; exit 2; }
	@[ "$(CONFIRM)" = yes ] || { echo "dr-rebuild: it replaces the data of the host in $(DR_INVENTORY): add CONFIRM=yes"; exit 2; }
	$(PLAYBOOK) -i $(DR_INVENTORY) playbooks/rebuild.yml -e confirm=yes $(DR_ARGS)
	python scripts/rto_chart.py .state/rebuild

## bench: whole runs of the bundle against the bare tools, ratios measured in the same run (README, "Performance")
bench: lab-up
	python bench/run.py

## clean: lab down, and the Docker engine stopped if (and only if) this project started it
clean: lab-down
	scripts/engine.sh down
