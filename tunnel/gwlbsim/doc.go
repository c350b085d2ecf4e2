//go:build linux

// Package gwlbsim simulates an AWS Gateway Load Balancer in network
// namespaces, for end-to-end tests and benchmarks of the appliance.
//
// A Topology is a set of namespaces:
//
//	client_i --c0-- vpc_i [tun gwlb0] --i0-- server_i     one per GWLB endpoint
//	gwlb --u0-- appliance --s0-- sink
//
// Every VPC namespace has the same addresses (ClientAddr, ServerAddr), as
// overlapping VPCs behind one GWLB do. Policy routing in the VPC sends what
// arrives from the client (c0) and from the uplink (i0) into the tun; what
// the simulator writes back into the tun is routed by the main table
// (rule "iif gwlb0 lookup main"), so it continues to its destination.
//
// A Sim reads each VPC's tun, keys the packet with tunnel/flow, gives the
// flow a random cookie and a GWLB source port derived from the flow hash,
// and sends GENEVE (with the three AWS options and, optionally, an unknown
// non-critical option) from GWLBAddr to ApplianceAddr:6081 over a raw
// socket. GENEVE coming back to GWLBAddr:6081 is checked as GWLB would:
// sender address, header and options byte for byte against the newest
// header sent for that flow (per endpoint), flow known; the kernel's UDP
// checksum error counter of the GWLB namespace is reported too. Accepted
// packets are written into the endpoint's tun. RenewCookie models GWLB
// reusing a 5-tuple with a new cookie; SendUDP injects malformed GENEVE or
// GENEVE from ForeignAddr.
//
// Config.Targets may name several appliances (underlay addresses
// reachable from the GWLB namespace; default ApplianceAddr). With
// Config.HealthCheck the simulator probes each over HTTP from the GWLB
// namespace as a target group does (healthy after HealthyThreshold 200s,
// unhealthy after UnhealthyThreshold failures, unhealthy until first
// passing) and places each new flow by its hash over the healthy targets;
// a flow stays on its target for life whatever that target's health
// (GWLB's default failover). With no healthy target new flows are dropped
// and counted (NoHealthyTarget) unless FailOpen. Targets reports per
// target health, new flows placed and packets sent and returned.
//
// Bench drives the appliance with pre-built GENEVE packets (sendmmsg on an
// AF_PACKET socket; returns counted and dropped by an nftables netdev
// ingress rule on the receiving link) and steps the offered rate to
// find the highest rate with at most 1% loss; Mode Plain measures the
// same namespaces forwarding the inner packets without a tunnel (GWLB ns
// -> appliance -> sink) as the baseline.
//
// The appliance under test runs in Topology.Appliance (ip netns exec
// <Appliance.Name> gwlbproxy run ...), listening on ApplianceAddr:6081 and
// accepting GENEVE from GWLBAddr only.
//
// Everything here needs root (namespaces, tun, raw sockets).
package gwlbsim
