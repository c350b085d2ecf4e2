# The README's two commands are `make demo` and `make test`.
GO      ?= go
BIN     ?= ./gwlbproxy
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)

.PHONY: build demo test vet fuzz bench configs clean

build:
	$(GO) build -trimpath -ldflags "-s -w -X main.version=$(VERSION)" -o $(BIN) ./cmd/gwlbproxy

# The whole data path in network namespaces (needs root).
demo: build
	$(BIN) demo

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...

# Unit, fuzz-seed, integration and (as root) end-to-end tests, under the race detector.
test: vet
	$(GO) test -race -timeout 30m ./...

configs:
	bash .ci/validate-configs.sh

fuzz:
	@for t in $$(grep -rl --include='*_test.go' '^func Fuzz' . | xargs -n1 dirname | sort -u); do \
	  for f in $$(grep -ho '^func Fuzz[A-Za-z0-9_]*' $$t/*_test.go | cut -d' ' -f2); do \
	    echo "== $$t $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime 30s $$t || exit 1; done; done

bench: build
	$(GO) test -run '^$$' -bench . -benchmem ./...

clean:
	rm -f $(BIN)
