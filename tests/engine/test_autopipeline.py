"""AutoPipeline against the real redis-server: every reply reaches its own caller.

The worker sends each job's `moveToFinished` through it; a reply given to the wrong
caller would hand one fetched job to two slots (it did, while the connection's
handshake was still running: this file's first test caught that).
"""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from bullwait.engine.autopipeline import AutoPipeline, pack

ECHO = "return {KEYS[1], ARGV[1]}"
ODD_FAILS = "if tonumber(ARGV[1]) % 2 == 1 then return redis.error_reply('odd ' .. ARGV[1]) end return ARGV[1]"


@pytest.fixture
async def client(redis_server):
    # db 3 and a client name: the connection's handshake sends SELECT and CLIENT SETNAME.
    c = aioredis.Redis(port=redis_server.port, db=3, client_name="autopipeline-test", decode_responses=True)
    yield c
    await c.aclose()


async def test_each_caller_gets_its_own_reply_from_the_first_call_on(client, prefix):
    pipeline = AutoPipeline(client, eager=2)
    echo = client.register_script(ECHO)
    await client.script_load(ECHO)

    async def call(i: int) -> object:
        for _ in range(i % 30):  # spread the calls over the turns of the connection's handshake
            await asyncio.sleep(0)
        return await pipeline.run_script(echo, [f"{prefix}:k{i}"], [i])

    replies = await asyncio.gather(*(call(i) for i in range(600)))
    assert replies == [[f"{prefix}:k{i}", str(i)] for i in range(600)]
    assert pipeline.writes < pipeline.calls  # they did travel together
    await pipeline.close()


async def test_an_error_reply_goes_to_its_caller_only(client, prefix):
    pipeline = AutoPipeline(client)
    odd = client.register_script(ODD_FAILS)
    results = await asyncio.gather(
        *(pipeline.run_script(odd, [prefix], [i]) for i in range(40)), return_exceptions=True
    )
    for i, result in enumerate(results):
        if i % 2:
            assert isinstance(result, ResponseError) and f"odd {i}" in str(result)
        else:
            assert result == str(i)
    await pipeline.close()


async def test_flushed_scripts_and_a_killed_connection_fall_back_to_the_client(client, prefix):
    pipeline = AutoPipeline(client)
    echo = client.register_script(ECHO)
    assert await pipeline.run_script(echo, [prefix], ["a"]) == [prefix, "a"]
    await client.script_flush()  # NOSCRIPT: the client loads the script again
    assert await asyncio.gather(*(pipeline.run_script(echo, [prefix], [i]) for i in range(10))) == [
        [prefix, str(i)] for i in range(10)
    ]
    # Kill the pipeline's own connection (not the client's): the calls are resent, then it reconnects.
    for entry in await client.client_list():
        if entry["name"] == "autopipeline-test" and entry["cmd"] in ("evalsha", "eval"):
            await client.client_kill_filter(_id=entry["id"])
    assert await asyncio.gather(*(pipeline.run_script(echo, [prefix], [i]) for i in range(10))) == [
        [prefix, str(i)] for i in range(10)
    ]
    writes = pipeline.writes
    assert await pipeline.run_script(echo, [prefix], ["b"]) == [prefix, "b"]
    assert pipeline.writes == writes + 1  # pipelining again
    await pipeline.close()
    assert await pipeline.run_script(echo, [prefix], ["c"]) == [prefix, "c"]  # after close: the client
    assert pipeline.writes == writes + 1


def test_pack_writes_what_redis_py_writes():
    from redis.asyncio.connection import Connection

    command = ("EVALSHA", "abc", 2, "k:1", "k:2", b"\x81\xa1a\x01", "", 12345678901234, "é", 1.5, -3)
    assert pack(command) == b"".join(Connection().pack_command(*command))
    with pytest.raises(TypeError, match="cannot send NoneType"):
        pack(("GET", None))


async def test_a_silent_redis_fails_the_waiting_calls_over_to_the_client(redis_server, prefix):
    """No reply within socket_timeout: the pipeline gives up on its connection (a watchdog,
    not a timeout per reply) and the calls go through the client, which waits it out."""
    client = aioredis.Redis(port=redis_server.port, socket_timeout=0.3, decode_responses=True)
    admin = aioredis.Redis(port=redis_server.port, decode_responses=True)
    pipeline = AutoPipeline(client)
    echo = client.register_script(ECHO)
    try:
        assert await pipeline.run_script(echo, [prefix], ["warm"]) == [prefix, "warm"]
        first_conn = pipeline._conn
        await admin.execute_command("CLIENT", "PAUSE", 1200, "ALL")
        replies = await asyncio.gather(
            *(pipeline.run_script(echo, [prefix], [i]) for i in range(5)), return_exceptions=True
        )
        # The client's own reads time out too and are retried until the pause ends.
        assert replies == [[prefix, str(i)] for i in range(5)]
        assert pipeline._conn is not first_conn  # that connection was dropped
        assert await pipeline.run_script(echo, [prefix], ["after"]) == [prefix, "after"]
    finally:
        await admin.execute_command("CLIENT", "UNPAUSE")
        await pipeline.close()
        await client.aclose()
        await admin.aclose()


async def test_replies_stay_with_their_callers_when_the_connection_dies_mid_flight(redis_server, prefix):
    """CLIENT KILL of the pipeline's connection while calls are in flight, twice: every call
    still gets its own reply (resent through the client), none another connection's."""
    client = aioredis.Redis(
        port=redis_server.port, client_name="autopipeline-test", max_connections=5000, decode_responses=True
    )
    pipeline = AutoPipeline(client, eager=3)
    echo = client.register_script(ECHO)
    await client.script_load(ECHO)
    admin = aioredis.Redis(port=client.connection_pool.connection_kwargs["port"], decode_responses=True)

    async def call(i: int) -> object:
        for _ in range(i % 50):
            await asyncio.sleep(0)
        return await pipeline.run_script(echo, [f"{prefix}:{i}"], [i])

    async def killer() -> int:
        killed = 0
        for _ in range(2):
            for _ in range(15):
                await asyncio.sleep(0)
            for entry in await admin.client_list():
                if entry["name"] == "autopipeline-test" and entry["cmd"] in ("evalsha", "eval"):
                    killed += int(await admin.client_kill_filter(_id=entry["id"]))
        return killed

    try:
        *replies, killed = await asyncio.gather(*(call(i) for i in range(1500)), killer())
        assert replies == [[f"{prefix}:{i}", str(i)] for i in range(1500)]
        assert killed >= 1
    finally:
        await pipeline.close()
        await admin.aclose()
        await client.aclose()


COUNT_AND_ECHO = "redis.call('INCR', KEYS[1]) return ARGV[1]"


async def test_a_reply_with_bytes_that_are_not_utf8_fails_no_other_call(client, prefix):
    """A job hash written by hand can hold any bytes: its reply reaches its own caller (as
    surrogate escapes, the same bytes when sent back) and no other call is lost or re-run."""
    pipeline = AutoPipeline(client, eager=2)
    script = client.register_script(COUNT_AND_ECHO)
    await client.script_load(COUNT_AND_ECHO)
    bad = b"job-\xff\xfe"
    args = [bad if i == 7 else f"ok-{i}" for i in range(40)]
    replies = await asyncio.gather(*(pipeline.run_script(script, [f"{prefix}:runs"], [a]) for a in args))
    assert replies[7] == bad.decode("utf-8", "surrogateescape")
    assert [r for i, r in enumerate(replies) if i != 7] == [f"ok-{i}" for i in range(40) if i != 7]
    assert int(await client.get(f"{prefix}:runs")) == 40, "every call ran once (none re-sent)"
    await pipeline.close()
