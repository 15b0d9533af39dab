# Warren developer targets. `make install` is idempotent; every other target depends on it.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
PROTOS := $(wildcard proto/warren/api/v1/*.proto)
# containerd's v1 API (our subset, ADR 5): top-level `containerd.*` modules in a git-ignored dir
# that warren/runtime/containerd/api.py puts on sys.path.
CONTAINERD_PROTOS := $(shell find proto/containerd -name '*.proto' | sort)
CONTAINERD_GEN := warren/runtime/containerd/_gen
STAMP := .install.stamp
# mypy-protobuf's protoc plugins (a dev dependency), found beside this Python even if PATH lacks them.
PY_SCRIPTS = $(shell $(PYTHON) -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
MYPY_PLUGINS = --plugin=protoc-gen-mypy=$(PY_SCRIPTS)/protoc-gen-mypy --plugin=protoc-gen-mypy_grpc=$(PY_SCRIPTS)/protoc-gen-mypy_grpc

.PHONY: install deps proto bytecode deb test test-unit test-integration lint bench bench-scale chaos fuzz fuzz-api fuzz-raft demo demo-stop clean

install: $(STAMP) proto bytecode

deps:
	./cmd/install-deps.sh

$(STAMP): pyproject.toml
	$(PIP) install --quiet --disable-pip-version-check --root-user-action=ignore -e '.[dev]'
	touch $(STAMP)

proto: $(STAMP)
	$(PYTHON) -m grpc_tools.protoc -Iproto --python_out=. --grpc_python_out=. \
		$(MYPY_PLUGINS) --mypy_out=quiet:. --mypy_grpc_out=quiet:. $(PROTOS)
	mkdir -p $(CONTAINERD_GEN)
	$(PYTHON) -m grpc_tools.protoc -Iproto --python_out=$(CONTAINERD_GEN) --grpc_python_out=$(CONTAINERD_GEN) \
		$(MYPY_PLUGINS) --mypy_out=quiet:$(CONTAINERD_GEN) --mypy_grpc_out=quiet:$(CONTAINERD_GEN) $(CONTAINERD_PROTOS)
	find $(CONTAINERD_GEN)/containerd -name __pycache__ -prune -o -type d -exec touch {}/__init__.py \;

# Byte-compile Warren once. An editable install compiles nothing, and where PYTHONDONTWRITEBYTECODE
# is set (as on these machines) no import writes a .pyc either: every process would compile each
# module it imports again, 0.4 s more CPU per manager start and 0.1 s per CLI command. A stale
# .pyc is never used (Python checks the source's mtime), so an edited file is only slower.
bytecode: proto
	$(PYTHON) -m compileall -q -j 0 warren > /dev/null

# dist/warren_VERSION_ARCH.deb: a venv under /opt/warren, /usr/bin/warren, the systemd units (ADR 64).
deb: proto
	./cmd/build-deb.sh

# The default suite runs on pytest-xdist workers (ADR 41): most integration tests wait on
# processes, not CPU, so more workers than cores pay. A test file stays on one worker (its
# module-scoped cluster or containerd starts once), in collection order (integration first).
# Tests marked `serial` measure time or load: they run afterwards, alone, in one process.
# TEST_WORKERS=0 runs the first phase in one process too. A worker once hung in os.fork()
# inside gRPC's fork handler; Warren now turns those handlers off (warren/__init__.py, ADR 41).
TEST_WORKERS ?= 4
PARALLEL = -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not serial"

test: install deps
	$(PYTHON) -m pytest -q --durations=25 $(PARALLEL)
	$(PYTHON) -m pytest -q --durations=10 -m serial

# Every test that starts processes, containerd or namespaces is marked `integration`
# (tests/unit/test_markers.py checks it): the rest run in-process, in seconds.
test-unit: install
	$(PYTHON) -m pytest -q -m "not integration"

test-integration: install deps
	$(PYTHON) -m pytest -q $(PARALLEL) tests/integration
	$(PYTHON) -m pytest -q -m serial tests/integration

lint: install
	$(PYTHON) -m ruff check warren tests bench cmd chaos
	lint-imports
	$(PYTHON) -m ruff format --check warren tests bench cmd chaos
	$(PYTHON) -m mypy

bench: install deps
	$(PYTHON) -m bench.run

# Issue #15's load runs (bench/bench_scale.py), long, so not part of `make bench`: 3 managers,
# `warren sim` nodes, a real Prometheus (Debian's `prometheus`). SCALE=s1 (100 nodes, 10,000
# tasks), s2 (1,000 nodes, 100,000 tasks) or small (20 nodes, 2,000 tasks).
SCALE ?= s1
bench-scale: install deps
	$(PYTHON) -m bench.bench_scale --set $(SCALE)

# The chaos suite (issue #4, chaos/README.md): real managers and workers in network namespaces.
SEED ?= 1
ROUNDS ?= 5
chaos: install deps
	$(PYTHON) -m chaos.run --seed $(SEED) --rounds $(ROUNDS)

# The long fuzz run (docs/fuzzing.md): every API method of a real manager, FUZZ_EXAMPLES
# examples each, fresh randomness every run (FUZZ_SEED=N replays one). The default suite runs
# the same tests briefly and derandomized. Another abuser is one more target in FUZZ_TARGETS.
FUZZ_EXAMPLES ?= 100
FUZZ_SEED ?=
FUZZ_PYTEST = FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PYTHON) -m pytest -q -p no:cacheprovider --timeout 0 \
	$(if $(FUZZ_SEED),--hypothesis-seed=$(FUZZ_SEED))
FUZZ_TARGETS := fuzz-api fuzz-raft
fuzz: $(FUZZ_TARGETS)

fuzz-api: install
	$(FUZZ_PYTEST) tests/fuzz/test_api_fuzz.py

# The Raft-port abuser (ADR 20) against three real managers, each attack for RAFT_ABUSE_SECONDS.
RAFT_ABUSE_SECONDS ?= 30
RAFT_ABUSE_INTENSITY ?= 3
fuzz-raft: install
	RAFT_ABUSE_SECONDS=$(RAFT_ABUSE_SECONDS) RAFT_ABUSE_INTENSITY=$(RAFT_ABUSE_INTENSITY) \
		$(PYTHON) -m pytest -q -p no:cacheprovider --timeout 0 tests/integration/test_raft_port_abuse.py

demo: install deps
	$(PYTHON) cmd/demo.py

demo-stop:
	$(PYTHON) cmd/demo.py stop

clean:
	rm -rf $(STAMP) build dist *.egg-info warren/api/v1/*_pb2*.py warren/api/v1/*_pb2*.pyi $(CONTAINERD_GEN)
