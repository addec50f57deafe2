"""roles/backup_schedule with systemd timers (molecule scenario `backup_schedule_systemd`).

Each timer's calendar is normalised by systemd itself (systemd-analyze calendar) and compared with
MISSION.md's schedule written out here.
"""

import pytest

# job -> systemd's normalised form of its OnCalendar
EXPECTED = {
    "mariadb-full": "*-*-* 02:00:00",
    "mariadb-incremental": "*-*-* 08,14,20:00:00",
    "mariadb-binlog": "*-*-* *:00/5:00",
    "daily": "*-*-* 02:00:00",
    "weekly": "Sun *-*-* 02:00:00",
    "monthly": "*-*-01 04:00:00",
    "cleanup": "*-*-* 03:00:00",
    "restore-test": "*-*-* 02:30:00",
    "drill": "*-01,04,07,10-01 05:00:00",
    "health": "*-*-* 07:00:00",
    # the off-site copy (offsite_enabled: true in molecule.yml)
    "offsite-sync": "*-*-* 03:30:00",
    "offsite-check": "Sun *-*-* 05:30:00",
}


@pytest.mark.parametrize("job", sorted(EXPECTED))
def test_timer_calendar(host, job):
    timer = host.file(f"/etc/systemd/system/llmops-{job}.timer").content_string
    calendar = next(line.split("=", 1)[1] for line in timer.splitlines() if line.startswith("OnCalendar="))
    out = host.check_output(f"systemd-analyze calendar '{calendar}'")
    normalized = next(line.split(":", 1)[1].strip() for line in out.splitlines() if "Normalized form" in line)
    assert normalized == EXPECTED[job]
    assert "Persistent=true" in timer


@pytest.mark.parametrize("job", sorted(EXPECTED))
def test_timer_enabled_and_active(host, job):
    timer = host.service(f"llmops-{job}.timer")
    assert timer.is_enabled
    assert timer.is_running  # active (waiting)


@pytest.mark.parametrize("job", sorted(EXPECTED))
def test_service_runs_the_job_under_flock(host, job):
    unit = host.file(f"/etc/systemd/system/llmops-{job}.service").content_string
    assert "Type=oneshot" in unit
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert "flock -" in exec_start and ">> /var/log/llmops/backup.log 2>&1" in exec_start
    assert " --connection=local --limit=llmops-molecule-backup_schedule_systemd " in exec_start
    # systemd accepts the unit (a syntax error or an unknown key fails here)
    host.run_expect([0], f"systemd-analyze verify /etc/systemd/system/llmops-{job}.service")


def test_no_cron_entries(host):
    f = host.file("/etc/cron.d/llmops-backup")
    assert not f.exists or "#Ansible: llmops" not in f.content_string
