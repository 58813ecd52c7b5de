package integration

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/registration"
	"github.com/spire-mesh-injector/spire-mesh-injector/server"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/kube"
)

// testCA issues serving certificates for 127.0.0.1, so a test can rotate a server's certificate
// while the API server keeps trusting it.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t *testing.T) *testCA {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "rotation test CA"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue writes a fresh leaf certificate and key into dir, as a rotating secret volume does.
func (ca *testCA) issue(t *testing.T, dir string, serial int64) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "127.0.0.1"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	require.NoError(t, err)
	kb, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "tls.key.tmp"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "tls.crt.tmp"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	require.NoError(t, os.Rename(filepath.Join(dir, "tls.key.tmp"), filepath.Join(dir, "tls.key")))
	require.NoError(t, os.Rename(filepath.Join(dir, "tls.crt.tmp"), filepath.Join(dir, "tls.crt")))
}

// TestCertificateRotationUnderLoad runs a replica with a certificate of its own CA, registered
// (failurePolicy Fail, so every webhook failure is a failed pod creation) for namespaces labelled
// rotation-test, and rotates its serving certificate three times while pods are created
// continuously: every creation succeeds and every pod is wired.
func TestCertificateRotationUnderLoad(t *testing.T) {
	ctx := context.Background()
	ca := newTestCA(t)
	dir := t.TempDir()
	ca.issue(t, dir, 2)
	port, health := freePort(), freePort()
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- server.Run(sctx, testConfig, server.Options{RestConfig: cp.Config, Host: "127.0.0.1", Port: port, CertDir: dir,
			HealthAddr: "127.0.0.1:" + strconv.Itoa(health), MetricsAddr: "0", LeaderElection: true, LeaderElectionNamespace: leaseNamespace,
			Log: zap.New(zap.WriteTo(io.Discard))})
	}()
	t.Cleanup(func() { cancel(); <-done })
	require.NoError(t, kube.WaitReady(ctx, getStatus("http://127.0.0.1:"+strconv.Itoa(health)+"/readyz")))

	mwc, err := kube.WebhookConfiguration(fmt.Sprintf("https://127.0.0.1:%d", port), ca.pem)
	require.NoError(t, err)
	mwc.Name = "spire-mesh-injector-rotation-test"
	fail := admissionregistrationv1.Fail
	mwc.Webhooks[0].FailurePolicy = &fail
	mwc.Webhooks[0].NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"rotation-test": "true"}}
	require.NoError(t, k8s.Create(ctx, mwc))
	t.Cleanup(func() { _ = k8s.Delete(context.Background(), mwc) })
	ns := namespace(t, false, nil)
	nsObj := &corev1.Namespace{}
	require.NoError(t, k8s.Get(ctx, client.ObjectKey{Name: ns}, nsObj))
	nsObj.Labels["rotation-test"] = "true"
	require.NoError(t, k8s.Update(ctx, nsObj))
	eventually(t, "the rotation webhook is active", func() bool {
		p := plainPod(ns, "probe", nil)
		return k8s.Create(ctx, p, client.DryRunAll) == nil && p.Labels[annotations.InjectedLabel] != ""
	})

	var created, failed, unwired atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 3 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				p := plainPod(ns, fmt.Sprintf("load-%d-%d", w, i), nil)
				if err := k8s.Create(ctx, p); err != nil {
					failed.Add(1)
					t.Logf("creation failed: %v", err)
					continue
				}
				created.Add(1)
				if p.Labels[annotations.InjectedLabel] == "" {
					unwired.Add(1)
				}
			}
		})
	}
	for serial := int64(3); serial <= 5; serial++ {
		time.Sleep(time.Second)
		ca.issue(t, dir, serial)
	}
	time.Sleep(2 * time.Second)
	close(stop)
	wg.Wait()
	conn, err := tls.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port), &tls.Config{InsecureSkipVerify: true})
	require.NoError(t, err)
	assert.Equal(t, int64(5), conn.ConnectionState().PeerCertificates[0].SerialNumber.Int64(), "the last certificate is served")
	conn.Close()
	assert.Zero(t, failed.Load(), "failed admissions")
	assert.Zero(t, unwired.Load(), "pods admitted unwired")
	assert.Greater(t, created.Load(), int64(20))
	t.Logf("MEASURE certificate rotated 3 times under load: %d pods created, %d failed", created.Load(), failed.Load())
}

// TestRegistrationRepairedAfterCRDOutage removes the ClusterSPIFFEID CRD (as an operator
// reinstalling SPIRE might): pods are still admitted wired (failurePolicy Ignore) with a warning, an
// Event on the namespace and the metric naming the cause; once the CRD is back, the reconciler
// creates the missing registration without anyone touching the pod.
func TestRegistrationRepairedAfterCRDOutage(t *testing.T) {
	ctx := context.Background()
	crdDir, err := kube.SCMCRDDir()
	require.NoError(t, err)
	scheme := server.Scheme()
	require.NoError(t, apiextensionsv1.AddToScheme(scheme))
	admin, err := client.New(cp.Config, client.Options{Scheme: scheme})
	require.NoError(t, err)
	crd := &apiextensionsv1.CustomResourceDefinition{}
	require.NoError(t, admin.Get(ctx, client.ObjectKey{Name: "clusterspiffeids.spire.spiffe.io"}, crd))
	require.NoError(t, admin.Delete(ctx, crd))
	restored := false
	restore := func() {
		if restored {
			return
		}
		restored = true
		_, err := envtest.InstallCRDs(cp.Config, envtest.CRDInstallOptions{Paths: []string{filepath.Join(crdDir, "spire.spiffe.io_clusterspiffeids.yaml")}})
		require.NoError(t, err)
	}
	t.Cleanup(restore)
	eventually(t, "the CRD is gone", func() bool {
		err := admin.Get(ctx, client.ObjectKey{Name: "clusterspiffeids.spire.spiffe.io"}, &apiextensionsv1.CustomResourceDefinition{})
		return apierrors.IsNotFound(err)
	})

	ns := namespace(t, true, nil)
	before := metricSum(t, "spire_mesh_injector_registration_ensures_total", map[string]string{"reason": registration.ReasonCRDMissing})
	w := &warnings{}
	cfg := rest.CopyConfig(cp.Config)
	cfg.WarningHandler = w
	wc, err := client.New(cfg, client.Options{Scheme: server.Scheme()})
	require.NoError(t, err)
	pod := plainPod(ns, "during-outage", nil)
	require.NoError(t, wc.Create(ctx, pod), "failurePolicy Ignore admits the pod")
	assert.Equal(t, "workload", pod.Labels[annotations.InjectedLabel], "wired all the same")
	require.NotEmpty(t, w.list)
	assert.Contains(t, w.list[0], "the ClusterSPIFFEID CRD")
	assert.Greater(t, metricSum(t, "spire_mesh_injector_registration_ensures_total", map[string]string{"reason": registration.ReasonCRDMissing}), before)
	eventually(t, "a RegistrationCRDMissing Event on the namespace", func() bool {
		var events corev1.EventList
		require.NoError(t, k8s.List(ctx, &events, client.InNamespace("default")))
		for _, e := range events.Items {
			if e.InvolvedObject.Name == ns && e.Reason == "Registration"+registration.ReasonCRDMissing {
				return true
			}
		}
		return false
	})

	restore()
	require.Eventually(t, func() bool {
		_, err := getCSID(ctx, ns)
		return err == nil
	}, 60*time.Second, 200*time.Millisecond, "the reconciler creates the registration once the CRD is back")
}
