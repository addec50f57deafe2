"""MariaDB client output with hostile names: `--batch` escaping undone exactly, names read as HEX, results read
by position (a name may hold dots, tabs, newlines, backslashes, quotes). The outputs below are the real client's
format (`mariadb --batch --skip-column-names`), built here from the names."""

from __future__ import annotations

import pytest
from ansible.module_utils.llmops_mariadb import client_argv, comment_name_continuations, fingerprint, unescape_batch

NAMES = [
    ("app", "users"),
    ("hn db.한국어", "odd name ü\ttab\nnl 'q\" ` \\ $(touch /tmp/pwned);"),
    ("a.b", "c.d"),
]


def batch(value: str) -> str:
    """What `mariadb --batch` prints for a value."""
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\0", "\\0")


@pytest.mark.parametrize("value", ["plain", "tab\there", "new\nline", "back\\slash", "nul\0byte", "\\t literal",
                                   "한국어 😀", "", "trailing\\"])
def test_unescape_batch_is_the_inverse_of_the_clients_escaping(value):
    assert unescape_batch(batch(value)) == value


def hexname(name: str) -> str:
    return name.encode().hex().upper()


class FakeServer:
    """Answers the fingerprint's two queries the way the server does, from NAMES."""

    def __init__(self):
        self.argv = None

    def text(self, argv, env=None, stdin=None, timeout=None):
        self.argv = argv
        sql = stdin.decode()
        if "information_schema.tables" in sql:
            return "".join(f"{hexname(s)}\t{hexname(t)}\tBASE TABLE\n" for s, t in NAMES)
        out = []
        for index, (schema, table) in enumerate(NAMES):
            out.append(f"{index * 10}\n")
            out.append(f"{batch(schema + '.' + table)}\t{1000 + index}\n")
        out.append(f"objects\t{hexname(NAMES[1][0])}\troutines\t2\n")
        return "".join(out)


def test_fingerprint_reads_any_name_exactly():
    server = FakeServer()
    result = fingerprint(server, {"user": "root", "socket": "/s"})
    assert "--default-character-set=utf8mb4" in server.argv
    assert set(result) == {s for s, _ in NAMES}
    for index, (schema, table) in enumerate(NAMES):
        assert result[schema]["tables"][table] == {"rows": index * 10, "checksum": str(1000 + index)}
    assert result[NAMES[1][0]]["routines"] == 2 and result["app"]["routines"] == 0


def test_every_client_session_is_utf8mb4():
    assert "--default-character-set=utf8mb4" in client_argv({"host": "db", "port": 3306})


def test_a_table_map_comment_continued_by_a_newline_in_a_name_stays_a_comment():
    # mariadb-binlog's own output for a row event on `db`.`a ``b``\nc` (a real decode, shortened)
    lines = [b"# at 1006\n",
             b"#261201  5:58:57 server id 1  end_log_pos 1190 CRC32 0x6cb12848 \tTable_map: `db`.`a ``b`` \\\\ x\n",
             b"y` mapped to number 22\n",
             b"# at 1190\n",
             b"BINLOG '\n"]
    out = list(comment_name_continuations(lines))
    assert out[2] == b"#y` mapped to number 22\n"
    assert out[:2] == lines[:2] and out[3:] == lines[3:]
    # a name without a newline leaves everything as it was
    plain = [b"#261201  5:58:57 server id 1  end_log_pos 1 CRC32 0x0 \tTable_map: `db`.`t` mapped to number 1\n",
             b"BINLOG '\n"]
    assert list(comment_name_continuations(plain)) == plain
