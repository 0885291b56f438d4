"""The canary proves itself in the run that routes to it: every canary host active in the run
and its proof (weights against the manifest, a completion per replica) completed in it."""

from __future__ import annotations

from pyinfra.api import Config, Inventory, State
from pyinfra.context import ctx_host, ctx_state

from operations.checks import completed, completed_hosts
from rules.canary_verdict import canary_proof


def test_every_canary_host_active_and_proved_passes() -> None:
    proof = canary_proof(["c1", "c2"], active={"gw", "c1", "c2", "s1"}, proved={"c1", "c2"})
    assert proof.passed
    assert proof.render() == "every canary host proved itself in this run"


def test_the_gateway_alone_is_refused_naming_the_canary_hosts() -> None:
    # `--limit <gateway>`: no canary host in the run, so none failed, and none proved itself
    proof = canary_proof(["c2", "c1"], active={"gw"}, proved=set())
    assert not proof.passed
    assert proof.absent == ("c1", "c2") and proof.unproved == ()
    assert "not in this run (left out by --limit, or failed): c1, c2" in proof.render()
    assert proof.render().startswith("the routing is unchanged")


def test_one_canary_host_left_out_or_short_of_its_proof_is_refused() -> None:
    left_out = canary_proof(["c1", "c2"], active={"gw", "c1"}, proved={"c1"})
    assert not left_out.passed and left_out.absent == ("c2",)
    # active in the run, but its proof did not complete (a proof never started, say)
    short = canary_proof(["c1", "c2"], active={"gw", "c1", "c2"}, proved={"c1"})
    assert not short.passed and short.unproved == ("c2",) and short.absent == ()
    assert "did not complete their proof in this run: c2" in short.render()
    # proved, then failed later in the run: no longer active
    failed = canary_proof(["c1"], active={"gw"}, proved={"c1"})
    assert not failed.passed and failed.absent == ("c1",)


def test_no_canary_host_is_no_proof() -> None:
    proof = canary_proof([], active={"gw"}, proved=set())
    assert not proof.passed and "there is no canary host" in proof.render()


def test_a_passing_check_records_what_its_host_completed_in_this_run() -> None:
    state = State(Inventory((["c1", "c2"], {})), Config())
    other = State(Inventory((["c1"], {})), Config())
    verdict = completed("canary proof", "checked")
    with ctx_state.use(state), ctx_host.use(state.inventory.get_host("c1")):
        assert verdict() == (None, "checked")
    assert completed_hosts(state, "canary proof") == {"c1"}
    assert completed_hosts(state, "something else") == set()
    assert completed_hosts(other, "canary proof") == set()  # another run knows nothing of it
