# -*- coding: utf-8 -*-
# Copyright: (c) 2026, llmops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pure parsers for ``nvidia-smi`` output and the GPU split planner.

Everything here is stdlib only and free of side effects, so it can be unit tested on machines
without a GPU (against real captures) and shipped to targets by Ansible as module_utils.

* :func:`parse_query_gpu_csv` reads ``nvidia-smi --query-gpu=... --format=csv`` output WITH its
  header line. Columns are found by name, so extra columns (or another order) are fine.
* :func:`parse_list_gpus` reads ``nvidia-smi -L`` (GPU lines and the MIG lines under them).
* :func:`plan_gpu_split` assigns whole GPUs to named groups in PCI bus id order.
"""

from __future__ import annotations

import csv
import re

# The inventory query gpu_facts runs. The parser does not depend on this order.
QUERY_FIELDS = (
    'index',
    'uuid',
    'name',
    'pci.bus_id',
    'memory.total',
    'driver_version',
    'compute_cap',
    'mig.mode.current',
)
QUERY_ARGS = ['--query-gpu=' + ','.join(QUERY_FIELDS), '--format=csv']

# Columns without which a GPU cannot be planned or addressed.
REQUIRED_COLUMNS = ('index', 'uuid', 'pci.bus_id')

# Placeholders nvidia-smi prints instead of a value. Any other fully bracketed value
# (e.g. "[Requested functionality has been deprecated]", "[Unknown Error]") is treated the same.
NOT_AVAILABLE = frozenset(['[N/A]', '[Not Supported]', 'N/A', ''])

# Multipliers to MiB for the memory units nvidia-smi uses in headers.
_TO_MIB = {'KiB': 1.0 / 1024, 'MiB': 1, 'GiB': 1024}

_HEADER_FIELD_RE = re.compile(r'^(?P<field>[^\[\]]+?)\s*(?:\[(?P<unit>[^\]]+)\])?$')
_PCI_RE = re.compile(
    r'^(?:(?P<domain>[0-9A-Fa-f]{1,8}):)?(?P<bus>[0-9A-Fa-f]{2}):(?P<device>[0-9A-Fa-f]{2})\.(?P<function>[0-7])$'
)
_LIST_GPU_RE = re.compile(r'^GPU\s+(?P<index>\d+):\s+(?P<name>.+?)\s+\(UUID:\s*(?P<uuid>[^)\s]+)\)\s*$')
_LIST_MIG_RE = re.compile(
    r'^\s+MIG\s+(?P<profile>\S+)\s+Device\s+(?P<index>\d+):\s+\(UUID:\s*(?P<uuid>[^)\s]+)\)\s*$'
)


def clean_value(raw):
    """Return a stripped CSV value, or None for nvidia-smi's "not available" placeholders.

    ``[N/A]``, ``[Not Supported]``, ``N/A``, an empty value and any other fully bracketed
    message become None.
    """
    if raw is None:
        return None
    value = raw.strip()
    if value in NOT_AVAILABLE or (value.startswith('[') and value.endswith(']')):
        return None
    return value


def parse_header(line):
    """Split a ``--format=csv`` header line into a list of ``(field, unit)`` tuples.

    ``"memory.total [MiB]"`` becomes ``("memory.total", "MiB")``; a column without a unit has
    unit None.
    """
    columns = []
    for cell in next(csv.reader([line], skipinitialspace=True)):
        match = _HEADER_FIELD_RE.match(cell.strip())
        if not match:
            raise ValueError('unexpected nvidia-smi CSV header column %r' % cell)
        columns.append((match.group('field'), match.group('unit')))
    return columns


def normalize_pci_bus_id(value):
    """Return a PCI bus id in nvidia-smi's form: uppercase hex, 8-digit domain (``00000000:01:00.0``).

    Accepts a 4-digit domain (``0000:01:00.0``, as lspci/sysfs print it) or none at all.
    Raises ValueError for anything else.
    """
    match = _PCI_RE.match(value.strip()) if value is not None else None
    if not match:
        raise ValueError('not a PCI bus id: %r (expected DOMAIN:BUS:DEVICE.FUNCTION, e.g. 00000000:01:00.0)' % value)
    return '%08X:%s:%s.%s' % (
        int(match.group('domain') or '0', 16),
        match.group('bus').upper(),
        match.group('device').upper(),
        match.group('function'),
    )


def pci_sort_key(pci_bus_id):
    """Return a sort key (domain, bus, device, function) as integers for a PCI bus id."""
    domain, bus, rest = normalize_pci_bus_id(pci_bus_id).split(':')
    device, function = rest.split('.')
    return (int(domain, 16), int(bus, 16), int(device, 16), int(function, 16))


def _memory_mib(value, unit):
    """Convert a memory value (with or without its unit repeated) to whole MiB."""
    value = clean_value(value)
    if value is None:
        return None
    parts = value.split()
    if len(parts) == 2:
        number, value_unit = parts
    elif len(parts) == 1:
        number, value_unit = parts[0], unit
    else:
        raise ValueError('unexpected memory value %r' % value)
    if unit and value_unit != unit:
        raise ValueError('memory value %r does not match the header unit %r' % (value, unit))
    factor = _TO_MIB.get(value_unit or 'MiB')
    if factor is None:
        raise ValueError('unknown memory unit %r in %r' % (value_unit, value))
    return int(round(float(number) * factor))


def _mig_mode(value):
    """Return "Enabled", "Disabled" or None (not supported / not available / unknown)."""
    value = clean_value(value)
    if value is None:
        return None
    return {'enabled': 'Enabled', 'disabled': 'Disabled'}.get(value.lower())


def _int_or_none(value):
    value = clean_value(value)
    return None if value is None else int(value)


def parse_query_gpu_csv(text):
    """Parse ``nvidia-smi --query-gpu=<fields> --format=csv`` output (header line required).

    Returns one dict per GPU, in the order nvidia-smi printed them, with the keys
    ``index`` (int), ``uuid``, ``name``, ``pci_bus_id`` (normalized), ``memory_total_mib`` (int),
    ``driver_version``, ``compute_cap`` (e.g. ``"8.9"``) and ``mig_mode``
    (``"Enabled"``/``"Disabled"``/None). A value nvidia-smi could not give is None; a column
    the query did not ask for is None too, except index, uuid and pci.bus_id, which are required.
    Raises ValueError with a readable message for output that is not such a CSV.
    """
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError('nvidia-smi printed nothing: no GPU found or the query failed')
    columns = parse_header(lines[0])
    names = [field for field, _unit in columns]
    missing = [name for name in REQUIRED_COLUMNS if name not in names]
    if missing:
        raise ValueError(
            'nvidia-smi output has no %s column (first line: %r): expected --format=csv output with its header'
            % (', '.join(missing), lines[0][:200])
        )
    units = dict(columns)
    gpus = []
    for lineno, row in enumerate(csv.reader(lines[1:], skipinitialspace=True), start=2):
        if len(row) != len(columns):
            raise ValueError(
                'nvidia-smi CSV line %d has %d values for %d columns: %r' % (lineno, len(row), len(columns), row[:8])
            )
        values = dict(zip(names, row))
        pci = clean_value(values['pci.bus_id'])
        gpus.append(
            {
                'index': _int_or_none(values['index']),
                'uuid': clean_value(values['uuid']),
                'name': clean_value(values.get('name')),
                'pci_bus_id': normalize_pci_bus_id(pci) if pci is not None else None,
                'memory_total_mib': _memory_mib(values.get('memory.total'), units.get('memory.total')),
                'driver_version': clean_value(values.get('driver_version')),
                'compute_cap': clean_value(values.get('compute_cap')),
                'mig_mode': _mig_mode(values.get('mig.mode.current')),
            }
        )
    return gpus


def parse_list_gpus(text):
    """Parse ``nvidia-smi -L`` output.

    ``GPU 0: NVIDIA L40S (UUID: GPU-...)`` lines become dicts with ``index`` (int), ``name``,
    ``uuid`` and ``mig_devices``; the indented ``MIG 1g.10gb Device 0: (UUID: MIG-...)`` lines
    below a GPU become dicts with ``profile``, ``index`` (int) and ``uuid`` in its
    ``mig_devices`` list. Blank lines are ignored; any other line raises ValueError.
    """
    gpus = []
    for line in text.splitlines():
        if not line.strip():
            continue
        gpu = _LIST_GPU_RE.match(line)
        if gpu:
            gpus.append(
                {
                    'index': int(gpu.group('index')),
                    'name': gpu.group('name'),
                    'uuid': gpu.group('uuid'),
                    'mig_devices': [],
                }
            )
            continue
        mig = _LIST_MIG_RE.match(line)
        if mig:
            if not gpus:
                raise ValueError('MIG device line before any GPU line in nvidia-smi -L output: %r' % line)
            gpus[-1]['mig_devices'].append(
                {'profile': mig.group('profile'), 'index': int(mig.group('index')), 'uuid': mig.group('uuid')}
            )
            continue
        raise ValueError('unexpected line in nvidia-smi -L output: %r' % line)
    return gpus


def _describe(gpus):
    return ', '.join('%s (index %s, %s)' % (g.get('pci_bus_id'), g.get('index'), g.get('uuid')) for g in gpus) or 'none'


def plan_gpu_split(gpus, groups, allow_mismatch=False):
    """Assign whole GPUs to named groups, e.g. ``{"llm": 3, "embed": 1}``.

    GPUs are taken in PCI bus id order (indexes are not stable across reboots) and handed to the
    groups in the order the mapping gives them. Returns ``{group: [{"index": "0", "uuid": ...,
    "pci_bus_id": ...}, ...]}``; ``index`` is a string, as Compose's ``device_ids`` wants it.
    No GPU is ever given to two groups.

    Raises ValueError, with a message saying what to change, when a count is not a
    non-negative integer, when the GPUs have duplicate or missing uuids / bus ids, or when the
    requested total differs from the number of GPUs present. With ``allow_mismatch`` a
    difference is accepted: extra GPUs stay unassigned, and when GPUs are missing the groups
    are filled in order, so the last groups get fewer (possibly none) than they asked for.
    """
    if not isinstance(groups, dict):
        raise ValueError('GPU groups must be a mapping of group name to GPU count, got %r' % (groups,))
    counts = []
    for name, count in groups.items():
        if isinstance(count, str) and count.strip().isdigit():
            count = int(count)
        if isinstance(count, bool) or not isinstance(count, int):
            raise ValueError('GPU group %r: count must be a whole number, got %r' % (name, count))
        if count < 0:
            raise ValueError('GPU group %r: count must not be negative, got %d' % (name, count))
        counts.append((str(name), count))

    for gpu in gpus:
        if not gpu.get('uuid') or not gpu.get('pci_bus_id') or gpu.get('index') is None:
            raise ValueError('GPU without index, uuid or PCI bus id in the inventory: %r' % (gpu,))
    for key in ('uuid', 'pci_bus_id'):
        seen = set()
        for gpu in gpus:
            if gpu[key] in seen:
                raise ValueError('two GPUs share the %s %s: the GPU inventory is broken' % (key, gpu[key]))
            seen.add(gpu[key])

    ordered = sorted(gpus, key=lambda g: pci_sort_key(g['pci_bus_id']))
    wanted = sum(count for _name, count in counts)
    if wanted != len(ordered) and not allow_mismatch:
        asked = ', '.join('%s=%d' % item for item in counts) or 'no groups'
        if wanted > len(ordered):
            problem = 'GPUs are missing'
            hint = 'check `nvidia-smi -L` and the driver for a GPU that dropped out, or lower the group counts'
        else:
            problem = 'GPUs would stay unassigned'
            hint = 'give every GPU to a group'
        raise ValueError(
            'GPU split asks for %d GPUs (%s) but this host has %d: %s. Found: %s. To fix: %s, '
            'or set allow_mismatch=true to accept the difference.'
            % (wanted, asked, len(ordered), problem, _describe(ordered), hint)
        )

    split = {}
    position = 0
    for name, count in counts:
        taken = ordered[position:position + count]
        position += len(taken)
        split[name] = [
            {'index': str(gpu['index']), 'uuid': gpu['uuid'], 'pci_bus_id': gpu['pci_bus_id']} for gpu in taken
        ]
    return split
