# The README's two commands are `make demo` and `make test`.
GO      ?= go
BIN     ?= ./gwlbproxy
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
COMMIT  ?= $(shell git rev-parse HEAD 2>/dev/null)
# Debian versions must start with a digit (see the script).
DEB_VERSION ?= $(shell sh configs/deb/version.sh '$(VERSION)')
BUILDINFO := github.com/gwlbproxy/gwlbproxy/cmd/internal/buildinfo
LDFLAGS := -s -w -X $(BUILDINFO).version=$(VERSION) -X $(BUILDINFO).commit=$(COMMIT)
DIST    ?= dist
ARCHES  ?= amd64 arm64

.PHONY: build demo test vet fuzz bench configs clean release

build:
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/gwlbproxy

# Release artefacts in $(DIST) (built, never published): per arch a static
# binary, a .deb (nfpm, a Go tool pinned in go.mod) and a CycloneDX SBOM
# (cyclonedx-gomod, also a Go tool); SHA256SUMS over all of them.
release:
	rm -rf $(DIST) && mkdir -p $(DIST)
	@for a in $(ARCHES); do \
	  echo "== linux/$$a $(VERSION) (deb $(DEB_VERSION))"; \
	  CGO_ENABLED=0 GOOS=linux GOARCH=$$a $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(DIST)/gwlbproxy-linux-$$a ./cmd/gwlbproxy || exit 1; \
	  mkdir -p .release-stage && cp $(DIST)/gwlbproxy-linux-$$a .release-stage/gwlbproxy || exit 1; \
	  VERSION=$(DEB_VERSION) ARCH=$$a \
	    $(GO) tool nfpm package --config configs/deb/nfpm.yaml --packager deb --target $(DIST)/gwlbproxy_$(DEB_VERSION)_$$a.deb || exit 1; \
	  sh configs/deb/sbom.sh $(DIST)/gwlbproxy-linux-$$a.cdx.json linux $$a || exit 1; \
	done
	rm -rf .release-stage
	cd $(DIST) && sha256sum gwlbproxy-linux-* gwlbproxy_*.deb > SHA256SUMS.tmp && mv SHA256SUMS.tmp SHA256SUMS && cat SHA256SUMS

# The whole data path in network namespaces (needs root).
demo: build
	$(BIN) demo

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...

# Unit, fuzz-seed, integration and (as root) end-to-end tests, under the race detector.
test: vet
	$(GO) test -race -timeout 30m ./...
	# the end-to-end and steering suites again on the userspace tunnel
	# datapath (the first pass runs the default, eBPF where the kernel allows)
	GWLBPROXY_TEST_DATAPATH=userspace $(GO) test -race -count=1 -timeout 30m ./cmd/internal/e2e/ ./tunnel/steer/

configs:
	bash .ci/validate-configs.sh

fuzz:
	@for t in $$(grep -rl --include='*_test.go' '^func Fuzz' . | xargs -n1 dirname | sort -u); do \
	  for f in $$(grep -ho '^func Fuzz[A-Za-z0-9_]*' $$t/*_test.go | cut -d' ' -f2); do \
	    echo "== $$t $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime 30s $$t || exit 1; done; done

bench: build
	$(GO) test -run '^$$' -bench . -benchmem ./...

clean:
	rm -rf $(BIN) $(DIST) .release-stage
