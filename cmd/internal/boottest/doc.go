// Package boottest boots the appliance image as deployed: a Debian root
// file system (mmdebstrap) provisioned by configs/provision.sh from the
// release .deb, the same script the Packer template runs, booted with
// systemd-nspawn inside a network namespace joined to the GWLB simulator
// and an internet server. The test drives the real unit through systemctl
// (readiness, health, traffic, records reaching the CloudWatch Logs fake
// that runs outside the container, `systemctl reload` putting a changed
// policy in force in the same process and refusing an invalid one, drain
// on stop, watchdog restart, a broken config failing once) and prints
// `systemd-analyze security`.
//
// It needs root, mmdebstrap, systemd-nspawn (systemd-container) and
// nsenter, and skips with a message otherwise. The root file system is
// built once and cached as a tarball (GWLBPROXY_BOOTTEST_CACHE, default
// $TMPDIR/gwlbproxy-boottest-cache); each run unpacks a fresh copy. The
// .deb comes from GWLBPROXY_DEB (CI passes the one `make release` built)
// or is built with `make release` for the host architecture.
package boottest
