"""Workers as real processes: killed mid-batch, stopped, and the replay / send-test commands."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import orjson
from redis.asyncio import Redis

from gateway.delivery.receipts import counters
from gateway.store import keys
from gateway.tiktok.emulator_state import Outcome, Script
from tests.delivery_support import PIXEL, delivery_env, enqueue, running_emulator, wait_until
from tests.process_support import Processes, exited


async def test_a_worker_killed_mid_batch_loses_nothing(
    processes: Processes, redis_url: str, redis: Redis
) -> None:
    ids = [f"k{i}" for i in range(40)]
    await enqueue(redis_url, ids)
    async with running_emulator() as tiktok:
        tiktok.state.script(Script(Outcome.HANG, times=1, hang_s=60))
        env = delivery_env(tiktok, redis_url, TTGW_RECLAIM_IDLE_S="1")
        first = processes.start(env, "worker")
        await tiktok.state.wait_for_hanging(1, timeout_s=20)
        first.send_signal(signal.SIGKILL)  # mid-request: its batch is pending, unanswered
        assert await exited(first) == -signal.SIGKILL
        tiktok.state.release_hangs()
        pending = await redis.xpending(keys.EVENTS_STREAM, keys.DELIVERY_GROUP)
        assert pending["pending"] == 40
        second = processes.start(env, "worker")
        await tiktok.state.wait_for_events(40, timeout_s=30)
        await wait_until(lambda: _delivered(redis, 40))
        second.send_signal(signal.SIGTERM)
        assert await exited(second) == 0, processes.output(second)
        state = tiktok.state
    assert sorted(e.event_id for e in state.unique_events()) == sorted(ids)
    assert state.duplicates == 0
    pending = await redis.xpending(keys.EVENTS_STREAM, keys.DELIVERY_GROUP)
    assert pending["pending"] == 0


async def _delivered(redis: Redis, n: int) -> bool:
    return (await counters(redis)).get("delivered", 0) >= n


async def test_sigterm_stops_a_busy_worker_in_bounded_time(
    processes: Processes, redis_url: str, redis: Redis
) -> None:
    await enqueue(redis_url, [f"t{i}" for i in range(5)])
    async with running_emulator() as tiktok:
        tiktok.state.script(Script(Outcome.HANG, times=1, hang_s=60))
        env = delivery_env(tiktok, redis_url)
        worker = processes.start(env, "worker")
        await tiktok.state.wait_for_hanging(1, timeout_s=20)
        loop = asyncio.get_running_loop()
        started = loop.time()
        worker.send_signal(signal.SIGTERM)
        assert await exited(worker, timeout_s=keys.SHUTDOWN_GRACE_S + 10) == 0
        assert loop.time() - started < keys.SHUTDOWN_GRACE_S + 8
        tiktok.state.release_hangs()
        # the unsent batch was handed back, ready for the next worker at once
        assert await redis.zcard(keys.RETRY_ZSET) == 5
        again = processes.start(env, "worker")
        await tiktok.state.wait_for_events(5, timeout_s=20)
        again.send_signal(signal.SIGTERM)
        assert await exited(again) == 0
        assert tiktok.state.duplicates == 0


async def test_run_delivers_to_the_sandbox_in_one_process(
    processes: Processes, redis_url: str, redis: Redis, tmp_path: Path
) -> None:
    env = {"TTGW_REDIS_URL": redis_url, "TTGW_PORT": "0"}
    run = processes.start(env, "run")
    await wait_until(lambda: "listening on" in processes.output(run))
    port = int(processes.output(run).split("listening on http://127.0.0.1:")[1].split()[0])
    import aiohttp

    async with aiohttp.ClientSession() as session:
        body = {"event": "Purchase", "event_id": "sb1", "user": {"email": "a@b.com"}}
        async with session.post(f"http://127.0.0.1:{port}/e", json=body) as response:
            assert response.status == 202
    await wait_until(lambda: _delivered(redis, 1))
    recorded = await redis.xrange(keys.SANDBOX_STREAM)
    assert [fields[b"event_id"] for _, fields in recorded] == [b"sb1"]
    run.send_signal(signal.SIGINT)
    assert await exited(run) == 0


async def test_replay_command_lists_and_replays(
    processes: Processes, redis_url: str, redis: Redis
) -> None:
    await enqueue(redis_url, ["dead-1", "dead-2"], age_s=2 * 86400)
    async with running_emulator(max_event_age_s=86400) as tiktok:
        env = delivery_env(tiktok, redis_url)
        worker = processes.start(env, "worker")
        await wait_until(lambda: _count(redis, "dead", 2))
        dry = processes.start(env, "replay", "--dry-run")
        assert await exited(dry) == 0
        out = processes.output(dry)
        assert "dead-1" in out and "dead-2" in out and "2 dead letter(s) would be replayed" in out
        assert await redis.xlen(keys.DEAD_STREAM) == 2
        tiktok.state.config.max_event_age_s = 7 * 86400
        one = processes.start(env, "replay", "--event-id", "dead-2")
        assert await exited(one) == 0, processes.output(one)
        assert "1 dead letter(s) queued again" in processes.output(one)
        await tiktok.state.wait_for_events(1)
        assert [e.event_id for e in tiktok.state.accepted] == ["dead-2"]
        worker.send_signal(signal.SIGTERM)
        assert await exited(worker) == 0
    assert await redis.xlen(keys.DEAD_STREAM) == 1


async def _count(redis: Redis, name: str, n: int) -> bool:
    return (await counters(redis)).get(name, 0) >= n


async def test_send_test_sends_one_test_event_and_prints_the_answer(
    processes: Processes, redis_url: str
) -> None:
    async with running_emulator() as tiktok:
        env = delivery_env(tiktok, redis_url, TTGW_TEST_EVENT_CODE="TEST12345")
        command = processes.start(env, "send-test")
        assert await exited(command) == 0, processes.output(command)
        answer = orjson.loads(processes.stdout(command))
        assert answer["verdict"] == "delivered"
        assert answer["code"] == 0 and answer["request_id"]
        (event,) = tiktok.state.accepted
        assert event.test_event_code == "TEST12345"
        assert event.pixel_code == PIXEL
        assert "emulator-token" not in processes.output(command)
        tiktok.state.revoke(env["TTGW_ACCESS_TOKEN"])
        failing = processes.start(env, "send-test")
        assert await exited(failing) == 1
        assert orjson.loads(processes.stdout(failing))["code"] == 40105
        missing = processes.start({**env, "TTGW_TEST_EVENT_CODE": ""}, "send-test")
        assert await exited(missing) == 2
        assert "TTGW_TEST_EVENT_CODE" in processes.output(missing)


async def test_logs_and_metrics_of_a_real_run_hold_no_secret_or_contact_data(
    processes: Processes, redis_url: str, redis: Redis
) -> None:
    import aiohttp

    raw_email, raw_phone = "Secret.Buyer@Example.org", "+33 6 11 22 33 44"
    async with running_emulator() as tiktok:
        env = delivery_env(
            tiktok,
            redis_url,
            TTGW_PORT="0",
            TTGW_ADMIN_TOKEN="admin-token-0000-secret",
            TTGW_WRITE_KEY="write-key-0000-secret",
        )
        run = processes.start(env, "run")
        await wait_until(lambda: "listening on" in processes.output(run))
        port = int(processes.output(run).split("listening on http://127.0.0.1:")[1].split()[0])
        base = f"http://127.0.0.1:{port}"
        user = {"email": raw_email, "phone": raw_phone}
        async with aiohttp.ClientSession() as http:
            await http.post(f"{base}/e", json={"event": "Purchase", "event_id": "l1", "user": user})
            await http.post(
                f"{base}/v1/track",
                json={"event": "Lead", "event_id": "l2", "user": user},
                headers={"Authorization": "Bearer write-key-0000-secret"},
            )
            await http.post(
                f"{base}/v1/track",
                json={"event": "Lead"},
                headers={"Authorization": "Bearer wrong-write-key"},
            )
            await tiktok.state.wait_for_events(2)
            await wait_until(lambda: _delivered(redis, 2))
            async with http.get(f"{base}/metrics") as response:
                metrics = await response.text()
        run.send_signal(signal.SIGTERM)
        assert await exited(run) == 0
    lines = [line for line in processes.output(run).splitlines() if line.startswith("{")]
    records = [orjson.loads(line) for line in lines]
    assert any(
        r.get("event") == "request" and r.get("path") == "/e" and r.get("request_id")
        for r in records
    )
    assert any(r.get("event") == "batch" and r.get("pixel") == PIXEL for r in records)
    logs = "\n".join(lines)
    for secret in (
        env["TTGW_ACCESS_TOKEN"],
        "admin-token-0000-secret",
        "write-key-0000-secret",
        "wrong-write-key",
        raw_email,
        raw_email.lower(),
        raw_phone,
        "+33611223344",
    ):
        assert secret not in logs, secret
        assert secret not in metrics, secret
    assert "ttgw_queue_depth 0.0" in metrics
    assert 'ttgw_match_keys_total{event="Purchase",key="email"} 1.0' in metrics
    assert "ttgw_delivery_request_seconds_count" in metrics
