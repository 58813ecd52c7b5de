package jwthelper

import (
	"context"
	"errors"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/spire-mesh-injector/spire-mesh-injector/jwthelper/contract"
)

// The health server: readiness, liveness and metrics on the contract's paths.

func (h *Helper) healthMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc(contract.ReadyPath, func(w http.ResponseWriter, _ *http.Request) {
		if !h.Ready() {
			http.Error(w, "not every JWT-SVID is written and valid", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc(contract.LivePath, func(w http.ResponseWriter, _ *http.Request) {
		if int(h.alive.Load()) != len(h.opts.Audiences) {
			http.Error(w, "a refresh loop stopped", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.Handle(contract.MetricsPath, promhttp.HandlerFor(h.opts.Registry, promhttp.HandlerOpts{}))
	return mux
}

func serveUntil(ctx context.Context, srv *http.Server, ln net.Listener) error {
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
