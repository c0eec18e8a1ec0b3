# Unbuilt here (no container engine on the development machines); kept simple and correct.
# Static musl binary + helm (for rollbacks) on distroless/static, non-root.
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN cargo build --locked --release --target x86_64-unknown-linux-musl \
 && cp target/x86_64-unknown-linux-musl/release/fluxmedic /fluxmedic

FROM golang:1.26-bookworm AS helm
RUN CGO_ENABLED=0 GOBIN=/out go install -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=v4.2.4" helm.sh/helm/v4/cmd/helm@v4.2.4

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /fluxmedic /usr/local/bin/fluxmedic
COPY --from=helm /out/helm /usr/local/bin/helm
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/fluxmedic"]
CMD ["run"]
