package mirror

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gwlbproxy/gwlbproxy/tunnel/inns"
)

// inNewNetns runs f in a fresh network namespace (gone when the test ends).
func inNewNetns(t *testing.T, f func() error) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace and a tap device")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skip("no /dev/net/tun")
	}
	ns, err := inns.New("mirt-" + inns.RandSuffix())
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	if err := ns.Do(f); err != nil {
		t.Fatal(err)
	}
}

// TestTapCapture writes a conversation into a real tap device and captures
// it with AF_PACKET on that device, as an IDS does: every frame arrives,
// the streams reassemble, and the kernel neither answers nor forwards them
// (no frame leaves the device). When tshark is installed, Wireshark's TCP
// analysis (checksums validated) and HTTP dissector must agree.
func TestTapCapture(t *testing.T) {
	const name = "idsmirt0"
	var frames [][]byte
	var out [][]byte
	client, server := netip.MustParseAddrPort("198.18.0.10:40100"), netip.MustParseAddrPort("203.0.113.5:80")
	client6, server6 := netip.MustParseAddrPort("[2001:db8::10]:40101"), netip.MustParseAddrPort("[2001:db8:1::5]:80")
	body := strings.Repeat("mirror-marker-", 20000) // ~280 KB
	req := "GET /m HTTP/1.1\r\nHost: good.test\r\n\r\n"
	resp := fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	inNewNetns(t, func() error {
		m, err := Open(Config{Enabled: true, Interface: name, MTU: 1500, QueuePackets: 1 << 16})
		if err != nil {
			return err
		}
		defer m.Close()
		// Forwarding on, as on the appliance: mirrored packets must still
		// not be routed.
		os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0)
		ifi := m.link.Attrs().Index
		sock, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return err
		}
		defer unix.Close(sock)
		if err := unix.Bind(sock, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi}); err != nil {
			return err
		}
		unix.SetsockoptInt(sock, unix.SOL_SOCKET, unix.SO_RCVBUF, 32<<20)
		unix.SetsockoptTimeval(sock, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 300000})
		for _, pair := range [][2]netip.AddrPort{{client, server}, {client6, server6}} {
			s := m.Start(pair[0], pair[1])
			s.Client([]byte(req))
			s.Server([]byte(resp))
			s.Close()
		}
		deadline := time.Now().Add(5 * time.Second)
		buf := make([]byte, 65536)
		for time.Now().Before(deadline) {
			n, from, err := unix.Recvfrom(sock, buf, 0)
			if err != nil {
				if m.Stats().Packets == uint64(len(frames)) {
					break
				}
				continue
			}
			ll := from.(*unix.SockaddrLinklayer)
			if ll.Pkttype == unix.PACKET_OUTGOING {
				out = append(out, append([]byte(nil), buf[:n]...))
				continue
			}
			frames = append(frames, append([]byte(nil), buf[:n]...))
		}
		if st := m.Stats(); st.Packets != uint64(len(frames)) || st.Dropped != 0 || st.WriteErrors != 0 {
			return fmt.Errorf("stats %+v, captured %d", st, len(frames))
		}
		return nil
	})
	if len(out) != 0 {
		t.Errorf("the kernel sent %d frames on the mirror device (first: %x)", len(out), out[0][:min(len(out[0]), 64)])
	}
	var v4, v6 [][]byte
	for _, f := range frames {
		if binary.BigEndian.Uint16(f[12:]) == unix.ETH_P_IP {
			v4 = append(v4, f)
		} else {
			v6 = append(v6, f)
		}
	}
	for _, c := range []struct {
		frames [][]byte
		cl, sv netip.AddrPort
	}{{v4, client, server}, {v6, client6, server6}} {
		conv := reassemble(t, c.frames, c.cl, c.sv, 1500)
		if string(conv.ToServer) != req || string(conv.ToClient) != resp || conv.End != "fin" {
			t.Errorf("%v: reassembled %d/%d bytes, end %q", c.cl, len(conv.ToServer), len(conv.ToClient), conv.End)
		}
	}
	tsharkCheck(t, frames, len(body))
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// tsharkCheck has Wireshark read the captured frames with checksum
// validation on: no TCP analysis warnings or bad checksums, and both HTTP
// responses dissected with their full bodies.
func tsharkCheck(t *testing.T, frames [][]byte, bodyLen int) {
	if _, err := exec.LookPath("tshark"); err != nil {
		t.Log("tshark not installed: capture not cross-checked by Wireshark")
		return
	}
	path := t.TempDir() + "/mirror.pcap"
	var b bytes.Buffer
	le32 := func(v uint32) { binary.Write(&b, binary.LittleEndian, v) }
	le32(0xa1b2c3d4)
	binary.Write(&b, binary.LittleEndian, uint16(2))
	binary.Write(&b, binary.LittleEndian, uint16(4))
	le32(0)
	le32(0)
	le32(65535)
	le32(1) // Ethernet
	for i, f := range frames {
		le32(uint32(1700000000))
		le32(uint32(i))
		le32(uint32(len(f)))
		le32(uint32(len(f)))
		b.Write(f)
	}
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) string {
		out, err := exec.Command("tshark", append([]string{"-r", path, "-o", "tcp.check_checksum:TRUE", "-o", "ip.check_checksum:TRUE"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("tshark %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	if bad := run("-Y", "tcp.analysis.flags or tcp.checksum.status == 0 or ip.checksum.status == 0 or _ws.expert.severity >= warning"); strings.TrimSpace(strings.ReplaceAll(bad, "Running as user \"root\" and group \"root\". This could be dangerous.\n", "")) != "" {
		t.Errorf("tshark flags problems:\n%s", bad)
	}
	got := run("-Y", "http.response", "-T", "fields", "-e", "http.content_length", "-e", "http.file_data")
	var n int
	for _, l := range strings.Split(got, "\n") {
		if strings.HasPrefix(l, fmt.Sprint(bodyLen)+"\t") {
			n++
		}
	}
	if n != 2 {
		t.Errorf("tshark dissected %d complete HTTP responses, want 2:\n%.300s", n, got)
	}
}
