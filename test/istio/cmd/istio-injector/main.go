// Command istio-injector runs Istio's own sidecar injection (istio.io/istio pkg/kube/inject, with
// the templates Istio's installer renders) for spire-mesh-injector's compatibility tests:
//
//	istio-injector serve --cert F --key F --addr :port [flags]   Istio's webhook over TLS
//	istio-injector kube-inject -f FILE|- [flags]                 istioctl kube-inject
//
// Flags shared by both: --iop FILE (IstioOperator overlays, repeatable), --set k=v (repeatable),
// --native, --spire-native-variant.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spire-mesh-injector/spire-mesh-injector/test/istio/istioinject"
)

type repeated []string

func (r *repeated) String() string     { return fmt.Sprint(*r) }
func (r *repeated) Set(v string) error { *r = append(*r, v); return nil }

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: istio-injector serve|kube-inject [flags]")
		os.Exit(2)
	}
	if err := run(os.Args[1], os.Args[2:]); err != nil {
		fmt.Fprintln(os.Stderr, "istio-injector:", err)
		os.Exit(1)
	}
}

func run(cmd string, args []string) error {
	fs := flag.NewFlagSet(cmd, flag.ExitOnError)
	var o istioinject.Options
	fs.Var((*repeated)(&o.Files), "iop", "IstioOperator file layered over the default profile (repeatable)")
	fs.Var((*repeated)(&o.Set), "set", "installer --set override (repeatable)")
	fs.BoolVar(&o.Native, "native", false, "istio-proxy as a native sidecar (Istio's default on Kubernetes 1.33+)")
	fs.BoolVar(&o.SPIRENativeVariant, "spire-native-variant", false, "the spire template patches initContainers")
	cert := fs.String("cert", "", "serving certificate (serve)")
	key := fs.String("key", "", "serving key (serve)")
	addr := fs.String("addr", "127.0.0.1:0", "listen address (serve)")
	file := fs.String("f", "-", "workloads to inject, - for stdin (kube-inject)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	in, err := istioinject.New(o)
	if err != nil {
		return err
	}
	switch cmd {
	case "kube-inject":
		var r io.Reader = os.Stdin
		if *file != "-" {
			f, err := os.Open(*file)
			if err != nil {
				return err
			}
			defer f.Close()
			r = f
		}
		return in.KubeInject(r, os.Stdout)
	case "serve":
		return serve(in.Handler(), *addr, *cert, *key)
	default:
		return fmt.Errorf("unknown command %q: allowed: serve, kube-inject", cmd)
	}
}

func serve(h http.Handler, addr, cert, key string) error {
	if cert == "" || key == "" {
		return errors.New("serve needs --cert and --key")
	}
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Addr:              addr,
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12},
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	fmt.Fprintf(os.Stderr, "serving Istio's injection webhook on https://%s/inject\n", addr)
	if err := srv.ListenAndServeTLS("", ""); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
