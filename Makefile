# odoops: the two commands that matter are `make demo` and `make test` (see README.md).
export PREFECT_SERVER_ANALYTICS_ENABLED := false
UV := uv run --frozen

.PHONY: setup demo serve test lint bench clean

setup:
	@scripts/setup.sh

demo: setup  ## back up the bundled sample Odoo database on a throwaway PostgreSQL, show the catalog
	$(UV) python -m odoops.demo run

serve: setup  ## Prefect server (SQLite, 127.0.0.1:4200) with the odoops deployments and a worker
	$(UV) python -m odoops.demo serve

test: setup  ## the whole test suite on real PostgreSQL, sshd, S3 (moto server) and Prefect
	$(UV) ruff check .
	$(UV) python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile --durations=15

lint:
	$(UV) ruff check .

bench: setup  ## benchmarks on the large generated Odoo database (minutes; figures, not pass/fail)
	$(UV) python bench/bench_backup.py --reuse
	$(UV) python bench/bench_restore.py
	$(UV) python bench/bench_logs.py
	$(UV) python bench/bench_anonymize.py
	$(UV) python bench/bench_snapshot.py --reuse
	$(UV) python bench/bench_upgrade.py
	$(UV) python bench/bench_upgrade.py --mode restart
	$(UV) python bench/bench_docker_deploy.py
	$(UV) python bench/bench_fleet.py
	$(UV) python bench/bench_cli.py
	$(UV) python bench/bench_odoosh.py

clean:
	rm -rf .demo reports
