"""The labelled corpus behind zdm's SQL rules: each label is a measurement on PostgreSQL.

tests/data/lint_corpus.yaml holds migration steps, each labelled unsafe or safe, and the rule ids
zdm reports for it. The label is not an opinion: ``test_the_label_is_what_postgresql_does`` runs
the step on tables with rows and reads what the server did (zdm.testing.measure: a new
relfilenode, rows read under a lock that blocks writes, a bulk write, an old-app statement that
fails, a step that fails, survives its rollback or outwaits the lock budget). Where zdm's rules and
the measurement disagree the corpus says so, and benchmarks/lint_corpus.py counts it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from zdm.risks import RULES, judge
from zdm.testing import ServerSource, fresh_postgres_database
from zdm.testing.measure import measure

CORPUS: dict[str, Any] = yaml.safe_load((Path(__file__).parent / "data" / "lint_corpus.yaml").read_text())
ENTRIES = CORPUS["statements"]


def _id(entry: dict[str, Any]) -> str:
    return entry["sql"][:70] + ("" if entry.get("transactional", True) else " (no transaction)")


@pytest.fixture(scope="module")
def corpus_url(zdm_postgres_server: ServerSource) -> Iterator[str]:
    assert zdm_postgres_server.url is not None
    with fresh_postgres_database(zdm_postgres_server.url) as url:
        yield url


def test_the_corpus_is_big_enough_and_names_known_rules() -> None:
    assert len(ENTRIES) >= 150
    assert sum(entry["unsafe"] for entry in ENTRIES) >= 70 and sum(not entry["unsafe"] for entry in ENTRIES) >= 70
    named = {rule for entry in ENTRIES for rule in entry["rules"]}
    assert named <= RULES.keys(), named - RULES.keys()
    assert RULES.keys() <= named, f"rules without a corpus entry: {sorted(RULES.keys() - named)}"


@pytest.mark.parametrize("entry", ENTRIES, ids=_id)
def test_zdm_reports_the_rules_the_corpus_names(entry: dict[str, Any]) -> None:
    found = judge([entry["sql"]], old_app_running=True, in_transaction=entry.get("transactional", True))
    assert [finding.rule for finding in found] == entry["rules"]


@pytest.mark.parametrize("entry", ENTRIES, ids=_id)
def test_the_label_is_what_postgresql_does(corpus_url: str, entry: dict[str, Any]) -> None:
    effect = measure(corpus_url, CORPUS["setup"], entry["sql"], CORPUS["old_app"], table=CORPUS["table"],
                     transactional=entry.get("transactional", True))
    assert effect.unsafe == entry["unsafe"], (effect.kinds(), effect)
