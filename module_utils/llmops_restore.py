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

import datetime
import os
import shutil

from ansible.module_utils.llmops_backupset import (
    BackupSetError,
    isoformat,
    list_sets,
    load_manifest,
    parse_time,
    resolve_set,
    scan_sets,
    utc,
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


NEWEST = "newest"  # the composed restore point: each component at its newest good set


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


def _verified(path, problems, cache, auth=None):
    """Verify the set at ``path`` once (``cache``: path to result and problems); its problems are appended to
    ``problems`` at every call. Returns ``verify_set``'s result."""
    auth = auth if auth is not None else {}
    if path not in cache:
        result = verify_set(path, auth.get("key"), auth.get("allow_unauthenticated", False))
        auth.setdefault("states", {})[os.path.basename(path)] = result["auth"]["state"]
        found = []
        if not result["ok"]:
            detail = result["errors"] + ["missing %s" % p for p in result["missing"]] + \
                ["checksum mismatch %s" % p for p in result["mismatched"]] + \
                ["unlisted %s" % p for p in result["extra"]]
            found.append("set %s fails verification: %s" % (os.path.basename(path), "; ".join(detail)))
        cache[path] = (result, found)
    result, found = cache[path]
    problems.extend(found)
    return result


def _only_mariadb_damaged(result, entry):
    """Whether the set's verification failed only on files of its MariaDB component (``entry``): it is then the
    last incremental of the chain that is broken, which ``mariadb_chain_partial`` may leave out."""
    if not result or result["ok"] or result["errors"] or result["extra"] or result["auth"].get("problem"):
        return False
    own = {f.get("path") for f in (entry or {}).get("files") or [] if isinstance(f, dict)}
    bad = result["missing"] + result["mismatched"]
    return bool(bad) and all(p in own for p in bad)


def _plan_set(backup_root, set_path, components, target_time, auth, cache, mariadb_chain_partial, layout):
    """Plan the restore of ``components`` (all the set holds when empty) from the one set at ``set_path``: the
    set's and its MariaDB chain's verification, the steps (``(component, text)``), the bytes needed."""
    problems = []
    warnings = []
    manifest = load_manifest(set_path)
    set_id = manifest.get("id") or os.path.basename(set_path)
    available = manifest.get("components") or {}
    selected = list(components) if components else [c for c in ORDER if c in available]
    own = []
    own_result = _verified(set_path, own, cache, auth)
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
                _verified(os.path.join(backup_root, link[0]), found, cache, auth)
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
            steps.append(("mariadb", "mariadb: unpack and prepare %s (%s), checksums checked while unpacking" % (
                " + ".join(chain_ids), "full" if len(chain) == 1 else "full and %d incremental(s)" % (len(chain) - 1))))
            if target_time:
                binlog = entry.get("binlog") or {}
                try:
                    replay = binlogs_to_replay(layout["binlogs"], binlog.get("file", ""))
                except MariaDBError as exc:
                    problems.append(str(exc))
                steps.append(("mariadb", "mariadb: replay %d archived binary log(s) from %s:%s up to %s" % (
                    len(replay), binlog.get("file"), binlog.get("position"), target_time)))
        if name == "postgres":
            steps.append((name, "postgres: apply the roles (globals.sql); per database end its sessions, rename it "
                          "aside (safety copy, PostgreSQL keeps running), pg_restore it, verify against the manifest's "
                          "fingerprint"))
        elif name == "qdrant":
            steps.append((name, "qdrant: snapshot each collection it replaces (safety copy, Qdrant keeps running), "
                          "check each snapshot's sha256, recover it with priority=snapshot, verify points and ids"))
        elif name == "search":
            steps.append((name, "search: check the repository copy's sha256, unpack it under path.repo and register it "
                          "read-only, snapshot each index it replaces (safety copy, the search engine keeps running), "
                          "delete and restore them, wait for green/yellow, verify document counts and fingerprints"))
        elif name in SERVICES:
            steps.append((name, "%s: stop service %s, move its data aside (safety copy), restore, start, health check, "
                          "verify against the manifest's fingerprint" % (name, SERVICES[name])))
        elif name == "models":
            steps.append((name, "models: copy the chosen version(s) from the model store, check every file's hash, "
                          "point current at them (roll back if a check fails)"))
        elif name == "configs":
            steps.append((name, "configs: check out the recorded commit of the config repository, copy the files back "
                          "(safety copy of each), verify by hashing"))
        else:
            steps.append((name, "%s: move the folder aside (safety copy), copy the set's tree back, verify its tree "
                          "hash" % name))
    if own_cut and chain_partial is None:  # the chain was not cut before the set after all: its damage refuses
        problems.append(own_cut)
    return {"ok": not problems, "problems": problems, "warnings": warnings, "set_id": set_id, "set_path": set_path,
            "manifest": manifest, "components": selected, "steps": steps, "needed": needed, "mariadb_chain": chain_ids,
            "mariadb_chain_partial": chain_partial, "binlogs": replay}


def _roll_forward(layout, part, point):
    """``(time, step)``: for the newest restore point, the end of the binary log archive when it holds logs written
    after ``point`` (MariaDB's data in its set; the replay target is a second past the newest archived log);
    ``(None, why not)`` otherwise."""
    if part["mariadb_chain_partial"]:
        return None, "the chain is restored only to its last complete point"
    binlog = ((part["manifest"].get("components") or {}).get("mariadb") or {}).get("binlog") or {}
    if not binlog.get("file"):
        return None, "the set does not record where its binary log position is"
    try:
        logs = binlogs_to_replay(layout["binlogs"], binlog["file"])
    except MariaDBError as exc:
        return None, str(exc)
    end = datetime.datetime.fromtimestamp(max(os.path.getmtime(p) for p in logs) + 1, datetime.timezone.utc)
    if point is None or end <= point:
        return None, "the archive holds nothing written after the set"
    return isoformat(end), ("mariadb: roll forward through %d archived binary log(s) from %s:%s to the end of the "
                            "archive (%s)" % (len(logs), binlog["file"], binlog.get("position"), isoformat(end)))


def _duration(seconds):
    """``3 h 05 min`` / ``12 min`` / ``?``."""
    if seconds is None:
        return "?"
    minutes = int(seconds // 60)
    return "%d h %02d min" % divmod(minutes, 60) if minutes >= 60 else "%d min" % minutes


def _component_point(manifest, name, target_time=None):
    """The time ``name``'s data in the set is from: its backup's start (the data after it is not in the set), the
    set's start or end when the component does not say; for MariaDB replayed to ``target_time``, that."""
    if name == "mariadb" and target_time:
        return parse_time(target_time)
    entry = (manifest.get("components") or {}).get(name) or {}
    for value in (entry.get("started"), manifest.get("started"), manifest.get("ended")):
        if value:
            try:
                return parse_time(value)
            except (BackupSetError, ValueError, TypeError):
                continue
    return None


def parse_composition(ref):
    """``{component: set id}`` from ``mariadb=llmops_A,uploads=llmops_B`` (a restore point composed by hand or by
    an earlier plan's ``backup_id``); None when ``ref`` names one set (``latest``, an id, a path) or ``newest``."""
    if not isinstance(ref, str) or "=" not in ref:
        return None
    out = {}
    for part in ref.split(","):
        name, sid = (part.split("=", 1) + [""])[:2] if "=" in part else (part, "")
        name, sid = name.strip(), sid.strip()
        if not name or not sid or os.sep in sid or name in out:
            raise BackupSetError("backup_id %r: each part must be <component>=<set id>, each component once" % ref)
        out[name] = sid
    return out


def _compose(backup_root, components, target_time, auth, cache, mariadb_chain_partial, layout):
    """The newest restore point of each component: per component the newest complete set whose backup of it
    succeeded (and ended before ``target_time``). That set must plan cleanly for it (verification, the MariaDB
    chain): a damaged newest backup refuses the restore - as naming the set would - and the problem names the newest
    older set that would do, never taken without being asked. A folder named like a set that cannot be read refuses
    it too (it may hold a newer backup of anything).

    Returns ``({component: set path}, warnings, problems, missing)``; ``missing``: the components no set holds a
    successful backup of."""
    sets, unreadable = scan_sets(backup_root)
    problems = ["set %s cannot be read, so the newest restore point is unknown: %s; name the sets to restore "
                "(-e backup_id=<component>=<set id>,...)" % (sid, why) for sid, why in unreadable]
    sets = [s for s in sets if s["complete"] and s.get("ended")]
    if target_time:
        limit = parse_time(target_time)
        sets = [s for s in sets if parse_time(s["ended"]) <= limit]
    found = {c for s in sets for c, e in s["components"].items() if (e or {}).get("status") == "success"}
    wanted = list(components) if components else [c for c in ORDER if c in found] + sorted(found - set(ORDER))
    chosen, warnings, missing, fallback = {}, [], [], {}
    for name in wanted:
        failed = []
        candidates = [s for s in reversed(sets) if name in s["components"]]
        for index, item in enumerate(candidates):
            if (item["components"][name] or {}).get("status") != "success":
                failed.append(item["id"])
                continue
            # judged on its integrity (verification, chain); what a replay to target_time needs is the final plan's
            sub = _plan_set(backup_root, item["path"], [name], None, auth, cache, mariadb_chain_partial, layout)
            if sub["ok"]:
                chosen[name] = item["path"]
                if failed:
                    warnings.append("%s: its backup failed in the newer set(s) %s; it comes from %s"
                                    % (name, ", ".join(failed), item["id"]))
                break
            older = next((o for o in candidates[index + 1:] if (o["components"][name] or {}).get("status") == "success"
                          and _plan_set(backup_root, o["path"], [name], None, auth, cache, mariadb_chain_partial,
                                        layout)["ok"]), None)
            fallback[name] = older["id"] if older else None
            problems.append("%s: its newest backup, in set %s, cannot be restored: %s; %s" % (
                name, item["id"], "; ".join(sub["problems"]),
                "the newest older set that verifies is %s (ended %s): restoring from it loses what %s wrote after "
                "that - only when told (-e backup_id=..., below)%s" % (
                    older["id"], older["ended"], name,
                    "; or -e mariadb_chain_partial=true restores MariaDB to the last complete point of the chain"
                    if name == "mariadb" and not mariadb_chain_partial else "")
                if older else "no older set holds a good backup of it"))
            break
        else:
            missing.append(name)
    if missing:
        problems.append("no good set holds %s%s (a complete set whose backup of it succeeded)"
                        % (", ".join(missing), " before %s" % target_time if target_time else ""))
    if any(fallback.values()):
        ids = {**{c: os.path.basename(p) for c, p in chosen.items()}, **{c: s for c, s in fallback.items() if s}}
        problems.append("to restore the older point instead: -e backup_id=%s"
                        % ",".join("%s=%s" % (c, ids[c]) for c in wanted if c in ids))
    return chosen, warnings, problems, missing


def plan_restore(backup_root, ref=None, components=None, target_time=None, staging_root=None, auth_key=None,
                 allow_unauthenticated=False, mariadb_chain_partial=False, now=None):
    """Verify and plan a restore; return a dict with ``ok``, ``problems`` and the ordered ``steps``.

    ``ref``: V(newest) (or empty) - the composed restore point, each component from the newest set that holds a
    good backup of it (``_compose``; a schedule writes MariaDB and the other stores into separate sets); an
    explicit composition ``<component>=<set id>,...`` (a plan's ``backup_id``); or one set - V(latest), an id, a
    path (with ``target_time``: the newest set whose MariaDB backup ended before it). ``sources`` says per
    component which set it comes from, the time its data is from (``point``) and its RPO (``rpo_s``, to ``now``);
    ``backup_id`` names the plan's sets for a later run (a drill's restore), ``set_ended`` is the oldest point's
    set end (the restore point's RPO).

    A MariaDB incremental chain with a missing or damaged set refuses the restore; with
    ``mariadb_chain_partial`` the plan restores MariaDB to the last complete point of the chain instead (the
    full and the incrementals before the break), says so in ``warnings`` and in ``mariadb_chain_partial``
    (``restores_to``, ``ended``, ``instead_of``, ``skipped``, ``why``; None when the chain is whole). The
    set itself must verify in any case; a broken full refuses whatever this says.

    ``authentication`` maps each set read to its ``check_set_auth`` state; ``warnings`` lists what the operator
    must know (no key configured, a set accepted without authentication, a newer set passed over).
    """
    cache = {}
    auth = {"key": auth_key or None, "allow_unauthenticated": bool(allow_unauthenticated)}
    layout = backup_layout(backup_root)
    now = utc(now)
    composition = parse_composition(ref)
    problems, warnings, missing = [], [], []
    if composition is None and ref in (None, "", NEWEST):
        chosen, warnings, problems, missing = _compose(
            backup_root, components, target_time, auth, cache, mariadb_chain_partial, layout)
        composed = True
    elif composition is not None:
        if components:
            missing = [c for c in components if c not in composition]
            if missing:
                raise BackupSetError("backup_id %s names no set for %s" % (ref, ", ".join(missing)))
            composition = {c: composition[c] for c in components}
        chosen = {c: resolve_set(backup_root, sid) for c, sid in composition.items()}
        composed = True
    else:
        path = pick_set(backup_root, ref, target_time)
        chosen, composed = None, False
    parts = []
    if composed:
        by_set = {}
        for name, path in chosen.items():
            by_set.setdefault(path, []).append(name)
        for path, names in by_set.items():
            parts.append(_plan_set(backup_root, path, names, target_time if "mariadb" in names else None, auth,
                                   cache, mariadb_chain_partial, layout))
    else:
        parts.append(_plan_set(backup_root, path, components, target_time, auth, cache, mariadb_chain_partial,
                               layout))
    if not parts:
        problems.append("no complete set under %s holds a good backup of %s" % (
            backup_root, ", ".join(components) if components else "any component"))
    for part in parts:
        problems.extend(part["problems"])
        warnings.extend(part["warnings"])
    selected = [c for c in ORDER for part in parts if c in part["components"]] + \
        [c for part in parts for c in part["components"] if c not in ORDER]
    sources, points = {}, {}
    for part in parts:
        tested = bool(verification_state(part["set_path"]).get("restore_tested"))
        for name in part["components"]:
            points[name] = _component_point(part["manifest"], name, target_time)
            sources[name] = {"set_id": part["set_id"], "set_path": part["set_path"],
                             "set_ended": part["manifest"].get("ended"), "restore_tested": tested}
    main = next((p for p in parts if "mariadb" in p["components"]), None)  # the part MariaDB is restored from
    roll_forward = None
    if composition is None and composed and not target_time and main:
        roll_forward, note = _roll_forward(layout, main, points["mariadb"])
        if roll_forward:
            main["steps"].append(("mariadb", note))
            points["mariadb"] = parse_time(roll_forward)
            sources["mariadb"]["rolled_forward"] = True
        else:
            sources["mariadb"]["not_rolled_forward"] = note
    for name, point in points.items():
        sources[name].update(point=isoformat(point) if point else None,
                             rpo_s=round((now - point).total_seconds(), 1) if point else None)
    steps = [text for c in selected for part in parts for name, text in part["steps"] if name == c]
    point_lines = ["%s: from set %s%s, data from %s (RPO %s), %s%s" % (
        c, sources[c]["set_id"], " rolled forward through the archived binary logs" if sources[c].get(
            "rolled_forward") else "", sources[c]["point"] or "?", _duration(sources[c]["rpo_s"]),
        "restore-tested" if sources[c]["restore_tested"] else "not restore-tested yet",
        "; not rolled forward: %s" % sources[c]["not_rolled_forward"] if sources[c].get("not_rolled_forward")
        else "") for c in selected]
    needed = sum(part["needed"] for part in parts)
    newest = max(parts, key=lambda p: p["manifest"].get("ended") or "") if parts else None
    oldest = min(parts, key=lambda p: p["manifest"].get("ended") or "") if parts else None
    if composed:
        set_id = "composed" if len(parts) != 1 else parts[0]["set_id"]
        backup_id = ",".join("%s=%s" % (c, sources[c]["set_id"]) for c in selected)
    else:
        set_id = backup_id = parts[0]["set_id"]
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
    set_path = newest["set_path"] if newest else None
    verification = verification_state(set_path) if set_path else {}
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
    if len(parts) > 1:
        tested = "per component, see sources (restore_tested)" + unauth
    return {
        "ok": not problems,
        "problems": problems,
        "warnings": warnings,
        "authentication": states,
        "set_id": set_id,
        "backup_id": backup_id,
        "composed": composed,
        "sources": sources,
        "restore_point": point_lines,
        "missing": missing,
        "verification": verification,
        "restore_tested": tested,
        "set_path": set_path,
        "set_ended": oldest["manifest"].get("ended") if oldest else None,
        "components": selected,
        "services_to_stop": [SERVICES[c] for c in ORDER if c in selected and c in SERVICES],
        "mariadb_chain": main["mariadb_chain"] if main else [],
        "mariadb_chain_partial": main["mariadb_chain_partial"] if main else None,
        "binlogs": main["binlogs"] if main else [],
        "mariadb_roll_forward": roll_forward,
        "target_time": isoformat(parse_time(target_time)) if target_time else None,
        "bytes_needed": needed,
        "bytes_free": free,
        "steps": steps,
    }
