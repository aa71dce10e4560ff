# One venv at the repo root holds the package (editable), the function's and the tests' dependencies and
# the SAM CLI. `install` is idempotent: it reinstalls only when pyproject.toml changed.
PYTHON ?= python3
export SAM_CLI_TELEMETRY := 0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PG_CLUSTER = $(shell ls /etc/postgresql 2>/dev/null | head -n 1)

.PHONY: install demo stack test test-unit test-integration test-e2e lint format typecheck build validate bench clean postgres \
	invoke test-invoke lambda-image

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# make demo R2=1: the same job R2's way (R2's rules, its notification on a Cloudflare Queue, the poller).
demo: install
	PYTHONPATH=functions $(BIN)/python -m tests.e2e.demo $(if $(R2),--r2)

# make stack [DATABASE_URL=…] [STACK_ARGS="--sweep-every 10s --sweep-older-than 1m"]: the embedded stack in the
# foreground for a real training to point at (moto S3 + SQS with the notification, the real handler on the queue, the
# sweeper on a short schedule); prints the trainer's environment, then each outcome. Ctrl+C stops it.
stack: install
	PYTHONPATH=functions $(BIN)/python -m tests.e2e.stack $(if $(DATABASE_URL),--database-url '$(DATABASE_URL)') $(STACK_ARGS)

test: install
	$(BIN)/python -m pytest

test-unit: install
	$(BIN)/python -m pytest tests/unit

test-integration: install
	$(BIN)/python -m pytest tests/integration

test-e2e: install
	$(BIN)/python -m pytest tests/e2e

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

validate: install
	$(BIN)/sam validate --lint

# sam build, then the build compiled to bytecode: Lambda's file system is read-only, so without .pyc files every
# cold start compiles every module it imports. unchecked-hash: used whatever the files' times become in the zip.
# (Compiled for this machine's Python; a PythonRuntime of another version just ignores them.)
SAM_BUILD = $(BIN)/sam build && $(BIN)/python -m compileall -q -j 0 --invalidation-mode unchecked-hash .aws-sam/build

build: install validate
	$(SAM_BUILD)

# Every figure of issue 10 against its baseline (tests/bench/): the table, and bench/results.json. Needs PostgreSQL;
# runs sam build first when the build is missing or older than the sources. make bench BENCH_ARGS=--quick: a smoke run.
bench: install postgres
	PYTHONPATH=functions $(BIN)/python -m tests.bench $(BENCH_ARGS)

# --- sam local invoke, for real (tests/invoke; needs Docker) ----------------------------------------------
# The built artifact, rebuilt when a source of it changed (make build always rebuilds).
BUILT := .aws-sam/build/template.yaml
BUILD_SOURCES := template.yaml samconfig.toml $(shell find functions layers/ckpt -type f \( -name '*.py' -o \
	-name '*.txt' -o -name '*.json' -o -name '*.mako' -o -name '*.pem' -o -name '*.typed' \) \
	-not -path '*/__pycache__/*' -not -path '*.egg-info/*' 2>/dev/null)

$(BUILT): $(BUILD_SOURCES) | install
	$(BIN)/sam validate --lint
	$(SAM_BUILD)
	touch $@

# The Lambda base image sam local invoke builds on: the official one when Docker can pull it, else a stand-in
# built from Debian's packages and PyPI (root, debootstrap). A no-op when the image is present.
lambda-image: install
	$(BIN)/python -m tests.invoke.image

# make invoke EVENT=events/s3-object-created.json [FUNCTION=…]: the local stack of events/env.json, the attempt the
# event names staged, the real sam local invoke, then the job's validation_results.
invoke: lambda-image $(BUILT)
	@test -n "$(EVENT)" || { echo "usage: make invoke EVENT=events/<file>.json" >&2; exit 2; }
	PYTHONPATH=functions $(BIN)/python -m tests.invoke $(EVENT) $(if $(FUNCTION),--function $(FUNCTION))

# Every promotion event through sam local invoke; pytest collects tests/invoke only when it is named.
test-invoke: lambda-image $(BUILT)
	$(BIN)/python -m pytest tests/invoke

# Start the local PostgreSQL if it is not accepting connections (CI and fresh machines), and give it TLS with
# Debian's snakeoil certificate: the database TLS tests (sslmode require/verify-*) need a server that offers it.
PSQL := psql -h 127.0.0.1 -U postgres -d postgres -qAt
postgres:
	@pg_isready -q -h 127.0.0.1 -p 5432 || pg_ctlcluster --skip-systemctl-redirect $(PG_CLUSTER) main start
	@for i in $$(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done; \
		pg_isready -q -h 127.0.0.1 -p 5432 || { echo "PostgreSQL is not accepting connections on 127.0.0.1:5432" >&2; exit 1; }
	@[ "$$($(PSQL) -c 'SHOW ssl')" = on ] || { \
		[ -f /etc/ssl/certs/ssl-cert-snakeoil.pem ] || make-ssl-cert generate-default-snakeoil; \
		$(PSQL) -c "ALTER SYSTEM SET ssl_cert_file = '/etc/ssl/certs/ssl-cert-snakeoil.pem'" \
			-c "ALTER SYSTEM SET ssl_key_file = '/etc/ssl/private/ssl-cert-snakeoil.key'" \
			-c "ALTER SYSTEM SET ssl = on" -c "SELECT pg_reload_conf()" >/dev/null; \
		for i in $$(seq 1 30); do [ "$$($(PSQL) -c 'SHOW ssl')" = on ] && exit 0; sleep 1; done; \
		echo "PostgreSQL did not turn TLS on" >&2; exit 1; }

clean:
	rm -rf .aws-sam .demo .stack .pytest_cache .ruff_cache .mypy_cache .lambda-image
