"""roles/backup_schedule with cron (molecule scenario `backup_schedule`).

The expected schedule is MISSION.md's, written out here on purpose (not read from the role's
defaults), so a change of the defaults that breaks the schedule fails this test.
"""

import pytest

# every job runs on the host it manages: a local connection, limited to this host
PLAYBOOK = ("/opt/llmops/ops/.venv/bin/ansible-playbook -i /opt/llmops/ops/inventories/production "
            "--connection=local --limit=llmops-molecule-backup_schedule")
VAULT = "--vault-password-file /etc/llmops/vault-password"
LOG = ">> /var/log/llmops/backup.log 2>&1"
WAIT_LOCK = "flock -w 7200 /run/lock/llmops-backup.lock"
BINLOG_LOCK = "flock -n /run/lock/llmops-binlog.lock"

# minute hour day month weekday, lock, playbook and arguments
EXPECTED = {
    "mariadb-full": ("0 2 * * *", WAIT_LOCK, "backup.yml -e components=mariadb -e backup_type=full"),
    "mariadb-incremental": ("0 8,14,20 * * *", WAIT_LOCK,
                            "backup.yml -e components=mariadb -e backup_type=incremental"),
    "mariadb-binlog": ("*/5 * * * *", BINLOG_LOCK, "binlog_archive.yml"),
    "daily": ("0 2 * * *", WAIT_LOCK, "backup.yml -e components=postgres,redis,qdrant,search,uploads,models,configs"),
    "weekly": ("0 2 * * 0", WAIT_LOCK, "backup.yml -e backup_type=full -e backup_set_name=weekly"),
    "monthly": ("0 4 1 * *", WAIT_LOCK, "backup.yml -e backup_type=full -e backup_set_name=monthly"),
    "cleanup": ("0 3 * * *", WAIT_LOCK, "cleanup.yml"),
    "restore-test": ("30 2 * * *", WAIT_LOCK, "verify.yml"),
    "drill": ("0 5 1 1,4,7,10 *", WAIT_LOCK, "drill.yml"),
    "health": ("0 7 * * *", "flock -n /run/lock/llmops-health.lock", "health.yml"),
    # the off-site copy (offsite_enabled: true in molecule.yml): after the nightly jobs, on their lock
    "offsite-sync": ("30 3 * * *", WAIT_LOCK, "offsite.yml"),
    "offsite-check": ("30 5 * * 0", WAIT_LOCK, "offsite.yml -e offsite_operation=check"),
}


def _entries(host):
    """{job name: line} from /etc/cron.d/llmops-backup (each entry follows its '#Ansible: ' marker)."""
    f = host.file("/etc/cron.d/llmops-backup")
    assert f.exists and f.user == "root" and f.mode == 0o644
    lines = f.content_string.splitlines()
    entries = {}
    for i, line in enumerate(lines):
        if line.startswith("#Ansible: llmops "):
            entries[line.split()[2].rstrip(":")] = lines[i + 1]
    return lines, entries


def test_every_job_and_nothing_else(host):
    _, entries = _entries(host)
    assert sorted(entries) == sorted(EXPECTED)


@pytest.mark.parametrize("job", sorted(EXPECTED))
def test_job_schedule_lock_and_log(host, job):
    _, entries = _entries(host)
    when, lock, playbook = EXPECTED[job]
    fields = entries[job].split()
    assert " ".join(fields[:5]) == when
    assert fields[5] == "root"
    command = " ".join(fields[6:])
    assert command == f"{lock} {PLAYBOOK} {VAULT} /opt/llmops/ops/playbooks/{playbook} {LOG}"


def test_mailto(host):
    lines, _ = _entries(host)
    assert 'MAILTO="oncall@example.org"' in lines


def test_cron_daemon_running(host):
    assert host.package("cron").is_installed
    assert host.service("cron").is_running
    assert host.service("cron").is_enabled


def test_logrotate_accepts_the_config(host):
    conf = host.file("/etc/logrotate.d/llmops-backup").content_string
    assert "/var/log/llmops/backup.log" in conf and "rotate 30" in conf
    # -d: debug, parses and plans without rotating; fails on a syntax error
    host.run_expect([0], "logrotate -d /etc/logrotate.d/llmops-backup")


def test_log_folder(host):
    assert host.file("/var/log/llmops").is_directory
    assert host.file("/var/log/llmops").mode == 0o750


def test_no_systemd_timers(host):
    assert host.run("ls /etc/systemd/system/llmops-*.timer").rc != 0
