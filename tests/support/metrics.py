"""Reading a Prometheus text exposition back in tests, with prometheus_client's own parser
(so what the tests accept is what a real scraper accepts)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

Labels = tuple[tuple[str, str], ...]


def metric_value(text: str, metric: str, **labels: str) -> float:
    """The sum of the samples called ``metric`` whose labels include ``labels``."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == metric and all(sample.labels.get(k) == v
                                             for k, v in labels.items()):
                total += sample.value
    return total


def sample_table(text: str) -> dict[str, tuple[str, dict[tuple[str, Labels], float]]]:
    """family name → (type, {(sample name, sorted label pairs): value})."""
    families = {}
    for family in text_string_to_metric_families(text):
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}
        families[family.name] = (family.type, samples)
    return families
