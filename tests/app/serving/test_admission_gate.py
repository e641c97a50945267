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
