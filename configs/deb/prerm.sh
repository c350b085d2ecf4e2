#!/bin/sh
# gwlbproxy .deb prerm: stop the service before its binary goes away (on
# upgrade too: the new postinst does not restart it, a new binary takes
# effect at the next start, as README says; a policy change in the config
# needs only `systemctl reload`, other keys a restart).
set -e
if [ -d /run/systemd/system ] && [ "$1" = "remove" ]; then
	systemctl stop gwlbproxy.service >/dev/null 2>&1 || true
fi
exit 0
