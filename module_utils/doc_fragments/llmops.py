# Copyright: (c) 2026, llmops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The option texts the llmops modules share, written once.

A module lists what it shares in ``extends_documentation_fragment``: ``llmops`` (every module: author,
no diff) and ``llmops.<name>`` for each variable below (``llmops.connection`` is ``CONNECTION``).
Each fragment documents one argument spec of ``module_utils/llmops_common.py`` (``connection_argument_spec``
and so on): change the two together. A module's own DOCUMENTATION may set a field of a shared option
(a different ``default``, say); the other fields come from here.

ansible.cfg's ``doc_fragment_plugins`` points ``ansible-doc`` and ``ansible-playbook`` here;
``scripts/sanity.sh`` copies this file into its throw-away collection as ``llmops.ops.llmops``.
"""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
author:
  - llmops contributors (!UNKNOWN)
attributes:
  diff_mode:
    support: none
    description: There is no diff.
"""

    # connection_argument_spec(store); each store's defaults are in MARIADB, POSTGRES and REDIS below.
    CONNECTION = r"""
options:
  container:
    description:
      - The store's container, where its tools run (C(docker exec)), so that their version always matches the
        server's. An empty string runs them on this host.
    type: str
  container_user:
    description:
      - The OS user the tools run as inside O(container); its image's user when not given. Ignored with an
        empty O(container).
    type: str
  login_user:
    description: The user the tools log in as.
    type: str
  login_password:
    description:
      - Its password. It reaches the tools in an environment variable passed by name (E(MYSQL_PWD), E(PGPASSWORD),
        E(REDISCLI_AUTH)), never on a command line. Not needed where the local socket inside O(container)
        authenticates the user (MariaDB's C(root@localhost), PostgreSQL's peer authentication).
    type: str
    aliases: [password]
  login_host:
    description:
      - Connect over TCP to this host instead of the client's default (the local socket; for Redis C(127.0.0.1)
        inside O(container)). The usual choice with an empty O(container).
    type: str
    aliases: [host]
  login_port:
    description: The TCP port with O(login_host); for PostgreSQL also the number in the socket file's name.
    type: int
    aliases: [port]
  login_unix_socket:
    description:
      - Connect through this unix socket instead of the client's default (for PostgreSQL, the folder holding
        the socket). O(login_host) takes precedence.
    type: str
"""

    MARIADB = r"""
options:
  container:
    default: llmops-appdb-mariadb-1
  login_user:
    default: root
  login_port:
    default: 3306
"""

    POSTGRES = r"""
options:
  container:
    default: llmops-appdb-postgres-1
  container_user:
    default: postgres
  login_user:
    default: postgres
  login_port:
    default: 5432
notes:
  - O(login_user) must read every table for a backup (a superuser also dumps role passwords) and be a superuser for
    a restore (it creates roles and databases and sets owners). By default the tools run as C(postgres) inside
    O(container), which the local socket authenticates without a password.
"""

    REDIS = r"""
options:
  container:
    default: llmops-appdb-redis-1
  login_port:
    default: 6379
notes:
  - O(login_user) is a Redis ACL user (Redis 6 or later); without it O(login_password) is the C(requirepass) password.
seealso:
  - name: Redis persistence
    description: RDB snapshots, BGSAVE, AOF, and how Redis 7 starts from the AOF's manifest.
    link: https://redis.io/docs/latest/operate/oss_and_stack/management/persistence/
"""

    # compression_argument_spec()
    COMPRESSION = r"""
options:
  zstd_level:
    description: zstd compression level of what the module compresses, 1 (fastest) to 19 (smallest).
    type: int
    default: 3
  zstd_threads:
    description: zstd worker threads (V(0) = one per core).
    type: int
    default: 0
"""

    # encryption_argument_spec()
    ENCRYPTION = r"""
options:
  encrypt:
    description:
      - Encrypt the compressed artefacts the module writes with age (C(tool | zstd | age)) to the recipient of
        O(age_identity) and those of O(encrypt_to). The set's checksums are the ciphertext's, so they and the HMAC
        are verified without the key.
      - Needs O(age_identity), as a backup reads back what it wrote (its checks, its fingerprint).
    type: bool
    default: false
  encrypt_to:
    description: More age recipients (public keys, C(age1...)) with O(encrypt), e.g. a recovery key whose identity is
      kept offline, away from the vault.
    type: list
    elements: str
    default: []
  age_identity:
    description:
      - The text of an age identity file (C(age-keygen)'s output, C(AGE-SECRET-KEY-1...)) that decrypts encrypted
        artefacts wherever the module reads them. It reaches C(age) through a pipe, never a file or a command line.
      - An encrypted artefact cannot be read without it, whatever O(encrypt) says now.
    type: str
"""

    # timeout_argument_spec()
    TIMEOUT = r"""
options:
  timeout:
    description: Seconds after which a tool the module runs (a dump, a copy, a check) is stopped and the module fails
      (V(0) = no limit).
    type: int
    default: 0
"""

    # qdrant_argument_spec()
    QDRANT = r"""
options:
  url:
    description: The Qdrant REST endpoint.
    type: str
    default: http://127.0.0.1:6333
  api_key:
    description: The API key (sent as the C(api-key) header). Never appears in messages.
    type: str
  collections:
    description:
      - The collections to work on; when not given or empty, every collection (of the server for a backup, of the
        set for a restore).
    type: list
    elements: str
  timeout:
    description: Seconds one HTTP request may take; sized for the snapshots of large collections.
    type: int
    default: 600
  retries:
    description: Retries (with exponential backoff) after connection errors, timeouts and HTTP 429/5xx.
    type: int
    default: 3
seealso:
  - name: Qdrant snapshots
    description: Creating, downloading and recovering snapshots.
    link: https://qdrant.tech/documentation/concepts/snapshots/
"""

    # search_argument_spec()
    SEARCH = r"""
options:
  url:
    description: The Elasticsearch REST endpoint (C(https://) verifies the server's certificate).
    type: str
    default: http://127.0.0.1:9200
  login_user:
    description: The user of HTTP basic authentication (the built-in superuser C(elastic) by default).
    type: str
    default: elastic
  login_password:
    description:
      - Its password, sent only in the C(Authorization) header; never in a URL, a message or a log. Without it no
        credentials are sent (a server with security off).
    type: str
    aliases: [password]
  indices:
    description:
      - The indices to work on, names or patterns (C(*), C(?)); when not given or empty, every index not starting
        with C(.) (of the server for a backup, of the set for a restore).
    type: list
    elements: str
  timeout:
    description: Seconds one HTTP request may take (a snapshot or a restore waits for completion), and the
      streaming of the repository copy (V(0) = no limit).
    type: int
    default: 600
  retries:
    description: Retries (with exponential backoff) after connection errors, timeouts and HTTP 429/502/503/504.
    type: int
    default: 3
seealso:
  - name: Elasticsearch snapshot and restore
    description: Shared file system repositories, path.repo, snapshots and restores.
    link: https://www.elastic.co/guide/en/elasticsearch/reference/8.15/snapshot-restore.html
"""

    # restore_argument_spec(steps); each module sets the choices of step.
    RESTORE = r"""
options:
  step:
    description:
      - The step to run. Every restore module uses the same words, in this order (each runs those its store
        needs, see the description) - V(stage) unpacks and prepares the set in O(staging), checksums checked,
        nothing live changes; V(swap) keeps a safety copy and puts the staged data in place; V(replay) rolls
        forward (MariaDB binary logs); V(load) loads the set into the running store; V(verify) compares the live
        data with the set's fingerprint; V(rollback) puts the safety copy back; V(cleanup) removes O(staging).
      - A failed step says what to do next; restore.yml runs V(rollback) after a failed V(swap), V(replay),
        V(load) or V(verify).
    type: str
    required: true
  set_path:
    description: The set to restore from (the plan of C(restore_plan) names it).
    type: path
    required: true
  staging:
    description:
      - This component's working folder on the backup volume, where a step keeps what it unpacks, prepares and
        records for the next steps and for O(step=rollback). O(step=cleanup) removes it (all but a safety copy kept
        inside it).
    type: path
    required: true
  keep_safety_copy:
    description: Keep the safety copy after a successful restore (O(step=cleanup) removes it otherwise).
    type: bool
    default: true
  safety_tag:
    description:
      - The safety copy's tag. What the restore replaces is kept under a name made from it (the description says
        where - C(<datadir>.<tag>), C(<database>__<tag>)...), so that O(step=rollback) can put it back. Give each
        restore its own, for example with a time stamp; restore.yml gives every component the same one.
      - The old option names C(safety_suffix) and C(safety_name) are aliases; a leading C(.) or C(_) of their
        value is dropped.
    type: str
    default: pre-restore
    aliases: [safety_suffix, safety_name]
  journal:
    description:
      - The restore journal (C(<backup_root>/.restore-journal.json), restore.yml's C(restore_journal)). The step
        records itself there before it runs and after it ends (running, done, failed), with the safety tag and what
        the live data is then (old, new, verified, or a mix), so that the next run of restore.yml says what a killed
        restore left and C(-e step=rollback) can undo it. Not written in check mode. Unset - no journal.
    type: path
notes:
  - C(restore_plan) verifies the set's checksums before the playbook calls this module.
"""
