# The Dockyard service image: one image for the api, the workers and beat.
#
# No public registry is reachable where Dockyard is built, so everything is local:
#   bash scripts/debian-base.sh                 # dockyard-base:bookworm (debootstrap + import)
#   wheels/: the project's wheel + every wheel requirements.lock names (hash-checked)
#   DOCKER_BUILDKIT=0 docker build -t dockyard:latest .
# (scripts/compose-smoke.sh does all three.) The build installs from the wheelhouse only,
# exactly the versions and sha256 of requirements.lock (`make lock`), so no compiler and no
# index are needed, and neither the wheels nor pip end up in the image.

ARG BASE=dockyard-base:bookworm

FROM ${BASE} AS venv
LABEL org.dockyard.build-stage=venv
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
COPY wheels/ /wheels/
COPY requirements.lock /wheels/requirements.lock
RUN python3 -m venv /opt/dockyard/venv \
 && /opt/dockyard/venv/bin/pip install --no-index --find-links /wheels --no-cache-dir \
      --disable-pip-version-check --require-hashes -r /wheels/requirements.lock \
 && /opt/dockyard/venv/bin/pip install --no-index --find-links /wheels --no-cache-dir \
      --disable-pip-version-check --no-deps dockyard \
 && /opt/dockyard/venv/bin/pip check \
 && /opt/dockyard/venv/bin/pip uninstall -y -q pip setuptools

FROM ${BASE}
LABEL org.dockyard.build-stage=service
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 ca-certificates \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log \
 && useradd --system --uid 10001 --user-group --create-home --home-dir /home/dockyard \
      --shell /usr/sbin/nologin dockyard \
 && install -d -o dockyard -g dockyard -m 0750 /var/lib/dockyard /var/lib/dockyard-backups
COPY --from=venv /opt/dockyard/venv /opt/dockyard/venv
COPY wsgi.py gunicorn.conf.py /opt/dockyard/
# State and backups are volumes (compose mounts them); the metrics files of the API's
# processes stay inside the container, so two api replicas never mix theirs.
ENV PATH=/opt/dockyard/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    DOCKYARD_LOG_FORMAT=json \
    DOCKYARD_STATE_DIR=/var/lib/dockyard \
    DOCKYARD_BACKUP_DIR=/var/lib/dockyard-backups \
    DOCKYARD_BIND=0.0.0.0:8000 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/dockyard-metrics
WORKDIR /opt/dockyard
USER dockyard
EXPOSE 8000
CMD ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
