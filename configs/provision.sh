#!/bin/sh
# Provisions an appliance image from the release .deb. The one script both
# the Packer template (AMI build) and the boot test (cmd/internal/boottest,
# a Debian root file system booted under systemd-nspawn) run, so CI checks
# the provisioning the AMI gets.
#
#   provision.sh /path/to/gwlbproxy_<version>_<arch>.deb
#
# Run as root on Ubuntu 24.04/22.04 or Debian 12. It installs the .deb with
# apt (dependencies resolved from the configured archives; none when they
# are already present), enables the unit, and checks the installed unit with
# systemd-analyze verify. It never writes a live /etc/gwlbproxy/gwlbproxy.yaml:
# cloud-init (user data) or the operator does, and the unit stays skipped
# (ConditionPathExists=) until then. Environment:
#   GWLBPROXY_NO_APT_UPDATE=1  skip `apt-get update` (offline image builds
#                              whose dependencies are already installed)
set -eu

deb=${1:?usage: provision.sh /path/to/gwlbproxy_VERSION_ARCH.deb}
case "$deb" in
/*) ;;
*) deb="$(pwd)/$deb" ;; # apt needs a path, not a bare name
esac
[ -f "$deb" ] || { echo "provision.sh: $deb: no such file" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "provision.sh: must run as root" >&2; exit 1; }

export DEBIAN_FRONTEND=noninteractive
if [ "${GWLBPROXY_NO_APT_UPDATE:-}" != 1 ]; then
	apt-get update -qq
fi
apt-get install -y -qq --no-install-recommends "$deb"

# The .deb created the user and the files; enable the unit for boot. With
# no live config the condition keeps it from starting.
systemctl enable gwlbproxy.service
if command -v systemd-analyze >/dev/null 2>&1; then
	systemd-analyze verify /lib/systemd/system/gwlbproxy.service
fi
if [ -e /etc/gwlbproxy/gwlbproxy.yaml ]; then
	echo "provision.sh: note: /etc/gwlbproxy/gwlbproxy.yaml exists; an image should not ship one" >&2
fi
gwlbproxy version
echo "provision.sh: gwlbproxy installed and enabled"
