#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, llmops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: gpu_facts
short_description: Gather NVIDIA GPU facts with nvidia-smi and plan a GPU split
description:
  - Runs C(nvidia-smi --query-gpu=index,uuid,name,pci.bus_id,memory.total,driver_version,compute_cap,mig.mode.current
    --format=csv) on the target and returns one entry per GPU as the fact RV(ansible_facts.gpus).
  - When O(groups) is given, also assigns whole GPUs to the named groups in PCI bus id order and returns the
    assignment as the fact RV(ansible_facts.gpu_split), ready for Compose's C(device_ids).
  - GPU indexes are not stable across reboots and UUIDs change with new hardware, so plan at deploy time
    (also on a rebuilt host) and never replay an old plan.
  - The module changes nothing on the target.
extends_documentation_fragment: [llmops]
attributes:
  check_mode:
    support: full
    description: Can run in C(check_mode) and return the same facts, as it only reads.
  facts:
    support: full
    description: Returns facts in C(ansible_facts).
options:
  nvidia_smi_path:
    description:
      - The C(nvidia-smi) command, looked up on E(PATH) and in the usual system folders, or a path to it.
    type: str
    default: nvidia-smi
  groups:
    description:
      - 'Mapping of group name to the number of whole GPUs it gets, for example C({llm: 3, embed: 1}).'
      - GPUs are handed out in PCI bus id order, to the groups in the order given here.
      - When given, the module also returns RV(ansible_facts.gpu_split).
      - Fails when the counts do not add up to the GPUs present, unless O(allow_mismatch=true).
    type: dict
  allow_mismatch:
    description:
      - Accept a O(groups) total that differs from the number of GPUs present.
      - Extra GPUs then stay unassigned; when GPUs are missing the groups are filled in order, so the last
        groups get fewer GPUs than they asked for (possibly none).
    type: bool
    default: false
  required:
    description:
      - When V(false) and C(nvidia-smi) cannot be found, return RV(gpu_present=false) and a
        RV(skipped_reason) instead of failing.
      - A C(nvidia-smi) that is present but fails (for example because the driver is not loaded) always fails
        the module.
    type: bool
    default: true
notes:
  - Needs the NVIDIA driver (it ships C(nvidia-smi)) on the target.
"""

EXAMPLES = r"""
- name: Gather GPU facts
  gpu_facts:

- name: Gather GPU facts and split the 4 GPUs 3 + 1
  gpu_facts:
    groups:
      llm: 3
      embed: 1
  register: gpu

- name: Show the device ids for the LLM server
  ansible.builtin.debug:
    msg: "{{ ansible_facts.gpu_split.llm | map(attribute='uuid') | list }}"

- name: Gather GPU facts where a GPU is optional (CI, CPU-only hosts)
  gpu_facts:
    required: false
"""

RETURN = r"""
gpu_present:
  description: Whether C(nvidia-smi) was found and answered.
  returned: always
  type: bool
  sample: true
skipped_reason:
  description: Why no GPU facts were gathered.
  returned: when O(required=false) and C(nvidia-smi) was not found
  type: str
  sample: "nvidia-smi not found on PATH"
ansible_facts:
  description: Facts about the NVIDIA GPUs of the target.
  returned: always
  type: complex
  contains:
    gpu_present:
      description: Same as RV(gpu_present).
      returned: always
      type: bool
      sample: true
    gpus:
      description: One entry per GPU, in the order C(nvidia-smi) lists them. Empty when no GPU was found.
      returned: always
      type: list
      elements: dict
      contains:
        index:
          description: The GPU index nvidia-smi gives (not stable across reboots).
          type: int
          returned: always
          sample: 0
        uuid:
          description: The GPU UUID.
          type: str
          returned: always
          sample: GPU-3a4b5c6d-0000-0000-0000-000000000000
        name:
          description: The product name.
          type: str
          returned: always
          sample: NVIDIA RTX 4000 Ada Generation
        pci_bus_id:
          description: The PCI bus id, uppercase with an 8-digit domain.
          type: str
          returned: always
          sample: "00000000:01:00.0"
        memory_total_mib:
          description: Total memory in MiB; null when not available.
          type: int
          returned: always
          sample: 20475
        driver_version:
          description: The driver version; null when not available.
          type: str
          returned: always
          sample: "595.80"
        compute_cap:
          description: The CUDA compute capability; null when not available.
          type: str
          returned: always
          sample: "8.9"
        mig_mode:
          description: The current MIG mode, V(Enabled) or V(Disabled); null where MIG is not supported.
          type: str
          returned: always
          sample: null
    gpu_count:
      description: Number of GPUs found.
      returned: always
      type: int
      sample: 4
    driver_version:
      description: The NVIDIA driver version; null when no GPU was found.
      returned: always
      type: str
      sample: "595.80"
    gpu_split:
      description:
        - Group name to the list of GPUs it gets, each with C(index) (a string, as Compose's C(device_ids)
          wants it), C(uuid) and C(pci_bus_id). No GPU appears twice.
      returned: when O(groups) is given
      type: dict
      sample:
        llm:
          - index: "0"
            uuid: GPU-00000000-0000-0000-0000-000000000000
            pci_bus_id: "00000000:01:00.0"
        embed:
          - index: "3"
            uuid: GPU-00000000-0000-0000-0000-000000000003
            pci_bus_id: "00000000:41:00.0"
    gpu_device_ids:
      description:
        - Group name to the UUIDs of its GPUs (RV(ansible_facts.gpu_split) reduced to what Compose's
          C(device_ids) takes). UUIDs, not indexes, because indexes can change across reboots.
      returned: when O(groups) is given
      type: dict
      sample: {llm: [GPU-00000000-0000-0000-0000-000000000000], embed: [GPU-00000000-0000-0000-0000-000000000003]}
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.llmops_nvidia_smi import QUERY_ARGS, parse_query_gpu_csv, plan_gpu_split

NOT_FOUND_MSG = 'nvidia-smi not found on PATH: install the NVIDIA driver (role nvidia) or set required=false'


def _tail(text, lines=10):
    """Return the last lines of a command's output, for error messages."""
    return '\n'.join((text or '').strip().splitlines()[-lines:])


def _find_nvidia_smi(module, path):
    """Return the full path of nvidia-smi, or None when it is not there."""
    if os.sep in path:
        return path if os.path.isfile(path) and os.access(path, os.X_OK) else None
    return module.get_bin_path(path, required=False)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            nvidia_smi_path=dict(type='str', default='nvidia-smi'),
            groups=dict(type='dict'),
            allow_mismatch=dict(type='bool', default=False),
            required=dict(type='bool', default=True),
        ),
        supports_check_mode=True,
    )
    params = module.params

    binary = _find_nvidia_smi(module, params['nvidia_smi_path'])
    if binary is None:
        msg = NOT_FOUND_MSG
        if params['nvidia_smi_path'] != 'nvidia-smi':
            msg = '%s (looked for %s)' % (msg, params['nvidia_smi_path'])
        if params['required']:
            module.fail_json(msg=msg, gpu_present=False)
        module.exit_json(
            changed=False,
            gpu_present=False,
            skipped_reason=msg,
            ansible_facts=dict(gpu_present=False, gpus=[], gpu_count=0, driver_version=None),
        )

    rc, out, err = module.run_command([binary] + QUERY_ARGS)
    if rc != 0:
        # nvidia-smi prints "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver" on stdout.
        detail = _tail(err) or _tail(out) or '(no output)'
        module.fail_json(
            msg='nvidia-smi failed with rc=%d, the NVIDIA driver does not answer: %s. Check that the driver is loaded '
            '(run nvidia-smi by hand, look at dmesg); a reboot after a driver install is often needed.' % (rc, detail),
            rc=rc,
            stdout=out,
            stderr=err,
            gpu_present=False,
        )

    try:
        gpus = parse_query_gpu_csv(out)
    except ValueError as exc:
        module.fail_json(msg='cannot read the output of %s: %s' % (binary, exc), stdout=out, stderr=err)

    versions = [gpu['driver_version'] for gpu in gpus if gpu['driver_version']]
    facts = dict(
        gpu_present=True,
        gpus=gpus,
        gpu_count=len(gpus),
        driver_version=versions[0] if versions else None,
    )
    if params['groups'] is not None:
        try:
            facts['gpu_split'] = plan_gpu_split(gpus, params['groups'], allow_mismatch=params['allow_mismatch'])
        except ValueError as exc:
            module.fail_json(msg=str(exc), ansible_facts=facts)
        facts['gpu_device_ids'] = dict((group, [gpu['uuid'] for gpu in assigned])
                                       for group, assigned in facts['gpu_split'].items())

    module.exit_json(changed=False, gpu_present=True, ansible_facts=facts)


if __name__ == '__main__':
    main()
