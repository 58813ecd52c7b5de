package perf

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"time"

	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/benchpod"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/controlplane"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/podtest"
)

// TypicalReview is the AdmissionReview the API server sends to create the typical post-Istio pod
// of the performance figures (test/fixtures/benchpod's, the one BenchmarkAdmission and Istio's side of
// figure 2 call "typical") in namespace, the pod decoded and marshalled as there.
func TypicalReview(namespace string) ([]byte, error) {
	pod, err := benchpod.Load(filepath.Join(controlplane.Root(), benchpod.TypicalFixture))
	if err != nil {
		return nil, err
	}
	pj, err := json.Marshal(pod)
	if err != nil {
		return nil, err
	}
	return json.Marshal(map[string]any{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": podtest.Request(namespace, pj)})
}

var (
	allowed = []byte(`"allowed":true`)
	patched = []byte(`"patch":`)
)

// Admit POSTs one review to url and checks that the pod was admitted with a patch. The response
// is read into buf, which callers reuse, and searched rather than decoded: a load generator
// sharing the machine with the server must stay cheap.
func Admit(ctx context.Context, client *http.Client, url string, body []byte, buf *bytes.Buffer) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	buf.Reset()
	if _, err := io.Copy(buf, resp.Body); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("HTTP %s: %.200s", resp.Status, buf.Bytes())
	}
	if !bytes.Contains(buf.Bytes(), allowed) || !bytes.Contains(buf.Bytes(), patched) {
		return fmt.Errorf("not admitted with a patch: %.300s", buf.Bytes())
	}
	return nil
}

// Traffic admits body at rate per second, one at a time, until the returned stop is called; stop
// returns how many were sent and how many failed. Memory measured at rest understates a serving
// process: without allocations no garbage collection runs, and garbage left by a burst (a
// restart's initial list) stays resident. A trickle of admissions keeps the collector cycling,
// as a cluster creating pods does.
func Traffic(ctx context.Context, client *http.Client, url string, body []byte, rate int) (stop func() (sent, failed int)) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	var sent, failed int
	go func() {
		defer close(done)
		var buf bytes.Buffer
		tick := time.NewTicker(time.Second / time.Duration(rate))
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			sent++
			if err := Admit(ctx, client, url, body, &buf); err != nil && ctx.Err() == nil {
				failed++
			}
		}
	}()
	return func() (int, int) {
		cancel()
		<-done
		return sent, failed
	}
}
