"""roles/monitoring on a fresh Debian 12 host (molecule scenario `monitoring`)."""

import time
from pathlib import Path

import yaml

TEXTFILE_DIR = "/var/lib/node_exporter/textfile_collector"
RULES = "/etc/prometheus/rules/llmops.rules.yml"

FETCH = "python3 -c \"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9100/metrics').read().decode())\""


def test_rules_installed_and_valid(host):
    assert host.file(RULES).mode == 0o644
    out = host.check_output(f"promtool check rules {RULES}")
    # every rule of the role's file, as the repository has it
    source = Path(__file__).resolve().parents[3] / "roles" / "monitoring" / "files" / "llmops.rules.yml"
    expected = sum(len(group["rules"]) for group in yaml.safe_load(source.read_text())["groups"])
    assert expected >= 10 and f"SUCCESS: {expected} rules found" in out


def test_rule_unit_tests_pass_on_the_host(host):
    host.run_expect([0], "cd /etc/prometheus/rules && promtool test rules llmops.rules.test.yml")


def test_prometheus_server_left_stopped(host):
    svc = host.service("prometheus")
    assert not svc.is_running
    assert not svc.is_enabled


def test_node_exporter_exports_the_textfile_folder(host):
    assert host.service("prometheus-node-exporter").is_enabled
    assert host.file(TEXTFILE_DIR).is_directory and host.file(TEXTFILE_DIR).mode == 0o755
    # node_exporter prints large values in exponent form: a label carries this run's mark
    metric = f'llmops_molecule_probe{{run="{time.time_ns()}"}} 1'
    host.run_expect([0], f"printf '%s\\n' '{metric}' > {TEXTFILE_DIR}/molecule_probe.prom")
    try:
        for _ in range(30):
            cmd = host.run(FETCH)
            if cmd.rc == 0 and metric in cmd.stdout:
                break
            time.sleep(1)
        assert metric in cmd.stdout, cmd.stdout[-2000:] + cmd.stderr
    finally:
        host.run(f"rm -f {TEXTFILE_DIR}/molecule_probe.prom")
