# The carbonwatch image: the exporter (`carbonwatch exporter`) and the run client (`carbonwatch run`).
#
#   docker build -t carbonwatch .
#
# The image's default user is the unprivileged `carbonwatch`. The exporter service in docker-compose.yml
# overrides that with root because it reads the host's RAPL counters (/sys/class/powercap/*/energy_uj,
# root-only since CVE-2020-8694) and other users' /proc/PID/environ to find each process's run id; it
# gets the host's /proc and /sys read-only and the host's pid namespace, nothing writable.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/carbonwatch

# Dependencies first so that code changes do not re-install them.
COPY pyproject.toml README.md ./
COPY exporter ./exporter
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /var/lib/carbonwatch --create-home carbonwatch

# The sample training script of the `demo` profile. Its framework is installed only when asked:
#   docker build --build-arg DEMO_EXTRAS="torch --index-url https://download.pytorch.org/whl/cpu" .
ARG DEMO_EXTRAS=""
RUN if [ -n "$DEMO_EXTRAS" ]; then pip install $DEMO_EXTRAS; fi
COPY examples ./examples

USER carbonwatch
EXPOSE 9860
ENTRYPOINT ["carbonwatch"]
CMD ["exporter", "--web.listen-address=:9860"]
