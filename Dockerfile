# syntax=docker/dockerfile:1
# Build: docker build --build-arg VERSION=$(git describe --always) \
#          --build-arg REVISION=$(git rev-parse HEAD) -t gwlbproxy .
#
# Run (host networking: the appliance creates tun devices, nftables rules
# and policy routes in the host's network namespace). It runs as uid 65532
# (distroless "nonroot") with the five capabilities the unit grants set on
# its binary (BPF and PERFMON for the eBPF tunnel datapath, tunnel.datapath); --cap-add puts them in the container's bounding set, without
# which the kernel refuses to execute the binary (NET_ADMIN is not in
# Docker's default set):
#   install -d -o 65532 -g 65532 -m 0750 /var/lib/gwlbproxy
#   docker run -d --name gwlbproxy --network host \
#     --cap-drop ALL --cap-add NET_ADMIN --cap-add NET_RAW --cap-add NET_BIND_SERVICE \
#     --cap-add BPF --cap-add PERFMON \
#     --device /dev/net/tun \
#     -v /etc/gwlbproxy:/etc/gwlbproxy:ro \
#     -v /var/lib/gwlbproxy:/var/lib/gwlbproxy \
#     gwlbproxy
# --security-opt no-new-privileges is fine with Docker 24 or later (which
# keeps the added capabilities permitted, moby#45511); older engines then
# start the daemon without capabilities. The image holds no live
# config: mount /etc/gwlbproxy with gwlbproxy.yaml and the CA (readable by
# uid 65532); an example is in /usr/share/doc/gwlbproxy/. /proc/sys is
# read-only in a container and not writable by uid 65532: set
# net.ipv4.ip_forward=1, net.ipv6.conf.all.forwarding=1 and
# net.ipv4.conf.{all,default}.rp_filter=0 on the host (README, "Container").

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=devel
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/gwlbproxy ./cmd/gwlbproxy
# The capabilities systemd gives the unit (AmbientCapabilities=), as file
# capabilities: Docker does not raise ambient capabilities for a non-root
# user, so exec must. COPY --from keeps them (security.capability xattr).
RUN command -v setcap >/dev/null || { apt-get update -qq && apt-get install -y -qq --no-install-recommends libcap2-bin; }
RUN setcap cap_net_admin,cap_net_raw,cap_net_bind_service,cap_bpf,cap_perfmon=ep /out/gwlbproxy
RUN mkdir -p /out/state

# gcr.io/distroless/static-debian12:nonroot, pinned (digest of 2026-08-26, as
# recorded in public Dockerfiles; no registry was reachable to re-resolve).
# To update: crane digest gcr.io/distroless/static-debian12:nonroot
FROM gcr.io/distroless/static-debian12:nonroot@sha256:afa5c872c891853ca7fcf1f12c3edb23f7eeef36189728842dd51042ff57f7ab
ARG VERSION=devel
ARG REVISION=unknown
LABEL org.opencontainers.image.title="gwlbproxy" \
      org.opencontainers.image.description="Egress inspection appliance for AWS Gateway Load Balancer: GENEVE tunnels, TLS-bumping proxy, lossless CloudWatch Logs shipping" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/gwlbproxy/gwlbproxy" \
      org.opencontainers.image.base.name="gcr.io/distroless/static-debian12:nonroot" \
      org.opencontainers.image.base.digest="sha256:afa5c872c891853ca7fcf1f12c3edb23f7eeef36189728842dd51042ff57f7ab"
COPY --from=build /out/gwlbproxy /usr/bin/gwlbproxy
COPY configs/gwlbproxy.yaml /usr/share/doc/gwlbproxy/gwlbproxy.yaml.example
COPY --from=build --chown=65532:65532 /out/state /var/lib/gwlbproxy
USER 65532:65532
VOLUME ["/var/lib/gwlbproxy"]
ENTRYPOINT ["/usr/bin/gwlbproxy"]
CMD ["run", "--config", "/etc/gwlbproxy/gwlbproxy.yaml"]
