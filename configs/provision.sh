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
#   GWLBPROXY_SURICATA=1       also install Suricata 7 on the decryption
#                              mirror (issue 19): Ubuntu 24.04's package,
#                              Debian 12's from bookworm-backports (the suite
#                              is added to apt's sources). Ubuntu 22.04 is
#                              refused: its Suricata 6 has no --include.
#                              Installs the include and the systemd drop-in
#                              the .deb carries (/usr/share/gwlbproxy/
#                              suricata), rotation by rename, read access
#                              for the gwlbproxy user to /var/log/suricata
#                              (a default ACL, so rotated and new files stay
#                              readable), checks the configuration with
#                              `suricata -T` and enables suricata.service.
#                              The stack turns on proxy.mirror and
#                              logship.ids_alerts (IdsEnabled).
set -eu

deb=${1:?usage: provision.sh /path/to/gwlbproxy_VERSION_ARCH.deb}
case "$deb" in
/*) ;;
*) deb="$(pwd)/$deb" ;; # apt needs a path, not a bare name
esac
[ -f "$deb" ] || { echo "provision.sh: $deb: no such file" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "provision.sh: must run as root" >&2; exit 1; }

# Suricata 7 or later: the drop-in loads the include with --include (7.0).
suricata7() {
	command -v suricata >/dev/null 2>&1 || return 1
	v=$(suricata -V 2>/dev/null | sed -n 's/.*version \([0-9][0-9]*\)\..*/\1/p')
	[ -n "$v" ] && [ "$v" -ge 7 ]
}
# Refuse a Suricata request this system cannot honour before installing
# anything.
suricata=${GWLBPROXY_SURICATA:-0}
case "$suricata" in
0 | 1) ;;
*) echo "provision.sh: GWLBPROXY_SURICATA=$suricata: want 1 or 0" >&2; exit 1 ;;
esac
if [ "$suricata" = 1 ]; then
	. /etc/os-release
	release="${ID:-unknown}:${VERSION_ID:-unknown}"
	case "$release" in
	ubuntu:24.04 | debian:12) ;;
	ubuntu:22.04)
		suricata7 || {
			echo "provision.sh: GWLBPROXY_SURICATA=1 on Ubuntu 22.04: its Suricata 6.0 has no --include, which the drop-in needs; build the image from Ubuntu 24.04 (Packer's default) or install Suricata 7 first" >&2
			exit 1
		}
		;;
	*)
		suricata7 || {
			echo "provision.sh: GWLBPROXY_SURICATA=1: $release is not supported (Ubuntu 24.04, Debian 12, or Suricata 7 already installed)" >&2
			exit 1
		}
		;;
	esac
fi

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

[ "$suricata" = 1 ] || exit 0

# --- Suricata on the decryption mirror (issue 19) ---
share=/usr/share/gwlbproxy/suricata
for f in gwlbproxy.yaml gwlbproxy-suricata.conf logrotate; do
	[ -f "$share/$f" ] || { echo "provision.sh: $share/$f missing: the .deb predates Suricata support" >&2; exit 1; }
done
if ! suricata7; then
	case "$release" in
	ubuntu:24.04)
		apt-get install -y -qq suricata acl
		;;
	debian:12)
		# Debian 12 ships Suricata 6; 7 is in bookworm-backports.
		if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
			cat >/etc/apt/sources.list.d/gwlbproxy-bookworm-backports.sources <<-EOS
			Types: deb
			URIs: http://deb.debian.org/debian
			Suites: bookworm-backports
			Components: main
			Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
			EOS
		fi
		apt-get update -qq
		apt-get install -y -qq -t bookworm-backports suricata
		apt-get install -y -qq acl
		;;
	esac
	suricata7 || { echo "provision.sh: installed Suricata is not 7 or later: $(suricata -V 2>&1)" >&2; exit 1; }
fi
command -v setfacl >/dev/null 2>&1 || apt-get install -y -qq acl

install -D -m 0644 "$share/gwlbproxy.yaml" /etc/suricata/gwlbproxy.yaml
install -D -m 0644 "$share/gwlbproxy-suricata.conf" /etc/systemd/system/suricata.service.d/gwlbproxy.conf
install -D -m 0644 "$share/logrotate" /etc/logrotate.d/suricata

# The service user reads eve.json (logship.ids_alerts): a default ACL on
# the log directory covers the files Suricata creates after a rotation;
# the access ACL the ones already there. Its position file lives in
# /var/lib/gwlbproxy (the unit's StateDirectory), writable already.
install -d -m 0755 /var/log/suricata
setfacl -m g:gwlbproxy:rx -m d:g:gwlbproxy:r /var/log/suricata
find /var/log/suricata -maxdepth 1 -type f -exec setfacl -m g:gwlbproxy:r {} +

# The packaged configuration plus the include must load. -T fails without
# any rule, and the image carries none yet (suricata-update or the
# operator adds them to /var/lib/suricata/rules/suricata.rules): test with
# one rule of the kind the mirror is for.
t=$(mktemp -d)
echo 'alert http any any -> any any (msg:"gwlbproxy provisioning check"; http.response_body; content:"gwlbproxy"; sid:9999901; rev:1;)' >"$t/check.rules"
if ! suricata -T -c /etc/suricata/suricata.yaml --include /etc/suricata/gwlbproxy.yaml -S "$t/check.rules" -l "$t" >"$t/T.log" 2>&1; then
	cat "$t/T.log" >&2
	rm -rf "$t"
	echo "provision.sh: suricata -T with /etc/suricata/gwlbproxy.yaml failed" >&2
	exit 1
fi
rm -rf "$t"
if ! ls /var/lib/suricata/rules/*.rules >/dev/null 2>&1; then
	echo "provision.sh: note: no Suricata rules in /var/lib/suricata/rules yet (run suricata-update, or add your own)" >&2
fi
# Debian's package may have started it on the host's default interface.
systemctl daemon-reload 2>/dev/null || true
systemctl enable suricata.service
if command -v systemd-analyze >/dev/null 2>&1; then
	# --man=no: the packaged unit names man pages a minimal image lacks.
	systemd-analyze verify --man=no /lib/systemd/system/suricata.service
fi
suricata -V
echo "provision.sh: suricata installed and enabled on the decryption mirror"
