# syntax=docker/dockerfile:1
# Build: docker build -t gwlbproxy .
# Run (host networking; the appliance creates tun devices, nftables rules
# and policy routes in the host's network namespace):
#   docker run -d --name gwlbproxy --network host \
#     --cap-add NET_ADMIN --cap-add NET_RAW --cap-add NET_BIND_SERVICE \
#     --device /dev/net/tun \
#     -v /etc/gwlbproxy:/etc/gwlbproxy:ro \
#     -v /var/lib/gwlbproxy:/var/lib/gwlbproxy \
#     gwlbproxy run --config /etc/gwlbproxy/gwlbproxy.yaml
# /proc/sys/net must be writable for the forwarding and rp_filter sysctls:
# with --network host Docker mounts it read-only unless the sysctls are set
# on the host beforehand (see README, "Container").

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=devel
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/gwlbproxy ./cmd/gwlbproxy

FROM gcr.io/distroless/static-debian12:latest
COPY --from=build /out/gwlbproxy /usr/local/bin/gwlbproxy
COPY configs/gwlbproxy.yaml /etc/gwlbproxy/gwlbproxy.yaml
VOLUME ["/var/lib/gwlbproxy"]
ENTRYPOINT ["/usr/local/bin/gwlbproxy"]
CMD ["run", "--config", "/etc/gwlbproxy/gwlbproxy.yaml"]
