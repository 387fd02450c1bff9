# One command set, used locally and (for `test`) by .ci/run.
.PHONY: install lint test bench

install:
	python3 -m pip install -e '.[test]'

lint:
	ruff check . && ruff format --check .

test:
	python3 -m pip install -e '.[test]' && python3 -m pytest -n auto

bench:
	python3 bench/core_bench.py && python3 bench/cache_bench.py && python3 bench/zmq_bench.py \
	  && python3 bench/drift_bench.py && python3 bench/http_bench.py
