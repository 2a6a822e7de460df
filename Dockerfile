# Build stage: the release binary.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bin strata

# Run stage: the binary, curl for the healthcheck, and PostgreSQL client libraries are not needed.
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends curl ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/strata /usr/local/bin/strata
EXPOSE 3000
ENTRYPOINT ["strata"]
CMD ["serve"]
