# The sidecar's image: the package, its command and the configuration template that
# docker-compose.yml fills from the environment. Build: docker build -t sidecar .
FROM python:3.11-slim-bookworm

# envsubst renders configs/docker.yaml.in from the environment at start.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gettext-base \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/sidecar
COPY pyproject.toml README.md ./
COPY sidecar ./sidecar
RUN pip install --no-cache-dir . && rm -rf /opt/sidecar/build

# gid 10001 is the group of the shared sockets volume: the app's image runs in it too.
RUN groupadd --gid 10001 sidecar \
    && useradd --uid 10001 --gid sidecar --no-create-home --shell /usr/sbin/nologin sidecar \
    && mkdir -p /var/lib/sidecar/certs /run/sockets \
    && chown sidecar:sidecar /var/lib/sidecar/certs /run/sockets \
    && chmod 0700 /var/lib/sidecar/certs \
    && chmod 0770 /run/sockets
COPY configs/docker.yaml.in /etc/sidecar/sidecar.yaml.in

USER sidecar
EXPOSE 443 80
# SIGTERM drains: clients get 4200 and the process exits within shutdown.deadline.
STOPSIGNAL SIGTERM
# The rendered file holds the app secret: umask 077. Only the listed variables are replaced.
ENTRYPOINT ["/bin/sh", "-c", "umask 077 && envsubst '${ACME_DIRECTORY} ${ACME_EMAIL} ${SIDECAR_DOMAINS} ${SIDECAR_APP_ID} ${SIDECAR_KEY} ${SIDECAR_SECRET} ${SIDECAR_ALLOWED_ORIGINS}' < /etc/sidecar/sidecar.yaml.in > /tmp/sidecar.yaml && exec sidecar \"$@\"", "sidecar"]
CMD ["run", "--config", "/tmp/sidecar.yaml"]
