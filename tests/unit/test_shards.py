"""One drift audit merged from the shards' audits (rules/shards.py)."""

from __future__ import annotations

import json

import pytest

from rules.manifest import Drift, audit_json
from rules.shards import ShardError, merge_audits


def test_the_merge_is_every_shards_hosts_with_their_drift() -> None:
    a = audit_json({"gpu-01": [], "gpu-02": [Drift("packages", "cuda 12.1 -> 12.2", "x")]})
    b = audit_json({"gpu-03": [Drift("files", "/etc/docker/daemon.json changed")]})
    merged = merge_audits([("a/audit.json", a), ("b/audit.json", b)])
    assert merged == {"gpu-01": [],
                      "gpu-02": [Drift("packages", "cuda 12.1 -> 12.2", "x")],
                      "gpu-03": [Drift("files", "/etc/docker/daemon.json changed", None)]}
    # Written back, it is the audit one controller would have written for all three.
    assert json.loads(audit_json(merged)) == {**json.loads(a), **json.loads(b)}


def test_a_host_in_two_shards_is_refused_naming_both() -> None:
    one = audit_json({"gpu-01": []})
    with pytest.raises(ShardError, match=r"^host gpu-01 is in two shards: a/audit.json and "
                                         r"b/audit.json; each host belongs to exactly one "
                                         r"shard$"):
        merge_audits([("a/audit.json", one), ("b/audit.json", one)])


@pytest.mark.parametrize("text, why", [
    ("{", "a/audit.json: not an audit (JSON: Expecting property name enclosed in double "
          "quotes, line 1)"),
    ("[]", "a/audit.json: not an audit (a JSON object of host -> drift)"),
    ('{"gpu-01": [{"area": 1}]}', "a/audit.json: host gpu-01: drift must be a list of "
                                  "{area, what, since}"),
])
def test_a_document_that_is_not_an_audit_is_refused_in_one_line(text: str, why: str) -> None:
    with pytest.raises(ShardError) as error:
        merge_audits([("a/audit.json", text)])
    assert str(error.value) == why
