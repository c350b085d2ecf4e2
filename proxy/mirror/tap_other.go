//go:build !linux

package mirror

import (
	"errors"
	"fmt"
)

// Open fails: the decryption mirror writes to a Linux tap device
// (/dev/net/tun), which no other system has. NewWriter works everywhere.
func Open(cfg Config) (*Mirror, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("mirror: %w", err)
	}
	return nil, errors.New("mirror: a tap device needs Linux")
}
