# segkit on a CUDA host:  docker build -t segkit .
#   docker run --gpus all --shm-size 8g -v $PWD/data:/data -v $PWD/runs:/runs segkit train /data/config.yaml run.dir=/runs
FROM nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/segkit \
    PATH=/opt/segkit/bin:$PATH

# Ubuntu's python3 and GL libs (OpenCV) follow the base image's release; pinning them would break on rebuilds.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/segkit

WORKDIR /src
# Dependencies first (cached layer): the same set as pyproject.toml, pinned by requirements/constraints.txt.
COPY pyproject.toml README.md ./
COPY requirements/constraints.txt requirements/constraints.txt
COPY segkit/__init__.py segkit/__init__.py
# onnxruntime-gpu replaces the CPU onnxruntime (both ship the `onnxruntime` module).
# TensorBoard too: `segkit train` writes its event files when it is installed.
RUN pip install --constraint requirements/constraints.txt ".[tensorboard]" \
    && pip uninstall -y onnxruntime \
    && pip install --constraint requirements/constraints.txt onnxruntime-gpu
# Then the package itself.
COPY segkit/ segkit/
RUN pip install --no-deps .

RUN useradd --create-home --uid 1000 segkit && mkdir -p /data /runs && chown segkit:segkit /data /runs
USER 1000:1000
WORKDIR /runs
ENTRYPOINT ["segkit"]
CMD ["--help"]
