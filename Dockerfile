FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip install --no-cache-dir . && useradd --system --home /data gateway && mkdir -p /data \
    && chown gateway /data
USER gateway
ENV TTGW_HOST=0.0.0.0 TTGW_PORT=8080 TTGW_DATA_DIR=/data
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz').status != 200)"
CMD ["tt-gateway", "serve"]
