// Package inject is the one injection entry point: the webhook (package webhook) and the offline
// preview (`spire-mesh-injector inject`, package preview) both decode a pod with DecodePod and wire
// it with Pod, which copies it, runs the mutator chain on the copy and derives the one JSON patch
// from the pod as received to the wired copy. A preview is therefore the webhook's result by
// construction, not by a test.
//
// The copy and the diff share one contract, kept in this package: the copy (copyForMutation)
// shares everything reached through a pointer with the received pod, and the patch builder (Patch)
// recognises untouched elements by that identity.
package inject

import (
	"fmt"
	"maps"
	"slices"

	"gomodules.xyz/jsonpatch/v2"
	corev1 "k8s.io/api/core/v1"
	kjson "sigs.k8s.io/json"

	"github.com/spire-mesh-injector/spire-mesh-injector/mutators"
)

// Runner runs the mutator chain on a pod in place: (*mutators.Chain).Run, or a stand-in in tests.
type Runner func(*corev1.Pod, mutators.Request) (mutators.Result, error)

// Outcome is what wiring one pod gives.
type Outcome struct {
	// Pod is the wired pod. It shares unchanged parts with the pod given to Pod: read it, never
	// modify it.
	Pod *corev1.Pod
	// Ops turn the pod as received into Pod; empty when nothing changed. Patch is Ops encoded,
	// at most MaxPatchBytes.
	Ops   []jsonpatch.Operation
	Patch []byte
	// Result is what the chain decided.
	Result mutators.Result
}

// Pod wires pod, which stays as it is, in namespace (the admission request's: pods created by a
// controller carry none in their metadata). A *mutators.InvalidError is the pod author's mistake;
// any other error, a panic in a mutator included, is an internal fault.
func Pod(run Runner, pod *corev1.Pod, namespace string) (out Outcome, err error) {
	defer func() {
		if r := recover(); r != nil {
			out, err = Outcome{}, fmt.Errorf("panic in mutator chain: %v", r)
		}
	}()
	mut := copyForMutation(pod)
	res, err := run(mut, mutators.Request{Namespace: namespace})
	if err != nil {
		return Outcome{Result: res}, err
	}
	ops, err := Patch(pod, mut)
	if err != nil {
		return Outcome{}, err
	}
	var patch []byte
	if len(ops) > 0 {
		if patch, err = EncodePatch(ops); err != nil {
			return Outcome{}, err
		}
		if len(patch) > MaxPatchBytes {
			return Outcome{}, mutators.Invalidf("spec: wiring this pod's %d containers takes a JSON patch of %d bytes, over spire-mesh-injector's limit of %d bytes; allowed: pods with fewer containers",
				len(pod.Spec.InitContainers)+len(pod.Spec.Containers), len(patch), MaxPatchBytes)
		}
	}
	return Outcome{Pod: mut, Ops: ops, Patch: patch, Result: res}, nil
}

// MaxPatchBytes bounds the patch for one pod. A typical pod takes a few kilobytes; a pod that
// would take more than this (thousands of containers) is refused rather than answered with a
// response the API server then has to apply and store.
const MaxPatchBytes = 1 << 20

// DecodePod decodes a pod (or pod template) given as JSON.
func DecodePod(raw []byte) (*corev1.Pod, error) {
	pod := &corev1.Pod{}
	if err := Unmarshal(raw, pod); err != nil {
		return nil, err
	}
	return pod, nil
}

// Unmarshal decodes JSON the way the API machinery does: field names match case-sensitively, so a
// key like "Labels" cannot stand in for "labels" and make the webhook see a different pod than the
// API server stores.
func Unmarshal(data []byte, v any) error {
	return kjson.UnmarshalCaseSensitivePreserveInts(data, v)
}

// copyForMutation returns a copy of pod that the chain may mutate while pod stays as it arrived:
// the maps and slices mutators change (labels, annotations, volumes, containers and each
// container's env and volume mounts) are fresh, everything reached through a pointer is shared.
// That is why mutators replace, and never modify in place, anything behind a pointer (a volume
// source, a probe, a security context). It costs a fraction of a DeepCopy on every admission, and
// lets Patch tell untouched elements by identity.
func copyForMutation(pod *corev1.Pod) *corev1.Pod {
	out := *pod
	out.Labels = maps.Clone(pod.Labels)
	out.Annotations = maps.Clone(pod.Annotations)
	out.Spec.Volumes = slices.Clone(pod.Spec.Volumes)
	out.Spec.InitContainers = cloneContainers(pod.Spec.InitContainers)
	out.Spec.Containers = cloneContainers(pod.Spec.Containers)
	return &out
}

func cloneContainers(cs []corev1.Container) []corev1.Container {
	out := slices.Clone(cs)
	for i := range out {
		out[i].Env = slices.Clone(out[i].Env)
		out[i].VolumeMounts = slices.Clone(out[i].VolumeMounts)
	}
	return out
}
