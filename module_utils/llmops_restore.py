"""Restore planning: which set, which artefacts in which order, which services stop, how much disk.

``plan_restore`` verifies before anything is touched: the set's checksums (and those of every set
an incremental chain needs), the archived binary logs a point-in-time restore replays, and the
free space of the staging area. A plan with problems must not be executed.

With ``auth_key`` (``backup_auth_key``, from the vault) every set the restore reads - the set and each set of
its MariaDB chain - must be authenticated (``SHA256SUMS.hmac``, see ``check_set_auth``); a set without one is
accepted only with ``allow_unauthenticated`` (sets made before authentication), and the plan says so. The
set's verification records (``verification.json``) are not authenticated: the plan shows them, marked as
such, and no decision rests on them.
"""

from __future__ import annotations

import os
import shutil

from ansible.module_utils.llmops_backupset import (
    BackupSetError,
    isoformat,
    list_sets,
    load_manifest,
    parse_time,
    resolve_set,
    verification_state,
    verify_set,
)
from ansible.module_utils.llmops_layout import backup_layout
from ansible.module_utils.llmops_mariadb import MariaDBError, binlogs_to_replay, restore_chain

# The Compose service each component's restore stops (files restore without stopping anything, and
# PostgreSQL keeps running: its databases are renamed aside inside the server and restored with pg_restore).
# PostgreSQL, Qdrant and the search engine keep running: their safety copies are taken inside the server.
SERVICES = {"mariadb": "mariadb", "redis": "redis"}
# Restore order: databases first, then caches and vectors, then files.
ORDER = ["mariadb", "postgres", "redis", "qdrant", "search", "uploads", "models", "configs"]
STAGING_FACTOR = 1.2  # unpacked size plus headroom


def pick_set(backup_root, ref=None, target_time=None, component="mariadb"):
    """The set to restore: ``ref`` (latest, an id or a path), or for a point in time the newest set
    whose ``component`` succeeded and ended before ``target_time``."""
    if target_time is None:
        return resolve_set(backup_root, ref)
    target = parse_time(target_time)
    best = None
    for item in list_sets(backup_root):
        if not item.get("complete") or not item.get("ended"):
            continue
        comp = (item.get("components") or {}).get(component) or {}
        if comp.get("status") == "success" and parse_time(item["ended"]) <= target:
            best = item["path"]
    if best is None:
        raise BackupSetError("no complete set with a successful %s backup ended before %s" % (component, target_time))
    return best


def _verified(path, problems, seen, auth=None):
    """Verify the set at ``path`` once (``seen``); a failure is appended to ``problems``. Returns
    ``verify_set``'s result (None when the set was verified before)."""
    if path in seen:
        return None
    seen.add(path)
    auth = auth if auth is not None else {}
    result = verify_set(path, auth.get("key"), auth.get("allow_unauthenticated", False))
    auth.setdefault("states", {})[os.path.basename(path)] = result["auth"]["state"]
    if not result["ok"]:
        detail = result["errors"] + ["missing %s" % p for p in result["missing"]] + \
            ["checksum mismatch %s" % p for p in result["mismatched"]] + ["unlisted %s" % p for p in result["extra"]]
        problems.append("set %s fails verification: %s" % (os.path.basename(path), "; ".join(detail)))
    return result


def _only_mariadb_damaged(result, entry):
    """Whether the set's verification failed only on files of its MariaDB component (``entry``): it is then the
    last incremental of the chain that is broken, which ``mariadb_chain_partial`` may leave out."""
    if not result or result["ok"] or result["errors"] or result["extra"] or result["auth"].get("problem"):
        return False
    own = {f.get("path") for f in (entry or {}).get("files") or [] if isinstance(f, dict)}
    bad = result["missing"] + result["mismatched"]
    return bool(bad) and all(p in own for p in bad)


def plan_restore(backup_root, ref=None, components=None, target_time=None, staging_root=None, auth_key=None,
                 allow_unauthenticated=False, mariadb_chain_partial=False):
    """Verify and plan a restore; return a dict with ``ok``, ``problems`` and the ordered ``steps``.

    A MariaDB incremental chain with a missing or damaged set refuses the restore; with
    ``mariadb_chain_partial`` the plan restores MariaDB to the last complete point of the chain instead (the
    full and the incrementals before the break), says so in ``warnings`` and in ``mariadb_chain_partial``
    (``restores_to``, ``ended``, ``instead_of``, ``skipped``, ``why``; None when the chain is whole). The
    set itself must verify in any case; a broken full refuses whatever this says.

    ``authentication`` maps each set read to its ``check_set_auth`` state; ``warnings`` lists what the operator
    must know (no key configured, a set accepted without authentication).
    """
    problems = []
    warnings = []
    seen = set()
    auth = {"key": auth_key or None, "allow_unauthenticated": bool(allow_unauthenticated)}
    layout = backup_layout(backup_root)
    set_path = pick_set(backup_root, ref, target_time)
    manifest = load_manifest(set_path)
    set_id = manifest.get("id") or os.path.basename(set_path)
    available = manifest.get("components") or {}
    selected = list(components) if components else [c for c in ORDER if c in available]
    own = []
    own_result = _verified(set_path, own, seen, auth)
    # the set's own MariaDB artefact broken (the last incremental of its chain): with mariadb_chain_partial the
    # chain stops before the set itself, below; any other damage of the set refuses the restore
    own_cut = None
    if (own and mariadb_chain_partial and "mariadb" in selected
            and (available.get("mariadb") or {}).get("chain")
            and _only_mariadb_damaged(own_result, available.get("mariadb"))):
        own_cut = "; ".join(own)
    else:
        problems.extend(own)
    for name in selected:
        if name not in available:
            problems.append("component %s is not in set %s (it holds: %s)" % (name, set_id,
                                                                              ", ".join(sorted(available))))
        elif available[name].get("status") != "success":
            problems.append("component %s failed in set %s: %s" % (name, set_id,
                                                                   available[name].get("error", "")))
    steps = []
    needed = 0
    chain_ids = []
    chain_partial = None
    replay = []
    for name in [c for c in ORDER if c in selected] + [c for c in selected if c not in ORDER]:
        entry = available.get(name) or {}
        if entry.get("status") != "success":
            continue
        needed += sum(int(f.get("size") or 0) for f in entry.get("files", []))
        needed += int(entry.get("bytes_raw") or 0)
        if name == "mariadb":
            try:
                chain = restore_chain(backup_root, set_path, partial=mariadb_chain_partial)
            except MariaDBError as exc:
                problems.append(str(exc))
                chain = []
            ids = [c for c in entry.get("chain") or [] if isinstance(c, str)] + [set_id]
            cut = None
            if chain and chain[-1][0] != set_id:  # restore_chain stopped before a missing set
                cut = (len(chain), "set %s of the chain is missing or unreadable" % ids[len(chain)])
            elif own_cut and len(chain) > 1:  # the set's own incremental is broken: stop before it
                cut = (len(chain) - 1, own_cut)
            for index, link in enumerate(chain):
                if link[0] == set_id:
                    continue
                found = []
                _verified(os.path.join(backup_root, link[0]), found, seen, auth)
                if found and mariadb_chain_partial and index > 0:
                    cut = (index, "; ".join(found))
                    break
                problems.extend(found)
            if cut:
                chain = chain[:cut[0]]
                restores_to = chain[-1][0]
                try:
                    ended = load_manifest(os.path.join(backup_root, restores_to)).get("ended")
                except BackupSetError:
                    ended = None
                chain_partial = {"restores_to": restores_to, "ended": ended, "instead_of": set_id,
                                 "skipped": ids[cut[0]:], "why": cut[1]}
                warnings.append("MARIADB IS RESTORED ONLY TO %s (ended %s), NOT TO %s: mariadb_chain_partial=true and "
                                "the chain breaks at %s (%s); what MariaDB wrote after %s is NOT restored"
                                % (restores_to, ended, set_id, ids[cut[0]], cut[1], ended))
                if target_time:
                    problems.append("mariadb_chain_partial cannot be combined with target_time: the binary logs "
                                    "replay from the position of %s, which the broken chain cannot reach; restore "
                                    "to a point in time from an earlier set (target_time before %s)"
                                    % (set_id, ended))
            chain_ids = [c[0] for c in chain]
            steps.append("mariadb: unpack and prepare %s (%s), checksums checked while unpacking" % (
                " + ".join(chain_ids), "full" if len(chain) == 1 else "full and %d incremental(s)" % (len(chain) - 1)))
            if target_time:
                binlog = entry.get("binlog") or {}
                try:
                    replay = binlogs_to_replay(layout["binlogs"], binlog.get("file", ""))
                except MariaDBError as exc:
                    problems.append(str(exc))
                steps.append("mariadb: replay %d archived binary log(s) from %s:%s up to %s" % (
                    len(replay), binlog.get("file"), binlog.get("position"), target_time))
        if name == "postgres":
            steps.append("postgres: apply the roles (globals.sql); per database end its sessions, rename it aside "
                         "(safety copy, PostgreSQL keeps running), pg_restore it, verify against the manifest's "
                         "fingerprint")
        elif name == "qdrant":
            steps.append("qdrant: snapshot each collection it replaces (safety copy, Qdrant keeps running), check each "
                         "snapshot's sha256, recover it with priority=snapshot, verify points and ids")
        elif name == "search":
            steps.append("search: check the repository copy's sha256, unpack it under path.repo and register it "
                         "read-only, snapshot each index it replaces (safety copy, the search engine keeps running), "
                         "delete and restore them, wait for green/yellow, verify document counts and fingerprints")
        elif name in SERVICES:
            steps.append("%s: stop service %s, move its data aside (safety copy), restore, start, health check, "
                         "verify against the manifest's fingerprint" % (name, SERVICES[name]))
        elif name == "models":
            steps.append("models: copy the chosen version(s) from the model store, check every file's hash, "
                         "point current at them (roll back if a check fails)")
        elif name == "configs":
            steps.append("configs: check out the recorded commit of the config repository, copy the files back "
                         "(safety copy of each), verify by hashing")
        else:
            steps.append("%s: move the folder aside (safety copy), copy the set's tree back, verify its tree hash"
                         % name)
    if own_cut and chain_partial is None:  # the chain was not cut before the set after all: its damage refuses
        problems.append(own_cut)
    staging_root = staging_root or layout["restore_staging"]
    free = shutil.disk_usage(staging_root if os.path.isdir(staging_root) else backup_root).free
    needed = int(needed * STAGING_FACTOR)
    if needed > free:
        problems.append("not enough disk: the restore needs about %d bytes in %s, %d are free" % (
            needed, staging_root, free))
    states = auth.get("states") or {}
    if not auth["key"]:
        warnings.append("no backup_auth_key configured: the set is checked against its own SHA256SUMS only, "
                        "not authenticated (anyone who can write to the backup volume could have edited it)")
    for sid, state in sorted(states.items()):
        if state == "unauthenticated_allowed":
            warnings.append("set %s has no SHA256SUMS.hmac and is accepted only because allow_unauthenticated is "
                            "set: its content is checked against its own SHA256SUMS, not authenticated" % sid)
    verification = verification_state(set_path)
    unauth = " [verification records are not authenticated: informational only]"
    if verification.get("error"):
        tested = "unknown: the set's verification record cannot be trusted (%s)" % verification["error"]
    elif verification.get("restore_tested"):
        tested = ("restore-tested: passed on %s (restored into a scratch stack, every component matched its "
                  "fingerprint)" % verification.get("restore_tested_time"))
    elif verification.get("last_method") == "restore":
        details = verification.get("last_details") or "see the drill's report"
        tested = "restore test FAILED on %s: %s" % (verification.get("last_time"), details)
    else:
        tested = "not restore-tested yet (checksums verified only; playbooks/verify.yml tests it)"
    tested += unauth
    return {
        "ok": not problems,
        "problems": problems,
        "warnings": warnings,
        "authentication": states,
        "set_id": set_id,
        "verification": verification,
        "restore_tested": tested,
        "set_path": set_path,
        "set_ended": manifest.get("ended"),
        "components": selected,
        "services_to_stop": [SERVICES[c] for c in ORDER if c in selected and c in SERVICES],
        "mariadb_chain": chain_ids,
        "mariadb_chain_partial": chain_partial,
        "binlogs": replay,
        "target_time": isoformat(parse_time(target_time)) if target_time else None,
        "bytes_needed": needed,
        "bytes_free": free,
        "steps": steps,
    }
