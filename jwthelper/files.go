package jwthelper

import (
	"context"
	"errors"
	"os"
	"path/filepath"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"

	"github.com/spire-mesh-injector/spire-mesh-injector/jwthelper/contract"
)

// What the helper writes: the JWT bundle beside the tokens, each file replaced atomically.

// bundleWatcher receives JWT bundle updates from the Workload API.
type bundleWatcher struct{ h *Helper }

func (w bundleWatcher) OnJWTBundlesUpdate(set *jwtbundle.Set) {
	w.h.bundles.Store(set)
	w.h.metrics.bundleUpdates.Inc()
	w.h.writeBundle()
}

func (w bundleWatcher) OnJWTBundlesWatchError(err error) {
	if !errors.Is(err, context.Canceled) {
		w.h.log.Warn("watching JWT bundles", "error", err)
	}
}

// writeBundle writes the JWKS of the tokens' trust domain, once both are known.
func (h *Helper) writeBundle() {
	set := h.bundles.Load()
	h.mu.RLock()
	td := h.td
	h.mu.RUnlock()
	if set == nil || td.IsZero() {
		return
	}
	b, ok := set.Get(td)
	if !ok {
		return
	}
	jwks, err := b.Marshal()
	if err == nil {
		err = writeAtomic(filepath.Join(h.opts.OutputDir, contract.BundleFileName), jwks, h.opts.FileMode)
	}
	if err != nil {
		h.log.Error("writing the JWT bundle", "error", err)
	}
}

// writeAtomic replaces path with data: written to a temporary file in the same folder, synced,
// then renamed over path, so a reader sees the old file or the new one, never a partial one.
func writeAtomic(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(mode)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
	}
	return err
}
