"""Reading the PrometheusRules of a rendered overlay: their groups and the series their PromQL selects.

Shared by the rule tests (tests/rules) and the end-to-end test that checks the live Ray metrics
endpoint exports what the rules query (tests/e2e).
"""

from __future__ import annotations

import re

# Metric names in a PromQL expression: identifiers not followed by "(" and not a keyword or a label
# (aggregations count too: `sum by (a) (...)` puts its grouping before the parenthesis).
_PROMQL_WORDS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
    "quantile", "limitk", "limit_ratio",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "offset",
    "bool",
    "inf",
    "nan",
}


def rule_groups(docs: list[dict]) -> list[dict]:
    """Every group of every PrometheusRule, in render order (group names are unique)."""
    groups: list[dict] = []
    for doc in docs:
        if doc.get("kind") == "PrometheusRule":
            groups.extend(doc["spec"]["groups"])
    return groups


def metric_names(expr: str) -> set[str]:
    """Series names an expression selects (label matchers and functions excluded)."""
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\"[^\"]*\"", "", expr)
    names = set(re.findall(r"(?<![\w:.])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()", expr))
    # Grouping label lists: by (a, b) / on (a) ...
    for labels in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr):
        names -= {label.strip() for label in labels.split(",")}
    return {n for n in names if n.lower() not in _PROMQL_WORDS and not re.fullmatch(r"\d+[smhdwy]", n)}
