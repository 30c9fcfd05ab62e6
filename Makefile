# Dockyard: the two commands a newcomer needs are `make run` and `make test`.
.PHONY: run stop test unit lint bench install lock compose-smoke ha ha-stop ha-drill

run:            ## install what is missing, start everything, serve the API on 127.0.0.1:8000
	@bash scripts/run.sh

stop:           ## stop what `make run` started (and nothing else)
	@bash scripts/stop.sh

test:           ## install, start services, run the whole suite
	@bash scripts/test.sh

unit:           ## unit tests only (no services needed)
	@bash scripts/bootstrap.sh && .venv/bin/pytest tests/unit

lint:
	@.venv/bin/ruff check .

install:
	@bash scripts/bootstrap.sh

lock:           ## re-resolve requirements.lock and requirements-test.lock from pyproject.toml (uv)
	@bash scripts/lock.sh

bench:          ## benchmarks (see docs/benchmarks.md)
	@bash scripts/bench.sh

compose-smoke:  ## build the images, bring docker-compose.yml up, provision through it, tear down
	@bash scripts/bootstrap.sh && bash scripts/services.sh up && bash scripts/compose-smoke.sh

ha:             ## a Redis primary, replica and three sentinels, two of each Dockyard process (see README)
	@bash scripts/ha.sh up

ha-stop:        ## stop what `make ha` started
	@bash scripts/ha.sh down

ha-drill:       ## failover drill: 500 provisions while the primary, an API and an ops worker are SIGKILLed
	@bash scripts/ha-drill.sh
