"""The metric names a PromQL expression selects, read by a real PromQL parser."""

from __future__ import annotations

import re

import promql_parser

# Grafana's variables, replaced by what they stand for at query time.
_GRAFANA = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
}
_VARIABLE = re.compile(r"\$\{?(\w+)\}?")


def metric_names(expr: str) -> set[str]:
    """Every metric name `expr` selects; ValueError if it does not parse as PromQL."""
    for variable, value in _GRAFANA.items():
        expr = expr.replace(variable, value)
    # Dashboard variables ($job, ${instance}) stand in label values only.
    expr = _VARIABLE.sub("x", expr)
    names: set[str] = set()

    def visit(node: object) -> bool:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names
