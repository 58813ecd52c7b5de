// Package mutators is the domain of spire-mesh-injector: pure functions over a typed *corev1.Pod
// and the validated configuration, with no I/O and no clients. A small chain runs them in order;
// each step says which pods it handles and changes only what it owns, ensuring by name so that
// running the chain again changes nothing.
package mutators

import (
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/config"
	"github.com/spire-mesh-injector/spire-mesh-injector/identity"
)

// Names the webhook owns inside a pod. A pod that already uses one of them for something else is
// refused rather than silently changed.
const (
	// WorkloadAPIVolume is the SPIFFE CSI volume the webhook adds to pods without a proxy.
	WorkloadAPIVolume = "spiffe-workload-api"
	// JWTVolume is the in-memory volume the JWT helper writes tokens into.
	JWTVolume = "spiffe-jwt-svids"
	// JWTHelperContainer is the JWT-SVID helper sidecar's name.
	JWTHelperContainer = "spiffe-jwt-helper"
)

// InvalidError is a mistake in the pod the user can fix: the webhook denies the pod with Error(),
// which names the field and says what is allowed. Any other error from the chain is an internal
// fault.
type InvalidError struct{ msg string }

func (e *InvalidError) Error() string { return e.msg }

func invalidf(format string, args ...any) error {
	return &InvalidError{msg: fmt.Sprintf(format, args...)}
}

// Invalidf returns an InvalidError: for the layers above the chain (the patch bound) that refuse
// a pod for its author to fix.
func Invalidf(format string, args ...any) error { return invalidf(format, args...) }

// IsInvalid reports whether err is (or wraps) an InvalidError.
func IsInvalid(err error) bool {
	var ie *InvalidError
	return errors.As(err, &ie)
}

// Request is what the chain knows about one admission besides the pod.
type Request struct {
	// Namespace is the pod's namespace, from the admission request (pods created by a ReplicaSet
	// carry none in their metadata).
	Namespace string
}

// Result says what the chain decided.
type Result struct {
	// Mode is how the pod was wired; empty when it was skipped.
	Mode annotations.Mode
	// Skipped is why the pod was left alone; empty when it was wired.
	Skipped annotations.SkipReason
	// Status is the status annotation the pod now carries (zero when skipped by opt-out).
	Status annotations.Status
	// Warnings are for the pod's author (admission warnings, which kubectl shows): each short
	// enough to show whole (MaxWarning).
	Warnings []string
}

// Admission warnings: the API server shows a warning of up to MaxAdmissionWarning characters whole,
// and the webhook starts each with WarningPrefix, so the chain's own are at most MaxWarning long.
const (
	WarningPrefix       = "spire-mesh-injector: "
	MaxAdmissionWarning = 120
	MaxWarning          = MaxAdmissionWarning - len(WarningPrefix)
)

// state is one run's parsed view of the pod and what the run has done so far. Everything a
// mutator needs is parsed into it before any mutator runs.
type state struct {
	cfg       *config.Config
	ids       *identity.IDs
	namespace string
	mode      annotations.Mode
	audiences []string
	extAuthz  string // audience the helper's ext_authz mode injects; "" when off
	prev      annotations.Status
	status    annotations.Status
	warnings  []string
}

// warn records a warning for the pod's author.
func (s *state) warn(msg string) {
	if len(msg) > MaxWarning {
		msg = msg[:MaxWarning-3] + "..."
	}
	s.warnings = append(s.warnings, msg)
}

// mutator is one step of the chain.
type mutator interface {
	name() string
	handles(s *state) bool
	mutate(pod *corev1.Pod, s *state) error
}

// Chain runs the mutators in order. It is immutable and safe for concurrent use.
type Chain struct {
	cfg   *config.Config
	ids   *identity.IDs
	steps []mutator
}

// NewChain returns the chain for cfg, which must be validated.
func NewChain(cfg *config.Config) *Chain {
	return &Chain{cfg: cfg, ids: identity.NewIDs(cfg), steps: []mutator{
		stripPrevious{},  // take back what an earlier invocation added, so the result depends only on the pod's final shape
		reservedNames{},  // names the webhook owns are not the user's to take
		spireTemplate{},  // mesh pods: undo what Istio's SPIRE template adds beyond our wiring
		istioProxy{},     // mesh pods: Istio's workload-socket becomes the SPIFFE CSI volume
		workloadSocket{}, // pods without a proxy: the Workload API socket in every app container
		jwtHelper{},      // pods asking for JWT-SVIDs: the helper sidecar and its token volume
		labelsAndStatus{},
	}}
}

// Config is the configuration the chain runs with.
func (c *Chain) Config() *config.Config { return c.cfg }

// Run mutates pod in place. An *InvalidError means the pod is refused for a reason its author can
// fix; pod may then be partly changed and must be discarded.
func (c *Chain) Run(pod *corev1.Pod, req Request) (Result, error) {
	if pod.Labels[annotations.InjectionLabel] == annotations.InjectionDisabled {
		return Result{Skipped: annotations.SkipOptOut}, nil
	}
	s := &state{cfg: c.cfg, ids: c.ids, namespace: req.Namespace}
	if v, ok := pod.Annotations[annotations.StatusAnnotation]; ok {
		prev, err := annotations.ParseStatus(v)
		if err != nil {
			return Result{}, invalidf("metadata.annotations[%s]: %v; this annotation is written by spire-mesh-injector: remove it from the pod template", annotations.StatusAnnotation, err)
		}
		s.prev = prev
	}
	if isIstioControlPlane(pod) {
		dropInjectedLabel(pod)
		return Result{Skipped: annotations.SkipIstioControlPlane}, nil
	}
	if pod.Spec.OS != nil && pod.Spec.OS.Name == corev1.Windows {
		st := annotations.Status{Skipped: annotations.SkipWindows, ConfigVersion: c.cfg.Version()}
		setAnnotation(pod, annotations.StatusAnnotation, st.Encode())
		dropInjectedLabel(pod)
		return Result{Skipped: annotations.SkipWindows, Status: st}, nil
	}
	if v, ok := pod.Annotations[annotations.AudienceAnnotation]; ok {
		auds, err := annotations.ParseAudiences(v, c.cfg.JWTHelper.MaxAudiences)
		if err != nil {
			return Result{}, &InvalidError{msg: "metadata." + err.Error()}
		}
		s.audiences = auds
	}
	if v, ok := pod.Annotations[annotations.ExtAuthzAnnotation]; ok {
		aud, err := annotations.ParseExtAuthz(v, s.audiences)
		if err != nil {
			return Result{}, &InvalidError{msg: "metadata." + err.Error()}
		}
		s.extAuthz = aud
	}
	s.mode = annotations.ModeWorkload
	if proxy, _, ok := FindContainer(pod, c.cfg.Istio.ProxyContainerName); ok {
		if awaitingIstio(pod, proxy) {
			dropInjectedLabel(pod)
			return Result{Skipped: annotations.SkipAwaitingIstio}, nil
		}
		s.mode = annotations.ModeMesh
	}
	for _, m := range c.steps {
		if !m.handles(s) {
			continue
		}
		if err := m.mutate(pod, s); err != nil {
			if IsInvalid(err) {
				return Result{}, err
			}
			return Result{}, fmt.Errorf("mutator %s: %w", m.name(), err)
		}
	}
	return Result{Mode: s.mode, Status: s.status, Warnings: s.warnings}, nil
}

// dropInjectedLabel removes the label the webhook sets on the pods it wires, from a pod it does
// not wire: set by hand, it would let the namespace's registration select a pod the webhook never
// wired.
func dropInjectedLabel(pod *corev1.Pod) {
	delete(pod.Labels, annotations.InjectedLabel)
}
