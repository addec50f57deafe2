"""The staged repository copy belongs to the search engine's user: Elasticsearch (uid 1000 in the official image
and the lab's stand-in) must read files the archive holds with mode 0600, which the restore unpacks as root."""

from __future__ import annotations

import os
import stat

from ansible.module_utils.llmops_search_restore import cleanup, stage

from tests.unit.test_search_backup_restore import TAG, backup_into_set, standin  # noqa: F401 - fixture
from tests.unit.test_search_standin import seed


def test_the_unpacked_copy_gets_the_owner_of_path_repo(standin, tmp_path):  # noqa: F811
    assert os.geteuid() == 0, "run the suite as root (make test does): the restore gives files to the server's user"
    client = standin.client()
    seed(client, n=6)
    set_path, entry = backup_into_set(standin, tmp_path)
    os.chown(standin.repo, 1000, 0)  # path.repo as the stack creates it for the search engine
    staging = str(tmp_path / "staging")
    state = stage(client, set_path, entry, staging, str(standin.repo), TAG)
    found = []
    for root, dirs, files in os.walk(state["unpacked"]):
        for path in [root] + [os.path.join(root, n) for n in dirs + files]:
            info = os.lstat(path)
            found.append((path, info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)))
    assert len(found) > 5
    assert [f for f in found if f[1:3] != (1000, 0)] == []
    assert any(mode == 0o600 for *_, mode in found)  # private files: only their owner, the server, reads them
    cleanup(client, staging, str(standin.repo), TAG, keep_safety_copy=False)
    assert not os.path.exists(state["unpacked"])
