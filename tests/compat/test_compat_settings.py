"""One environment, read the same way by bullwait/settings.py and node-compat/lib/config.js (the
NestJS producer's and Bull Board's settings): what each side connects to, or the same one-line
refusal naming the variable, for every value in the table. A table row states the decided
behaviour, so a side that drifts, or both drifting together, fails here."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from bullwait.engine.connection import redis_options
from bullwait.errors import SettingsError
from bullwait.settings import Settings, redis_url_options

from helpers.nodecompat import NODE, NODE_DIR, node_required
from helpers.settings import load

pytestmark = node_required

SECRET = "s3cret-pw"
LOCAL = "redis localhost:6379/1"

# (environment, expected): the expected target (where, and the prefix/naming when not the default
# `bull current`), or the refusal as (variable, words every message must hold).
Row = tuple[dict[str, str], Any]
TABLE: list[Row] = [
    # A blank value (empty or white space only) is unset, for every variable.
    ({"REDIS_CLUSTER_NODES": ""}, LOCAL),
    ({"REDIS_CLUSTER_NODES": "  "}, LOCAL),
    ({"REDIS_SENTINELS": " \t"}, LOCAL),
    ({"REDIS_URL": "  "}, LOCAL),
    ({"REDIS_URL": "redis://h:7000/2", "REDIS_SENTINELS": " ", "REDIS_CLUSTER_NODES": ""}, "redis h:7000/2"),
    ({"REDIS_HOST": " ", "REDIS_PORT": "", "REDIS_QUEUE_DB": "  "}, LOCAL),
    ({"REDIS_CLUSTER_NODES": "a:7000", "REDIS_QUEUE_DB": " ", "BULLMQ_PREFIX": " "}, "cluster a:7000 {bull} current"),
    # ... so an empty master name, prefix or queue naming is the default one.
    ({"REDIS_SENTINELS": "s:26379", "REDIS_SENTINEL_MASTER": ""}, "sentinel s:26379 mymaster/1"),
    ({"REDIS_SENTINELS": "s:26379", "REDIS_SENTINEL_MASTER": "  "}, "sentinel s:26379 mymaster/1"),
    ({"BULLMQ_PREFIX": ""}, LOCAL),
    ({"BULLWAIT_QUEUE_NAMES": " "}, LOCAL),
    (
        {"REDIS_CLUSTER_NODES": "a:7000", "BULLWAIT_QUEUE_NAMES": "", "BULLMQ_PREFIX": ""},
        "cluster a:7000 {bull} current",
    ),
    (
        {"REDIS_CLUSTER_NODES": "a:7000", "BULLWAIT_QUEUE_NAMES": "Tagged", "BULLMQ_PREFIX": ""},
        "cluster a:7000 bull tagged",
    ),
    # A value that is set is taken as written: inner or surrounding white space is refused.
    ({"REDIS_SENTINEL_MASTER": "my master"}, ("REDIS_SENTINEL_MASTER", "without white space")),
    ({"BULLMQ_PREFIX": "my prefix"}, ("BULLMQ_PREFIX", "white space")),
    ({"BULLWAIT_QUEUE_NAMES": " legacy "}, ("BULLWAIT_QUEUE_NAMES", "current, legacy or tagged")),
    # Host lists: an IPv6 address goes in brackets; without them `::1:7000` is ambiguous.
    ({"REDIS_CLUSTER_NODES": "::1:7000"}, ("REDIS_CLUSTER_NODES", "in brackets, e.g. [::1]:7000")),
    ({"REDIS_CLUSTER_NODES": "a:7000,fe80::1:7000"}, ("REDIS_CLUSTER_NODES", 'entry 2 "fe80::1:7000"')),
    ({"REDIS_CLUSTER_NODES": "::1"}, ("REDIS_CLUSTER_NODES", "[::1]:7000")),
    ({"REDIS_CLUSTER_NODES": "a:b:7000"}, ("REDIS_CLUSTER_NODES", "more than one ':'")),
    ({"REDIS_SENTINELS": "::1:26379"}, ("REDIS_SENTINELS", "in brackets, e.g. [::1]:26379")),
    (
        {"REDIS_CLUSTER_NODES": "[::1]:7000, [fe80::1%eth0]:7001"},
        "cluster [::1]:7000,[fe80::1%eth0]:7001 {bull} current",
    ),
    ({"REDIS_CLUSTER_NODES": "[::1]7000"}, ("REDIS_CLUSTER_NODES", "is not host:port")),
    ({"REDIS_CLUSTER_NODES": "[::1:7000"}, ("REDIS_CLUSTER_NODES", "is not host:port")),
    ({"REDIS_CLUSTER_NODES": "[redis-1]:7000"}, ("REDIS_CLUSTER_NODES", "is not host:port")),
    ({"REDIS_URL": "redis://::1:6379/1"}, ("REDIS_URL", "redis://[::1]:6379/1")),
    ({"REDIS_URL": "redis://[::1]:6379/1"}, "redis ::1:6379/1"),
    # '?', '#' and other characters no host name has are refused, not looked up.
    ({"REDIS_CLUSTER_NODES": "a?b:7000"}, ("REDIS_CLUSTER_NODES", "is not host:port")),
    ({"REDIS_CLUSTER_NODES": "a#b:7000"}, ("REDIS_CLUSTER_NODES", "is not host:port")),
    ({"REDIS_CLUSTER_NODES": "a;b:7000"}, ("REDIS_CLUSTER_NODES", "is not host:port")),
    ({"REDIS_SENTINELS": "s#x:26379"}, ("REDIS_SENTINELS", "is not host:port")),
    ({"REDIS_CLUSTER_NODES": "a:7000?x=1"}, ("REDIS_CLUSTER_NODES", "port must be a number from 1 to 65535")),
    ({"REDIS_CLUSTER_NODES": "a:7000#x"}, ("REDIS_CLUSTER_NODES", "port must be a number from 1 to 65535")),
    ({"REDIS_HOST": "a?b"}, ("REDIS_HOST", "put a URL in REDIS_URL")),
    ({"REDIS_HOST": "a#b"}, ("REDIS_HOST", "put a URL in REDIS_URL")),
    ({"REDIS_URL": "redis://localhost:6379/1#x"}, ("REDIS_URL", "%23")),
    ({"REDIS_URL": "redis://:p#w@localhost:6379/1"}, ("REDIS_URL", "percent-encode")),
    ({"REDIS_CLUSTER_NODES": "a:7000,,b:7001"}, ("REDIS_CLUSTER_NODES", "entry 2 is empty")),
    ({"REDIS_CLUSTER_NODES": " a:7000 ,a:7000, b_1.x-y:7001"}, "cluster a:7000,b_1.x-y:7001 {bull} current"),
    # Ports: 1 to 65535 in decimal digits, nothing else.
    ({"REDIS_CLUSTER_NODES": "a:70000"}, ("REDIS_CLUSTER_NODES", "port must be a number from 1 to 65535")),
    ({"REDIS_CLUSTER_NODES": "a:65536"}, ("REDIS_CLUSTER_NODES", "from 1 to 65535")),
    ({"REDIS_CLUSTER_NODES": "a:0"}, ("REDIS_CLUSTER_NODES", "from 1 to 65535")),
    ({"REDIS_CLUSTER_NODES": "a:007000"}, ("REDIS_CLUSTER_NODES", "from 1 to 65535")),
    ({"REDIS_CLUSTER_NODES": "a:+7000"}, ("REDIS_CLUSTER_NODES", "from 1 to 65535")),
    ({"REDIS_CLUSTER_NODES": "a:65535,b:07000"}, "cluster a:65535,b:7000 {bull} current"),
    ({"REDIS_SENTINELS": "s:70000"}, ("REDIS_SENTINELS", "from 1 to 65535")),
    ({"REDIS_PORT": "70000"}, ("REDIS_PORT", "whole number from 1 to 65535")),
    ({"REDIS_PORT": "0x1F"}, ("REDIS_PORT", "whole number from 1 to 65535")),
    ({"REDIS_PORT": "1e3"}, ("REDIS_PORT", "whole number from 1 to 65535")),
    ({"REDIS_PORT": "7000.0"}, ("REDIS_PORT", "whole number from 1 to 65535")),
    ({"REDIS_PORT": " 65535 "}, "redis localhost:65535/1"),
    ({"REDIS_QUEUE_DB": "1_0"}, ("REDIS_QUEUE_DB", "whole number from 0 to")),
    ({"REDIS_URL": "redis://localhost:70000/1"}, ("REDIS_URL", "from 1 to 65535 (got 70000)")),
    ({"REDIS_URL": "redis://localhost:0/1"}, ("REDIS_URL", "from 1 to 65535 (got 0)")),
    # The rest of REDIS_URL: both read ?db= and a login given as options, and refuse the same URLs.
    ({"REDIS_URL": "redis://localhost:6379?db=2"}, "redis localhost:6379/2"),
    ({"REDIS_URL": "rediss://localhost/3?username=u&password=p"}, "rediss localhost:6379/3 login u:p"),
    ({"REDIS_URL": "redis://localhost/1?db=2"}, ("REDIS_URL", "names two databases")),
    ({"REDIS_URL": "redis://localhost/1?foo=2"}, ("REDIS_URL", "unknown option")),
    ({"REDIS_URL": "redis://localhost/0x1"}, ("REDIS_URL", "not a database number")),
    ({"REDIS_URL": "redis:///1"}, ("REDIS_URL", "names no host")),
    ({"REDIS_URL": "redis://localhost/1\n"}, ("REDIS_URL", "control character")),
    ({"REDIS_URL": "unix:///run/redis.sock?db=4"}, "unix /run/redis.sock/4"),
    # Two topologies at once; a value with a login never comes back in a message.
    ({"REDIS_URL": f"redis://:{SECRET}@h/1", "REDIS_SENTINELS": "s:26379"}, ("", "REDIS_URL and REDIS_SENTINELS")),
    ({"REDIS_URL": "redis://h/1", "REDIS_CLUSTER_NODES": "a:7000"}, ("", "REDIS_URL and REDIS_CLUSTER_NODES")),
    ({"REDIS_CLUSTER_NODES": f"u:{SECRET}@a:7000"}, ("REDIS_CLUSTER_NODES", "REDIS_USERNAME/REDIS_PASSWORD")),
    ({"REDIS_SENTINELS": f"redis://:{SECRET}@s:26379"}, ("REDIS_SENTINELS", "REDIS_SENTINEL_PASSWORD")),
    ({"REDIS_URL": f"redis://:{SECRET}@h:70000/1"}, ("REDIS_URL", "from 1 to 65535")),
    ({"REDIS_URL": f"redis://h/1?password={SECRET}#x"}, ("REDIS_URL", "%23")),
    ({"REDIS_URL": f"redis://h/1?password={SECRET}&foo=1"}, ("REDIS_URL", "unknown option")),
]

NODE_TABLE = """
const c = require('./lib/config');
const rows = JSON.parse(require('fs').readFileSync(0, 'utf8'));
const out = rows.map((env) => {
  try {
    const cfg = c.loadConfig(env);
    if (cfg.connection.disconnect) cfg.connection.disconnect();
    const r = cfg.redis;
    const o = r.redisOptions || r;
    const nodes = (list) => list.map((n) => [n.host, n.port]);
    let where;
    if (r.clusterNodes) where = ['cluster', nodes(r.clusterNodes)];
    else if (r.sentinels) where = ['sentinel', nodes(r.sentinels), r.name, r.db];
    else if (r.path) where = ['unix', r.path, r.db];
    else where = [r.tls ? 'rediss' : 'redis', r.host, r.port, r.db];
    return { where, login: [o.username || null, o.password || null], prefix: cfg.prefix, naming: cfg.naming };
  } catch (err) {
    return { error: err.message };
  }
});
console.log(JSON.stringify(out));
"""


@pytest.fixture(scope="module")
def node_results() -> list[dict[str, Any]]:
    """The Node side's reading of every row, from one `node` run."""
    proc = subprocess.run(
        [NODE or "node", "-e", NODE_TABLE],
        cwd=NODE_DIR,
        input=json.dumps([env for env, _ in TABLE]),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(results) == len(TABLE)
    return list(results)


def _python_reading(settings: Settings) -> dict[str, Any]:
    """What Python connects to, in the shape NODE_TABLE gives Node's."""
    login = [settings.redis_username, settings.redis_password]
    if settings.cluster is not None:
        where: list[Any] = ["cluster", [list(n) for n in settings.cluster.nodes]]
    elif settings.sentinel is not None:
        nodes = [list(n) for n in settings.sentinel.sentinels]
        where = ["sentinel", nodes, settings.sentinel.master, settings.sentinel.db]
    else:
        opts = redis_options(settings)
        login = [opts.get("username"), opts.get("password")]
        if "unix_socket_path" in opts:
            where = ["unix", opts["unix_socket_path"], opts["db"]]
        else:
            where = ["rediss" if opts.get("ssl") else "redis", opts["host"], opts["port"], opts["db"]]
    naming = settings.bullwait_queue_names.value
    return {"where": where, "login": login, "prefix": settings.bullmq_prefix, "naming": naming}


def _expected_reading(text: str) -> dict[str, Any]:
    """`redis host:port/db`, `unix path/db`, `cluster h:p,...`, `sentinel h:p,... master/db`, then
    optionally the prefix and naming, and `login user:password`."""
    words = text.split()
    login: list[Any] = [None, None]
    if "login" in words:
        login = words[words.index("login") + 1].split(":")
        words = words[: words.index("login")]
    kind, rest = words[0], words[1:]
    prefix, naming = "bull", "current"
    if kind in ("redis", "rediss"):
        host, _, tail = rest[0].rpartition(":")
        port, _, db = tail.partition("/")
        where: list[Any] = [kind, host, int(port), int(db)]
    elif kind == "unix":
        path, _, db = rest[0].rpartition("/")
        where = [kind, path, int(db)]
    else:
        nodes = [[h.strip("[]"), int(p)] for h, _, p in (n.rpartition(":") for n in rest[0].split(","))]
        if kind == "sentinel":
            master, _, db = rest[1].partition("/")
            where, rest = [kind, nodes, master, int(db)], rest[1:]
        else:
            where = [kind, nodes]
    if len(rest) > 1:
        prefix, naming = rest[1], rest[2]
    return {"where": where, "login": login, "prefix": prefix, "naming": naming}


@pytest.mark.parametrize(("index", "row"), list(enumerate(TABLE)), ids=[json.dumps(env) for env, _ in TABLE])
def test_python_and_node_read_the_environment_alike(
    monkeypatch: pytest.MonkeyPatch, node_results: list[dict[str, Any]], index: int, row: Row
) -> None:
    env, expected = row
    node = node_results[index]
    try:
        python: dict[str, Any] = _python_reading(load(monkeypatch, **env))
    except SettingsError as exc:
        python = {"error": str(exc)}
    if isinstance(expected, str):
        assert python == _expected_reading(expected), python
        assert node == python, node
        return
    variable, words = expected
    assert "error" in python and "error" in node, (python, node)
    py_message, node_message = str(python["error"]), str(node["error"])
    # The same words on both sides: Python adds its prefix, and may add "(got ...)" after them.
    assert py_message.startswith("invalid setting " + node_message), (py_message, node_message)
    assert node_message.startswith(f"{variable}: " if variable else words) and words in node_message, node_message
    assert "\n" not in py_message and SECRET not in py_message + node_message


def test_url_options_are_the_same_list() -> None:
    script = "process.stdout.write(JSON.stringify([...require('./lib/config').URL_OPTIONS]))"
    proc = subprocess.run(
        [NODE or "node", "-e", script], cwd=NODE_DIR, capture_output=True, text=True, timeout=30, check=True
    )
    assert set(json.loads(proc.stdout)) == redis_url_options()
