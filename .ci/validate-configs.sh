#!/usr/bin/env bash
# Validates the deployment artefacts in configs/ offline:
#   1. Packer 1.9.5 built from its Go module (the last release that bundles
#                            the amazon builder, so no plugin download), cached
#                            by version; TestPackerValidate runs fmt -check,
#                            validate -syntax-only and a full validate of
#                            configs/packer/gwlbproxy.pkr.hcl with it
#   2. systemd-analyze verify configs/gwlbproxy.service (in a scratch root, so
#                            the ExecStart binary and unit dependencies resolve)
#   3. go test ./configs/... with CFNSPEC pointing at @aws-cdk/cfnspec's
#                            CloudFormation resource specification, GWLBPROXY_BIN
#                            at a fresh build for `gwlbproxy check` and
#                            `cfn-signal --dry-run`, PACKER_BIN at Packer
#
# Needs from the network only: the Go module proxy (Packer's modules, once
# per machine) and the npm package @aws-cdk/cfnspec, installed once.
# Building Packer the first time takes minutes (measured 17m40s wall, 4m15s
# CPU on a loaded 2-vCPU VM, mostly module downloads); reruns reuse the
# cached binary. Idempotent; safe to rerun.
#
# Environment:
#   CFNSPEC_DIR   where @aws-cdk/cfnspec is installed (default
#                 ${TMPDIR:-/tmp}/gwlbproxy-cfnspec; never inside the repo)
#   CFNSPEC       use this specification.json instead of installing one
#   PACKER_BIN    use this Packer instead of building 1.9.5
#   GWLBPROXY_CI_CACHE  where built tools are cached (default
#                 ${XDG_CACHE_HOME:-$HOME/.cache}/gwlbproxy-ci)
set -euo pipefail

cd "$(dirname "$0")/.."
root=$PWD
cfnspec_version=2.72.1 # spec 117.0.0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

step() { printf '\n== %s\n' "$*"; }

# ---------------------------------------------------------------- tools
step "tools"
packer_version=v1.9.5 # the last release bundling the amazon builder (1.2.1)
if [[ -z "${PACKER_BIN:-}" ]]; then
	cache=${GWLBPROXY_CI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gwlbproxy-ci}/packer@$packer_version
	PACKER_BIN=$cache/packer
	if [[ ! -x "$PACKER_BIN" ]]; then
		echo "building packer $packer_version from its Go module into $cache (once per machine)"
		mkdir -p "$cache"
		tmpbin=$(mktemp -d "$cache/build.XXXXXX")
		(cd "$tmpbin" && GOBIN="$tmpbin" GOFLAGS= go install "github.com/hashicorp/packer@$packer_version")
		mv "$tmpbin/packer" "$PACKER_BIN"
		rm -rf "$tmpbin"
	fi
fi
export PACKER_BIN
"$PACKER_BIN" version

if [[ -z "${CFNSPEC:-}" ]]; then
	dir=${CFNSPEC_DIR:-${TMPDIR:-/tmp}/gwlbproxy-cfnspec}
	CFNSPEC=$dir/node_modules/@aws-cdk/cfnspec/spec/specification.json
	if [[ ! -s "$CFNSPEC" ]]; then
		echo "installing @aws-cdk/cfnspec@$cfnspec_version (npm) into $dir"
		mkdir -p "$dir"
		npm install --prefix "$dir" --no-audit --no-fund --no-save --loglevel=error \
			"@aws-cdk/cfnspec@$cfnspec_version" >/dev/null
	fi
fi
export CFNSPEC
echo "CFNSPEC=$CFNSPEC"

# ---------------------------------------------------------------- binary
# The unit needs a binary to point at; the user data config is fed to its
# `check` command, and its cfn-signal line to `cfn-signal --dry-run`.
step "build gwlbproxy"
bin=$work/gwlbproxy
if go build -o "$bin" ./cmd/gwlbproxy 2>"$work/build.log"; then
	echo "built $bin"
	export GWLBPROXY_BIN=$bin
else
	echo "WARNING: go build ./cmd/gwlbproxy failed; using a placeholder binary, config not checked by the binary:"
	sed 's/^/  /' "$work/build.log"
	printf '#!/bin/sh\nexit 0\n' >"$bin"
	chmod 755 "$bin"
fi

# ---------------------------------------------------------------- systemd
step "systemd-analyze verify configs/gwlbproxy.service"
if command -v systemd-analyze >/dev/null && [[ -d /usr/lib/systemd/system ]]; then
	sysroot=$work/root
	mkdir -p "$sysroot/usr/lib/systemd" "$sysroot/etc/systemd/system" "$sysroot/usr/bin"
	cp -a /usr/lib/systemd/system "$sysroot/usr/lib/systemd/"
	cp "$bin" "$sysroot/usr/bin/gwlbproxy"
	# ExecReload=/bin/kill (procps, a dependency of the .deb).
	mkdir -p "$sysroot/bin"
	cp /bin/kill "$sysroot/bin/kill"
	verify() { # verify <unit file>: prints findings; systemd exits 0 on many of them
		cp "$1" "$sysroot/etc/systemd/system/gwlbproxy.service"
		systemd-analyze verify --man=no --root="$sysroot" gwlbproxy.service 2>&1 || echo "(exit status $?)"
	}
	# A broken copy must produce findings, or the check itself is inert.
	sed 's/^Type=notify$/Type=notifyy/' configs/gwlbproxy.service >"$work/broken.service"
	if [[ -z "$(verify "$work/broken.service")" ]]; then
		echo "systemd-analyze verify reports nothing for a broken unit; cannot validate" >&2
		exit 1
	fi
	out=$(verify configs/gwlbproxy.service)
	if [[ -n "$out" ]]; then
		printf '%s\n' "$out" >&2
		exit 1
	fi
	echo "ok"
	systemd-analyze security --offline=true --root="$sysroot" gwlbproxy.service 2>/dev/null | tail -1 || true
else
	echo "systemd-analyze unavailable: skipped (TestUnit still checks the unit's keys)"
fi

# ---------------------------------------------------------------- go test
step "go test ./configs/... (CloudFormation spec, IAM exact actions, Packer validate, unit/AMI/template contracts)"
go test -count=1 -v ./configs/...
echo
echo "configs validated"
