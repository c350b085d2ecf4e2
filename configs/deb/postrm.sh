#!/bin/sh
# gwlbproxy .deb postrm: on purge remove the unit's enablement links and
# the state the service left (spool, logs). The user is kept: files it
# owned elsewhere must not end up with a reused uid.
set -e
if [ "$1" = "purge" ]; then
	rm -f /etc/systemd/system/multi-user.target.wants/gwlbproxy.service
	rm -rf /var/lib/gwlbproxy /var/log/gwlbproxy
fi
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || true
fi
exit 0
