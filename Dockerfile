# syntax=docker/dockerfile:1
# One image per binary, from one build: `docker build --target api .` (or
# chat-system, worker). compose.yaml builds each target.

FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins \
 && mkdir /out && cp target/release/chat-system target/release/api target/release/worker /out/

# Small runtime: glibc, CA certificates, curl for health checks; no root.
FROM debian:bookworm-slim AS runtime
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home app
USER app
ENV LOG_FORMAT=json

FROM runtime AS chat-system
COPY --from=build /out/chat-system /usr/local/bin/chat-system
EXPOSE 3000
ENTRYPOINT ["chat-system"]

FROM runtime AS api
COPY --from=build /out/api /usr/local/bin/api
EXPOSE 3001
ENTRYPOINT ["api"]

FROM runtime AS worker
COPY --from=build /out/worker /usr/local/bin/worker
EXPOSE 3002
ENTRYPOINT ["worker"]
