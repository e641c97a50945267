"""The replica's decode loop on the tiny test decoder: concurrent requests share decode steps and
get exactly what each would get alone; a deadline truncates instead of failing; a cancelled
request leaves the batch. Counts steps, never times them (tokens/s is the bench's)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from support_assistant.runtime.decode_loop import DecodeLoop
from support_assistant.runtime.decoder import Decoder

PROMPTS = ["How do I reset my password?", "Hi", "The VPN drops every ten minutes; what should I check first?"]


@pytest.fixture(scope="module")
def decoder(test_decoder_dir: Path) -> Decoder:
    return Decoder(test_decoder_dir)


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=60))


def test_concurrent_requests_share_steps_and_get_what_they_get_alone(decoder):
    budgets = [40, 12, 24]
    loop = DecodeLoop(decoder, max_batch=8)

    async def main():
        tickets = []
        for prompt, budget in zip(PROMPTS, budgets, strict=True):
            # Each joins a batch that is already decoding: the one before it has drawn tokens.
            while tickets and len(tickets[-1].seq.generated) < 2:
                await asyncio.sleep(0.001)
            tickets.append(loop.submit(decoder.new_sequence(prompt, budget)))
        return [await t.result() for t in tickets]

    try:
        results = _run(main())
    finally:
        loop.close()
    alone = [decoder.generate([p], max_new_tokens=b)[0] for p, b in zip(PROMPTS, budgets, strict=True)]
    assert results == alone
    # A request draws its first token in its prefill and one per step after: alone they would take
    # sum(budget - 1) steps; sharing the batch, little more than the longest one's.
    assert max(budgets) - 1 <= loop.steps < sum(b - 1 for b in budgets)
    assert loop.prefills == len(budgets)


def test_text_arrives_in_pieces_that_add_up_to_the_answer(decoder):
    loop = DecodeLoop(decoder)

    async def main():
        ticket = loop.submit(decoder.new_sequence(PROMPTS[0], 12, stop=("zz",)))
        pieces = [piece async for piece in ticket.text_deltas()]
        return pieces, await ticket.result(), ticket.first_token_s

    try:
        pieces, generation, ttft = _run(main())
    finally:
        loop.close()
    assert "".join(pieces) == generation.text and len(pieces) > 1
    assert ttft is not None and ttft > 0


def test_a_deadline_mid_answer_returns_what_was_generated(decoder):
    loop = DecodeLoop(decoder, deadline_reserve_s=0.0)
    budget = 100_000  # far more than the deadline allows

    async def main():
        ticket = loop.submit(decoder.new_sequence(PROMPTS[2], min(budget, decoder.max_context - 40)),
                             deadline_s=time.time() + 0.3)
        return ticket, await ticket.result()

    try:
        ticket, generation = _run(main())
    finally:
        loop.close()
    assert ticket.truncated and generation.finish_reason == "length"
    assert 0 < generation.tokens < decoder.max_context - 40


def test_a_cancelled_request_leaves_the_batch_and_the_others_finish(decoder):
    loop = DecodeLoop(decoder)

    async def main():
        long = loop.submit(decoder.new_sequence(PROMPTS[0], decoder.max_context - 40))
        short = loop.submit(decoder.new_sequence(PROMPTS[1], 6))
        while long.seq.generated == [] or len(long.seq.generated) < 3:
            await asyncio.sleep(0.005)
        long.cancel()
        cut = await long.result()
        return cut, await short.result()

    try:
        cut, finished = _run(main())
        assert loop.active == 0
    finally:
        loop.close()
    assert cut.tokens < decoder.max_context - 40 and finished.tokens == 6


def test_a_request_waiting_for_a_row_leaves_at_its_deadline_while_the_batch_stays_full(decoder):
    # A full batch must not hold a waiting request past its budget (the stage would answer 504
    # after the others' work): it settles truncated, with nothing generated, while the batch decodes on.
    loop = DecodeLoop(decoder, max_batch=1, deadline_reserve_s=0.0)

    async def main():
        long = loop.submit(decoder.new_sequence(PROMPTS[0], decoder.max_context - 40))
        while not long.seq.generated:
            await asyncio.sleep(0.001)
        waiting = loop.submit(decoder.new_sequence(PROMPTS[1], 6), deadline_s=time.time() - 1.0)
        generation = await waiting.result()
        drawn_by_then = len(long.seq.generated)
        return waiting, generation, drawn_by_then, await long.result()

    try:
        waiting, generation, drawn_by_then, long_generation = _run(main())
    finally:
        loop.close()
    assert waiting.truncated and generation.tokens == 0
    assert drawn_by_then < long_generation.tokens, "it waited for the batch to free a row"


def test_a_waiting_request_with_less_time_left_than_a_sequence_takes_leaves_before_its_deadline(decoder):
    # Once steps are measured, a request that could not finish even if it joined now does not wait out
    # its budget (under a burst, all of those would time out together): it leaves at once, not started.
    loop = DecodeLoop(decoder, max_batch=1, deadline_reserve_s=0.0)

    async def main():
        long = loop.submit(decoder.new_sequence(PROMPTS[0], decoder.max_context - 40))
        while loop.steps < 3:
            await asyncio.sleep(0.001)
        seq = decoder.new_sequence(PROMPTS[1], decoder.max_context - 40)
        # Nothing finished yet, so a sequence is estimated at its whole token budget.
        assert loop.sequence_s(seq) >= loop.step_s * (decoder.max_context - 40) > 0
        # More time than the reserve, half what the sequence would take.
        deadline = time.time() + loop.reserve_s() + loop.sequence_s(seq) / 2
        waiting = loop.submit(seq, deadline_s=deadline)
        generation = await waiting.result()
        settled = time.time()
        drawn_by_then = len(long.seq.generated)
        long.cancel()
        await long.result()
        return waiting, generation, settled, deadline, drawn_by_then

    try:
        waiting, generation, settled, deadline, drawn_by_then = _run(main())
    finally:
        loop.close()
    assert waiting.not_started and waiting.truncated and generation.tokens == 0
    assert settled < deadline, "it waited out its budget"
    assert drawn_by_then < decoder.max_context - 40, "the batch was still busy with the long request"


def test_nothing_measured_yet_means_the_first_requests_join(decoder):
    loop = DecodeLoop(decoder)
    seq = decoder.new_sequence(PROMPTS[0], 12)
    assert loop.sequence_s(seq) == 0.0 and loop.reserve_s() == loop.deadline_reserve_s

    async def main():
        ticket = loop.submit(seq, deadline_s=time.time() + 30)
        return ticket, await ticket.result()

    try:
        ticket, generation = _run(main())
    finally:
        loop.close()
    assert not ticket.not_started and generation.tokens > 0
    # What it measured: a prefill, its steps, and the tokens this answer came to.
    assert loop.prefill_s > 0 and loop.step_s > 0 and loop.answer_tokens == generation.tokens
    assert loop.sequence_s(decoder.new_sequence(PROMPTS[1], 100)) == pytest.approx(
        loop.prefill_s + loop.step_s * generation.tokens)
