# Warren developer targets. `make install` is idempotent; every other target depends on it.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
PROTOS := $(wildcard proto/warren/api/v1/*.proto)
STAMP := .install.stamp

.PHONY: install proto test test-unit test-integration lint bench demo demo-stop clean

install: $(STAMP) proto

$(STAMP): pyproject.toml
	$(PIP) install --quiet --disable-pip-version-check --root-user-action=ignore -e '.[dev]'
	touch $(STAMP)

proto: $(STAMP)
	$(PYTHON) -m grpc_tools.protoc -Iproto --python_out=. --grpc_python_out=. --pyi_out=. $(PROTOS)

test: install
	$(PYTHON) -m pytest -q

test-unit: install
	$(PYTHON) -m pytest -q tests/unit

test-integration: install
	$(PYTHON) -m pytest -q tests/integration

lint: install
	$(PYTHON) -m ruff check warren tests bench cmd chaos
	lint-imports
	$(PYTHON) -m ruff format --check warren tests bench cmd chaos

bench: install
	$(PYTHON) -m bench.run

demo: install
	./cmd/demo.sh

demo-stop:
	./cmd/demo.sh stop

clean:
	rm -rf $(STAMP) build *.egg-info warren/api/v1/*_pb2*.py warren/api/v1/*_pb2.pyi
