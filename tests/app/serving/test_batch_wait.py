"""serving/deployments.BatchWait: a request alone in its replica is batched at once; with others
in flight the configured wait lets batches fill."""

from __future__ import annotations

import asyncio

import pytest
from support_assistant.serving.deployments import BatchWait


def test_a_lone_request_skips_the_wait_and_company_brings_it_back() -> None:
    waits: list[float] = []
    batch_wait = BatchWait(waits.append)
    batch_wait.configure(0.002)

    async def scenario() -> None:
        first_in, release = asyncio.Event(), asyncio.Event()

        async def request(hold: bool) -> None:
            with batch_wait.request():
                first_in.set()
                if hold:
                    await release.wait()

        held = asyncio.create_task(request(hold=True))
        await first_in.wait()
        await request(hold=False)  # arrives while the first is in the replica
        release.set()
        await held
        await request(hold=False)  # alone again

    asyncio.run(scenario())
    assert waits == [0.0, 0.002, 0.0]
    assert batch_wait.in_flight == 0


def test_a_failed_request_leaves_the_count() -> None:
    waits: list[float] = []
    batch_wait = BatchWait(waits.append)
    batch_wait.configure(0.01)
    with pytest.raises(RuntimeError), batch_wait.request():
        raise RuntimeError("the stage failed")
    with batch_wait.request():
        pass
    assert waits == [0.0, 0.0]
    assert batch_wait.in_flight == 0


def test_a_reconfigured_wait_applies_to_the_next_request_with_company() -> None:
    waits: list[float] = []
    batch_wait = BatchWait(waits.append)
    batch_wait.configure(0.002)
    with batch_wait.request():
        batch_wait.configure(0.02)  # a new user_config while a request is in flight
        with batch_wait.request():
            pass
    assert waits == [0.0, 0.02]
