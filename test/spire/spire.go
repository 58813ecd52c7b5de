// Package spire runs a real SPIRE server and agent for the project's tests: binaries built from
// the Go module proxy by `test/tools/build.sh spire` (SPIRE_ASSETS), a server with a sqlite
// datastore and join_token node attestation on loopback, and an agent with the unix workload
// attestor whose Workload API socket is named like ZTWIM's (spire-agent.sock).
package spire

import (
	"github.com/spire-mesh-injector/spire-mesh-injector/test/tools"

	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Assets is the folder holding spire-server, spire-agent and spiffe-csi-driver (SPIRE_ASSETS).
func Assets() (string, error) {
	return tools.Dir("SPIRE_ASSETS", "spire", "spire-server", "spire-agent", "spiffe-csi-driver")
}

// SocketFileName is the agent's Workload API socket file, as ZTWIM names it.
const SocketFileName = "spire-agent.sock"

// Server is a running spire-server.
type Server struct {
	Bin, Dir, TrustDomain string
	Port                  int
	// Socket is the server API socket (what spire-controller-manager and the CLI use).
	Socket string
	cmd    *exec.Cmd
	log    *bytes.Buffer
}

// ServerOptions tune the server.
type ServerOptions struct {
	// DefaultX509TTL and DefaultJWTTTL are the SVID lifetimes when an entry sets none.
	DefaultX509TTL, DefaultJWTTTL time.Duration
}

// StartServer starts a server for trust domain td with its files under dir.
func StartServer(ctx context.Context, assets, dir, td string, o ServerOptions) (*Server, error) {
	if o.DefaultX509TTL == 0 {
		o.DefaultX509TTL = time.Hour
	}
	if o.DefaultJWTTTL == 0 {
		o.DefaultJWTTTL = 5 * time.Minute
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	s := &Server{Bin: filepath.Join(assets, "spire-server"), Dir: dir, TrustDomain: td, Port: port,
		Socket: filepath.Join(dir, "server.sock"), log: &bytes.Buffer{}}
	conf := fmt.Sprintf(`server {
  bind_address = "127.0.0.1"
  bind_port = "%d"
  socket_path = %q
  trust_domain = %q
  data_dir = %q
  log_level = "INFO"
  ca_key_type = "ec-p256"
  ca_ttl = "24h"
  default_x509_svid_ttl = %q
  default_jwt_svid_ttl = %q
}
plugins {
  DataStore "sql" {
    plugin_data {
      database_type = "sqlite3"
      connection_string = %q
    }
  }
  KeyManager "memory" {
    plugin_data {}
  }
  NodeAttestor "join_token" {
    plugin_data {}
  }
}
`, port, s.Socket, td, filepath.Join(dir, "data"), o.DefaultX509TTL.String(), o.DefaultJWTTTL.String(), filepath.Join(dir, "data", "datastore.sqlite3"))
	if err := os.MkdirAll(filepath.Join(dir, "data"), 0o700); err != nil {
		return nil, err
	}
	confPath := filepath.Join(dir, "server.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	s.cmd = exec.Command(s.Bin, "run", "-config", confPath)
	s.cmd.Stdout, s.cmd.Stderr = s.log, s.log
	if err := s.cmd.Start(); err != nil {
		return nil, err
	}
	if err := poll(ctx, 60*time.Second, func() error {
		_, err := s.CLI(ctx, "healthcheck")
		return err
	}); err != nil {
		s.Stop()
		return nil, fmt.Errorf("spire-server not healthy: %w\n%s", err, s.log.String())
	}
	return s, nil
}

// CLI runs `spire-server <args> -socketPath <socket>`.
func (s *Server) CLI(ctx context.Context, args ...string) (string, error) {
	args = append(args, "-socketPath", s.Socket)
	out, err := exec.CommandContext(ctx, s.Bin, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("spire-server %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// JoinToken creates a one-time join token for an agent.
func (s *Server) JoinToken(ctx context.Context) (string, error) {
	out, err := s.CLI(ctx, "token", "generate", "-ttl", "600")
	if err != nil {
		return "", err
	}
	// The CLI also warns, on stderr, that the token names no SPIFFE ID: the agent's ID is then
	// derived from the token, which is what tests want.
	for _, line := range strings.Split(out, "\n") {
		if tok, ok := strings.CutPrefix(strings.TrimSpace(line), "Token:"); ok && strings.TrimSpace(tok) != "" {
			return strings.TrimSpace(tok), nil
		}
	}
	return "", fmt.Errorf("no token in %q", out)
}

// Entry is a registration entry as `spire-server entry show -output json` prints it.
type Entry struct {
	ID       string `json:"id"`
	SPIFFEID struct {
		TrustDomain string `json:"trust_domain"`
		Path        string `json:"path"`
	} `json:"spiffe_id"`
	ParentID struct {
		TrustDomain string `json:"trust_domain"`
		Path        string `json:"path"`
	} `json:"parent_id"`
	Selectors []struct {
		Type  string `json:"type"`
		Value string `json:"value"`
	} `json:"selectors"`
	X509SVIDTTL   int      `json:"x509_svid_ttl"`
	JWTSVIDTTL    int      `json:"jwt_svid_ttl"`
	FederatesWith []string `json:"federates_with"`
	DNSNames      []string `json:"dns_names"`
}

// ID is the entry's SPIFFE ID as a URI.
func (e Entry) URI() string { return "spiffe://" + e.SPIFFEID.TrustDomain + e.SPIFFEID.Path }

// Parent is the entry's parent ID as a URI.
func (e Entry) Parent() string { return "spiffe://" + e.ParentID.TrustDomain + e.ParentID.Path }

// Entries lists every registration entry.
func (s *Server) Entries(ctx context.Context) ([]Entry, error) {
	out, err := s.CLI(ctx, "entry", "show", "-output", "json")
	if err != nil {
		return nil, err
	}
	var resp struct {
		Entries []Entry `json:"entries"`
	}
	if err := json.Unmarshal([]byte(out), &resp); err != nil {
		return nil, fmt.Errorf("parsing entries: %w: %s", err, out)
	}
	return resp.Entries, nil
}

// CreateEntry registers spiffeID for workloads matching selectors under parentID. TTLs in seconds
// (0: the server's default).
func (s *Server) CreateEntry(ctx context.Context, parentID, spiffeID string, selectors []string, x509TTL, jwtTTL int) error {
	args := []string{"entry", "create", "-parentID", parentID, "-spiffeID", spiffeID}
	for _, sel := range selectors {
		args = append(args, "-selector", sel)
	}
	if x509TTL > 0 {
		args = append(args, "-x509SVIDTTL", strconv.Itoa(x509TTL))
	}
	if jwtTTL > 0 {
		args = append(args, "-jwtSVIDTTL", strconv.Itoa(jwtTTL))
	}
	_, err := s.CLI(ctx, args...)
	return err
}

// Log is what the server printed.
func (s *Server) Log() string { return s.log.String() }

// Stop stops the server.
func (s *Server) Stop() { stop(s.cmd) }

// Agent is a running spire-agent.
type Agent struct {
	Bin, Dir string
	// ID is the agent's SPIFFE ID (the parent of the entries it serves).
	ID string
	// SocketDir holds the Workload API socket SocketFileName: the folder the SPIFFE CSI driver
	// publishes into pods.
	SocketDir string
	confPath  string
	cmd       *exec.Cmd
	log       *bytes.Buffer
}

// Socket is the Workload API address.
func (a *Agent) Socket() string { return "unix://" + filepath.Join(a.SocketDir, SocketFileName) }

// StartAgent attests an agent to s with a fresh join token and starts it. The agent keeps its
// SVID and keys on disk, so Restart needs no new token.
func StartAgent(ctx context.Context, assets, dir string, s *Server) (*Agent, error) {
	tok, err := s.JoinToken(ctx)
	if err != nil {
		return nil, err
	}
	a := &Agent{Bin: filepath.Join(assets, "spire-agent"), Dir: dir, SocketDir: filepath.Join(dir, "sockets"),
		ID: fmt.Sprintf("spiffe://%s/spire/agent/join_token/%s", s.TrustDomain, tok), log: &bytes.Buffer{}}
	for _, d := range []string{a.SocketDir, filepath.Join(dir, "data")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	conf := fmt.Sprintf(`agent {
  data_dir = %q
  log_level = "INFO"
  server_address = "127.0.0.1"
  server_port = "%d"
  socket_path = %q
  trust_domain = %q
  insecure_bootstrap = true
  join_token = %q
}
plugins {
  NodeAttestor "join_token" {
    plugin_data {}
  }
  KeyManager "disk" {
    plugin_data {
      directory = %q
    }
  }
  WorkloadAttestor "unix" {
    plugin_data {}
  }
}
`, filepath.Join(dir, "data"), s.Port, filepath.Join(a.SocketDir, SocketFileName), s.TrustDomain, tok, filepath.Join(dir, "data"))
	a.confPath = filepath.Join(dir, "agent.conf")
	if err := os.WriteFile(a.confPath, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	return a, a.Start(ctx)
}

// Start starts (or restarts) the agent process and waits until it is healthy.
func (a *Agent) Start(ctx context.Context) error {
	a.cmd = exec.Command(a.Bin, "run", "-config", a.confPath)
	a.cmd.Stdout, a.cmd.Stderr = a.log, a.log
	if err := a.cmd.Start(); err != nil {
		return err
	}
	if err := poll(ctx, 60*time.Second, func() error {
		out, err := exec.CommandContext(ctx, a.Bin, "healthcheck", "-socketPath", filepath.Join(a.SocketDir, SocketFileName)).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%w: %s", err, out)
		}
		return nil
	}); err != nil {
		a.Stop()
		return fmt.Errorf("spire-agent not healthy: %w\n%s", err, a.log.String())
	}
	return nil
}

// Stop stops the agent; its Workload API socket goes away.
func (a *Agent) Stop() { stop(a.cmd) }

// Log is what the agent printed.
func (a *Agent) Log() string { return a.log.String() }

func stop(cmd *exec.Cmd) {
	if cmd == nil || cmd.Process == nil || cmd.ProcessState != nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

func poll(ctx context.Context, timeout time.Duration, f func() error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var err error
	for {
		if err = f(); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
