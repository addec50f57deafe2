#!/usr/bin/env bash
# Runs the molecule scenarios under molecule/ one after the other (each: destroy, syntax, create,
# prepare, converge, idempotence, verify, cleanup, destroy), one log per scenario in
# .state/molecule/, and a summary. Fails when any scenario fails.
#   molecule.sh               every scenario
#   molecule.sh base docker   only these
set -euo pipefail
cd "$(dirname "$0")/.."
LOGS=.state/molecule
mkdir -p "$LOGS"
# molecule and the ansible it drives come from the project venv (make bootstrap).
export PATH="$PWD/.venv/bin:$PATH"
export PY_COLORS=0 NO_COLOR=1 ANSIBLE_FORCE_COLOR=0 ANSIBLE_NOCOLOR=1
# molecule writes its ansible.cfg; collections come from the project (Galaxy is not reachable).
export ANSIBLE_COLLECTIONS_PATH="$PWD/collections"

scenarios=("$@")
if [ ${#scenarios[@]} -eq 0 ]; then
  for f in molecule/*/molecule.yml; do scenarios+=("$(basename "$(dirname "$f")")"); done
fi
failed=()
summary=()
for s in "${scenarios[@]}"; do
  [ -f "molecule/$s/molecule.yml" ] || { echo "molecule: no scenario $s (molecule/$s/molecule.yml)" >&2; exit 2; }
  echo "molecule: $s ..."
  start=$SECONDS
  if molecule test -s "$s" >"$LOGS/$s.log" 2>&1; then status=passed; else status=FAILED; failed+=("$s"); fi
  verify=$(grep -Eo '=+ [0-9]+ passed.* in [0-9.]+s' "$LOGS/$s.log" | tail -n1 | tr -d '=' | xargs || true)
  summary+=("$(printf '%-26s %-7s %4ss  %s' "$s" "$status" "$((SECONDS - start))" "${verify:-}")")
  echo "${summary[-1]}"
  if [ "$status" = FAILED ]; then
    { grep -E 'fatal:|FAILED!|ERROR|CRITICAL|failed=[1-9]' "$LOGS/$s.log" || tail -n 5 "$LOGS/$s.log"; } | tail -n 15 >&2
    echo "molecule: $s failed, full log: $LOGS/$s.log" >&2
  fi
done
echo "molecule: summary"
printf '  %s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then echo "molecule: FAILED: ${failed[*]}" >&2; exit 1; fi
