"""Pure logic of module_utils/llmops_offsite.py: which sets to send, tags, lag, the prune decision, secrets."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest
from ansible.module_utils import llmops_offsite as off

SECRET = os.urandom(8).hex()
OTHER = os.urandom(8).hex()
FULL = {"id": "llmops_20260101_020000", "name": "llmops", "status": "success", "complete": True,
        "ended": "2026-01-01T02:10:00Z", "components": {"mariadb": {"backup_type": "full"}}}
INC = {"id": "llmops_20260101_080000", "name": "llmops", "status": "success", "complete": True,
       "ended": "2026-01-01T08:05:00Z",
       "components": {"mariadb": {"backup_type": "incremental", "parent": FULL["id"], "binlog": {"files": 2}}}}
FAILED = {"id": "llmops_20260101_140000", "name": "llmops", "status": "failed", "complete": True,
          "ended": "2026-01-01T14:01:00Z", "components": {}}
UPLOADS = {"id": "uploads_20260101_030000", "name": "uploads", "status": "success", "complete": True,
           "ended": "2026-01-01T03:00:00Z", "components": {"uploads": {"backup_type": "full"}}}


def snap(item, sid):
    return {"id": sid, "tags": off.set_tags(item)}


def test_tags_name_the_set_and_parse_back():
    tags = off.set_tags(INC)
    assert tags[:3] == ["llmops-set", "set=llmops_20260101_080000", "kind=llmops"]
    assert "ended=20260101T080500Z" in tags and "type=incremental" in tags
    assert "parent=llmops_20260101_020000" in tags and "binlog" in tags
    parsed = off.parse_tags(tags)
    assert parsed["set"] == INC["id"] and parsed["parents"] == [FULL["id"]] and parsed["binlog"]
    assert off.parse_tags(["llmops-extra", "extra=binlogs"]) is None
    assert off.set_tags(FULL)[-1] == "type=full"


def test_only_complete_unsent_sets_are_sent_oldest_first():
    partial = dict(FULL, id="llmops_20260102_020000", complete=False, ended="2026-01-02T02:00:00Z")
    local = [INC, FULL, FAILED, partial, UPLOADS]
    assert [s["id"] for s in off.sets_to_send(local, [])] == [FULL["id"], UPLOADS["id"], INC["id"]]
    assert [s["id"] for s in off.sets_to_send(local, [snap(FULL, "a")])] == [UPLOADS["id"], INC["id"]]
    assert FAILED["id"] in [s["id"] for s in off.sets_to_send(local, [], include_failed=True)]
    sent = [snap(s, str(i)) for i, s in enumerate((FULL, INC, UPLOADS))]
    assert off.sets_to_send(local, sent) == []


def test_lag_is_newest_local_minus_newest_replicated():
    local = [FULL, INC, FAILED]
    assert off.lag_seconds(local, []) is None
    assert off.lag_seconds(local, [snap(FULL, "a")]) == 6 * 3600 - 300
    assert off.lag_seconds(local, [snap(FULL, "a"), snap(INC, "b")]) == 0
    assert off.lag_seconds([], []) == 0


def test_prune_keeps_the_full_a_kept_incremental_needs():
    old_full = dict(FULL, id="llmops_20250101_020000", ended="2025-01-01T02:10:00Z")
    snaps = [snap(old_full, "s0"), snap(FULL, "s1"), snap(INC, "s2"), snap(UPLOADS, "s3")]
    plan = off.prune_plan(snaps, {"daily_days": 0, "weekly": 0, "monthly": 0, "incremental_days": 30},
                          now="2026-01-05T00:00:00Z")
    assert FULL["id"] in plan["keep"] and any("parent of" in r for r in plan["keep"][FULL["id"]])
    assert plan["forget_sets"] == [old_full["id"]] and plan["forget"] == ["s0"]
    keep_all = off.prune_plan(snaps, {}, now="2025-01-05T00:00:00Z")
    assert keep_all["forget"] == []


def test_policy_of_roles_common_is_understood():
    assert off.restic_policy({"daily_days": 30, "mariadb_incremental_days": 7}) == {"daily_days": 30,
                                                                                     "incremental_days": 7}


def test_redact_hides_the_rest_password():
    assert off.redact("rest:https://llmops:s3cret@host:8000/r") == "rest:https://llmops:***@host:8000/r"
    assert off.redact("sftp:u@host:/srv/r") == "sftp:u@host:/srv/r"


def test_metrics_textfile_format():
    text = off.offsite_metrics({"sync": {"last_success": "2026-01-01T00:00:00Z", "last_status": "failed",
                                         "lag_s": None}})
    assert "llmops_offsite_last_success_timestamp_seconds 1767225600.0" in text
    assert "llmops_offsite_last_run_success 0.0" in text and "llmops_offsite_lag_seconds -1.0" in text
    assert "check_last_success" not in text


class FakeRun:
    def __init__(self, results):
        self.results, self.calls = list(results), []

    def __call__(self, argv, cwd=None, env=None, capture_output=True, text=True, check=False):
        password = open(env["RESTIC_PASSWORD_FILE"]).read()
        mode = stat.S_IMODE(os.stat(env["RESTIC_PASSWORD_FILE"]).st_mode)
        self.calls.append({"argv": argv, "password": password, "mode": mode, "repo": env["RESTIC_REPOSITORY"]})
        rc, out, err = self.results.pop(0)
        return subprocess.CompletedProcess(argv, rc, out, err)


def test_password_goes_through_a_0600_file_and_transient_errors_are_retried():
    fake = FakeRun([(1, "", "Fatal: unable to open config file: connection refused"), (0, "[]", "")])
    slept = []
    with off.Restic("rest:http://u:pw@h:1/r", password=SECRET, runner=fake, retries=2, backoff=1,
                    sleep=slept.append) as restic:
        assert restic.snapshots() == []
        tmp = restic.tmp
    assert [c["argv"] for c in fake.calls] == [["restic", "snapshots", "--json"]] * 2
    assert all(SECRET not in " ".join(c["argv"]) and c["password"] == SECRET and c["mode"] == 0o600
               for c in fake.calls)
    assert slept == [1.0] and not os.path.exists(tmp)


def test_a_wrong_password_is_not_retried_and_says_what_to_do():
    fake = FakeRun([(1, "", "Fatal: wrong password or no key found")])
    with off.Restic("/r", password=OTHER, runner=fake, retries=3, sleep=lambda s: None) as restic:
        with pytest.raises(off.OffsiteError, match="offsite_password"):
            restic.snapshots()
    assert len(fake.calls) == 1


def test_missing_repository_needs_init_opt_in():
    fake = FakeRun([(1, "", "Fatal: unable to open config file: stat /r/config: no such file or directory\n"
                            "Is there a repository at the following location?")])
    with off.Restic("/r", password=OTHER, runner=fake, retries=0) as restic:
        with pytest.raises(off.OffsiteError, match="init"):
            restic.snapshots(init=False)
    with pytest.raises(off.OffsiteError, match="password"):
        off.Restic("/r")


def test_sftp_command_carries_paths_only_and_refuses_other_repositories():
    assert off.sftp_command("sftp:u@h:/srv/r") is None  # restic's own ssh with ~/.ssh
    cmd = off.sftp_command("sftp:offsite@backup.example.org:/srv/restic/llmops", "/etc/llmops/offsite key",
                           "/etc/llmops/known_hosts", 2222, ["ConnectTimeout=20"])
    assert cmd == ("ssh -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile=/etc/llmops/known_hosts "
                   "-i '/etc/llmops/offsite key' -o IdentitiesOnly=yes -o ConnectTimeout=20 -p 2222 "
                   "offsite@backup.example.org -s sftp")
    # the URL form: user, host and port from the URL; an IPv6 host without brackets
    assert off.sftp_command("sftp://u@[::1]:2200//srv/r", identity_file="/k").endswith("-p 2200 u@::1 -s sftp")
    assert off.sftp_command("sftp:h:/r", known_hosts_file="/kh").endswith(" h -s sftp")
    with pytest.raises(off.OffsiteError, match="sftp repository"):
        off.sftp_command("rest:https://u:pw@h:8000/r", identity_file="/k")


def test_restic_options_come_before_every_command():
    fake = FakeRun([(0, "[]", "")])
    with off.Restic("sftp:u@h:/r", password=SECRET, runner=fake, options=["sftp.command=ssh -i /k u@h -s sftp"]) as r:
        r.snapshots()
    assert fake.calls[0]["argv"] == ["restic", "-o", "sftp.command=ssh -i /k u@h -s sftp", "snapshots", "--json"]
    assert r.log[0]["argv"] == ["snapshots", "--json"]


def test_check_lists_the_snapshots_first_and_creates_a_missing_repository_only_when_told():
    missing = (1, "", "Fatal: unable to open config file: <config/> does not exist\n"
                      "Is there a repository at the following location?")
    fake = FakeRun([missing])
    with off.Restic("/r", password=OTHER, runner=fake, retries=0) as restic:
        with pytest.raises(off.OffsiteError, match="init"):
            off.check(restic, 5)
    assert [c["argv"][1] for c in fake.calls] == ["snapshots"]
    fake = FakeRun([missing, (0, "created restic repository", ""), (0, "no errors were found", "")])
    with off.Restic("/r", password=OTHER, runner=fake, retries=0) as restic:
        result = off.check(restic, 5, init=True)
    assert [c["argv"][1:] for c in fake.calls] == [["snapshots", "--json"], ["init"],
                                                   ["check", "--read-data-subset=5%"]]
    assert result["snapshots_count"] == 0 and "no errors" in result["output"]


def test_component_tags_parse_back_and_old_snapshots_have_none():
    tags = off.set_tags(FULL)
    assert "component=mariadb" in tags and tags[-1] == "type=full"
    assert off.parse_tags(tags)["components"] == ["mariadb"]
    old = [t for t in tags if not t.startswith("component=")]
    assert off.parse_tags(old)["components"] is None


def parsed_sets(*items):
    return {i["id"]: off.parse_tags(off.set_tags(i)) for i in items}


def test_fetch_selection_takes_each_components_newest_set_and_its_chain():
    inc2 = {"id": "llmops_20260101_140000", "name": "llmops", "status": "success", "complete": True,
            "ended": "2026-01-01T14:05:00Z",
            "components": {"mariadb": {"backup_type": "incremental", "parent": INC["id"]}}}
    failed = dict(FAILED, components={"mariadb": {"backup_type": "full"}}, id="llmops_20260101_200000",
                  ended="2026-01-01T20:00:00Z")
    old_pg = {"id": "llmops_20251231_020000", "name": "llmops", "status": "success", "complete": True,
              "ended": "2025-12-31T02:10:00Z", "components": {"mariadb": {}, "postgres": {}}}
    sets = parsed_sets(FULL, INC, inc2, failed, UPLOADS, old_pg)
    chosen, by_component = off.fetch_selection(sets)
    assert by_component == {"mariadb": inc2["id"], "postgres": old_pg["id"], "uploads": UPLOADS["id"]}
    # the failed set is never chosen; the chain inc2 -> INC -> FULL comes along, oldest first
    assert chosen == [old_pg["id"], FULL["id"], UPLOADS["id"], INC["id"], inc2["id"]]
    assert off.fetch_selection(sets, [INC["id"]]) == ([FULL["id"], INC["id"]], {})
    with pytest.raises(off.OffsiteError, match="not in the off-site repository"):
        off.fetch_selection(sets, ["llmops_20200101_000000"])
    del sets[FULL["id"]]
    with pytest.raises(off.OffsiteError, match=f"needs set {FULL['id']}"):
        off.fetch_selection(sets, [inc2["id"]])


def test_newest_snapshot_per_set_and_extra_and_the_manifest_chain():
    snaps = [dict(snap(FULL, "a"), time="2026-01-01T03:00:00Z"), dict(snap(FULL, "b"), time="2026-01-02T03:00:00Z"),
             {"id": "c", "time": "2026-01-01T03:00:00Z", "tags": ["llmops-extra", "extra=binlogs"]},
             {"id": "d", "time": "2026-01-03T03:00:00Z", "tags": ["llmops-extra", "extra=binlogs"]},
             {"id": "e", "time": "2026-01-03T03:00:00Z", "tags": ["unrelated"]}]
    sets, extras = off.newest_snapshots(snaps)
    assert sets[FULL["id"]][1]["id"] == "b" and extras == {"binlogs": snaps[3]}
    manifest = {"components": {"mariadb": {"parent": "b_20260101_000000", "chain": ["a_20260101_000000"]},
                               "postgres": {"backup_type": "full"}, "odd": "not a dict"}}
    assert off.manifest_chain(manifest) == ["a_20260101_000000", "b_20260101_000000"]
