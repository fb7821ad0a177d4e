# The imgsearch image: workers, the HTTP API (imgsearch serve) and the CLI. CPU by default; the GPU profile of docker-compose.yml
# builds it with TORCH_INDEX=https://download.pytorch.org/whl/cu128.
FROM python:3.12-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 HF_HOME=/models

WORKDIR /app
# torch first, from the index that matches the hardware, pinned like the Makefile does
RUN pip install torch==2.13.0 --index-url "${TORCH_INDEX}"
COPY pyproject.toml README.md alembic.ini ./
COPY imgsearch ./imgsearch
COPY migrations ./migrations
COPY workers ./workers
RUN pip install '.[worker,onnx,server]'

# workers never run as root (Celery warns about it, and a model or image bug shouldn't own the box)
RUN useradd --create-home --uid 10001 imgsearch && mkdir -p /models && chown imgsearch /models
USER imgsearch

EXPOSE 8000

# exec form: the worker is PID 1, so its Celery node name is imgsearch-1@<container hostname>
CMD ["imgsearch", "worker", "--concurrency", "2", "--device", "cpu"]
