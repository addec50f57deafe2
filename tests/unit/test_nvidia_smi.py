"""Unit tests for module_utils/llmops_nvidia_smi.py against real nvidia-smi captures (tests/data/nvidia-smi/)."""

from __future__ import annotations

import csv
import io
import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from module_utils.llmops_nvidia_smi import (
    QUERY_ARGS,
    QUERY_FIELDS,
    clean_value,
    normalize_pci_bus_id,
    parse_header,
    parse_list_gpus,
    parse_query_gpu_csv,
    plan_gpu_split,
)

DATA = Path(__file__).resolve().parent.parent / "data" / "nvidia-smi"
ZERO_UUID = "GPU-00000000-0000-0000-0000-000000000000"


def read(name: str) -> str:
    return (DATA / name).read_text(encoding="ascii")


# What each real capture must parse to (values read off the captures by hand).
QUERY_CASES = {
    "l40s__query-gpu.csv": [
        dict(
            index=0,
            uuid=ZERO_UUID,
            name="NVIDIA L40S",
            pci_bus_id="00000000:01:00.0",
            memory_total_mib=46068,
            driver_version="595.80",
            compute_cap="8.9",
            mig_mode=None,
        )
    ],
    "rtx4080super__query-gpu.csv": [
        dict(
            index=0,
            uuid=ZERO_UUID,
            name="NVIDIA GeForce RTX 4080 SUPER",
            pci_bus_id="00000000:01:00.0",
            memory_total_mib=16376,
            driver_version="595.71.05",
            compute_cap="8.9",
            mig_mode=None,
        )
    ],
    "h100__query-gpu.csv": [
        dict(
            index=0,
            uuid=ZERO_UUID,
            name="NVIDIA H100 80GB HBM3",
            pci_bus_id="00000000:00:09.0",
            memory_total_mib=81559,
            driver_version="590.48.01",
            compute_cap="9.0",
            mig_mode="Disabled",
        )
    ],
    "h100-mig__query-gpu.csv": [
        dict(
            index=0,
            uuid=ZERO_UUID,
            name="NVIDIA H100 80GB HBM3",
            pci_bus_id="00000000:00:09.0",
            memory_total_mib=81559,
            driver_version="590.48.01",
            compute_cap="9.0",
            mig_mode="Enabled",
        )
    ],
}


def _ada(index: int, bus: str) -> dict:
    return dict(
        index=index,
        uuid=f"GPU-00000000-0000-0000-0000-00000000000{index}",
        name="NVIDIA GeForce RTX 4080 SUPER",
        pci_bus_id=f"00000000:{bus}:00.0",
        memory_total_mib=16376,
        driver_version="595.71.05",
        compute_cap="8.9",
        mig_mode=None,
    )


QUERY_CASES["ada-4gpu__query-gpu.csv"] = [_ada(0, "01"), _ada(1, "21"), _ada(2, "41"), _ada(3, "61")]
QUERY_CASES["ada-4gpu-reordered__query-gpu.csv"] = [_ada(0, "41"), _ada(1, "01"), _ada(2, "61"), _ada(3, "21")]


def project(text: str, fields=QUERY_FIELDS) -> str:
    """Cut the real wide CSV down to the columns gpu_facts queries, as nvidia-smi would print them."""
    rows = list(csv.reader(io.StringIO(text), skipinitialspace=True))
    names = [field for field, _unit in parse_header(text.splitlines()[0])]
    keep = [names.index(field) for field in fields]
    return "".join(", ".join(row[i] for i in keep) + "\n" for row in rows if row)


@pytest.mark.parametrize("fixture", sorted(QUERY_CASES))
def test_parse_query_gpu_every_field(fixture):
    assert parse_query_gpu_csv(read(fixture)) == QUERY_CASES[fixture]


@pytest.mark.parametrize("fixture", sorted(QUERY_CASES))
def test_parse_query_gpu_projected_to_the_module_query(fixture):
    narrow = project(read(fixture))
    assert narrow.splitlines()[0].startswith("index, uuid, name, pci.bus_id, memory.total [MiB], ")
    assert parse_query_gpu_csv(narrow) == QUERY_CASES[fixture]


@pytest.mark.parametrize("fixture", sorted(QUERY_CASES))
def test_parse_query_gpu_column_order_does_not_matter(fixture):
    shuffled = list(QUERY_FIELDS)
    random.Random(fixture).shuffle(shuffled)
    assert parse_query_gpu_csv(project(read(fixture), shuffled)) == QUERY_CASES[fixture]


@pytest.mark.parametrize("fixture", sorted(QUERY_CASES))
def test_parse_query_gpu_nounits_values(fixture):
    # --format=csv,nounits keeps the unit in the header but drops it from the values.
    narrow = project(read(fixture)).replace(" MiB", "")
    assert "memory.total [MiB]" in narrow
    assert parse_query_gpu_csv(narrow) == QUERY_CASES[fixture]


def test_header_units():
    assert parse_header("index, memory.total [MiB], compute_cap") == [
        ("index", None),
        ("memory.total", "MiB"),
        ("compute_cap", None),
    ]


def test_memory_in_gib_header_is_converted():
    text = "index, uuid, pci.bus_id, memory.total [GiB]\n0, GPU-1, 00000000:01:00.0, 20 GiB\n"
    assert parse_query_gpu_csv(text)[0]["memory_total_mib"] == 20480


def test_memory_unit_mismatch_is_an_error():
    text = "index, uuid, pci.bus_id, memory.total [MiB]\n0, GPU-1, 00000000:01:00.0, 20 GiB\n"
    with pytest.raises(ValueError, match="does not match the header unit"):
        parse_query_gpu_csv(text)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("[N/A]", None),
        (" [Not Supported] ", None),
        ("N/A", None),
        ("", None),
        ("[Requested functionality has been deprecated]", None),
        ("  8.9 ", "8.9"),
        ("Disabled", "Disabled"),
    ],
)
def test_clean_value(raw, expected):
    assert clean_value(raw) == expected


@pytest.mark.parametrize("mig, expected", [("Enabled", "Enabled"), ("Disabled", "Disabled"), ("[N/A]", None),
                                           ("[Not Supported]", None), ("N/A", None)])
def test_mig_mode_values(mig, expected):
    text = f"index, uuid, pci.bus_id, mig.mode.current\n0, GPU-1, 00000000:01:00.0, {mig}\n"
    assert parse_query_gpu_csv(text)[0]["mig_mode"] == expected


def test_na_memory_and_missing_optional_columns_are_none():
    text = "index, uuid, pci.bus_id, memory.total [MiB]\n0, GPU-1, 0000:01:00.0, [N/A]\n"
    (gpu,) = parse_query_gpu_csv(text)
    assert gpu["memory_total_mib"] is None
    assert gpu["name"] is None and gpu["compute_cap"] is None and gpu["driver_version"] is None
    assert gpu["pci_bus_id"] == "00000000:01:00.0"


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("00000000:01:00.0", "00000000:01:00.0"),
        ("0000:c1:00.0", "00000000:C1:00.0"),
        ("00000001:0a:1f.7", "00000001:0A:1F.7"),
        ("41:00.0", "00000000:41:00.0"),
    ],
)
def test_normalize_pci_bus_id(raw, expected):
    assert normalize_pci_bus_id(raw) == expected


@pytest.mark.parametrize("raw", ["", "GPU-1", "00000000:01:00", "0000:01:00.8", "000000000:01:00.0"])
def test_normalize_pci_bus_id_rejects(raw):
    with pytest.raises(ValueError, match="not a PCI bus id"):
        normalize_pci_bus_id(raw)


@pytest.mark.parametrize(
    "text, match",
    [
        ("", "printed nothing"),
        ("0, GPU-1, 00000000:01:00.0\n", "no index, uuid, pci.bus_id column"),
        ("index, name\n0, x\n", "no uuid, pci.bus_id column"),
        ("index, uuid, pci.bus_id\n0, GPU-1\n", "has 2 values for 3 columns"),
    ],
)
def test_parse_query_gpu_rejects_bad_output(text, match):
    with pytest.raises(ValueError, match=match):
        parse_query_gpu_csv(text)


def test_query_args_ask_for_header_and_all_fields():
    assert QUERY_ARGS == [
        "--query-gpu=index,uuid,name,pci.bus_id,memory.total,driver_version,compute_cap,mig.mode.current",
        "--format=csv",
    ]


# --- nvidia-smi -L ----------------------------------------------------------------------------

LIST_CASES = {
    "l40s__list-gpus.txt": [dict(index=0, name="NVIDIA L40S", uuid=ZERO_UUID, mig_devices=[])],
    "rtx4080super__list-gpus.txt": [
        dict(index=0, name="NVIDIA GeForce RTX 4080 SUPER", uuid=ZERO_UUID, mig_devices=[])
    ],
    "h100__list-gpus.txt": [dict(index=0, name="NVIDIA H100 80GB HBM3", uuid=ZERO_UUID, mig_devices=[])],
    "h100-mig__list-gpus.txt": [
        dict(
            index=0,
            name="NVIDIA H100 80GB HBM3",
            uuid=ZERO_UUID,
            mig_devices=[
                dict(profile="3g.40gb", index=0, uuid="MIG-00000000-0000-0000-0000-000000000000"),
                dict(profile="2g.20gb", index=1, uuid="MIG-00000001-0000-0000-0000-000000000001"),
                dict(profile="1g.10gb", index=2, uuid="MIG-00000002-0000-0000-0000-000000000002"),
                dict(profile="1g.10gb", index=3, uuid="MIG-00000003-0000-0000-0000-000000000003"),
            ],
        )
    ],
}


@pytest.mark.parametrize("fixture", sorted(LIST_CASES))
def test_parse_list_gpus(fixture):
    assert parse_list_gpus(read(fixture)) == LIST_CASES[fixture]


def test_parse_list_gpus_single_space_mig_line():
    text = "GPU 0: NVIDIA A100 (UUID: GPU-a)\n  MIG 1g.10gb Device 0: (UUID: MIG-b)\n"
    assert parse_list_gpus(text)[0]["mig_devices"] == [dict(profile="1g.10gb", index=0, uuid="MIG-b")]


@pytest.mark.parametrize(
    "text, match",
    [
        ("  MIG 1g.10gb Device 0: (UUID: MIG-b)\n", "before any GPU"),
        ("No devices were found\n", "unexpected line"),
    ],
)
def test_parse_list_gpus_rejects(text, match):
    with pytest.raises(ValueError, match=match):
        parse_list_gpus(text)


# --- plan_gpu_split ---------------------------------------------------------------------------


def ada4(name="ada-4gpu__query-gpu.csv"):
    return parse_query_gpu_csv(read(name))


def ids(split):
    return {group: [gpu["index"] for gpu in gpus] for group, gpus in split.items()}


def test_split_3_plus_1_on_the_4_gpu_host():
    split = plan_gpu_split(ada4(), {"llm": 3, "embed": 1})
    assert list(split) == ["llm", "embed"]
    assert ids(split) == {"llm": ["0", "1", "2"], "embed": ["3"]}
    assert split["embed"] == [
        dict(index="3", uuid="GPU-00000000-0000-0000-0000-000000000003", pci_bus_id="00000000:61:00.0")
    ]


def test_split_follows_pci_bus_order_not_index_order():
    split = plan_gpu_split(ada4("ada-4gpu-reordered__query-gpu.csv"), {"llm": 3, "embed": 1})
    assert [g["pci_bus_id"][9:11] for g in split["llm"]] == ["01", "21", "41"]
    assert ids(split) == {"llm": ["1", "3", "0"], "embed": ["2"]}


def test_split_groups_in_the_given_order():
    split = plan_gpu_split(ada4(), {"embed": 1, "llm": 3})
    assert ids(split) == {"embed": ["0"], "llm": ["1", "2", "3"]}


def test_split_does_not_depend_on_input_order():
    gpus = ada4()
    assert plan_gpu_split(list(reversed(gpus)), {"llm": 3, "embed": 1}) == plan_gpu_split(gpus, {"llm": 3, "embed": 1})


@pytest.mark.parametrize(
    "groups, match",
    [
        ({"llm": 4, "embed": 1}, r"asks for 5 GPUs \(llm=4, embed=1\) but this host has 4: GPUs are missing"),
        ({"llm": 2, "embed": 1}, r"asks for 3 GPUs \(llm=2, embed=1\) but this host has 4: GPUs would stay unassigned"),
        ({}, r"asks for 0 GPUs \(no groups\)"),
    ],
)
def test_split_mismatch_fails_with_advice(groups, match):
    with pytest.raises(ValueError, match=match) as err:
        plan_gpu_split(ada4(), groups)
    assert "allow_mismatch=true" in str(err.value)
    assert "00000000:41:00.0" in str(err.value)


def test_split_allow_mismatch_extra_gpus_stay_unassigned():
    assert ids(plan_gpu_split(ada4(), {"llm": 2, "embed": 1}, allow_mismatch=True)) == {
        "llm": ["0", "1"],
        "embed": ["2"],
    }


def test_split_allow_mismatch_missing_gpus_fill_groups_in_order():
    one_gpu = parse_query_gpu_csv(read("l40s__query-gpu.csv"))
    assert ids(plan_gpu_split(one_gpu, {"llm": 3, "embed": 1}, allow_mismatch=True)) == {"llm": ["0"], "embed": []}


@pytest.mark.parametrize(
    "groups, match",
    [
        ({"llm": -1, "embed": 5}, "must not be negative"),
        ({"llm": 1.5}, "whole number"),
        ({"llm": True}, "whole number"),
        ({"llm": None}, "whole number"),
    ],
)
def test_split_rejects_bad_counts(groups, match):
    with pytest.raises(ValueError, match=match):
        plan_gpu_split(ada4(), groups, allow_mismatch=True)


def test_split_accepts_counts_as_strings():
    # Ansible turns `-a 'groups={"llm": "3"}'` or templated values into strings.
    assert ids(plan_gpu_split(ada4(), {"llm": "3", "embed": "1"})) == {"llm": ["0", "1", "2"], "embed": ["3"]}


def test_split_rejects_duplicate_gpus():
    gpus = ada4()
    with pytest.raises(ValueError, match="share the uuid"):
        plan_gpu_split(gpus + [dict(gpus[0], pci_bus_id="00000000:81:00.0")], {"all": 5})
    with pytest.raises(ValueError, match="share the pci_bus_id"):
        plan_gpu_split(gpus + [dict(gpus[0], uuid="GPU-x")], {"all": 5})


@given(
    n_gpus=st.integers(min_value=0, max_value=16),
    counts=st.lists(st.integers(min_value=0, max_value=8), max_size=6),
    seed=st.integers(min_value=0, max_value=2**16),
    allow_mismatch=st.booleans(),
)
def test_split_properties(n_gpus, counts, seed, allow_mismatch):
    rng = random.Random(seed)
    buses = rng.sample(range(256), n_gpus)
    gpus = [
        dict(index=i, uuid=f"GPU-{i:08x}", pci_bus_id=f"00000000:{bus:02X}:00.0") for i, bus in enumerate(buses)
    ]
    rng.shuffle(gpus)
    groups = {f"g{i}": count for i, count in enumerate(counts)}
    if sum(counts) != n_gpus and not allow_mismatch:
        with pytest.raises(ValueError):
            plan_gpu_split(gpus, groups)
        return
    split = plan_gpu_split(gpus, groups, allow_mismatch=allow_mismatch)
    assert list(split) == list(groups)
    assigned = [gpu["uuid"] for members in split.values() for gpu in members]
    assert len(assigned) == len(set(assigned)) == min(n_gpus, sum(counts))
    for name, members in split.items():
        assert len(members) <= groups[name]
    # Concatenated in group order, the assignment is the bus-ordered GPU list's prefix.
    flat = [gpu["pci_bus_id"] for members in split.values() for gpu in members]
    assert flat == sorted(g["pci_bus_id"] for g in gpus)[: len(flat)]
    assert all(isinstance(gpu["index"], str) for members in split.values() for gpu in members)
