# Two images from one file:
#   --target server: the MLflow and Prefect servers, without TensorFlow;
#   --target worker: the project (the worker running the scheduled flows), on tensorflow-cpu.
# Versions come from constraints.txt, those CI tested. Dependencies are installed before the
# code is copied, so editing the code rebuilds only the last layers.
# The base image is a build argument (PYTHON_IMAGE in .env): a machine that cannot pull it
# builds a stand-in from Debian's packages with docker/stand_in_images.sh.
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE} AS base

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2

WORKDIR /app
RUN pip install "packaging>=24"
COPY constraints.txt pyproject.toml ./
COPY docker/requirements.py ./docker/
RUN useradd --create-home --uid 1000 tfnn

FROM base AS server
RUN python docker/requirements.py server > /tmp/requirements.txt \
    && pip install -c constraints.txt -r /tmp/requirements.txt
COPY docker/entrypoint.sh docker/mlflow-auth.ini ./docker/
RUN mkdir -p /mlartifacts && chown tfnn /mlartifacts
USER tfnn
# Loads the secrets a service lists in TFNN_SECRETS (refusing placeholders), then runs it.
ENTRYPOINT ["/app/docker/entrypoint.sh"]

FROM base AS worker
# In the same layer (so the image never holds them), what the wheels carry for building,
# debugging and testing themselves, never for running: TensorFlow's C++ headers (for custom
# ops), libclang (a dependency of its source tools), the symbol tables of TensorFlow's shared
# libraries (a quarter of their size; the dynamic symbols stay; binutils is removed again;
# other wheels' libraries are patched by auditwheel, which strip breaks), the test suites
# of the packages (SciPy's are 33 MB; TensorFlow's, Keras' and MLflow's few are kept), and
# apt's caches. pip compiles no bytecode (220 MB for every module of every package);
# instead the modules the worker imports are imported once here, as root, which writes
# their bytecode (about 100 MB): the worker runs as tfnn, which could not write it, and
# compiles what is left in memory when it imports it.
RUN python docker/requirements.py worker > /tmp/requirements.txt \
    && pip install --no-compile -c constraints.txt -r /tmp/requirements.txt \
    && pip uninstall -y libclang \
    && site=$(python -c 'import importlib.util as u; print(u.find_spec("numpy").submodule_search_locations[0].rsplit("/", 1)[0])') \
    && rm -r "$site/tensorflow/include" "$site/pandas/tests" "$site"/numpy/*/tests "$site/matplotlib/tests" \
    && find "$site" \( -path "$site/tensorflow" -o -path "$site/keras" -o -path "$site/mlflow" \) -prune \
        -o -type d -name tests -prune -exec rm -r {} + \
    && apt-get update -q && apt-get install -y -q --no-install-recommends binutils >/dev/null \
    && find "$site/tensorflow" -name '*.so*' -type f -exec strip --strip-unneeded {} + \
    && apt-get purge -y -q --auto-remove binutils >/dev/null \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/cache/debconf/*-old \
    && MPLBACKEND=Agg python -c 'import croniter, matplotlib.pyplot, mlflow, mlflow.pyfunc, \
        mlflow.tensorflow, pandas, prefect, prefect.cli, prefect.engine, prefect.workers.process, \
        psutil, pydantic, rich, scipy.sparse, sqlalchemy, tensorflow, uvicorn, yaml'
COPY README.md LICENSE ./
COPY tfnn ./tfnn
COPY cli ./cli
COPY tasks ./tasks
COPY flows ./flows
# The project alone: its dependencies are above (TensorFlow as tensorflow-cpu).
RUN pip install --no-deps . \
    && python -m compileall -q tfnn cli tasks flows
COPY prefect.yaml ./
COPY docker/entrypoint.sh docker/mlflow-auth.ini ./docker/
RUN mkdir -p /app/outputs && chown tfnn /app/outputs
USER tfnn
ENTRYPOINT ["/app/docker/entrypoint.sh"]
