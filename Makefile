# docpipe: the two set-up commands are `make demo` and `make test` (see README.md).
# Everything native the project needs is installed by the scripts under scripts/ into .cache/.

CARGO ?= cargo
PDFIUM_LIB_FILE := .cache/pdfium/libpdfium.so
MOTO_SERVER := .cache/moto-venv/bin/moto_server

.PHONY: demo test setup fmt lint

## Run the main job on the embedded default: fixtures, tiny model, CPU, local output folder.
demo: setup
	$(CARGO) run --bin docpipe -- run pipelines/demo.toml

## Run the whole test suite (this is what .ci/run calls).
test: setup
	$(CARGO) test --workspace

setup: $(PDFIUM_LIB_FILE) $(MOTO_SERVER)

$(PDFIUM_LIB_FILE): scripts/fetch-pdfium.sh
	bash scripts/fetch-pdfium.sh

## The S3 server the storage tests run against (moto, pinned; see scripts/setup-moto.sh).
$(MOTO_SERVER): scripts/setup-moto.sh
	bash scripts/setup-moto.sh

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
