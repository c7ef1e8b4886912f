# The four mlplatform images from one definition. Build from the repository root:
#   docker build --build-arg SERVICE=serving -t mlplatform-serving:<appVersion> .
# SERVICE is serving, webapp, reporter or retrainer (`make images` builds all four). Each image
# installs only mlplatform-<SERVICE> and mlplatform-common, pinned by uv.lock; what differs
# between services is in the small final stages at the end (one per service) and in the
# serving-only step of the builder.
ARG BASE_IMAGE=python:3.11-slim
ARG SERVICE

FROM ${BASE_IMAGE} AS builder
# binutils (strip, for serving) in the builder only; the Debian version follows the base image.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends binutils \
    && rm -rf /var/lib/apt/lists/*
# uv from PyPI (pinned like the Makefile's UV_VERSION), in a venv of its own so neither a
# Debian "externally managed" Python nor the final image sees it.
ARG UV_VERSION=0.13.9
RUN python3 -m venv /opt/uv \
    && /opt/uv/bin/pip install --no-cache-dir "uv==${UV_VERSION}"
# 1: ship bytecode, so a container does not compile every module at each start (a read-only
# root filesystem cannot keep it); 0: a smaller image.
ARG COMPILE_BYTECODE=1
ENV PATH=/opt/uv/bin:$PATH \
    UV_PROJECT_ENVIRONMENT=/app/.venv \
    UV_PYTHON_DOWNLOADS=never \
    UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=${COMPILE_BYTECODE} \
    UV_NO_CACHE=1
WORKDIR /app
# Every member's pyproject.toml: uv reads the whole workspace even to install one package.
COPY pyproject.toml uv.lock ./
COPY libs/common/pyproject.toml libs/common/
COPY services/serving/pyproject.toml services/serving/
COPY services/webapp/pyproject.toml services/webapp/
COPY services/reporter/pyproject.toml services/reporter/
COPY services/retrainer/pyproject.toml services/retrainer/
# Declared here, not above: the layers before are the same for the four images (built once).
ARG SERVICE
# Serving runs the checked ONNX files of a version with ONNX Runtime and needs neither
# scikit-learn nor SciPy (~130 MB). SERVING_EXTRAS=sklearn adds them, for versions published
# without ONNX files (the fallback engine); without it such a version is refused with a reason.
ARG SERVING_EXTRAS=""
# Third-party dependencies first: this layer is reused until uv.lock changes.
RUN case "${SERVICE}" in serving|webapp|reporter|retrainer) ;; \
        *) echo "build with --build-arg SERVICE=serving|webapp|reporter|retrainer" >&2; exit 2 ;; \
    esac \
    && uv sync --frozen --no-dev --package "mlplatform-${SERVICE}" \
        ${SERVING_EXTRAS:+--extra ${SERVING_EXTRAS}} --no-install-workspace
COPY libs/common/src libs/common/src
COPY services/${SERVICE}/src services/${SERVICE}/src
# Then the two workspace packages, as wheels (no editable links to sources). The test suites
# of the scientific stack are never imported at run time: dropped (~100 MB or more).
# Serving only, to stay inside its 400 MB budget (bench/BENCHMARKS.md): sources of compiled
# extensions, type stubs and C headers deleted (never imported, ~9 MB), symbols stripped from
# the extension modules (~20 MB; not from the vendored *.libs, which auditwheel patched and
# strip corrupts: the import check fails the build if one breaks), and ONNX Runtime's C API
# library dropped: the Python binding does not load it (ldd shows no link to it; 28 MB).
RUN uv sync --frozen --no-dev --package "mlplatform-${SERVICE}" \
        ${SERVING_EXTRAS:+--extra ${SERVING_EXTRAS}} --no-editable \
    && find /app/.venv/lib -type d -name tests \
        \( -path '*/numpy/*' -o -path '*/scipy/*' -o -path '*/pandas/*' -o -path '*/sklearn/*' \
        -o -path '*/statsmodels/*' -o -path '*/pyarrow/*' \) -prune -exec rm -rf {} + \
    && if [ "${SERVICE}" = serving ]; then \
        find /app/.venv/lib -type f \( -name '*.pyx' -o -name '*.pxd' -o -name '*.pyi' -o -name '*.c' \
            -o -name '*.cpp' -o -name '*.h' \) -delete \
        && find /app/.venv/lib -type f -name '*.so*' -not -path '*.libs/*' \
            -exec strip --strip-unneeded {} + \
        && rm -f /app/.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* \
        && /app/.venv/bin/python -c "import numpy, pandas, onnxruntime, fastparquet, \
mlplatform_serving.app"; \
    fi

# What every image shares: the venv, a non-root user, no build tool.
FROM ${BASE_IMAGE} AS runtime
ARG SERVICE
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --shell /usr/sbin/nologin app
WORKDIR /app
COPY --from=builder /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
LABEL org.opencontainers.image.title="mlplatform-${SERVICE}" \
      org.opencontainers.image.vendor="mlplatform"
USER 10001

# The serving API (FastAPI + uvicorn).
FROM runtime AS serving
LABEL org.opencontainers.image.description="mlplatform serving API (FastAPI + uvicorn)"
ENV MLPLATFORM_HOST=0.0.0.0 \
    MLPLATFORM_PORT=8080
EXPOSE 8080
# The image has no curl: ask /health with the standard library.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('MLPLATFORM_PORT', '8080'), timeout=4)"]
CMD ["python", "-m", "mlplatform_serving"]

# The web app (Streamlit).
FROM runtime AS webapp
LABEL org.opencontainers.image.description="mlplatform web app (Streamlit)"
ENV MLPLATFORM_WEBAPP_HOST=0.0.0.0 \
    MLPLATFORM_WEBAPP_PORT=8501
EXPOSE 8501
# Streamlit's own health endpoint, under the base path when one is set; no curl in the image.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; p = os.environ.get('MLPLATFORM_BASE_URL_PATH', '').strip('/'); urllib.request.urlopen('http://127.0.0.1:%s/%s_stcore/health' % (os.environ.get('MLPLATFORM_WEBAPP_PORT', '8501'), p + '/' if p else ''), timeout=4)"]
CMD ["python", "-m", "mlplatform_webapp"]

# The reporter (Evidently drift and quality reports; a CronJob).
FROM runtime AS reporter
LABEL org.opencontainers.image.description="mlplatform reporter (Evidently reports; a CronJob)"
# A one-shot job: nothing to health-check.
HEALTHCHECK NONE
ENTRYPOINT ["python", "-m", "mlplatform_reporter"]
CMD ["run"]

# The retrainer (train, retrain, rollout; a CronJob and the bootstrap Job).
FROM runtime AS retrainer
LABEL org.opencontainers.image.description="mlplatform retrainer (train, retrain, rollout; a CronJob and the bootstrap Job)"
# The shipped data set, for the bootstrap Job:
#   python -m mlplatform_retrainer train --if-missing --data /app/data/breast_cancer.csv
COPY data/breast_cancer.csv data/breast_cancer.meta.json /app/data/
# A one-shot job (CronJob, bootstrap Job): nothing to health-check.
HEALTHCHECK NONE
ENTRYPOINT ["python", "-m", "mlplatform_retrainer"]
CMD ["run"]

# The image of SERVICE: one of the four stages above.
FROM ${SERVICE}
