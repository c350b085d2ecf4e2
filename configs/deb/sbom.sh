#!/bin/sh
# sbom.sh OUT GOOS GOARCH: writes the CycloneDX SBOM (JSON) of cmd/gwlbproxy
# as built for GOOS/GOARCH with CGO_ENABLED=0, by cyclonedx-gomod (a Go
# tool pinned in go.mod). Called by `make release`. The tool itself is built
# for the host: `GOARCH=arm64 go tool ...` would build it for arm64.
set -eu
out=$1 goos=$2 goarch=$3
src=$(pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
env -u GOOS -u GOARCH go build -o "$tmp/cyclonedx-gomod" github.com/CycloneDX/cyclonedx-gomod/cmd/cyclonedx-gomod
if [ -f .git ]; then
	# A git worktree (.git is a file): cyclonedx-gomod reads the module
	# version through go-git, which cannot resolve a worktree's refs (nor
	# a --shared clone's alternates). It describes a plain local clone of
	# the committed tree instead.
	git clone -q "$src" "$tmp/src"
	src=$tmp/src
fi
CGO_ENABLED=0 GOOS=$goos GOARCH=$goarch "$tmp/cyclonedx-gomod" app -json -licenses -main cmd/gwlbproxy -output "$out" "$src"
