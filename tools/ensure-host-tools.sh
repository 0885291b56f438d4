#!/bin/sh
# Make sure this controller has what the simulator needs: a running Docker engine,
# debootstrap (to build the base image without a registry), docker-compose, ip, and a
# headless browser (Debian's chromium) that opens `gpufleet report`'s page in the tests.
# On Debian/Ubuntu as root it installs and starts them; elsewhere it says what is missing.
# It also raises the kernel's inotify instance limit, which many simulated hosts outgrow.
set -eu

missing=""
command -v docker >/dev/null 2>&1 || missing="$missing docker.io"
command -v dockerd >/dev/null 2>&1 || missing="$missing docker.io"
command -v debootstrap >/dev/null 2>&1 || missing="$missing debootstrap"
command -v docker-compose >/dev/null 2>&1 || missing="$missing docker-compose"
# ip: the unit tests run the probe's inter-node network reading on this machine
command -v ip >/dev/null 2>&1 || missing="$missing iproute2"
# chromium: tests/unit/test_report.py renders the fleet report and screenshots it
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
missing=$(echo "$missing" | tr ' ' '\n' | sort -u | tr '\n' ' ' | sed 's/^ *//; s/ *$//')

if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "gpufleet: installing $missing (Debian/Ubuntu packages)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing ca-certificates >/dev/null
  else
    echo "gpufleet: missing on this machine: $missing" >&2
    echo "gpufleet: install them (Debian/Ubuntu: apt-get install -y $missing), then retry." >&2
    exit 1
  fi
fi

if ! docker info >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    echo "gpufleet: the Docker engine is not running or not reachable by $(id -un)." >&2
    echo "gpufleet: start it (systemctl start docker) or add yourself to the docker group." >&2
    exit 1
  fi
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl start docker
  else
    echo "gpufleet: starting dockerd in the background (log: /var/log/gpufleet-dockerd.log)"
    nohup dockerd >/var/log/gpufleet-dockerd.log 2>&1 &
  fi
  i=0
  until docker info >/dev/null 2>&1; do
    i=$((i + 1))
    if [ "$i" -gt 60 ]; then
      echo "gpufleet: dockerd did not come up in 60 s; see /var/log/gpufleet-dockerd.log" >&2
      exit 1
    fi
    sleep 1
  done
fi

# Each simulated host runs systemd, and after the converge dockerd, each holding inotify
# instances: the kernel's default of 128 per user runs out at about 15 hosts (the tests start
# their own copies), and systemd in the next host never finishes booting. kind raises the same
# limit for its nodes. Keep in step with INOTIFY_INSTANCES in tests/sim/simctl.py.
want=1024
have=$(cat /proc/sys/fs/inotify/max_user_instances 2>/dev/null || echo "$want")
if [ "$have" -lt "$want" ]; then
  if [ "$(id -u)" = 0 ] && sysctl -qw fs.inotify.max_user_instances="$want" 2>/dev/null; then
    echo "gpufleet: raised fs.inotify.max_user_instances from $have to $want (simulated hosts run systemd)"
  else
    echo "gpufleet: warning: fs.inotify.max_user_instances is $have; more than about 15" \
         "simulated hosts need $want (as root: sysctl -w fs.inotify.max_user_instances=$want)" >&2
  fi
fi
