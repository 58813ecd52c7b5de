package server

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestCertificateExpiry(t *testing.T) {
	dir := t.TempDir()
	reg := prometheus.NewRegistry()
	registerCertificateExpiry(reg, dir)
	value := func() float64 {
		n, err := testutil.GatherAndCount(reg, "spire_mesh_injector_serving_certificate_expiry_timestamp_seconds")
		require.NoError(t, err)
		require.Equal(t, 1, n)
		mfs, err := reg.Gather()
		require.NoError(t, err)
		return mfs[0].GetMetric()[0].GetGauge().GetValue()
	}
	assert.Equal(t, 0.0, value(), "no certificate yet reads as 0")

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	notAfter := time.Now().Add(90 * 24 * time.Hour).Truncate(time.Second)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "x"}, NotBefore: time.Now(), NotAfter: notAfter}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "tls.crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	assert.Equal(t, float64(notAfter.Unix()), value(), "read at scrape time")

	require.NoError(t, os.WriteFile(filepath.Join(dir, "tls.crt"), []byte("not a certificate"), 0o600))
	assert.Equal(t, 0.0, certificateExpiry(filepath.Join(dir, "tls.crt")))
}
