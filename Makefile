# nudge — one front door. `make help` lists every target.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STACK  := $(PY) scripts/stack.py
SETUP_STAMP := $(VENV)/.installed
JARS_STAMP  := build/jars/.fetched
# nudge's Flink operator (jobs/java/), compiled against the PyFlink wheel's own jars.
OPERATOR_JAR := build/jars/flink/nudge-flink-operators.jar
OPERATOR_SRC := $(shell find jobs/java -name '*.java')

# Demo knobs: `make demo EVENTS=20000`
EVENTS ?= 5000
SEED   ?= 7
BENCH_EVENTS ?= 600000

.PHONY: help setup jars lock up down ps logs topics clean test test-unit test-pipeline \
        test-integration test-faults lint demo produce triggers profiles bench submit stop resume status backfill

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | \
	  awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-17s\033[0m %s\n", $$1, $$2}'

setup: $(SETUP_STAMP) ## Create .venv (Python 3.11) with the pinned dependencies
$(SETUP_STAMP): requirements.txt constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -c constraints.txt
	@touch $@

jars: $(JARS_STAMP) $(OPERATOR_JAR) ## Fetch the Kafka connector and broker jars (Maven Central); build nudge's operator jar
$(JARS_STAMP): pom.xml
	@command -v mvn >/dev/null || { echo "error: mvn not found; install Maven (apt-get install maven)"; exit 1; }
	rm -rf build/jars
	mvn -q -B -f pom.xml package
	@touch $@

$(OPERATOR_JAR): $(OPERATOR_SRC) $(JARS_STAMP) $(SETUP_STAMP)
	@command -v javac >/dev/null || { echo "error: javac not found; install a JDK 17 (apt-get install openjdk-17-jdk-headless)"; exit 1; }
	rm -rf build/classes
	flink=$$($(PY) -c 'import os, pyflink; print(os.path.dirname(pyflink.__file__))') && \
	  javac --release 11 -Xlint:all -Werror -cp "$$flink/lib/*:$$flink/opt/*" -d build/classes $(OPERATOR_SRC)
	jar cf $@ -C build/classes .

lock: setup ## Re-record the exact installed versions in constraints.txt
	$(PY) -m pip freeze --exclude-editable > constraints.txt

up: setup jars ## Start Kafka (9092), Redis (6379) and Flink (8081); create the topics
	$(STACK) up

down: ## Stop the local stack
	@test -x $(PY) && $(STACK) down || true

ps: ## Show which services of the stack answer
	@$(STACK) ps

logs: ## Show the tail of each service's log (make logs S=kafka)
	@$(STACK) logs $(S)

topics: setup ## Create the contract's topics on the running broker
	$(STACK) topics

clean: ## Stop the stack and delete its state (var/)
	@if test -x $(PY); then $(STACK) clean; else rm -rf var; fi

test: setup jars up ## Run the tests: unit, pipeline, integration, fuzzing (cluster faults: test-faults)
	$(PY) -m pytest tests -m "not cluster_faults"

test-unit: setup ## Run the unit tests only (pure Python, no JVM)
	$(PY) -m pytest tests/unit

test-pipeline: setup jars ## Run the minicluster pipeline tests only
	$(PY) -m pytest tests/pipeline

test-integration: setup jars up ## Run the integration tests only (Kafka, Redis, Flink)
	$(PY) -m pytest tests/integration

test-faults: setup jars up ## Fault injection (TaskManager/JobManager/Kafka/Redis) and fuzzing
	$(PY) -m pytest -s tests/faults

lint: setup ## ruff and mypy
	$(PY) -m ruff check .
	$(PY) -m mypy config udfs jobs scripts

produce: setup up ## Send synthetic events to the events topic (make produce EVENTS=100000)
	$(PY) -m jobs.generate --count $(EVENTS) --seed $(SEED)

triggers: setup jars up ## Run the triggers job on a local minicluster until Ctrl-C
	$(PY) -m jobs.triggers

profiles: setup jars up ## Run the profiles job on a local minicluster until Ctrl-C
	$(PY) -m jobs.profiles

demo: setup jars up ## End to end: generate traffic, run the jobs, print what happened
	$(PY) -m jobs.demo --events $(EVENTS) --seed $(SEED)

JOB ?= triggers
OPS := $(PY) scripts/ops.py

submit: setup jars ## Submit a job to the Flink cluster of `make up` or $$FLINK_REST (JOB=triggers|profiles)
	$(OPS) submit $(JOB)

stop: setup ## Stop a job with a savepoint and print its path (JOB=triggers|profiles)
	$(OPS) stop $(JOB)

resume: setup jars ## Resume a job from its latest savepoint, or SAVEPOINT=… (JOB=…)
	$(OPS) resume $(JOB) $(if $(SAVEPOINT),--savepoint $(SAVEPOINT))

status: setup ## Health of both jobs from the Flink REST API and Kafka; exit 0 = healthy
	@$(OPS) status

backfill: setup jars up ## Historic events through a job, bounded, then a report (FILE=… or FROM_TOPIC=… SINCE=… [UNTIL=…]; JOB=triggers|profiles|all)
	$(PY) scripts/backfill.py --job $(JOB) $(if $(FILE),--file $(FILE)) \
	  $(if $(FROM_TOPIC),--from-topic $(FROM_TOPIC)) $(if $(SINCE),--since $(SINCE)) \
	  $(if $(UNTIL),--until $(UNTIL)) $(if $(PROGRESS),--progress $(PROGRESS)) \
	  $(if $(REPORT),--report $(REPORT))

bench: setup jars up ## Throughput, latency, memory of both jobs beside a JVM-only reference (BENCH_EVENTS=…)
	$(PY) scripts/bench.py --events $(BENCH_EVENTS) --parallelism 1,2 --max-seconds 150 \
	  --live-seconds 300
