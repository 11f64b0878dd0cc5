# make demo  -- set up, make the demo data and model, score them with spark-submit
# make demo-train -- train a model on the demo data (conf/train.yaml), score the data with it, evaluate it
# make test  -- set up, fetch the connector jars, run the test suite (make test-fast: without the slow tests; make lint)
# make test-lts -- the same suite on the lts stack (pyspark 3.5, pyarrow 14, numpy 1.26, petastorm) in .venv-lts
# make jars  -- Spark's connectors (hadoop-aws + AWS SDK, delta-spark) and a test HDFS, from Maven Central
# make test-airflow -- Airflow 3 in its own .venv-airflow: the DAG imports, and runs end to end on local Spark
# make bench -- the cold whole-command benchmark (bench/README.md; make bench-plan shows what it runs)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export SPARK_LOCAL_IP ?= 127.0.0.1
export PYSPARK_PYTHON ?= $(abspath $(PY))
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: demo demo-train test test-fast test-airflow test-lts venv-lts jars jars-lts jvm-cache lint bench bench-plan bench-quick bench-tiny bench-cnn bench-soak bench-soak-plan \
	bench-sharing bench-connect bench-connect-tiny bench-connect-plan bench-ray-venv bench-warm bench-warm-quick bench-floor bench-jvm-profile bench-cpu clean venv

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt setup.py pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

data/demo/features data/demo/model: | venv
	$(PY) -m batchscore.demo_data --out data/demo

# The JVM class-data archive local Spark sessions start from (batchscore/session/jvm_cache.py): built once per
# JDK, pyspark and jar set (~1 min), kept in ~/.cache/batchscore; a no-op when it exists.
jvm-cache: venv
	$(PY) -m batchscore jvm-cache

demo: venv data/demo/features data/demo/model jvm-cache
	./spark-submit.sh --driver-memory 4g jobs/score.py --config conf/demo.yaml --quiet
	$(PY) -m jobs.evaluate --predictions data/demo/predictions --label defaulted --score default_probability

# train -> score -> evaluate: the model `batchscore train` exports is scored as is (conf/demo-trained.yaml)
demo-train: venv data/demo/features jvm-cache
	$(PY) -m batchscore train --config conf/train.yaml --quiet
	./spark-submit.sh --driver-memory 4g jobs/score.py --config conf/demo-trained.yaml --quiet
	$(PY) -m jobs.evaluate --predictions data/demo/trained_predictions --label defaulted --score probability

test: venv jars jvm-cache
	$(PY) -m pytest -q tests

test-fast: venv
	$(PY) -m pytest -q -m "not slow" tests

# Lint on the installed layout: the wheel's files installed into build/lint/site (as users get them),
# then ruff, the import-linter contracts (pyproject.toml: the one-way layers) and mypy (the package
# strict, tests/bench/dags looser). mypy names files under build/lint/site/batchscore/...: udfs/ and
# jobs/ there are the checkout's udfs/ and jobs/.
LINT_SITE := build/lint/site

lint: venv
	$(PY) -m ruff check .
	rm -rf $(LINT_SITE) && $(PY) -m pip install --quiet --no-deps --target $(LINT_SITE) .
	cd $(LINT_SITE) && $(abspath $(VENV))/bin/lint-imports --config $(abspath pyproject.toml)
	MYPYPATH=$(LINT_SITE) $(PY) -m mypy --config-file pyproject.toml -p batchscore
	MYPYPATH=$(LINT_SITE) $(PY) -m mypy --config-file pyproject.toml tests bench dags

# The cold whole-command benchmark (bench/README.md): every contender a fresh command, alone.
RAY_VENV := bench/.venv-ray

bench-ray-venv: $(RAY_VENV)/.installed

$(RAY_VENV)/.installed: bench/requirements-ray.txt
	test -x $(RAY_VENV)/bin/python || $(PYTHON) -m venv $(RAY_VENV)
	$(RAY_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(RAY_VENV)/bin/python -m pip install --quiet -r bench/requirements-ray.txt
	touch $@

# A failed Ray install does not stop the benchmark: the report then says why Ray was not run.
bench: venv jvm-cache
	-$(MAKE) --no-print-directory bench-ray-venv
	$(PY) -m bench.cold --profile full

bench-plan: venv jvm-cache
	$(PY) -m bench.cold --profile full --dry-run
	$(PY) -m bench.soak --dry-run

bench-quick: venv jvm-cache
	-$(MAKE) --no-print-directory bench-ray-venv
	$(PY) -m bench.cold --profile quick

bench-tiny: venv jvm-cache
	$(PY) -m bench.cold --profile tiny

bench-cnn: venv jvm-cache
	$(PY) -m bench.cold --profile cnn

bench-soak: venv jvm-cache
	$(PY) -m bench.soak

# a warm local Spark Connect server: bare TF cold first, then the server (untimed) and
# `batchscore score --remote` / predict_batch_udf as fresh client processes (bench/connect.py)
bench-connect: venv jvm-cache
	$(PY) -m bench.connect --profile full

bench-connect-tiny: venv jvm-cache
	$(PY) -m bench.connect --profile tiny

bench-connect-plan: venv
	$(PY) -m bench.connect --profile full --dry-run

# model.sharing executor vs worker on local[2], cold, each alone (bench/sharing.py; ~6 min)
bench-sharing: venv jvm-cache
	$(PY) -m bench.sharing

# The old warm harness (secondary figures: one shared JVM, warm workers).
bench-warm: venv jvm-cache
	$(PY) -m bench.run --profile full

bench-warm-quick: venv jvm-cache
	$(PY) -m bench.run --profile quick

bench-floor: venv jvm-cache
	$(PY) -m bench.floor

bench-jvm-profile: venv jvm-cache
	$(PY) -m bench.floor --only python_packed_array --jfr

bench-cpu: venv jvm-cache
	$(PY) -m bench.cpu --warm 2
	$(PY) -m bench.cpu --warm 12
	$(PY) -m bench.cpu --workload cnn --warm 3

# Connector jars: resolved by Maven from a pom (one profile per folder), one jars folder per
# Spark the project tests: jars/pom.xml -> jars/lib/ (the current stack, `make jars`),
# jars/pom-spark3.5.xml -> jars/lib-spark3.5/ (the lts stack, `make jars-lts`); batchscore/session/builder.py
# picks the folder of the installed pyspark (`jars_folder`).
# Cached: re-fetched only when the pom changes (Maven's own cache: build/m2).
JARS_LIB := jars/lib
LTS_JARS_LIB := jars/lib-spark3.5
MVN := mvn -B -q -Dmaven.repo.local=$(abspath build/m2)

# $(call fetch_jars,POM,FOLDER): each profile's runtime jars into FOLDER/<profile>, swapped in whole.
define fetch_jars
	rm -rf $(2).tmp && mkdir -p $(2).tmp
	$(MVN) -f $(1) -P spark dependency:copy-dependencies -DoutputDirectory=$(abspath $(2).tmp/spark)
	$(MVN) -f $(1) -P hdfs dependency:copy-dependencies -DoutputDirectory=$(abspath $(2).tmp/hdfs)
	rm -rf $(2) && mv $(2).tmp $(2)
	ls $(2)/spark $(2)/hdfs
	touch $(2)/.fetched
endef

jars: $(JARS_LIB)/.fetched

$(JARS_LIB)/.fetched: jars/pom.xml
	$(call fetch_jars,jars/pom.xml,$(JARS_LIB))

jars-lts: $(LTS_JARS_LIB)/.fetched

$(LTS_JARS_LIB)/.fetched: jars/pom-spark3.5.xml
	$(call fetch_jars,jars/pom-spark3.5.xml,$(LTS_JARS_LIB))

# The lts stack (requirements-lts.txt; ../shared/DESIGN.md "Stacks"): pyspark 3.5, pyarrow 14,
# numpy 1.26 and petastorm in .venv-lts, its own connector jars and JVM class-data archive,
# and the whole suite. Its Spark's Python workers run .venv-lts too (PYSPARK_PYTHON).
LTS_VENV := .venv-lts
LTS_PY := $(LTS_VENV)/bin/python

venv-lts: $(LTS_VENV)/.installed

$(LTS_VENV)/.installed: requirements-lts.txt setup.py pyproject.toml
	test -x $(LTS_PY) || $(PYTHON) -m venv $(LTS_VENV)
	$(LTS_PY) -m pip install --quiet --upgrade pip
	$(LTS_PY) -m pip install --quiet -r requirements-lts.txt
	$(LTS_PY) -m pip install --quiet --no-deps -e .
	touch $@

test-lts: export PYSPARK_PYTHON := $(abspath $(LTS_PY))
test-lts: venv-lts jars-lts
	$(LTS_PY) -m batchscore jvm-cache
	$(LTS_PY) -m pytest -q tests

# Airflow 3 lives in its own virtualenv: its pins clash with the job's. The DAG's Spark job
# still runs in .venv (through ./spark-submit.sh), so both venvs and the jars are needed.
AIRFLOW_VENV := .venv-airflow
AIRFLOW_PY := $(AIRFLOW_VENV)/bin/python

# requirements-airflow.lock: the whole resolved set (pip freeze), so every install is the same.
$(AIRFLOW_VENV)/.installed: requirements-airflow.txt requirements-airflow.lock
	test -x $(AIRFLOW_PY) || $(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_PY) -m pip install --quiet --upgrade pip
	$(AIRFLOW_PY) -m pip install --quiet -r requirements-airflow.txt -c requirements-airflow.lock
	touch $@

test-airflow: venv $(AIRFLOW_VENV)/.installed
	$(AIRFLOW_PY) -m pytest -q -p no:cacheprovider --noconftest tests/ops/test_dag_airflow.py

clean:
	rm -rf build data/demo/predictions data/demo/predictions_quarantine data/demo/trained_model \
		data/demo/trained_model_checkpoints data/demo/trained_predictions data/demo/trained_predictions_quarantine
