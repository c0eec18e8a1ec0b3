# The operator's image: a static musl fluxmedic and helm (for rollbacks) on distroless/static,
# non-root. hack/image.sh builds the same binary the same way for the tests (no container
# engine there); .github/workflows/release.yaml builds this file for linux/amd64 and
# linux/arm64 (each stage runs on its platform), signs it and attaches an SBOM.
FROM rust:1.95-bookworm AS build
ARG REVISION=unknown
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools
WORKDIR /src
COPY . .
RUN target="$(uname -m)-unknown-linux-musl" && rustup target add "$target" \
 && FLUXMEDIC_REVISION="$REVISION" cargo build --locked --release --target "$target" --bin fluxmedic \
 && cp "target/$target/release/fluxmedic" /fluxmedic

FROM golang:1.26-bookworm AS helm
RUN CGO_ENABLED=0 GOBIN=/out go install -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=v4.2.4" helm.sh/helm/v4/cmd/helm@v4.2.4

FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="fluxmedic" \
      org.opencontainers.image.description="Diagnoses and safely remediates FluxCD failures" \
      org.opencontainers.image.source="https://github.com/fluxmedic/fluxmedic" \
      org.opencontainers.image.documentation="https://github.com/fluxmedic/fluxmedic/blob/main/README.md" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="$VERSION" \
      org.opencontainers.image.revision="$REVISION"
COPY --from=build /fluxmedic /usr/local/bin/fluxmedic
COPY --from=helm /out/helm /usr/local/bin/helm
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/fluxmedic"]
CMD ["run"]
