# Build: docker build -t switchyard .
# Run:   docker run -p 8080:8080 -v $PWD/conf:/etc/switchyard switchyard
#        (admin too: -p 9901:9901 -e SWITCHYARD_ADMIN_LISTEN=0.0.0.0:9901 -e SWITCHYARD_ADMIN_TOKEN=…)
FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin switchyard

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin switchyard
COPY --from=build /src/target/release/switchyard /usr/local/bin/switchyard
COPY conf/switchyard.yaml /etc/switchyard/switchyard.yaml
# The example config listens on loopback; inside a container the proxy must listen on all
# interfaces. The admin endpoint stays on the container's loopback unless you also set
# SWITCHYARD_ADMIN_LISTEN=0.0.0.0:9901 and SWITCHYARD_ADMIN_TOKEN (Switchyard refuses an
# admin address reachable from outside without a token).
ENV SWITCHYARD_LISTEN=0.0.0.0:8080
USER switchyard
EXPOSE 8080 9901
ENTRYPOINT ["switchyard"]
CMD ["--config", "/etc/switchyard/switchyard.yaml"]
