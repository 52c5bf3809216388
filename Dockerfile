# The tuner image (worker and dashboard): CPU-only PyTorch and the tuner package.
#   docker compose build                (or: docker build -t tuner .)
#
# Build arguments (compose passes them from .env or the shell, see .env.example):
#   TUNER_BASE_IMAGE  the base image: a Debian-like Python 3.11 with pip (python:3.11-slim)
#   TORCH_VERSION     the torch release (2.13.0)
#   TORCH_PIP_ARGS    where pip finds that torch (PyTorch's CPU index: a plain "torch" from PyPI
#                     pulls GBs of CUDA wheels)
# Every other package is pinned by docker/constraints.txt (docker/update-constraints.sh makes
# it), so two builds of one commit install the same versions. Behind a TLS-intercepting proxy,
# put its CA certificate in docker/certs/ (see docker/certs/README.md).
ARG TUNER_BASE_IMAGE=python:3.11-slim
FROM ${TUNER_BASE_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# Extra CA certificates (docker/certs/*.crt), for pip behind a TLS-intercepting proxy.
COPY docker/certs/ /tmp/certs/
RUN set -e; \
    if ls /tmp/certs/*.crt >/dev/null 2>&1; then \
      mkdir -p /usr/local/share/ca-certificates/tuner; \
      cp /tmp/certs/*.crt /usr/local/share/ca-certificates/tuner/; \
      update-ca-certificates >/dev/null; \
      printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >/etc/pip.conf; \
    fi; \
    rm -rf /tmp/certs

# CPU torch first, alone (its requirements come next from PyPI, pinned with the rest).
RUN pip install --no-deps ${TORCH_PIP_ARGS} "torch==${TORCH_VERSION}"

# Then tuner's dependencies (psycopg for PostgreSQL, optuna-dashboard, ...), every version from
# docker/constraints.txt (PIP_CONSTRAINT pins the build backend too), in a layer of their own
# that a change to tuner's code does not rebuild; then tuner itself. The plans in studies/ go
# into the package, so --plan seed/quick work from any directory.
ENV PIP_CONSTRAINT=/etc/tuner-constraints.txt
COPY docker/constraints.txt /etc/tuner-constraints.txt
WORKDIR /src
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" >requirements.txt \
    && pip install -r requirements.txt
COPY README.md ./
COPY tuner ./tuner
COPY studies ./studies
RUN pip install --no-deps . && rm -rf /src

# Run as a plain user; /work holds data, studies, models, reports (a volume in compose).
RUN useradd --create-home --uid 10001 tuner && mkdir /work && chown tuner:tuner /work
USER tuner
WORKDIR /work
CMD ["python", "-m", "tuner", "--help"]
