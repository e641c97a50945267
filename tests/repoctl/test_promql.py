"""repoctl.promql.metric_names: the series an expression selects, and nothing else (no function, no
aggregation, no label, no truncated identifier)."""

from __future__ import annotations

import pytest
from repoctl.promql import metric_names


@pytest.mark.parametrize(("expr", "names"), [
    ('absent(up{job="x"})', {"up"}),
    ("increase(foo_total[5m]) > bar:baz", {"foo_total", "bar:baz"}),
    ("sum by (namespace, pod) (rate(a_total[5m])) / ignoring (pod) group_left count(b)", {"a_total", "b"}),
    ("max without (instance) (c) > scalar(d) offset 5m", {"c", "d"}),
    ('label_replace(e, "x", "$1", "y", "(.*)") unless on (z) f', {"e", "f"}),
])
def test_only_the_series_names(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names
