#!/bin/sh
# The monitoring configuration's own validators on this controller, for the unit tests:
# promtool (Prometheus) and amtool (Alertmanager), taken from the same Debian packages the
# monitoring host installs, unpacked into .tools/ (no service is installed or started here).
set -eu
DEST="$(cd "$(dirname "$0")/.." && pwd)/.tools"
[ -x "$DEST/bin/promtool" ] && [ -x "$DEST/bin/amtool" ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "gpufleet: promtool and amtool are needed for the unit tests; install Prometheus'" >&2
  echo "gpufleet: and Alertmanager's packages, or put both in $DEST/bin" >&2
  exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "gpufleet: unpacking promtool and amtool from Debian's packages into .tools/bin"
# apt-get download writes as _apt where it can; a temporary folder it can enter
chmod 755 "$work"
( cd "$work" && apt-get download -q prometheus prometheus-alertmanager >/dev/null 2>&1 ) || {
  apt-get update -qq && ( cd "$work" && apt-get download -q prometheus prometheus-alertmanager ); }
mkdir -p "$DEST/bin"
for deb in "$work"/*.deb; do
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$work" ./usr/bin/promtool ./usr/bin/amtool \
    2>/dev/null || true
done
install -m 0755 "$work/usr/bin/promtool" "$work/usr/bin/amtool" "$DEST/bin/"
"$DEST/bin/promtool" --version 2>&1 | head -1
