#!/bin/sh
# gwlbproxy .deb postinst: the service user, ownership of the config
# directory, and systemd/sysctl/modules refresh when systemd is running.
# Enabling the unit is left to the image's provisioning (configs/provision.sh).
set -e

if [ "$1" = "configure" ] || [ "$1" = "1" ] || [ "$1" = "2" ]; then
	if ! getent group gwlbproxy >/dev/null; then
		groupadd --system gwlbproxy
	fi
	if ! getent passwd gwlbproxy >/dev/null; then
		useradd --system --gid gwlbproxy --no-create-home \
			--home-dir /var/lib/gwlbproxy --shell /usr/sbin/nologin \
			--comment "gwlbproxy appliance" gwlbproxy
	fi
	# The service reads its config (and a files-backed CA key installed
	# with group gwlbproxy) through the group; nobody else may list it.
	chown root:gwlbproxy /etc/gwlbproxy
	chmod 0750 /etc/gwlbproxy
fi

if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || true
	systemctl restart systemd-sysctl.service >/dev/null 2>&1 || true
	systemctl restart systemd-modules-load.service >/dev/null 2>&1 || true
fi
exit 0
