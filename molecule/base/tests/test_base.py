"""roles/base on a fresh Debian 12 host (molecule scenario `base`)."""

import pytest


@pytest.mark.parametrize("pkg", ["rsync", "zstd", "git", "jq", "cron", "logrotate", "python3-docker", "pciutils"])
def test_packages_installed(host, pkg):
    assert host.package(pkg).is_installed


def test_operators_in_ops_group(host):
    assert host.group("llmops").exists
    assert "llmops" in host.user("oncall").groups


@pytest.mark.parametrize(("path", "mode"), [
    ("/opt/llmops/stack", 0o750),
    ("/srv/appdb", 0o750),
    ("/srv/ai", 0o750),
    ("/backup", 0o700),
    ("/etc/llmops", 0o750),
])
def test_folders_and_modes(host, path, mode):
    f = host.file(path)
    assert f.is_directory
    assert f.mode == mode


def test_backup_root_is_its_own_file_system(host):
    root = host.check_output("findmnt -no SOURCE --target /")
    backup = host.check_output("findmnt -no SOURCE --target /backup")
    assert root != backup


def test_sysctl_file_written(host):
    content = host.file("/etc/sysctl.d/60-llmops.conf").content_string
    for line in ("vm.overcommit_memory=1", "vm.max_map_count=262144", "vm.swappiness=1", "net.core.somaxconn=1024"):
        assert line in content


def test_open_files_limit(host):
    content = host.file("/etc/security/limits.d/60-llmops.conf").content_string
    assert "nofile" in content and "65536" in content
