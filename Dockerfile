# edgeseal agent image. Build: docker build -t edgeseal .
# Run:  docker run -v edgeseal:/var/lib/edgeseal edgeseal
# With a GrovePi: add --device /dev/i2c-1 and a config with [grovepi] bus = "/dev/i2c-1".
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p edgeseal

FROM debian:bookworm-slim
RUN useradd --system --home-dir /var/lib/edgeseal --create-home edgeseal \
    && chmod 0700 /var/lib/edgeseal
COPY --from=build /src/target/release/edgeseal /usr/local/bin/edgeseal
USER edgeseal
WORKDIR /var/lib/edgeseal
ENV EDGESEAL_DATA_DIR=/var/lib/edgeseal/data
VOLUME ["/var/lib/edgeseal"]
ENTRYPOINT ["edgeseal"]
CMD ["up"]
