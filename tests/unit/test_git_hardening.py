"""Issue 13, item 10 (d): a config repository on the backup volume is untrusted. A filter driver, an fsmonitor, a
hooks path or a hook planted in ``<backup_root>/configs.git-worktree/.git`` never runs during a config backup or
restore: GitRepo refuses a repository whose ``.git/config`` holds a key that ``git init`` does not write, and runs
every command with hooks, fsmonitor and the pager off. A marker file that any planted program would write proves it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from ansible.module_utils.llmops_backupset import load_manifest
from ansible.module_utils.llmops_files import FilesBackupError, GitRepo, backup_configs
from ansible.module_utils.llmops_files_restore import restore_configs
from ansible.module_utils.llmops_layout import layout_path

from tests.unit.test_files_backup import finalize, new_partial

HOOKS = ("pre-commit", "post-commit", "commit-msg", "prepare-commit-msg", "post-checkout", "reference-transaction",
         "post-index-change", "pre-auto-gc", "post-rewrite")


def planted(base: Path) -> tuple[Path, Path]:
    """A program that records each run in a marker file: (program, marker)."""
    marker = base / "MARKER"
    evil = base / "evil.sh"
    evil.write_text(f'#!/bin/sh\necho "$0 $*" >> {marker}\ncat\n')
    evil.chmod(0o755)
    return evil, marker


def history(tmp_path: Path) -> tuple[Path, Path, str, Path]:
    """A config folder backed up once into a set: (etc, root, set_path, repo)."""
    etc = tmp_path / "etc" / "llmops"
    etc.mkdir(parents=True)
    (etc / "app.yaml").write_text("a: 1\n")
    (etc / "more.yaml").write_text("b: 2\n")
    root = tmp_path / "backup"
    partial = new_partial(root, "2026-01-01T02:00:00+00:00")
    entry = backup_configs([str(etc)], os.path.join(partial, "configs"), root)
    set_path = finalize(root, partial, {"configs": entry})
    return etc, root, set_path, Path(layout_path(root, "config_repo"))


def plant_hooks(repo: Path, evil: Path) -> None:
    hooks = repo / ".git" / "hooks"
    hooks.mkdir(parents=True, exist_ok=True)
    for name in HOOKS:
        (hooks / name).write_text(f"#!/bin/sh\nexec {evil} hook-{name}\n")
        (hooks / name).chmod(0o755)


def add_config(repo: Path, text: str) -> None:
    config = repo / ".git" / "config"
    config.write_text(config.read_text() + text)


def backup_again(etc: Path, root: Path, when: str):
    (etc / "app.yaml").write_text(f"a: {when}\n")
    partial = new_partial(root, when)
    return backup_configs([str(etc)], os.path.join(partial, "configs"), root)


def restore(set_path: str, root: Path, tmp_path: Path, name: str):
    component = load_manifest(set_path)["components"]["configs"]
    return restore_configs(set_path, component, str(root), str(tmp_path / name), ".pre",
                           dest_root=str(tmp_path / ("dest-" + name)))


PLANTS = {
    "filter": '[filter "x"]\n\tclean = {evil} clean\n\tsmudge = {evil} smudge\n\tprocess = {evil} process\n',
    "fsmonitor": "[core]\n\tfsmonitor = {evil} fsmonitor\n",
    "hookspath": "[core]\n\thooksPath = {hooks}\n",
    "textconv": '[diff "x"]\n\ttextconv = {evil} textconv\n[core]\n\tpager = {evil} pager\n',
    "include": "[include]\n\tpath = {base}/more.config\n",
    "worktree": "[core]\n\tworktree = {base}/elsewhere\n",
    "worktree_extension": "[extensions]\n\tworktreeConfig = true\n",
}


@pytest.mark.parametrize("kind", sorted(PLANTS))
def test_a_planted_config_key_is_refused_and_nothing_runs(tmp_path, kind):
    etc, root, set_path, repo = history(tmp_path)
    evil, marker = planted(tmp_path)
    plant_hooks(repo, evil)
    (tmp_path / "more.config").write_text(f'[filter "x"]\n\tsmudge = {evil} smudge\n')
    (etc / ".gitattributes").write_text("* filter=x diff=x\n")
    (repo / ".git" / "info" / "attributes").write_text("* filter=x diff=x\n")
    add_config(repo, PLANTS[kind].format(evil=evil, hooks=repo / ".git" / "hooks", base=tmp_path))
    with pytest.raises(FilesBackupError) as backup_refused:
        backup_again(etc, root, "2026-01-01T03:00:00+00:00")
    assert "Git is not run there" in str(backup_refused.value)
    assert "in .git/config" in str(backup_refused.value)
    with pytest.raises(FilesBackupError) as restore_refused:
        restore(set_path, root, tmp_path, "st")
    assert "Git is not run there" in str(restore_refused.value)
    assert not marker.exists(), marker.read_text()
    assert not (tmp_path / "dest-st" / str(etc).lstrip("/")).exists()  # nothing restored


def test_planted_hooks_alone_do_not_run_and_the_history_still_works(tmp_path):
    etc, root, set_path, repo = history(tmp_path)
    evil, marker = planted(tmp_path)
    plant_hooks(repo, evil)
    (etc / ".gitattributes").write_text("* filter=x\n")  # no driver can be defined: attributes alone run nothing
    entry = backup_again(etc, root, "2026-01-01T03:00:00+00:00")
    assert entry["status"] == "success"
    result = restore(set_path, root, tmp_path, "st")
    assert (tmp_path / "dest-st" / str(etc).lstrip("/") / "app.yaml").read_text() == "a: 1\n"
    assert result["restored"]
    assert not marker.exists(), marker.read_text()


def test_the_command_line_overrides_stop_fsmonitor_hookspath_and_hooks_even_unchecked(tmp_path, monkeypatch):
    """The second line: with the check switched off, core.fsmonitor, core.hooksPath and hooks still never run
    (the -c overrides); a filter driver would (its name is the attacker's), which is why the check refuses it."""
    etc, root, set_path, repo = history(tmp_path)
    evil, marker = planted(tmp_path)
    plant_hooks(repo, evil)
    add_config(repo, "[core]\n\tfsmonitor = {evil} fsmonitor\n\thooksPath = {hooks}\n\tpager = {evil} pager\n"
               .format(evil=evil, hooks=repo / ".git" / "hooks"))
    monkeypatch.setattr(GitRepo, "check", lambda self: None)
    git = GitRepo(str(repo))
    (repo / "new.txt").write_text("x\n")
    git.git("add", "--all", "--force")
    git.git("status", "--porcelain", "-z")
    git.git("commit", "-q", "-m", "m")
    git.git("worktree", "add", "--detach", "--quiet", "--end-of-options", str(tmp_path / "co"), git.head())
    assert (tmp_path / "co" / "new.txt").read_text() == "x\n"
    assert not marker.exists(), marker.read_text()
    # without the check a filter driver defined in the repository would run: the check is what stops it
    add_config(repo, f'[filter "x"]\n\tsmudge = {evil} smudge\n')
    (repo / ".git" / "info" / "attributes").write_text("* filter=x\n")
    git.git("worktree", "add", "--detach", "--quiet", "--end-of-options", str(tmp_path / "co2"), git.head())
    assert "smudge" in marker.read_text()


def test_a_git_dir_that_leads_elsewhere_is_refused(tmp_path):
    etc, root, set_path, repo = history(tmp_path)
    (repo / ".git" / "commondir").write_text(str(tmp_path / "other.git") + "\n")
    with pytest.raises(FilesBackupError, match="commondir"):
        backup_again(etc, root, "2026-01-01T03:00:00+00:00")
    os.unlink(repo / ".git" / "commondir")
    os.rename(repo / ".git", tmp_path / "real.git")
    (repo / ".git").write_text("gitdir: %s\n" % (tmp_path / "real.git"))
    with pytest.raises(FilesBackupError, match="not a plain folder"):
        restore(set_path, root, tmp_path, "st")
    os.unlink(repo / ".git")
    os.symlink(tmp_path / "real.git", repo / ".git")
    with pytest.raises(FilesBackupError, match="not a plain folder"):
        backup_again(etc, root, "2026-01-01T04:00:00+00:00")


def test_an_unchanged_history_passes_the_check_and_values_are_checked_too(tmp_path):
    etc, root, set_path, repo = history(tmp_path)
    GitRepo(str(repo)).check()  # what git init wrote is accepted
    add_config(repo, "[core]\n\tbare = true\n")
    with pytest.raises(FilesBackupError, match="core.bare"):
        GitRepo(str(repo)).check()
