#!/usr/bin/env python3
"""Install the collections pinned in requirements.yml into ./collections, offline from PyPI.

Galaxy is not reachable from the lab machines; the `ansible` package on PyPI bundles the
same collection releases. This takes exactly the pinned collections out of that wheel and
fails when a bundled version differs from the pin, so requirements.yml stays the truth.
Safe to run twice: a collection already installed at its pinned version is left alone.
"""
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import yaml

ANSIBLE_WHEEL = "ansible==12.3.0"  # bundles the versions pinned in requirements.yml


def installed_version(dest: Path, name: str):
    manifest = dest.joinpath(*name.split("."), "MANIFEST.json")
    if not manifest.is_file():
        return None
    return json.loads(manifest.read_text())["collection_info"]["version"]


def main(root: Path) -> int:
    wanted = yaml.safe_load((root / "requirements.yml").read_text())["collections"]
    dest = root / "collections" / "ansible_collections"
    missing = [c for c in wanted if installed_version(dest, c["name"]) != c["version"]]
    if not missing:
        print("collections: all pinned versions present")
        return 0
    cache = root / ".cache" / "wheels"
    cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache.glob("ansible-12.3.0-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        "-d", str(cache), ANSIBLE_WHEEL], check=True)
        wheels = sorted(cache.glob("ansible-12.3.0-*.whl"))
    with zipfile.ZipFile(wheels[0]) as wheel, tempfile.TemporaryDirectory() as tmp:
        names = wheel.namelist()
        for coll in missing:
            prefix = "ansible_collections/{}/".format(coll["name"].replace(".", "/"))
            members = [n for n in names if n.startswith(prefix)]
            if not members:
                print("collections: {} is not in {}".format(coll["name"], ANSIBLE_WHEEL), file=sys.stderr)
                return 1
            wheel.extractall(tmp, members)
            got = installed_version(Path(tmp) / "ansible_collections", coll["name"])
            if got != coll["version"]:
                pinned = coll["version"]
                print(f"collections: {coll['name']} is {got} in {ANSIBLE_WHEEL}, requirements.yml pins {pinned}",
                      file=sys.stderr)
                return 1
            target = dest.joinpath(*coll["name"].split("."))
            shutil.rmtree(target, ignore_errors=True)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(Path(tmp) / prefix), str(target))
            print("collections: installed {} {}".format(coll["name"], got))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(__file__).resolve().parent.parent))
