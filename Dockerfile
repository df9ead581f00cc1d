# MedCLIPSeg Annotator: the Gradio app on the shipped demo weights (or MEDCLIPSEG_WEIGHTS).
#   docker build -t medclipseg .
#   docker run -p 7860:7860 -v "$PWD/annotations:/data" medclipseg          # CPU
#   docker run --gpus all -p 7860:7860 -v "$PWD/annotations:/data" medclipseg  # GPU, used when present
# Cases, corrections and maps are kept in /data (mount a volume to keep them).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860 \
    GRADIO_ANALYTICS_ENABLED=False \
    MEDCLIPSEG_DB=/data/annotations.db \
    HF_HOME=/data/huggingface

# The user id 1000 matches Hugging Face Spaces' Docker runtime.
RUN useradd --create-home --uid 1000 user && mkdir -p /data && chown user /data
WORKDIR /app

COPY requirements.txt pyproject.toml README.md ./
RUN pip install -r requirements.txt

COPY --chown=user . .
RUN pip install --no-deps .

USER user
EXPOSE 7860
VOLUME /data
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s CMD python -c "import http.client as h; c = h.HTTPConnection('127.0.0.1', 7860, timeout=4); c.request('GET', '/'); c.getresponse()" || exit 1
CMD ["python", "app.py"]
