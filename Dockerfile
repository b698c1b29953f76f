# The project image: runs the MLflow server, the Prefect server and the worker.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2

WORKDIR /app
# Dependencies first, so editing the code does not reinstall TensorFlow.
COPY pyproject.toml README.md ./
COPY tfnn ./tfnn
COPY common ./common
COPY tasks ./tasks
COPY flows ./flows
RUN pip install ".[server]"
COPY prefect.yaml ./
COPY docker/entrypoint.sh docker/mlflow-auth.ini ./docker/

RUN useradd --create-home --uid 1000 tfnn && mkdir -p /app/outputs /mlartifacts \
    && chown tfnn /app/outputs /mlartifacts
USER tfnn
# Loads the secrets a service lists in TFNN_SECRETS (refusing placeholders), then runs it.
ENTRYPOINT ["/app/docker/entrypoint.sh"]
