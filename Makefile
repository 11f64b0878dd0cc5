# make demo  -- set up, make the demo data and model, score them with spark-submit
# make test  -- set up, run the test suite (make test-fast: without the slow tests; make lint)
# make bench -- the cold whole-command benchmark (bench/README.md; make bench-plan shows what it runs)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export SPARK_LOCAL_IP ?= 127.0.0.1
export PYSPARK_PYTHON ?= $(abspath $(PY))
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: demo test test-fast lint bench bench-plan bench-quick bench-tiny bench-cnn bench-soak bench-soak-plan bench-ray-venv \
	bench-warm bench-warm-quick bench-floor bench-jvm-profile bench-cpu clean venv

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt setup.py pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

data/demo/features data/demo/model: | venv
	$(PY) -m jobs.demo_data --out data/demo

demo: venv data/demo/features data/demo/model
	./spark-submit.sh --driver-memory 4g jobs/score.py --config conf/demo.yaml --quiet
	$(PY) -m jobs.evaluate --predictions data/demo/predictions --label defaulted --score default_probability

test: venv
	$(PY) -m pytest -q tests

test-fast: venv
	$(PY) -m pytest -q -m "not slow" tests

lint: venv
	$(PY) -m ruff check .
	rm -rf build/typecheck && mkdir -p build/typecheck/batchscore
	cd build/typecheck/batchscore && for f in ../../../batchscore/*.py; do ln -s $$f .; done && ln -s ../../../jobs jobs && ln -s ../../../udfs udfs
	cd build/typecheck && ../../$(PY) -m mypy --config-file ../../pyproject.toml batchscore

# The cold whole-command benchmark (bench/README.md): every contender a fresh command, alone.
RAY_VENV := bench/.venv-ray

bench-ray-venv: $(RAY_VENV)/.installed

$(RAY_VENV)/.installed: bench/requirements-ray.txt
	test -x $(RAY_VENV)/bin/python || $(PYTHON) -m venv $(RAY_VENV)
	$(RAY_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(RAY_VENV)/bin/python -m pip install --quiet -r bench/requirements-ray.txt
	touch $@

# A failed Ray install does not stop the benchmark: the report then says why Ray was not run.
bench: venv
	-$(MAKE) --no-print-directory bench-ray-venv
	$(PY) -m bench.cold --profile full

bench-plan: venv
	$(PY) -m bench.cold --profile full --dry-run
	$(PY) -m bench.soak --dry-run

bench-quick: venv
	-$(MAKE) --no-print-directory bench-ray-venv
	$(PY) -m bench.cold --profile quick

bench-tiny: venv
	$(PY) -m bench.cold --profile tiny

bench-cnn: venv
	$(PY) -m bench.cold --profile cnn

bench-soak: venv
	$(PY) -m bench.soak

# The old warm harness (secondary figures: one shared JVM, warm workers).
bench-warm: venv
	$(PY) -m bench.run --profile full

bench-warm-quick: venv
	$(PY) -m bench.run --profile quick

bench-floor: venv
	$(PY) -m bench.floor

bench-jvm-profile: venv
	$(PY) -m bench.floor --only python_packed_array --jfr

bench-cpu: venv
	$(PY) -m bench.cpu --warm 2
	$(PY) -m bench.cpu --warm 12
	$(PY) -m bench.cpu --workload cnn --warm 3

clean:
	rm -rf build data/demo/predictions data/demo/predictions_quarantine
