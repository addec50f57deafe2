"""Runs the real gpu_facts module end to end, the way Ansible does: `ansible lab -m gpu_facts`.

nvidia-smi is replaced by a small shell script that prints a real capture (tests/data/nvidia-smi/),
so the module's command line, its parsing and its error handling are all the real ones.
"""

from __future__ import annotations

import pytest

from tests.conftest import fake_nvidia_smi, run_module

EXPECTED_ARGS = [
    "--query-gpu=index,uuid,name,pci.bus_id,memory.total,driver_version,compute_cap,mig.mode.current",
    "--format=csv",
]
DRIVER_DOWN = (
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
    "Make sure that the latest NVIDIA driver is installed and running."
)


def run_gpu_facts(args: dict, check: bool = False) -> dict:
    return run_module("gpu_facts", args, check_mode=check)


@pytest.mark.parametrize(
    "fixture, name, memory, mig",
    [
        ("l40s__query-gpu.csv", "NVIDIA L40S", 46068, None),
        ("rtx4080super__query-gpu.csv", "NVIDIA GeForce RTX 4080 SUPER", 16376, None),
        ("h100__query-gpu.csv", "NVIDIA H100 80GB HBM3", 81559, "Disabled"),
        ("h100-mig__query-gpu.csv", "NVIDIA H100 80GB HBM3", 81559, "Enabled"),
    ],
)
def test_single_gpu_captures(tmp_path, fixture, name, memory, mig):
    result = run_gpu_facts({"nvidia_smi_path": str(fake_nvidia_smi(tmp_path, fixture))})
    assert not result.get("failed"), result
    assert result["changed"] is False and result["gpu_present"] is True
    facts = result["ansible_facts"]
    assert facts["gpu_count"] == 1
    (gpu,) = facts["gpus"]
    assert gpu["name"] == name and gpu["memory_total_mib"] == memory and gpu["mig_mode"] == mig
    assert gpu["index"] == 0 and gpu["uuid"] == "GPU-00000000-0000-0000-0000-000000000000"
    assert facts["driver_version"] == gpu["driver_version"]
    assert "gpu_split" not in facts
    assert (tmp_path / "argv").read_text().splitlines() == EXPECTED_ARGS


def test_four_gpu_host_split_3_plus_1_by_bus_id(tmp_path):
    smi = fake_nvidia_smi(tmp_path, "ada-4gpu-reordered__query-gpu.csv")
    result = run_gpu_facts({"nvidia_smi_path": str(smi), "groups": {"llm": 3, "embed": 1}})
    assert not result.get("failed"), result
    facts = result["ansible_facts"]
    assert facts["gpu_count"] == 4 and facts["driver_version"] == "595.71.05"
    split = facts["gpu_split"]
    assert [g["index"] for g in split["llm"]] == ["1", "3", "0"]
    assert [g["pci_bus_id"] for g in split["llm"]] == ["00000000:01:00.0", "00000000:21:00.0", "00000000:41:00.0"]
    assert split["embed"] == [
        {"index": "2", "uuid": "GPU-00000000-0000-0000-0000-000000000002", "pci_bus_id": "00000000:61:00.0"}
    ]
    # what Compose's device_ids get: UUIDs in PCI bus order
    assert facts["gpu_device_ids"] == {"llm": [f"GPU-00000000-0000-0000-0000-00000000000{i}" for i in (1, 3, 0)],
                                       "embed": ["GPU-00000000-0000-0000-0000-000000000002"]}


def test_check_mode_gives_the_same_facts(tmp_path):
    smi = fake_nvidia_smi(tmp_path, "ada-4gpu__query-gpu.csv")
    args = {"nvidia_smi_path": str(smi), "groups": {"llm": 3, "embed": 1}}
    normal = run_gpu_facts(args)
    checked = run_gpu_facts(args, check=True)
    assert not checked.get("failed") and not checked.get("skipped"), checked
    assert checked["ansible_facts"] == normal["ansible_facts"]
    assert checked["ansible_facts"]["gpu_count"] == 4


def test_split_mismatch_fails_and_allow_mismatch_accepts(tmp_path):
    smi = str(fake_nvidia_smi(tmp_path, "ada-4gpu__query-gpu.csv"))
    failed = run_gpu_facts({"nvidia_smi_path": smi, "groups": {"llm": 4, "embed": 1}})
    assert failed["failed"] is True
    assert "asks for 5 GPUs (llm=4, embed=1) but this host has 4" in failed["msg"]
    assert "allow_mismatch=true" in failed["msg"]
    accepted = run_gpu_facts({"nvidia_smi_path": smi, "groups": {"llm": 2}, "allow_mismatch": True})
    assert not accepted.get("failed"), accepted
    assert [g["index"] for g in accepted["ansible_facts"]["gpu_split"]["llm"]] == ["0", "1"]


def test_missing_binary_fails_with_advice(tmp_path):
    result = run_gpu_facts({"nvidia_smi_path": str(tmp_path / "missing" / "nvidia-smi")})
    assert result["failed"] is True
    assert result["msg"].startswith(
        "nvidia-smi not found on PATH: install the NVIDIA driver (role nvidia) or set required=false"
    )


def test_missing_binary_by_name_fails(tmp_path):
    result = run_gpu_facts({"nvidia_smi_path": "nvidia-smi-not-installed-here"})
    assert result["failed"] is True
    assert "nvidia-smi not found on PATH" in result["msg"] and "nvidia-smi-not-installed-here" in result["msg"]


def test_not_required_and_missing_is_ok_without_gpus(tmp_path):
    result = run_gpu_facts({"nvidia_smi_path": str(tmp_path / "missing" / "nvidia-smi"), "required": False})
    assert not result.get("failed"), result
    assert result["changed"] is False
    assert result["gpu_present"] is False
    assert "nvidia-smi not found" in result["skipped_reason"]
    assert result["ansible_facts"]["gpu_count"] == 0 and result["ansible_facts"]["gpus"] == []


@pytest.mark.parametrize("required", [True, False])
def test_driver_not_answering_fails(tmp_path, required):
    smi = fake_nvidia_smi(tmp_path, rc=9, stdout=DRIVER_DOWN)
    result = run_gpu_facts({"nvidia_smi_path": str(smi), "required": required})
    assert result["failed"] is True
    assert result["rc"] == 9
    assert "nvidia-smi failed with rc=9" in result["msg"]
    assert "couldn't communicate with the NVIDIA driver" in result["msg"]


def test_unreadable_output_fails(tmp_path):
    smi = fake_nvidia_smi(tmp_path, "h100-mig__list-gpus.txt")  # -L output where CSV is expected
    result = run_gpu_facts({"nvidia_smi_path": str(smi)})
    assert result["failed"] is True
    assert "cannot read the output of" in result["msg"]
