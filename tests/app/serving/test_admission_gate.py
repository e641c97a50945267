"""The ingress admission gate: refuses with a 503 naming the busiest stage once `limit` requests are
inside, holds a place only while admitted, and its pre-body check holds nothing."""

from __future__ import annotations

import pytest
from support_assistant.errors import StageError
from support_assistant.serving.admission import Admission


def test_admits_up_to_the_limit_then_names_the_busiest_stage():
    gate = Admission()
    with gate.admit(2, 1) as waiting:
        waiting["reranker"] += 1
        with gate.admit(2, 1) as waiting:
            waiting["generator"] += 2
            with pytest.raises(StageError) as refused:
                gate.refuse_if_full(2, 3)
            assert (refused.value.status, refused.value.stage, refused.value.retry_after_s) == (503, "generator", 3)
            with pytest.raises(StageError), gate.admit(2, 1):
                pass
            waiting["generator"] -= 2
        waiting["reranker"] -= 1
    assert gate.in_flight == 0


def test_the_pre_body_check_holds_no_place():
    gate = Admission()
    for _ in range(5):
        gate.refuse_if_full(1, 1)
    assert gate.in_flight == 0
    with gate.admit(1, 1):
        assert gate.in_flight == 1
        with pytest.raises(StageError) as refused:
            gate.refuse_if_full(1, 1)
        assert refused.value.stage == "ingress"  # nothing is waiting on any stage yet
    assert gate.in_flight == 0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_beyond_the_limit_is_refused_before_reading_its_body():
    clock = Clock()
    gate = Admission(clock=clock)
    with gate.reading(2, 1), gate.reading(2, 1):
        # Two requests are reading their bodies: a third is refused before it reads its own.
        with pytest.raises(StageError) as refused, gate.reading(2, 1):
            pass
        assert refused.value.status == 503 and refused.value.retry_after_s == 1
        # Readers hold no place in the pipeline: admission itself still counts only what runs.
        with gate.admit(2, 1):
            assert gate.in_flight == 1
    assert gate.fresh_readers() == 0


def test_a_slow_upload_stops_counting_against_the_others():
    from support_assistant.serving.admission import FRESH_READER_S

    clock = Clock()
    gate = Admission(clock=clock)
    with gate.reading(1, 1):
        with pytest.raises(StageError):
            gate.refuse_if_full(1, 1, count_readers=True)
        clock.now += FRESH_READER_S + 0.01  # still reading, a second later
        gate.refuse_if_full(1, 1, count_readers=True)  # no longer keeps the gate shut
        with gate.reading(1, 1):
            assert gate.fresh_readers() == 1
