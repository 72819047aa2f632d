# The Concord node image: the concord binary and the shared libraries it links (staged by
# compose/build.sh into the build context), on `scratch` by default so that nothing is
# pulled. Where a registry is reachable, `--build-arg BASE=debian:bookworm-slim` (or any
# glibc image) gives an image with a shell; the staged libraries are the ones the binary
# was linked against either way.
ARG BASE=scratch
FROM ${BASE}
COPY rootfs/ /
# The data directory, owned by the unprivileged user the node runs as; a named volume
# mounted here takes its ownership on first use.
COPY --chown=65532:65532 data/ /data/
USER 65532:65532
ENV CONCORD_HTTP_LISTEN=0.0.0.0:8080 \
    CONCORD_DATA_DIR=/data
EXPOSE 8080
HEALTHCHECK --interval=5s --timeout=3s --start-period=60s --retries=3 \
    CMD ["/usr/local/bin/concord", "probe", "http://127.0.0.1:8080/v1/health"]
ENTRYPOINT ["/usr/local/bin/concord"]
CMD ["serve"]
