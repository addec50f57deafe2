"""roles/nvidia on a host without GPU (molecule scenario `nvidia`): nothing was installed or changed."""


def test_no_nvidia_repositories(host):
    assert not host.file("/etc/apt/sources.list.d/nvidia-cuda.sources").exists
    assert not host.file("/etc/apt/sources.list.d/nvidia-container-toolkit.sources").exists


def test_no_driver_or_toolkit(host):
    assert not host.package("nvidia-container-toolkit").is_installed
    assert not host.exists("nvidia-smi")


def test_docker_configuration_untouched(host):
    assert not host.file("/etc/docker/daemon.json").exists
