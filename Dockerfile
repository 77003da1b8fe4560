# keyward's container image: the gateway, management API, CLI and scanner in one
# binary, run as an unprivileged user with its data under /data.
#
#   docker build -t keyward .
#   docker run -d --name keyward -p 8080:8080 -v keyward-data:/data \
#     -e OPENAI_API_KEY keyward
#
# The upstream key comes from the environment at run time (`-e OPENAI_API_KEY`
# passes the caller's variable without writing it on the command line); it is
# never a build argument or an ENV here, so no image layer holds it.
#
# Build arguments:
#   RUST_IMAGE     toolchain of the build stage (Debian 12, like the runtime base,
#                  so the binary's glibc matches)
#   RUNTIME_IMAGE  base of the final image: a Debian 12 with a shell for the one
#                  RUN below (debian:bookworm-slim; .ci/run uses a debootstrapped
#                  minbase because no registry is reachable there)
#   BINARY         `build` compiles here with the locked dependencies (the normal
#                  path); `prebuilt` takes ./keyward from the build context
#                  (CI builds it on the host: scripts/container-smoke)

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim
ARG BINARY=build

FROM ${RUST_IMAGE} AS binary-build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p keyward \
 && install -D -m 0755 target/release/keyward /out/keyward

FROM scratch AS binary-prebuilt
COPY keyward /out/keyward

# The stage the runtime copies from, chosen by BINARY; builders skip the other.
FROM binary-${BINARY} AS binary

FROM ${RUNTIME_IMAGE}
# A fixed numeric uid, so orchestrators can check runAsNonRoot and volumes can be
# chowned ahead of time. /data is 0700: it holds key hashes, usage, audit events
# and the sealing key.
RUN useradd --uid 10001 --user-group --home-dir /data --no-create-home \
      --shell /usr/sbin/nologin keyward \
 && mkdir -p /data \
 && chown 10001:10001 /data \
 && chmod 0700 /data
COPY --from=binary /out/keyward /usr/local/bin/keyward
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
# Listen on all interfaces inside the container; publish the port to choose who
# reaches it. Metrics stay on the container's loopback unless
# KEYWARD_METRICS_LISTEN=0.0.0.0:9464 is set (they are not meant for the public).
# KEYWARD_URL lets `docker exec keyward keyward keys …` and the health check
# reach the server without flags.
ENV KEYWARD_LISTEN=0.0.0.0:8080 \
    KEYWARD_DATA_DIR=/data \
    KEYWARD_URL=http://127.0.0.1:8080
EXPOSE 8080
# No curl in the image: the binary probes its own /healthz (exit 0 or 1).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["keyward", "health"]
ENTRYPOINT ["keyward"]
CMD ["serve"]
