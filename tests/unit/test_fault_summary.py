"""The fault summary's one-line causes, on real apt, dpkg and Docker error text (the source of
each text is named beside it), and the summary block itself."""

from __future__ import annotations

from rules.faults import HostFault, cause_of, lost_before_any_step, render_summary


def test_gpufleets_own_lock_wait_reads_back_as_one_line() -> None:
    # operations/apt_lock.py's giving-up lines, as tests/unit/test_apt_faults.py runs them
    cause = cause_of([
        "[@docker/h1] gpufleet: gave up after 20 s waiting for the apt/dpkg lock, held by "
        "apt-get (pid 4321: apt-get install -y /tmp/sleeper.deb).",
        "[@docker/h1] gpufleet: nothing was changed by this step. Let that process finish",
    ])
    assert cause.what == ("waited 20 s for the apt/dpkg lock, held by apt-get (pid 4321: "
                          "apt-get install -y /tmp/sleeper.deb)")
    assert "lock_timeout_seconds" in cause.todo


# --- the one-line causes -------------------------------------------------------------------------
def test_apts_lock_error_names_the_holder() -> None:
    # apt 2.6 (Debian 12), apt-pkg/contrib/fileutl.cc GetLock + apt-pkg/deb/debsystem.cc
    cause = cause_of([
        "[@ssh/gpu-01] E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by "
        "process 1234 (unattended-upgr)",
        "[@ssh/gpu-01] E: Unable to acquire the dpkg frontend lock (/var/lib/dpkg/lock-frontend),"
        " is another process using it?",
        "[@ssh/gpu-01] Error: executed 0 commands",
    ])
    assert cause.what == ("another process holds apt's lock /var/lib/dpkg/lock-frontend: "
                          "unattended-upgr (pid 1234)")
    assert "ps -fp 1234" in cause.todo and "lock_timeout_seconds" in cause.todo


def test_a_dead_mirror_gives_the_url_and_the_error() -> None:
    # apt 2.6 apt-get install, apt-private/private-download.cc ("Failed to fetch %s  %s")
    cause = cause_of([
        "E: Failed to fetch http://gpufleet-sim-repo/cuda/repos/debian12/x86_64/./"
        "cuda-toolkit-12-1_12.1.1-1_amd64.deb  Could not connect to gpufleet-sim-repo:80 "
        "(172.18.0.2), connection timed out",
        "E: Unable to fetch some archives, maybe run apt-get update or try with --fix-missing?",
    ])
    assert cause.what == (
        "apt could not fetch http://gpufleet-sim-repo/cuda/repos/debian12/x86_64/./"
        "cuda-toolkit-12-1_12.1.1-1_amd64.deb: Could not connect to gpufleet-sim-repo:80 "
        "(172.18.0.2), connection timed out")
    assert "reaches gpufleet-sim-repo" in cause.todo


def test_an_interrupted_dpkg_says_the_command_to_run() -> None:
    # apt 2.6, apt-pkg/deb/debsystem.cc (debSystem::Lock, CheckUpdates)
    cause = cause_of(["E: dpkg was interrupted, you must manually run 'dpkg --configure -a' "
                      "to correct the problem. "])
    assert "interrupted" in cause.what and "dpkg --configure -a" in cause.todo


def test_a_host_that_does_not_answer() -> None:
    # Docker 20.10 `docker exec` on a paused container (what the simulator's lost host says);
    # pyinfra 3.10 logs the output, then "Error: could not load fact: ..."
    cause = cause_of([
        "\x1b[1m[\x1b[1m@docker/gpufleet-faults-h100x8\x1b[0m]\x1b[0m \x1b[31mError response "
        "from daemon: Container 3f2a is paused, unpause the container before exec\x1b[0m",
        "[@docker/gpufleet-faults-h100x8] Error: could not load fact: GpuHostProbe",
    ])
    assert cause.what == ("the host did not answer: Error response from daemon: Container 3f2a "
                          "is paused, unpause the container before exec")
    assert "reachable" in cause.todo


def test_a_known_cause_in_a_commands_output_shown_with_vvv() -> None:
    # with -vvv, pyinfra 3.10 prints a failed fact's output at info level, not as an error
    cause = cause_of(["[@docker/c] Error: could not load fact: GpuHostProbe"],
                     ["[@docker/c] Loaded fact x", "[@docker/c] Error response from daemon: "
                      "Container c is paused, unpause the container before exec"])
    assert cause.what.startswith("the host did not answer: Error response from daemon")
    assert cause_of(["[h] gpufleet: the driver is not running"], ["[h] noise"]).what == \
        "the driver is not running"


def test_a_host_that_cannot_be_reached() -> None:
    # pyinfra 3.10 connectors/ssh.py (raise_connect_error) on a host that refuses SSH, and the
    # Docker connector on a container that is gone (it tries to run an image of that name)
    ssh = cause_of(["[gpu-07] Could not connect ([Errno 111] Connection refused)"])
    assert ssh.what == "the host did not answer: Could not connect ([Errno 111] Connection " \
                       "refused)"
    docker = cause_of(["[@docker/x] Local command failed: docker run -d x tail -f /dev/null\n"
                       "Unable to find image 'x:latest' locally\ndocker: Error response from "
                       "daemon: pull access denied for x\n\nRun 'docker run --help' for more "
                       "information"])
    assert docker.what == "the host did not answer: Error response from daemon: pull access " \
                          "denied for x"


def test_a_full_disk_is_a_full_disk_not_a_lost_host() -> None:
    # test_faults' weights push into a full volume: Docker 20.10's daemon refuses `docker cp`
    # (which would read as a host that does not answer), then gpufleet's own line (rules/
    # disk_space.py) says where, how much, and what to do
    cause = cause_of([
        "[@docker/b] Command IO error: Error response from daemon: Error processing tar "
        "file(exit status 1): write /srv/small/m/x.safetensors.gpufleet-partial: no space left "
        "on device",
        "[@docker/b] gpufleet: no space left on device while writing the weights on @docker/b: "
        "/srv/small/m is on tmpfs (mounted on /srv/small), 8.4 MB free now (the check before "
        "writing expected 11.5 MB: the files to push); the partial files were removed, the "
        "previous weights are untouched. Free space there, or set settings.weights_path to a "
        "filesystem with room",
    ])
    assert cause.what == (
        "no space left on device while writing the weights on @docker/b: /srv/small/m is on "
        "tmpfs (mounted on /srv/small), 8.4 MB free now (the check before writing expected "
        "11.5 MB: the files to push); the partial files were removed, the previous weights are "
        "untouched")
    assert cause.todo.startswith("free space on that filesystem (df -h, du -sh), or set "
                                 "settings.weights_path to one with room")
    # any other step on a full disk: apt 2.6 (apt-pkg/contrib/fileutl.cc), also behind a
    # "Failed to fetch" (its advice would be about the network)
    apt = cause_of(["E: Failed to fetch http://deb.debian.org/x.deb  Write error - write (28: "
                    "No space left on device)"])
    assert apt.what.startswith("a disk of the host is full: E: Failed to fetch")
    assert "df -h" in apt.todo


def test_an_unknown_failure_keeps_the_most_telling_line() -> None:
    cause = cause_of(["[h] some tool: warming up", "[h] gpufleet: the GPU test container "
                      "failed: load library failed: libnvidia-ml.so.1", "[h] Error: executed "
                      "2 commands"])
    assert cause.what == "the GPU test container failed: load library failed: libnvidia-ml.so.1"
    assert cause_of([]).what == "no error line was printed"


def test_the_summary_names_each_failed_host() -> None:
    lost = HostFault("@docker/c", "reading the host, before any change (the probe)",
                     cause_of(["Error response from daemon: No such container: c"]))
    text = render_summary([lost], 3)
    assert text.splitlines()[0] == ("--> gpufleet fault summary: 1 of 3 host(s) failed; the "
                                    "others were not affected")
    assert "    @docker/c\n      step:  reading the host" in text
    assert "      cause: the host did not answer: Error response from daemon: No such container: c" \
        in text
    assert render_summary([], 3) == ""
    assert "not affected" not in render_summary([lost], 1).splitlines()[0]


def test_a_host_lost_at_the_probe_is_judged_by_the_lines_before_it_failed() -> None:
    # pyinfra 3.10 with -vvv: the daemon's error went straight to the terminal, and the
    # preflight report gpufleet printed afterwards (from an empty probe) is not the cause
    lines = ["[@docker/c] Error: could not load fact: facts.probe.GpuHostProbe weights_path=/x",
             "[@docker/c] gpufleet: 3 error(s), 3 warning(s), 0 note(s)"]
    cause = lost_before_any_step(lines)
    assert cause.what == ("the host did not answer: could not load fact: "
                          "facts.probe.GpuHostProbe weights_path=/x")
    assert "reachable" in cause.todo
    paused = lost_before_any_step(["[c] Error response from daemon: Container c is paused", *lines])
    assert paused.what == "the host did not answer: Error response from daemon: Container c is " \
                          "paused"


def test_a_refusal_names_its_first_reason() -> None:
    # deploys/preflight.py's refusal message, as pyinfra prints the failed step's lines
    cause = cause_of([
        "[@docker/a] preflight refused this host; nothing was changed:",
        "[@docker/a]   [multinode-node-refused] node b of replica 0 of group r1 (a, b) cannot "
        "take part: the replica is refused",
        "[@docker/a] See the report above; settings.preflight.downgrade_errors accepts them.",
    ])
    assert cause.what == ("preflight refused the host, nothing was changed: "
                          "[multinode-node-refused] node b of replica 0 of group r1 (a, b) "
                          "cannot take part: the replica is refused")
    assert "downgrade_errors" in cause.todo


def test_a_failed_check_gives_its_finding_and_what_it_found() -> None:
    # deploys/inference.py's engine check (rules.findings.refusal_message)
    cause = cause_of([
        "[@docker/a] deepseek-r1-distill-qwen-7b is not served:",
        "[@docker/a]   ERROR [engine-not-serving] replica 0 (gpufleet-inference-engine-0, port "
        "8000) does not serve deepseek-r1-distill-qwen-7b",
        "[@docker/a]       found:    not healthy after 480 s (URLError: Connection refused)",
        "[@docker/a]       fix:      docker logs gpufleet-inference-engine-0",
        "[@docker/a] Error: executed 0 commands",
    ])
    assert cause.what == ("[engine-not-serving] replica 0 (gpufleet-inference-engine-0, port "
                          "8000) does not serve deepseek-r1-distill-qwen-7b (not healthy after "
                          "480 s (URLError: Connection refused))")
