# The tuner worker image: CPU-only PyTorch and the tuner package.
#   docker build -t tuner .            (docker compose builds it for you)
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# CPU torch first, from PyTorch's CPU index: a plain "torch" from PyPI pulls GBs of CUDA wheels.
RUN pip install "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu

# Then tuner and the rest of its dependencies (psycopg for PostgreSQL, optuna-dashboard, ...).
# The plans in studies/ go into the package, so --plan seed/quick work from any directory.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY tuner ./tuner
COPY studies ./studies
RUN pip install . && rm -rf /src

# Run as a plain user; /work holds data, studies, models, reports (a volume in compose).
RUN useradd --create-home --uid 10001 tuner && mkdir /work && chown tuner:tuner /work
USER tuner
WORKDIR /work
CMD ["python", "-m", "tuner", "--help"]
