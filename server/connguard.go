package server

import (
	"crypto/tls"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/spire-mesh-injector/spire-mesh-injector/promutil"
)

// connGuard is the webhook listener's admission control for connections. Any pod can reach the
// webhook's port, so it must keep serving the API server whatever other clients do:
//
//   - no client (remote IP) holds more than its share of the connections;
//   - at the global cap, a new connection takes the place of a connection that is doing nothing
//     (kept alive and idle, or accepted without a request yet), the oldest of the client that holds
//     the most; only when every connection is busy with a request is the new one refused, at once
//     rather than left waiting in the backlog.
//
// Busy connections are bounded by the server's read and write timeouts, idle ones by its idle
// timeout, so a crowd of idle or slow clients cannot keep the API server out.
type connGuard struct {
	net.Listener
	maxTotal, maxPerClient int
	metrics                *connMetrics
	now                    func() time.Time

	mu        sync.Mutex
	perClient map[string]int
	conns     map[*guardedConn]struct{}
}

type connMetrics struct {
	refused *prometheus.CounterVec
	evicted prometheus.Counter
	open    prometheus.Gauge
}

func newConnMetrics(reg prometheus.Registerer) *connMetrics {
	return &connMetrics{
		refused: promutil.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "spire_mesh_injector_connections_refused_total",
			Help: "Connections to the admission listener closed at once, by reason: per-client-limit (the client already holds its share), capacity (every connection busy).",
		}, []string{"reason"})),
		evicted: promutil.Register(reg, prometheus.NewCounter(prometheus.CounterOpts{
			Name: "spire_mesh_injector_connections_evicted_total",
			Help: "Idle connections to the admission listener closed to make room for a new one at the connection cap.",
		})),
		open: promutil.Register(reg, prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "spire_mesh_injector_connections_open",
			Help: "Connections to the admission listener open now.",
		})),
	}
}

// guardedConn is one accepted connection, with what eviction needs to know about it.
type guardedConn struct {
	net.Conn
	g        *connGuard
	client   string
	accepted time.Time

	// Under g.mu. A connection is released once, by its Close or by its eviction, whichever comes
	// first (a sync.Once here would deadlock: an eviction holds g.mu while a Close in progress holds
	// the Once and waits for g.mu).
	state    http.ConnState
	released bool
}

func (c *guardedConn) Close() error {
	c.g.mu.Lock()
	c.g.releaseLocked(c)
	c.g.mu.Unlock()
	return c.Conn.Close()
}

func newConnGuard(l net.Listener, maxTotal, maxPerClient int, m *connMetrics) *connGuard {
	return &connGuard{Listener: l, maxTotal: maxTotal, maxPerClient: maxPerClient, metrics: m, now: time.Now,
		perClient: map[string]int{}, conns: map[*guardedConn]struct{}{}}
}

// Accept returns the next connection the guard admits.
func (g *connGuard) Accept() (net.Conn, error) {
	for {
		conn, err := g.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if c := g.admit(conn); c != nil {
			return c, nil
		}
	}
}

// admit registers conn or closes it; it returns nil when conn was refused.
func (g *connGuard) admit(conn net.Conn) *guardedConn {
	client := remoteHost(conn)
	g.mu.Lock()
	if g.perClient[client] >= g.maxPerClient {
		g.mu.Unlock()
		g.metrics.refused.WithLabelValues("per-client-limit").Inc()
		_ = conn.Close()
		return nil
	}
	var victim *guardedConn
	if len(g.conns) >= g.maxTotal {
		if victim = g.idlest(); victim == nil {
			g.mu.Unlock()
			g.metrics.refused.WithLabelValues("capacity").Inc()
			_ = conn.Close()
			return nil
		}
		// Released here, so the slot is the new connection's even before the victim's Close runs.
		g.releaseLocked(victim)
	}
	c := &guardedConn{Conn: conn, g: g, client: client, accepted: g.now(), state: http.StateNew}
	g.conns[c] = struct{}{}
	g.perClient[client]++
	g.metrics.open.Inc()
	g.mu.Unlock()
	if victim != nil {
		g.metrics.evicted.Inc()
		_ = victim.Conn.Close()
	}
	return c
}

// idlest picks the connection to close for a new one: an idle or not yet used connection of the
// client holding the most connections, the oldest first. Connections serving a request are never
// picked. Called with g.mu held.
func (g *connGuard) idlest() *guardedConn {
	var best *guardedConn
	for c := range g.conns {
		if c.state != http.StateIdle && c.state != http.StateNew {
			continue
		}
		if best == nil || g.perClient[c.client] > g.perClient[best.client] ||
			(g.perClient[c.client] == g.perClient[best.client] && c.accepted.Before(best.accepted)) {
			best = c
		}
	}
	return best
}

// releaseLocked gives c's slot back, once. Called with g.mu held.
func (g *connGuard) releaseLocked(c *guardedConn) {
	if c.released {
		return
	}
	c.released = true
	delete(g.conns, c)
	if g.perClient[c.client]--; g.perClient[c.client] <= 0 {
		delete(g.perClient, c.client)
	}
	g.metrics.open.Dec()
}

// connState is the http.Server's ConnState hook: it tells the guard which connections are busy.
func (g *connGuard) connState(conn net.Conn, state http.ConnState) {
	if tc, ok := conn.(*tls.Conn); ok {
		conn = tc.NetConn()
	}
	c, ok := conn.(*guardedConn)
	if !ok {
		return
	}
	g.mu.Lock()
	c.state = state
	g.mu.Unlock()
}

func remoteHost(conn net.Conn) string {
	if a, ok := conn.RemoteAddr().(*net.TCPAddr); ok {
		return a.IP.String()
	}
	host, _, err := net.SplitHostPort(conn.RemoteAddr().String())
	if err != nil {
		return conn.RemoteAddr().String()
	}
	return host
}
