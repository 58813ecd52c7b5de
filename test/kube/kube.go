// Package kube starts a real control plane for the project's tests and demo: kube-apiserver and
// etcd built from the Go module proxy by test/tools/build.sh (no download from anywhere else),
// spire-controller-manager's real CRDs from the module cache, and the MutatingWebhookConfiguration
// exactly as kustomize renders it from kustomize/base, only re-pointed at a local listener.
package kube

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/spire-mesh-injector/spire-mesh-injector/registration"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/tools"
)

// Root is the repository's top folder.
func Root() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// Assets is the folder holding kube-apiserver, etcd and kubectl (KUBEBUILDER_ASSETS).
func Assets() (string, error) {
	return tools.Dir("KUBEBUILDER_ASSETS", "kube", "kube-apiserver", "etcd", "kubectl")
}

// SCMCRDDir is spire-controller-manager's CRD folder in the module cache.
func SCMCRDDir() (string, error) {
	cmd := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/spiffe/spire-controller-manager")
	cmd.Dir = Root()
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("locating spire-controller-manager in the module cache: %w", err)
	}
	return filepath.Join(strings.TrimSpace(string(out)), "config", "crd", "bases"), nil
}

// Kustomize renders a kustomization folder as `kubectl kustomize` does and returns its YAML.
func Kustomize(dir string) ([]byte, error) {
	res, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		return nil, fmt.Errorf("kustomize %s: %w", dir, err)
	}
	return res.AsYaml()
}

// WebhookConfiguration returns the MutatingWebhookConfiguration rendered from kustomize/base,
// re-pointed at url with caBundle: only clientConfig changes.
func WebhookConfiguration(url string, caBundle []byte) (*admissionregistrationv1.MutatingWebhookConfiguration, error) {
	y, err := Kustomize(filepath.Join(Root(), "kustomize", "base"))
	if err != nil {
		return nil, err
	}
	decoder := serializer.NewCodecFactory(clientgoscheme.Scheme).UniversalDeserializer()
	for _, doc := range bytes.Split(y, []byte("\n---\n")) {
		if !bytes.Contains(doc, []byte("kind: MutatingWebhookConfiguration")) {
			continue
		}
		obj, _, err := decoder.Decode(doc, nil, nil)
		if err != nil {
			return nil, err
		}
		mwc := obj.(*admissionregistrationv1.MutatingWebhookConfiguration)
		for i := range mwc.Webhooks {
			cc := &mwc.Webhooks[i].ClientConfig
			u := url + *cc.Service.Path
			cc.URL, cc.Service, cc.CABundle = &u, nil, caBundle
		}
		return mwc, nil
	}
	return nil, errors.New("kustomize/base renders no MutatingWebhookConfiguration")
}

// ControlPlane is a running kube-apiserver and etcd with the ClusterSPIFFEID CRDs installed, and
// the serving certificate (host, port, folder, CA) a webhook under test listens with.
type ControlPlane struct {
	Env    *envtest.Environment
	Config *rest.Config
	// Host and Port are where the webhook must listen; CertDir holds its tls.crt and tls.key,
	// signed by CA.
	Host    string
	Port    int
	CertDir string
	CA      []byte
}

// Start starts the control plane.
func Start() (*ControlPlane, error) {
	assets, err := Assets()
	if err != nil {
		return nil, err
	}
	crds, err := SCMCRDDir()
	if err != nil {
		return nil, err
	}
	env := &envtest.Environment{
		BinaryAssetsDirectory: assets,
		CRDDirectoryPaths:     []string{crds},
		ErrorIfCRDPathMissing: true,
		WebhookInstallOptions: envtest.WebhookInstallOptions{LocalServingHost: "127.0.0.1"},
	}
	cfg, err := env.Start()
	if err != nil {
		return nil, fmt.Errorf("starting kube-apiserver and etcd from %s: %w", assets, err)
	}
	w := env.WebhookInstallOptions
	return &ControlPlane{Env: env, Config: cfg, Host: w.LocalServingHost, Port: w.LocalServingPort, CertDir: w.LocalServingCertDir, CA: w.LocalServingCAData}, nil
}

// Stop stops the control plane.
func (c *ControlPlane) Stop() error { return c.Env.Stop() }

// URL is the base URL of the webhook listener.
func (c *ControlPlane) URL() string { return fmt.Sprintf("https://%s:%d", c.Host, c.Port) }

// InstallWebhook installs the kustomize-rendered MutatingWebhookConfiguration pointing at the
// local listener, and waits until the API server has it.
func (c *ControlPlane) InstallWebhook(ctx context.Context) (*admissionregistrationv1.MutatingWebhookConfiguration, error) {
	mwc, err := WebhookConfiguration(c.URL(), c.CA)
	if err != nil {
		return nil, err
	}
	cl, err := client.New(c.Config, client.Options{Scheme: registration.Scheme()})
	if err != nil {
		return nil, err
	}
	if err := cl.Create(ctx, mwc); err != nil {
		return nil, err
	}
	return mwc, nil
}

// WaitReady polls url (a /readyz endpoint) until it answers 200.
func WaitReady(ctx context.Context, get func(context.Context) (int, error)) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	for {
		code, err := get(ctx)
		if err == nil && code == 200 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not ready: last status %d, error %v", code, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// WriteKubeconfig writes a kubeconfig for the control plane's admin user to path, for kubectl and
// for processes (spire-controller-manager) that take a kubeconfig file.
func (c *ControlPlane) WriteKubeconfig(path, namespace string) error {
	rc := c.Config
	kc := clientcmdapi.NewConfig()
	kc.Clusters["envtest"] = &clientcmdapi.Cluster{Server: rc.Host, CertificateAuthorityData: rc.CAData}
	kc.AuthInfos["envtest"] = &clientcmdapi.AuthInfo{ClientCertificateData: rc.CertData, ClientKeyData: rc.KeyData, Token: rc.BearerToken}
	kc.Contexts["envtest"] = &clientcmdapi.Context{Cluster: "envtest", AuthInfo: "envtest", Namespace: namespace}
	kc.CurrentContext = "envtest"
	return clientcmd.WriteToFile(*kc, path)
}

// FreePort returns a loopback TCP port that is free now.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
