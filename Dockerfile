# kexo as a container: compile the single binary in Bun's image, run it alone on Debian slim as a
# non-root user. Build: docker build -t kexo .   (the builder's architecture is the image's: amd64
# or arm64). Handlers: the image's /handlers holds the repository's handlers/; mount yours over it.

FROM oven/bun:1.4.5 AS build
WORKDIR /src
# Dependencies first, so source edits reuse this layer. --production skips the dev tools (tsc, the
# bun and deno npm packages); bun install reads package-lock.json's versions. It installs libSQL's
# addon for the builder's platform, which the build embeds.
COPY package.json package-lock.json ./
RUN bun install --production
COPY tsconfig.json main.ts ./
COPY src ./src
COPY handlers ./handlers
RUN bun src/build/compile.ts --outfile /out/kexo && /out/kexo version

FROM debian:12-slim
# No librdkafka: it is only for `kexo dev`'s embedded broker. bash is used by the HEALTHCHECK.
RUN useradd --system --uid 10001 --home-dir /data --create-home kexo \
 && mkdir -p /handlers
COPY --from=build /out/kexo /usr/local/bin/kexo
COPY handlers /handlers
# The binary writes libSQL's addon to $TMPDIR at start: keep it writable (with a read-only root
# filesystem, mount a tmpfs or emptyDir at /tmp). The journal lives in /data (a volume).
ENV TMPDIR=/tmp \
    KEXO_HANDLERS=/handlers \
    KEXO_DB=file:/data/kexo.db \
    KEXO_HTTP=0.0.0.0:9464
USER 10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 9464
# Liveness from /healthz without curl in the image: bash's /dev/tcp, the port taken from KEXO_HTTP.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${KEXO_HTTP##*:} && printf 'GET /healthz HTTP/1.0\\r\\nHost: kexo\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
# kexo drains on SIGTERM within KEXO_SHUTDOWN_TIMEOUT (25 s): give `docker stop` / Kubernetes more.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/kexo"]
CMD ["run"]
