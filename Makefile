# kmsfs: build, test, benchmark, fuzz, and a demo mount.
GO       ?= go
BIN      := bin/kmsfs
CIPHER   ?= ./demo.cipher
MNT      ?= ./demo.plain
FUZZTIME ?= 30s

.PHONY: build test test-deps bench bench-deps bench-rewrap fuzz fuzz-ci mount lint clean

build:
	$(GO) build -o $(BIN) ./cmd/kmsfs

# The integration tests mount for real: they need root or fuse3
# (fusermount3) and /dev/fuse, and skip without them. The aws provider's
# tests run against local-kms, a real KMS API server they start on
# 127.0.0.1: installed here with go install when missing, and required.
LOCAL_KMS_VERSION := v0.0.0-20260228092603-2a5e92d09ab6
LOCAL_KMS         := $(shell $(GO) env GOPATH)/bin/local-kms

test-deps:
	@test -x $(LOCAL_KMS) || $(GO) install github.com/nsmithuk/local-kms@$(LOCAL_KMS_VERSION)

test: test-deps
	$(GO) vet ./...
	KMSFS_LOCAL_KMS=$(LOCAL_KMS) KMSFS_REQUIRE_LOCAL_KMS=1 $(GO) test -race -count=1 -timeout 25m ./...

# The hot paths in isolation (chunk seal/open against raw AES-GCM, the DEK
# cache and index lookups, content I/O), then the filesystem comparison of
# docs/performance.md: plain disk, go-fuse's loopback, gocryptfs, securefs
# and kmsfs (encrypted names, and kmsfs-plainnames) mounted in turn, each
# on a fresh ext4, on the same workloads (about 12 minutes; QUICK=1 for
# small sizes, ROUNDS=N, BENCH_DIR=DIR on the disk to measure,
# BENCH_KMSFS_MOUNT_ARGS=--no-xattr, BENCH_KMSFS_BASE=BIN to measure an
# earlier kmsfs binary beside this one). It needs root (mounts,
# drop_caches); missing tools are installed first.
BENCH_GO ?= bin/bench-go.txt

bench: bench-deps
	@mkdir -p $(dir $(BENCH_GO))
	$(GO) test -run '^$$' -bench 'ChunkOverhead' -count 3 ./crypto | tee $(BENCH_GO)
	$(GO) test -run '^$$' -bench 'Cache|Index|AWSGenerateDataKey' -benchmem ./keymgr
	$(GO) test -run '^$$' -bench . -benchmem ./fs/...
	$(GO) run ./integration/bench -gobench $(BENCH_GO)

bench-deps:
	@command -v fio >/dev/null && command -v gocryptfs >/dev/null && command -v securefs >/dev/null || \
	  { apt-get update && apt-get install -y gocryptfs securefs fio; }
	@command -v loopback >/dev/null || test -x "$$($(GO) env GOPATH)/bin/loopback" || \
	  $(GO) install github.com/hanwen/go-fuse/v2/example/loopback@v2.12.1
	@command -v local-kms >/dev/null || test -x "$$($(GO) env GOPATH)/bin/local-kms" || \
	  echo "local-kms not installed: the kmsfs-aws row is skipped (see .ci for its go install)"

# Rewrap throughput (files/s) over 10,000 small files with 1, 4 and 16
# jobs, on the local provider (docs/performance.md, "Rewrap").
bench-rewrap:
	$(GO) test -run '^$$' -bench '^BenchmarkRewrap(AWS)?$$' -benchtime 3x -timeout 30m ./keymgr

# Runs every fuzz target of every package for FUZZTIME each.
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
	  for target in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "== $$pkg $$target ($(FUZZTIME))"; \
	    $(GO) test -run '^$$' -fuzz "^$$target$$" -fuzztime $(FUZZTIME) $$pkg; \
	  done; \
	done

# CI: every fuzz target for FUZZCI_TIME each (15 targets x 8 s: about
# 3 minutes with the builds). Packages and targets are found in the test
# sources, so no test binary (nor the integration package's TestMain) runs
# to list them. A run that fails without writing a failing input (Go's
# engine sometimes stalls on a loaded machine: "context deadline exceeded"
# at 0 execs/s) is run once more; a finding always fails.
FUZZCI_TIME ?= 8s
FUZZ_LOG    ?= /tmp/kmsfs-fuzz-ci.log
fuzz-ci:
	@set -e; for dir in $$(grep -rl --include='*_test.go' '^func Fuzz' . | xargs -n1 dirname | sort -u); do \
	  for target in $$(grep -h '^func Fuzz' $$dir/*_test.go | sed 's/^func \(Fuzz[A-Za-z0-9_]*\).*/\1/'); do \
	    echo "== $$dir $$target ($(FUZZCI_TIME))"; \
	    if ! $(GO) test -run '^$$' -fuzz "^$$target$$" -fuzztime $(FUZZCI_TIME) $$dir > $(FUZZ_LOG) 2>&1; then \
	      cat $(FUZZ_LOG); \
	      if grep -q 'Failing input written' $(FUZZ_LOG); then exit 1; fi; \
	      echo "== $$target: the fuzzing engine stalled without a finding; once more"; \
	      $(GO) test -run '^$$' -fuzz "^$$target$$" -fuzztime $(FUZZCI_TIME) $$dir; \
	    else tail -1 $(FUZZ_LOG); fi; \
	  done; \
	done

# Mounts $(CIPHER) at $(MNT), creating the cipher directory (and the local
# keyring) on first use. The passphrase is asked on the terminal, or taken
# from KMSFS_PASSPHRASE.
mount: build
	@if [ ! -f "$(CIPHER)/kmsfs.conf" ]; then echo "$(BIN) init $(CIPHER)"; $(BIN) init "$(CIPHER)"; fi
	mkdir -p "$(MNT)"
	$(BIN) mount "$(CIPHER)" "$(MNT)"
	@echo "the plain view is in $(MNT); unmount it with: $(BIN) unmount $(MNT)"

lint:
	@out="$$(gofmt -l .)"; if [ -n "$$out" ]; then echo "gofmt -l:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

clean:
	rm -rf bin
