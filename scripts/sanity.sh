#!/usr/bin/env bash
# ansible-test sanity on the project's own modules (library/) and module_utils (module_utils/).
#
# ansible-test only runs from inside ansible_collections/<namespace>/<name>/, so this builds a
# throw-away collection llmops.ops under .state/sanity/ from copies of those files and of the shared
# option texts (module_utils/doc_fragments/, which ansible.cfg's doc_fragment_plugins points ansible-doc at),
# with the `ansible.module_utils.llmops_*` imports and the `extends_documentation_fragment: [llmops...]`
# names rewritten to the collection's (`llmops.ops.llmops...`), and runs `ansible-test sanity` there.
# Exit status is non-zero on any finding.
#
#   scripts/sanity.sh                    # all sanity tests that can run here
#   scripts/sanity.sh --test pylint      # extra arguments go to ansible-test sanity
#
# Offline pip bootstrap: several tests (pep8, pylint, validate-modules, yamllint, import,
# ansible-doc, ...) build their own venvs under ~/.ansible/test/ and bootstrap pip in them from
# https://ci-files.testing.ansible.com/ansible-test/get-pip-<ver>.py, which is not reachable here.
# ansible-test uses ~/.ansible/test/cache/get_pip_<ver>.py instead when it exists, so this script
# puts a small stand-in there that bootstraps pip with `ensurepip` and then runs `pip install`
# (through this machine's pip config and mirror) with the arguments ansible-test passes.
# Those venvs are cached under ~/.ansible/test/, so reruns skip the installs.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV_BIN=$ROOT/.venv/bin
PYTHON_VERSION=3.11
COLLECTION=$ROOT/.state/sanity/ansible_collections/llmops/ops

[ -x "$VENV_BIN/ansible-test" ] || { echo "sanity: $VENV_BIN/ansible-test missing: run scripts/bootstrap.sh" >&2; exit 2; }
start=$(date +%s)

# --- the pip version ansible-test bootstraps, read from ansible-test itself ---------------------
pip_version=$("$VENV_BIN/python" - <<'EOF'
from ansible_test._internal.python_requirements import get_venv_packages
from ansible_test._internal.host_configs import NativePythonConfig
print(get_venv_packages(NativePythonConfig(version='3.11'))['pip'])
EOF
)
get_pip=$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py
mkdir -p "$(dirname "$get_pip")"
cat > "$get_pip.tmp" <<'EOF'
"""Offline stand-in for get-pip.py, written by llmops scripts/sanity.sh.

ansible-test runs it as `python get_pip_X_Y.py [pip options] pip==X.Y [--no-setuptools] [--no-wheel]`
inside a fresh venv: bootstrap pip from the interpreter's bundled wheel, then install what was asked.
"""
import subprocess
import sys

GET_PIP_ONLY = {'--no-setuptools', '--no-wheel', '--no-pip'}
args = [arg for arg in sys.argv[1:] if arg not in GET_PIP_ONLY]
subprocess.check_call([sys.executable, '-m', 'ensurepip', '--upgrade', '--default-pip'])
subprocess.check_call([sys.executable, '-m', 'pip', 'install', '--quiet'] + args)
EOF
mv "$get_pip.tmp" "$get_pip"
echo "sanity: offline pip bootstrap for pip $pip_version at $get_pip"

# --- the throw-away collection ----------------------------------------------------------------
# One run at a time: a second run would delete the tree under the first one.
mkdir -p "$ROOT/.state"
exec 9> "$ROOT/.state/sanity.lock"
flock -w 1800 9 || { echo "sanity: another scripts/sanity.sh still runs after 30 min" >&2; exit 2; }
rm -rf "$ROOT/.state/sanity"
mkdir -p "$COLLECTION/meta" "$COLLECTION/plugins/modules" "$COLLECTION/plugins/module_utils" \
  "$COLLECTION/plugins/doc_fragments"
cat > "$COLLECTION/galaxy.yml" <<'EOF'
namespace: llmops
name: ops
version: 0.1.0
readme: README.md
authors:
  - llmops contributors
description: Throw-away collection built by scripts/sanity.sh to run ansible-test on library/ and module_utils/.
license:
  - GPL-3.0-or-later
EOF
cat > "$COLLECTION/meta/runtime.yml" <<'EOF'
---
requires_ansible: '>=2.17.0'
EOF
echo "Built by scripts/sanity.sh; do not edit." > "$COLLECTION/README.md"
# ansible-test writes its venvs and results under tests/output/: keep them out of the tested files.
printf '%s\n' '/tests/output/' > "$COLLECTION/.gitignore"

shopt -s nullglob
modules=(library/*.py)
utils=(module_utils/*.py)
fragments=(module_utils/doc_fragments/*.py)
shopt -u nullglob
if [ ${#modules[@]} -eq 0 ] && [ ${#utils[@]} -eq 0 ]; then
  echo "sanity: nothing to check (no library/*.py, no module_utils/*.py)"
  exit 0
fi
for f in "${modules[@]}"; do cp "$f" "$COLLECTION/plugins/modules/"; done
for f in "${utils[@]}"; do cp "$f" "$COLLECTION/plugins/module_utils/"; done
for f in "${fragments[@]}"; do cp "$f" "$COLLECTION/plugins/doc_fragments/"; done
# Imports, and the doc fragments a module extends: `llmops` and `llmops.<part>` (module_utils/doc_fragments/llmops.py,
# its DOCUMENTATION and its <PART> variable) are `llmops.ops.llmops` and `llmops.ops.llmops.<part>` in the
# collection. The fragment list is a YAML flow sequence, on one line or continued up to its `]`; in the copy
# it takes a line per name (the longer names would pass pep8's line length).
for f in "$COLLECTION"/plugins/modules/*.py "$COLLECTION"/plugins/module_utils/*.py; do
  [ -e "$f" ] || continue
  sed -i -E \
    -e 's/^(\s*)from ansible\.module_utils\.(llmops_[A-Za-z0-9_]+) import/\1from ansible_collections.llmops.ops.plugins.module_utils.\2 import/' \
    -e 's/^(\s*)import ansible\.module_utils\.(llmops_[A-Za-z0-9_]+)/\1import ansible_collections.llmops.ops.plugins.module_utils.\2/' \
    -e '/^extends_documentation_fragment:/{' -e ':more' -e '/\]/!{N;b more' -e '}' \
    -e 's/([[ ,])llmops(\.[a-z_]+)?([],])/\1llmops.ops.llmops\2\3/g' -e 's/,\s+(llmops\.ops\.)/,\n  \1/g' -e '}' \
    "$f"
done
echo "sanity: collection llmops.ops at ${COLLECTION#"$ROOT"/} with ${#modules[@]} module(s), ${#utils[@]} module_utils" \
  "and ${#fragments[@]} doc fragment file(s)"

# ansible-test lists the collection's files with git (a plain tree inside this ignored .state/ would
# show up as empty), so the tree is its own small git repository.
git -C "$COLLECTION" init -q
git -C "$COLLECTION" add -A
git -C "$COLLECTION" -c user.name=sanity -c user.email=sanity@localhost commit -q -m "sanity snapshot"

# --- tests that cannot run here, each with its reason ------------------------------------------
# None: every test runs. (pslint needs pwsh, which is not installed, but only runs on *.ps1 files,
# which this collection never has: it reports "No tests applicable" and passes.)
# Add entries as `--skip-test NAME` with a comment saying why that test cannot run here.
skips=()

cd "$COLLECTION"
set +e
PATH=$VENV_BIN:$PATH ANSIBLE_COLLECTIONS_PATH=$ROOT/.state/sanity \
  "$VENV_BIN/ansible-test" sanity --venv --python "$PYTHON_VERSION" --color no \
  "${skips[@]}" "$@"
rc=$?
set -e
echo "sanity: ansible-test exit status $rc after $(( $(date +%s) - start )) s"
exit "$rc"
