// Command spiffe-jwt-helper is the JWT-SVID helper sidecar spire-mesh-injector adds to pods
// annotated with spiffe.io/audience. It is configured only by the flags (and the
// SPIFFE_ENDPOINT_SOCKET variable) the webhook sets; see docs/jwt-helper.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/spire-mesh-injector/spire-mesh-injector/jwthelper"
	"github.com/spire-mesh-injector/spire-mesh-injector/jwthelper/contract"
	"github.com/spire-mesh-injector/spire-mesh-injector/version"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stderr))
}

func run(ctx context.Context, args []string, stderr io.Writer) int {
	var (
		o       jwthelper.Options
		mode    string
		showVer bool
	)
	fs := flag.NewFlagSet("spiffe-jwt-helper", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.SocketAddr, contract.FlagSocket, os.Getenv(contract.EnvEndpointSocket), "Workload API address (default: $"+contract.EnvEndpointSocket+")")
	fs.Func(contract.FlagAudience, "audience to fetch a JWT-SVID for (repeat for several)", func(v string) error {
		o.Audiences = append(o.Audiences, v)
		return nil
	})
	fs.StringVar(&o.OutputDir, contract.FlagOutputDir, contract.DefaultOutputDir, "directory for <audience>.jwt files and "+contract.BundleFileName)
	fs.StringVar(&mode, contract.FlagFileMode, contract.DefaultFileMode, "octal mode of the files written")
	fs.StringVar(&o.HealthAddr, contract.FlagHealthAddr, ":"+strconv.Itoa(contract.DefaultHealthPort), "HTTP address of "+contract.ReadyPath+", "+contract.LivePath+" and "+contract.MetricsPath)
	fs.StringVar(&o.ExtAuthzAddr, contract.FlagExtAuthzAddr, "", "serve Envoy's ext_authz gRPC API here (e.g. 127.0.0.1:"+strconv.Itoa(contract.DefaultExtAuthzPort)+"); empty: off")
	fs.StringVar(&o.ExtAuthzAudience, contract.FlagExtAuthzAudience, "", "audience of the token ext_authz adds to outbound requests")
	fs.DurationVar(&o.MinBackoff, contract.FlagMinBackoff, time.Second, "first retry delay after a failed fetch")
	fs.DurationVar(&o.MaxBackoff, contract.FlagMaxBackoff, 30*time.Second, "longest retry delay")
	fs.BoolVar(&showVer, contract.FlagVersion, false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if showVer {
		fmt.Fprintf(stderr, "spiffe-jwt-helper %s (commit %s)\n", version.Version, version.Commit)
		return 0
	}
	m, err := strconv.ParseUint(mode, 8, 32)
	if err != nil {
		fmt.Fprintf(stderr, "spiffe-jwt-helper: --%s %q: not an octal mode such as %s\n", contract.FlagFileMode, mode, contract.DefaultFileMode)
		return 2
	}
	o.FileMode = os.FileMode(m)
	o.Log = slog.New(slog.NewJSONHandler(stderr, nil))
	h, err := jwthelper.New(o)
	if err != nil {
		fmt.Fprintf(stderr, "spiffe-jwt-helper: %v\n", err)
		return 2
	}
	if err := h.Run(ctx); err != nil {
		fmt.Fprintf(stderr, "spiffe-jwt-helper: %v\n", err)
		return 1
	}
	return 0
}
