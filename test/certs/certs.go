// Package certs issues the serving certificates the project's tests need: a private CA, and leaf
// certificates for 127.0.0.1 written into a folder the way a rotating secret volume updates it.
package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// CA is a private certificate authority for one test.
type CA struct {
	Cert *x509.Certificate
	key  *ecdsa.PrivateKey
	// PEM is the CA certificate, for a webhook configuration's caBundle.
	PEM []byte
}

// NewCA creates a CA named name, valid for a day.
func NewCA(t testing.TB, name string) *CA {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	check(t, err)
	cert, err := x509.ParseCertificate(der)
	check(t, err)
	return &CA{Cert: cert, key: key, PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// Pool is a pool that trusts the CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// Issue writes a fresh serving certificate for 127.0.0.1 with the given serial number and its key
// into dir as tls.crt and tls.key: written aside, then renamed into place, as Kubernetes updates a
// mounted secret.
func (ca *CA) Issue(t testing.TB, dir string, serial int64) *x509.Certificate {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "127.0.0.1"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	check(t, err)
	kb, err := x509.MarshalECPrivateKey(key)
	check(t, err)
	write := func(name string, block *pem.Block) {
		check(t, os.WriteFile(filepath.Join(dir, name+".tmp"), pem.EncodeToMemory(block), 0o600))
	}
	write("tls.key", &pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
	write("tls.crt", &pem.Block{Type: "CERTIFICATE", Bytes: der})
	check(t, os.Rename(filepath.Join(dir, "tls.key.tmp"), filepath.Join(dir, "tls.key")))
	check(t, os.Rename(filepath.Join(dir, "tls.crt.tmp"), filepath.Join(dir, "tls.crt")))
	cert, err := x509.ParseCertificate(der)
	check(t, err)
	return cert
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	check(t, err)
	return key
}

func check(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
