#!/bin/sh
# sbom.sh OUT: writes the CycloneDX SBOM (JSON) of cmd/gwlbproxy for the
# GOOS/GOARCH/CGO_ENABLED in the environment, with cyclonedx-gomod run as
# a Go tool (pinned in go.mod). Called by `make release`.
set -eu
out=$1
src=$(pwd)
if [ -f .git ]; then
	# A git worktree (.git is a file): cyclonedx-gomod reads the module
	# version through go-git, which cannot resolve a worktree's refs. It
	# describes a local clone of the committed tree instead.
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	git clone -q "$src" "$tmp/src"
	src=$tmp/src
fi
go tool cyclonedx-gomod app -json -licenses -main cmd/gwlbproxy -output "$out" "$src"
