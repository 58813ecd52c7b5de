# spire-mesh-injector image: the webhook and the JWT-SVID helper as static binaries on a
# distroless base that runs as a non-root user and needs no writable root filesystem.
#
#   docker build --build-arg VERSION=v0.1.0 -t ghcr.io/spire-mesh-injector/spire-mesh-injector:v0.1.0 .
# Go 1.26.10: the first release with every standard-library fix govulncheck reports for 1.26.8
# (make lint prints them).
FROM docker.io/library/golang:1.26.10-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=v0.1.0
ARG COMMIT=unknown
RUN CGO_ENABLED=0 GOOS=linux go build -trimpath \
      -ldflags "-s -w -X github.com/spire-mesh-injector/spire-mesh-injector/version.Version=${VERSION} -X github.com/spire-mesh-injector/spire-mesh-injector/version.Commit=${COMMIT}" \
      -o /out/ ./cmd/spire-mesh-injector ./cmd/spiffe-jwt-helper

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/spire-mesh-injector /spire-mesh-injector
# The webhook injects this image as the JWT-SVID helper, with command /spiffe-jwt-helper.
COPY --from=build /out/spiffe-jwt-helper /spiffe-jwt-helper
# 65532 is distroless' nonroot user; OpenShift's restricted-v2 SCC replaces it with a UID from the
# namespace's range, which works as well: the image writes nothing to its filesystem.
USER 65532:65532
EXPOSE 9443 8081 8443
ENTRYPOINT ["/spire-mesh-injector"]
CMD ["serve"]
