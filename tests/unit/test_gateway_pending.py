"""Intended and applied gateway state kept apart: a change is recorded as pending before
nginx reloads, as applied after; what an interrupted change left is said, with how to
finish it."""

from __future__ import annotations

from facts.host_state import is_watched
from rules.gateway import (
    APPLY_PENDING_DATA,
    CANARY_STATE,
    DRAIN_STATE,
    GATEWAY_PENDING,
    HAND,
    ROLLOUT,
    GatewayState,
    parse_canary_state,
    parse_drained,
    parse_pending,
    pending_report,
    render_pending,
)


def test_the_pending_change_reads_back() -> None:
    intended = GatewayState.of("promoted", {"b3": HAND, "a1": ROLLOUT})
    text = render_pending(intended)
    read = parse_pending(text)
    assert read == intended
    assert read is not None and read.drained_hosts == {"a1": ROLLOUT, "b3": HAND}
    # the same shapes as the applied records: one reader each
    assert parse_canary_state(text) == "promoted" and parse_drained(text) == {
        "a1": ROLLOUT, "b3": HAND}
    assert parse_pending(render_pending(GatewayState.of("off", {}))) == GatewayState("off")


def test_no_pending_change_when_nothing_or_garbage_is_recorded() -> None:
    for text in (None, "", "[", "[]", '{"phase": "sideways"}', '{"hosts": ["a1"]}', "null"):
        assert parse_pending(text) is None, text


def test_an_interrupted_change_is_reported_with_what_is_applied_and_how_to_finish() -> None:
    applied = GatewayState.of("running", {"b3": HAND})
    report = pending_report(GatewayState.of("promoted", {"b3": HAND}), applied)
    assert "a gateway change is pending, recorded but never applied" in report
    assert "canary phase promoted (applied: running)" in report
    assert "drained hosts" not in report  # unchanged: not listed
    assert f"--data {APPLY_PENDING_DATA}=apply" in report
    drained = pending_report(GatewayState.of("running", {"b3": HAND, "a1": ROLLOUT}), applied)
    assert ("drained hosts a1 (by a rollout batch), b3 (by hand) (applied: b3 (by hand))"
            in drained)
    assert "(applied: none)" in pending_report(applied, GatewayState.of("running", {}))


def test_the_state_files_are_ones_the_state_read_covers() -> None:
    assert all(is_watched(p) for p in (GATEWAY_PENDING, CANARY_STATE, DRAIN_STATE))
