"""Tests of module_utils/llmops_pipeline.py with real processes and the real zstd."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import time

import pytest

from module_utils.llmops_pipeline import (
    AGE_HEADER,
    InvalidValueError,
    PipelineError,
    age_recipients,
    configure_age,
    decompress_to,
    hash_file,
    is_encrypted,
    redact_text,
    run_pipeline,
)


def _leftovers(directory):
    return sorted(p for p in os.listdir(directory) if ".tmp-" in p)


def _gone_or_zombie(pid):
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def _script(path, body):
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


@pytest.fixture(scope="module")
def payload(tmp_path_factory):
    """5 MB of random data plus 5 MB of compressible text."""
    path = tmp_path_factory.mktemp("src") / "payload.bin"
    path.write_bytes(os.urandom(5_000_000) + b"row,%d\n" * 700_000)
    return path


def test_round_trip_hash_and_mode(tmp_path, payload):
    dest = tmp_path / "out.zst"
    result = run_pipeline(["cat", str(payload)], dest)
    data = dest.read_bytes()
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    sha_cli = subprocess.run(["sha256sum", str(dest)], capture_output=True, text=True, check=True).stdout.split()[0]
    assert result.sha256 == sha_cli
    assert hash_file(dest) == (result.sha256, len(data))
    assert result.bytes_in == payload.stat().st_size
    assert result.bytes_out == len(data) < result.bytes_in
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    back = subprocess.run(["zstd", "-q", "-d", "-c", str(dest)], capture_output=True, check=True).stdout
    assert back == payload.read_bytes()
    assert [s.rc for s in result.stages] == [0, 0]
    assert result.as_dict()["stages"][1]["name"] == "zstd"
    assert _leftovers(tmp_path) == []


def test_uncompressed_and_stdin_and_env(tmp_path):
    dest = tmp_path / "raw.txt"
    result = run_pipeline(["sh", "-c", 'cat; printf "%s" "$LLMOPS_TEST"'], dest, compress=False,
                          stdin_data=b"hello ", env={"LLMOPS_TEST": "world"})
    assert dest.read_bytes() == b"hello world"
    assert result.bytes_in == result.bytes_out == 11
    assert result.sha256 == hashlib.sha256(b"hello world").hexdigest()


def test_failing_source_names_stage_and_leaves_nothing(tmp_path):
    dest = tmp_path / "bad.zst"
    with pytest.raises(PipelineError) as info:
        run_pipeline(["sh", "-c", "head -c 300000 /dev/urandom; echo 'dump broke' >&2; exit 3"], dest,
                     source_name="pg_dump")
    err = info.value
    assert err.stage == "pg_dump" and err.rc == 3
    assert "stage 'pg_dump' exited with code 3" in str(err) and "dump broke" in str(err)
    assert not dest.exists() and _leftovers(tmp_path) == []


def test_failing_compressor(tmp_path):
    fake = _script(tmp_path / "fakezstd", "head -c 10 >/dev/null; echo 'compressor broke' >&2; exit 1\n")
    dest = tmp_path / "bad.zst"
    with pytest.raises(PipelineError) as info:
        run_pipeline(["sh", "-c", "head -c 20000000 /dev/zero"], dest, zstd_path=fake)
    assert info.value.stage == "fakezstd" and info.value.rc == 1
    assert "compressor broke" in str(info.value)
    assert not dest.exists() and _leftovers(tmp_path) == []


def test_missing_tool(tmp_path):
    with pytest.raises(PipelineError, match="cannot start stage 'no-such-tool'"):
        run_pipeline(["no-such-tool-llmops"], tmp_path / "x", source_name="no-such-tool")
    assert os.listdir(tmp_path) == []


def test_redaction(tmp_path):
    secret = "s3cr3t-Pa55"  # noqa: S105 - a fake secret to redact
    with pytest.raises(PipelineError) as info:
        run_pipeline(["sh", "-c", 'echo "auth failed for $REDISCLI_AUTH and token abc123" >&2; exit 2'],
                     tmp_path / "r", env={"REDISCLI_AUTH": secret}, redact=["abc123"])
    text = str(info.value)
    assert secret not in text and "abc123" not in text and "********" in text
    assert secret not in info.value.stderr_tail
    assert redact_text("a xx b xx", ["xx", ""]) == "a ******** b ********"


def test_chatty_stderr_does_not_deadlock_and_tail_is_bounded(tmp_path):
    dest = tmp_path / "chatty.zst"
    result = run_pipeline(["sh", "-c", "yes noise | head -c 3000000 >&2; head -c 100000 /dev/zero"], dest,
                          timeout=30)
    assert result.bytes_in == 100000
    assert len(result.stages[0].stderr_tail) <= 2048


def test_progress_called(tmp_path):
    calls = []
    run_pipeline(["sh", "-c", "for i in 1 2 3 4 5; do head -c 200000 /dev/urandom; sleep 0.1; done"],
                 tmp_path / "p.zst", progress=lambda *a: calls.append(a), progress_interval=0.05)
    assert calls
    assert all(len(c) == 3 for c in calls)
    assert calls[-1][0] <= 1_000_000 and calls[-1][2] > 0


def test_progress_exception_aborts(tmp_path):
    def boom(*_):
        raise RuntimeError("stop")

    start = time.monotonic()
    with pytest.raises(RuntimeError):
        run_pipeline(["sh", "-c", "head -c 500000 /dev/urandom; sleep 30"], tmp_path / "p.raw", progress=boom,
                     progress_interval=0, compress=False)
    assert time.monotonic() - start < 10, "the source was not killed"
    assert os.listdir(tmp_path) == []


def test_timeout_kills_all_stages(tmp_path):
    pidfile = tmp_path / "child.pid"
    start = time.monotonic()
    with pytest.raises(PipelineError) as info:
        run_pipeline(["sh", "-c", 'sleep 60 & echo $! > "$0"; wait', str(pidfile)], tmp_path / "t.zst", timeout=1)
    assert time.monotonic() - start < 10
    assert info.value.timed_out and "timed out" in str(info.value)
    pid = int(pidfile.read_text())
    time.sleep(0.2)
    assert _gone_or_zombie(pid), "the tool's child survived the timeout"
    assert _leftovers(tmp_path) == [] and not (tmp_path / "t.zst").exists()


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        run_pipeline("pg_dump -Fc", tmp_path / "x")
    with pytest.raises(ValueError):
        run_pipeline(["true"], tmp_path / "x", zstd_level=40)


def test_decompress_round_trip_and_corruption(tmp_path, payload):
    dest = tmp_path / "out.zst"
    made = run_pipeline(["cat", str(payload)], dest)
    restored = tmp_path / "restored"
    result = decompress_to(dest, ["sh", "-c", 'cat > "$0"', str(restored)], expected_sha256=made.sha256)
    assert restored.read_bytes() == payload.read_bytes()
    assert result.sha256 == made.sha256 and result.bytes_in == made.bytes_out and result.bytes_out == made.bytes_in

    corrupt = tmp_path / "corrupt.zst"
    data = bytearray(dest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    with pytest.raises(PipelineError) as info:
        decompress_to(corrupt, ["sh", "-c", "cat > /dev/null"], expected_sha256=made.sha256)
    assert info.value.stage in ("zstd", "verify")


def test_decompress_detects_hash_mismatch_and_consumer_failure(tmp_path):
    src = tmp_path / "plain"
    src.write_bytes(b"x" * 1000)
    with pytest.raises(PipelineError) as info:
        decompress_to(src, ["sh", "-c", "cat > /dev/null"], compressed=False, expected_sha256="0" * 64)
    assert info.value.stage == "verify"
    packed = tmp_path / "p.zst"
    run_pipeline(["sh", "-c", "head -c 20000000 /dev/urandom"], packed)
    with pytest.raises(PipelineError) as info:
        decompress_to(packed, ["sh", "-c", "head -c 10 >/dev/null; echo 'restore broke' >&2; exit 4"],
                      consumer_name="pg_restore")
    assert info.value.stage == "pg_restore" and info.value.rc == 4 and "restore broke" in str(info.value)


def _age_key():
    """A fresh age identity: (text of the identity file, its recipient)."""
    text = subprocess.run(["age-keygen"], capture_output=True, text=True, check=True).stdout
    recipient = subprocess.run(["age-keygen", "-y"], input=text, capture_output=True, text=True,
                               check=True).stdout.strip()
    return text, recipient


@pytest.fixture
def age_key():
    yield _age_key()
    configure_age()  # the process-wide setting back to "in the clear" for the other tests


def test_encrypted_round_trip_checksum_of_ciphertext(tmp_path, payload, age_key):
    identity, recipient = age_key
    spare_identity, spare = _age_key()
    configure_age([recipient, spare], identity)
    assert age_recipients() == [recipient, spare]
    dest = tmp_path / "out.zst"
    made = run_pipeline(["cat", str(payload)], dest)
    data = dest.read_bytes()
    assert made.encrypted and data.startswith(AGE_HEADER) and is_encrypted(dest)
    assert made.sha256 == hashlib.sha256(data).hexdigest()  # SHA256SUMS checks the ciphertext, no key needed
    assert [s.name for s in made.stages] == ["cat", "zstd", "age"] and made.bytes_in == payload.stat().st_size
    assert payload.read_bytes()[:4096] not in data
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    restored = tmp_path / "restored"
    back = decompress_to(dest, ["sh", "-c", 'cat > "$0"', str(restored)], expected_sha256=made.sha256)
    assert restored.read_bytes() == payload.read_bytes() and back.encrypted
    assert [s.name for s in back.stages] == ["age -d", "zstd", "sh"]
    # the second recipient (e.g. an offline recovery key) opens it too; the identity never reaches a command line
    configure_age([], spare_identity)
    decompress_to(dest, ["sh", "-c", "cat > /dev/null"], expected_sha256=made.sha256)
    assert all("AGE-SECRET-KEY" not in arg for s in back.stages for arg in [s.name])
    # plain artefacts still read with an identity configured
    plain = tmp_path / "plain.zst"
    configure_age()
    run_pipeline(["cat", str(payload)], plain)
    assert not is_encrypted(plain)
    configure_age([], identity)
    assert decompress_to(plain, ["sh", "-c", "cat > /dev/null"]).encrypted is False


def test_encrypted_artefact_without_or_with_a_wrong_identity(tmp_path, age_key):
    identity, recipient = age_key
    other_identity, _other = _age_key()
    configure_age([recipient])
    dest = tmp_path / "out.zst"
    run_pipeline(["sh", "-c", "echo secret rows"], dest)
    with pytest.raises(PipelineError) as info:
        decompress_to(dest, ["sh", "-c", "cat > /dev/null"])
    assert info.value.stage == "decrypt" and "backup_age_identity" in str(info.value)
    configure_age([], other_identity)
    with pytest.raises(PipelineError) as info:
        decompress_to(dest, ["sh", "-c", "cat > /dev/null"])
    assert info.value.stage == "age -d" and "no identity matched" in str(info.value)
    assert other_identity.split("AGE-SECRET-KEY-")[1].strip() not in str(info.value)


@pytest.mark.parametrize("recipients, identity", [
    (["age1nothing"], None),
    (["ssh-ed25519 AAAA"], None),
    ([], "not a key"),
])
def test_configure_age_refuses_what_is_not_a_key(recipients, identity):
    with pytest.raises(InvalidValueError):
        configure_age(recipients, identity)


def test_use_encryption_encrypts_to_the_identitys_first_key_plus_encrypt_to(age_key):
    # the modules' own namespace: llmops_common imports the pipeline as ansible.module_utils.llmops_pipeline
    from ansible.module_utils.llmops_common import use_encryption
    from ansible.module_utils.llmops_pipeline import age_recipients, configure_age

    identity, recipient = age_key
    old_identity, old_recipient = _age_key()
    offline_identity, offline = _age_key()
    # a rotation: the new key first, the old one after it (it still decrypts the older sets)
    use_encryption({"encrypt": True, "encrypt_to": [offline], "age_identity": identity + old_identity})
    assert age_recipients() == [recipient, offline]
    use_encryption({"encrypt": False, "encrypt_to": [offline], "age_identity": identity})
    assert age_recipients() == []
    with pytest.raises(InvalidValueError, match="no age identity was given"):
        use_encryption({"encrypt": True, "encrypt_to": [offline], "age_identity": ""})
    with pytest.raises(InvalidValueError, match="age-keygen -y could not read"):
        use_encryption({"encrypt": True, "encrypt_to": [],
                        "age_identity": "# public key: age1...\nAGE-SECRET-KEY-1CHANGEME\n"})
    configure_age()
