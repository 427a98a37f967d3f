# kmsfs: build, test, benchmark, fuzz, and a demo mount.
GO       ?= go
BIN      := bin/kmsfs
CIPHER   ?= ./demo.cipher
MNT      ?= ./demo.plain
FUZZTIME ?= 30s

.PHONY: build test bench fuzz mount lint clean

build:
	$(GO) build -o $(BIN) ./cmd/kmsfs

# The integration tests mount for real: they need root or fuse3
# (fusermount3) and /dev/fuse, and skip without them.
test:
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 25m ./...

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./crypto ./keymgr ./fs/...

# Runs every fuzz target of every package for FUZZTIME each.
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
	  for target in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "== $$pkg $$target ($(FUZZTIME))"; \
	    $(GO) test -run '^$$' -fuzz "^$$target$$" -fuzztime $(FUZZTIME) $$pkg; \
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
