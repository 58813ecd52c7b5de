// Package inject is the one injection entry point: the webhook (package webhook) and the offline
// preview (`spire-mesh-injector inject`, package preview) both decode a pod with DecodePod and wire
// it with Pod, which copies it, runs the mutator chain on the copy and derives the one JSON patch
// from the pod as received to the wired copy. A preview is therefore the webhook's result by
// construction, not by a test.
//
// The copy and the diff share one contract, kept in this package: the copy (scratch.copyOf)
// shares everything reached through a pointer with the received pod, and the patch builder (Patch)
// recognises untouched elements by that identity.
package inject

import (
	"fmt"
	"maps"
	"slices"
	"sync"
	"unsafe"

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
	// modify it, and not after Release.
	Pod *corev1.Pod
	// Ops turn the pod as received into Pod; empty when nothing changed. Patch is Ops encoded,
	// at most MaxPatchBytes; nil when nothing changed. Neither is valid after Release.
	Ops   []jsonpatch.Operation
	Patch []byte
	// Result is what the chain decided.
	Result mutators.Result

	scratch *scratch // the storage of Pod, Ops and Patch, for the next admission once released
}

// Release gives the storage of Pod, Ops and Patch back for another admission to reuse: call it
// once none of them is read any more (the response that carries the patch is encoded). Result
// stays valid. An Outcome never released costs only the reuse.
func (o *Outcome) Release() {
	if s := o.scratch; s != nil {
		o.scratch, o.Pod, o.Ops, o.Patch = nil, nil, nil, nil
		s.release()
	}
}

// Pod wires pod, which stays as it is, in namespace (the admission request's: pods created by a
// controller carry none in their metadata). A *mutators.InvalidError is the pod author's mistake;
// any other error, a panic in a mutator included, is an internal fault.
func Pod(run Runner, pod *corev1.Pod, namespace string) (out Outcome, err error) {
	s := scratchPool.Get().(*scratch)
	defer func() {
		if r := recover(); r != nil {
			// s is dropped, not reused: the mutator that panicked may hold on to it.
			out, err = Outcome{}, fmt.Errorf("panic in mutator chain: %v", r)
		}
	}()
	mut := s.copyOf(pod)
	res, err := run(mut, mutators.Request{Namespace: namespace})
	if err != nil {
		s.release()
		return Outcome{Result: res}, err
	}
	s.ops, err = appendOps(s.ops[:0], pod, mut)
	if err != nil {
		s.release()
		return Outcome{}, err
	}
	ops := s.ops
	var patch []byte
	if len(ops) > 0 {
		if s.patch, err = appendPatch(s.patch[:0], ops); err != nil {
			s.release()
			return Outcome{}, err
		}
		patch = s.patch
		if len(patch) > MaxPatchBytes {
			s.release()
			return Outcome{}, mutators.Invalidf("spec: wiring this pod's %d containers takes a JSON patch of %d bytes, over spire-mesh-injector's limit of %d bytes; allowed: pods with fewer containers",
				len(pod.Spec.InitContainers)+len(pod.Spec.Containers), len(patch), MaxPatchBytes)
		}
	}
	return Outcome{Pod: mut, Ops: ops, Patch: patch, Result: res, scratch: s}, nil
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

// scratch is the storage of one admission's mutable copy of a pod (copyOf), its operations and its
// encoded patch, reused from one admission to the next (Outcome.Release): they were a third of
// what the admission of a typical pod allocated besides decoding it, and every allocated byte
// costs the garbage collector again.
type scratch struct {
	pod                 corev1.Pod
	labels, annotations map[string]string
	volumes             []corev1.Volume
	containers          []corev1.Container // init containers, then containers
	env                 []corev1.EnvVar    // every container's env, one after the other
	mounts              []corev1.VolumeMount
	ops                 []jsonpatch.Operation
	patch               []byte
}

var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

// maxScratchBytes bounds the storage a released scratch keeps: the copy of a pod far larger than
// usual is left to the garbage collector rather than held for the next admission.
const maxScratchBytes = 256 << 10

// maxScratchKeys bounds the labels or annotations a released scratch keeps a map for.
const maxScratchKeys = 64

// copyOf returns a copy of pod, in s's storage, that the chain may mutate while pod stays as it
// arrived: the maps and slices mutators change (labels, annotations, volumes, containers and each
// container's env and volume mounts) are copies, everything reached through a pointer is shared.
// That is why mutators replace, and never modify in place, anything behind a pointer (a volume
// source, a probe, a security context). It costs a fraction of a DeepCopy on every admission, and
// lets Patch tell untouched elements by identity. Each copied list has a little room of its own
// after it (take), and none beyond: a mutator's append never writes into the next list's storage.
// Nil stays nil and empty stays empty.
func (s *scratch) copyOf(pod *corev1.Pod) *corev1.Pod {
	s.pod = *pod
	out := &s.pod
	out.Labels = copyMap(&s.labels, pod.Labels)
	out.Annotations = copyMap(&s.annotations, pod.Annotations)
	s.volumes, s.containers, s.env, s.mounts = s.volumes[:0], s.containers[:0], s.env[:0], s.mounts[:0]
	out.Spec.Volumes = take(&s.volumes, pod.Spec.Volumes)
	out.Spec.InitContainers = s.copyContainers(pod.Spec.InitContainers)
	out.Spec.Containers = s.copyContainers(pod.Spec.Containers)
	return out
}

func (s *scratch) copyContainers(cs []corev1.Container) []corev1.Container {
	out := take(&s.containers, cs)
	for i := range out {
		out[i].Env = take(&s.env, out[i].Env)
		out[i].VolumeMounts = take(&s.mounts, out[i].VolumeMounts)
	}
	return out
}

// slack is the room take leaves after each copied list, its own, for a mutator's appends: the
// webhook adds one or two elements to a list (an env var, a mount, a volume, the JWT helper), and
// appending them to a list with no room would allocate twice its size.
const slack = 2

// take appends list to the arena and returns the copy, with room for slack more elements and no
// more, so that appending beyond that makes a new array instead of writing into the next list.
func take[T any](arena *[]T, list []T) []T {
	if len(list) == 0 {
		return list[:0:0] // nil or empty, as list is
	}
	start := len(*arena)
	*arena = append(*arena, list...)
	end := len(*arena)
	*arena = slices.Grow(*arena, slack)[:end+slack]
	clear((*arena)[end:])
	return (*arena)[start : end : end+slack]
}

func copyMap(dst *map[string]string, src map[string]string) map[string]string {
	if src == nil {
		return nil
	}
	if *dst == nil {
		*dst = make(map[string]string, len(src))
	} else {
		clear(*dst) // the last admission's keys
	}
	maps.Copy(*dst, src)
	return *dst
}

// release keeps s for another admission unless it grew too large. What it holds is overwritten by
// the next copy, not cleared now: clearing memory that holds pointers costs the garbage collector's
// write barrier while it marks, which is most of the time under load. Until then (or until the
// garbage collector drops pooled objects, after two cycles) s keeps the last pod's strings alive.
func (s *scratch) release() {
	// A map keeps its size once grown, and clearing it costs as much: one grown by a pod with
	// unusually many labels or annotations is left to the garbage collector.
	if len(s.labels) > maxScratchKeys {
		s.labels = nil
	}
	if len(s.annotations) > maxScratchKeys {
		s.annotations = nil
	}
	size := cap(s.volumes)*int(unsafe.Sizeof(corev1.Volume{})) + cap(s.containers)*int(unsafe.Sizeof(corev1.Container{})) +
		cap(s.env)*int(unsafe.Sizeof(corev1.EnvVar{})) + cap(s.mounts)*int(unsafe.Sizeof(corev1.VolumeMount{})) +
		cap(s.ops)*int(unsafe.Sizeof(jsonpatch.Operation{})) + cap(s.patch)
	if size <= maxScratchBytes {
		scratchPool.Put(s)
	}
}
