package inject

import (
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unsafe"

	"gomodules.xyz/jsonpatch/v2"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"

	"github.com/spire-mesh-injector/spire-mesh-injector/jsonenc"
)

// Patch is the one place where JSON patch operations are made: it compares the pod as it arrived
// with the pod the mutators returned, at the granularity mutators change things (each label and
// annotation key; each volume and container by name; each env var by name and each volume mount by
// path inside a container), and emits add, replace and remove operations there.
//
// Why not a whole-pod generic diff (marshal both, jsonpatch.CreatePatch)? It costs about 3× the
// unavoidable decoding on a typical pod and grows with the pod, on every pod creation in an
// opted-in namespace; this costs a few microseconds. Why not replace whole containers? An API
// server newer than our k8s.io/api may send fields our Go types don't know: a replaced subtree
// would silently drop them. So an element that changed is changed one top-level field at a time
// (diffFields), never replaced: its unknown fields stay. Only elements the webhook adds are added
// whole, and an element of the webhook's own that an earlier invocation added and this one takes
// back and adds again, where a pod wired in the other order has it, is removed and added whole.
// jsonpatch.CreatePatch stays the oracle in tests and fuzzing: both patches applied to the input
// must give the same pod.
func Patch(orig, mut *corev1.Pod) ([]jsonpatch.Operation, error) {
	return appendOps(make([]jsonpatch.Operation, 0, 16), orig, mut)
}

// appendOps appends Patch's operations to ops.
func appendOps(ops []jsonpatch.Operation, orig, mut *corev1.Pod) ([]jsonpatch.Operation, error) {
	diffMap(&ops, "/metadata/labels", orig.Labels, mut.Labels)
	diffMap(&ops, "/metadata/annotations", orig.Annotations, mut.Annotations)
	if err := diffList(&ops, "/spec/volumes", orig.Spec.Volumes, mut.Spec.Volumes, volumeName, diffFields[corev1.Volume]); err != nil {
		return nil, err
	}
	if err := diffList(&ops, "/spec/initContainers", orig.Spec.InitContainers, mut.Spec.InitContainers, containerName, diffContainer); err != nil {
		return nil, err
	}
	if err := diffList(&ops, "/spec/containers", orig.Spec.Containers, mut.Spec.Containers, containerName, diffContainer); err != nil {
		return nil, err
	}
	return ops, nil
}

func volumeName(v *corev1.Volume) string       { return v.Name }
func containerName(c *corev1.Container) string { return c.Name }
func envName(e *corev1.EnvVar) string          { return e.Name }
func mountPath(m *corev1.VolumeMount) string   { return m.MountPath }

// escape encodes a map key or name as a JSON pointer token (RFC 6901).
func escape(s string) string {
	if strings.ContainsAny(s, "~/") {
		s = strings.ReplaceAll(s, "~", "~0")
		s = strings.ReplaceAll(s, "/", "~1")
	}
	return s
}

// keyPath is path/escape(key), built in one allocation: most label and annotation keys hold a /.
func keyPath(path, key string) string {
	var b strings.Builder
	b.Grow(len(path) + len(key) + 4) // room for a key's usual one / escaped
	b.WriteString(path)
	b.WriteByte('/')
	for i := 0; i < len(key); i++ {
		switch key[i] {
		case '~':
			b.WriteString("~0")
		case '/':
			b.WriteString("~1")
		default:
			b.WriteByte(key[i])
		}
	}
	return b.String()
}

// diffMap emits the operations on a map's keys sorted by key (changes, then removals), so that
// one pod gives one patch, whatever order Go's maps iterate in.
func diffMap(ops *[]jsonpatch.Operation, path string, orig, mut map[string]string) {
	if len(orig) == 0 {
		if len(mut) > 0 {
			*ops = append(*ops, jsonpatch.NewOperation("add", path, mut))
		}
		return
	}
	start, kept := len(*ops), 0
	for k, v := range mut {
		if ov, ok := orig[k]; !ok {
			*ops = append(*ops, jsonpatch.NewOperation("add", keyPath(path, k), v))
		} else {
			kept++
			if ov != v {
				*ops = append(*ops, jsonpatch.NewOperation("replace", keyPath(path, k), v))
			}
		}
	}
	changed := len(*ops)
	if kept < len(orig) { // some key is gone
		for k := range orig {
			if _, ok := mut[k]; !ok {
				*ops = append(*ops, jsonpatch.NewOperation("remove", keyPath(path, k), nil))
			}
		}
	}
	sortByPath((*ops)[start:changed])
	sortByPath((*ops)[changed:])
}

func sortByPath(ops []jsonpatch.Operation) {
	if len(ops) > 1 {
		slices.SortFunc(ops, func(a, b jsonpatch.Operation) int { return strings.Compare(a.Path, b.Path) })
	}
}

// elemDiff emits operations that turn orig into mut, both at index idx of the list at path. The
// element's own path is built only when an operation needs it: most elements are unchanged.
type elemDiff[T any] func(ops *[]jsonpatch.Operation, path string, idx int, orig, mut *T) error

func at(path string, idx int) string { return path + "/" + strconv.Itoa(idx) }

// diffFields changes an element that differs field by field: a replace of each top-level field
// whose value changed, an add of each new one, a remove of each one that is gone. The element
// itself is never replaced, so fields our Go types do not know (sent by a newer API server) stay
// as they are, whatever the webhook changed beside them. Volumes, env vars and volume mounts hold
// only strings, booleans and pointers, so == is a cheap exact test when the mutated pod shares the
// original's pointers (scratch.copyOf); an element a mutator rebuilt is compared by value.
func diffFields[T comparable](ops *[]jsonpatch.Operation, path string, idx int, orig, mut *T) error {
	if *orig == *mut {
		return nil
	}
	fieldOps(ops, at(path, idx), orig, mut) // nothing when every field is equal by value
	return nil
}

// fieldOps emits the operations that turn the JSON object of *orig into that of *mut, one per
// top-level field that differs: replaces and adds in the order encoding/json writes the fields,
// then removes. It works on the Go values, as encoding/json would encode them (jsonFieldsOf), so
// that only a changed field's value is ever encoded, when the patch is.
func fieldOps[T any](ops *[]jsonpatch.Operation, path string, orig, mut *T) {
	o, m := reflect.ValueOf(orig).Elem(), reflect.ValueOf(mut).Elem()
	var removed []string
	for _, f := range jsonFieldsOf(o.Type()) {
		if f.sameBytes(unsafe.Pointer(orig), unsafe.Pointer(mut)) {
			continue // the very same value: present in both or in neither, and equal
		}
		of, mf := o.FieldByIndex(f.index), m.FieldByIndex(f.index)
		inO, inM := f.present(of), f.present(mf)
		switch {
		case inM && !inO:
			*ops = append(*ops, jsonpatch.NewOperation("add", path+"/"+f.name, mf.Interface()))
		case inO && !inM:
			removed = append(removed, f.name)
		case inM && !shared(of, mf) && !equality.Semantic.DeepEqual(of.Interface(), mf.Interface()):
			*ops = append(*ops, jsonpatch.NewOperation("replace", path+"/"+f.name, mf.Interface()))
		}
	}
	for _, name := range removed {
		*ops = append(*ops, jsonpatch.NewOperation("remove", path+"/"+name, nil))
	}
}

// jsonField is a top-level field of a struct's JSON object: where it is in the Go struct, its
// name (as a JSON pointer token), and whether encoding/json leaves it out when empty.
type jsonField struct {
	index     []int
	name      string
	omitEmpty bool
	// offset and size locate the field's memory in the outermost struct.
	offset, size uintptr
}

// sameBytes reports whether the field holds the very same bytes in the structs at a and b, the
// cheap test that skips a field the mutators did not touch (sameBytes, below).
func (f *jsonField) sameBytes(a, b unsafe.Pointer) bool {
	n := int(f.size)
	return unsafe.String((*byte)(unsafe.Add(a, f.offset)), n) == unsafe.String((*byte)(unsafe.Add(b, f.offset)), n)
}

// present reports whether encoding/json writes the field with value v.
func (f *jsonField) present(v reflect.Value) bool {
	if !f.omitEmpty {
		return true
	}
	switch v.Kind() {
	case reflect.Array, reflect.Map, reflect.Slice, reflect.String:
		return v.Len() > 0
	case reflect.Bool:
		return v.Bool()
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return v.Int() != 0
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return v.Uint() != 0
	case reflect.Float32, reflect.Float64:
		return v.Float() != 0
	case reflect.Interface, reflect.Pointer:
		return !v.IsNil()
	}
	return true
}

var jsonFieldCache sync.Map // reflect.Type -> []jsonField

// jsonFieldsOf returns the top-level fields of t's JSON object in the order encoding/json writes
// them: exported fields by their json tag's name (or their Go name), fields tagged "-" left out,
// and the fields of an embedded struct without a name (`json:",inline"`) in its place. The API
// types this is used on have no two fields of one name, the only case where encoding/json's rules
// say more; TestJSONFieldsMatchEncodingJSON holds it to encoding/json on every type it is used on.
func jsonFieldsOf(t reflect.Type) []jsonField {
	if fs, ok := jsonFieldCache.Load(t); ok {
		return fs.([]jsonField)
	}
	var out []jsonField
	var walk func(t reflect.Type, prefix []int, base uintptr)
	walk = func(t reflect.Type, prefix []int, base uintptr) {
		for i := range t.NumField() {
			sf := t.Field(i)
			tag := sf.Tag.Get("json")
			if tag == "-" {
				continue
			}
			name, opts, _ := strings.Cut(tag, ",")
			index := append(slices.Clone(prefix), i)
			if sf.Anonymous && name == "" && sf.Type.Kind() == reflect.Struct {
				walk(sf.Type, index, base+sf.Offset)
				continue
			}
			if !sf.IsExported() {
				continue
			}
			if name == "" {
				name = sf.Name
			}
			out = append(out, jsonField{index: index, name: escape(name), omitEmpty: slices.Contains(strings.Split(opts, ","), "omitempty"),
				offset: base + sf.Offset, size: sf.Type.Size()})
		}
	}
	walk(t, nil, 0)
	jsonFieldCache.Store(t, out)
	return out
}

// diffContainer diffs a container at the granularity mutators change it: its env vars and volume
// mounts one by one, and any other field (the JWT helper, which a reinvocation rebuilds, may
// change in any field) one top-level field at a time.
func diffContainer(ops *[]jsonpatch.Operation, path string, idx int, orig, mut *corev1.Container) error {
	envSame, mountsSame := same(orig.Env, mut.Env), same(orig.VolumeMounts, mut.VolumeMounts)
	cpath := at(path, idx)
	if !sameButLists(orig, mut) {
		if o, m := withoutLists(orig), withoutLists(mut); !equality.Semantic.DeepEqual(&o, &m) {
			fieldOps(ops, cpath, &o, &m)
		}
	}
	if !envSame {
		if err := diffList(ops, cpath+"/env", orig.Env, mut.Env, envName, diffFields[corev1.EnvVar]); err != nil {
			return err
		}
	}
	if mountsSame {
		return nil
	}
	return diffList(ops, cpath+"/volumeMounts", orig.VolumeMounts, mut.VolumeMounts, mountPath, diffFields[corev1.VolumeMount])
}

// sameButLists reports whether two containers hold the very same bytes in every field but their
// env and volume mounts: what scratch.copyOf leaves a container no mutator touched (equal
// scalars; slices, maps, pointers and strings sharing their memory). It decides the common case
// without reflection or allocation; false only means "compare by value".
func sameButLists(orig, mut *corev1.Container) bool {
	o, m := *orig, *mut
	o.Env, o.VolumeMounts, m.Env, m.VolumeMounts = nil, nil, nil, nil
	return sameBytes(&o, &m)
}

// sameBytes reports whether *a and *b are byte for byte the same memory contents. Struct padding
// is copied with the struct, so a copy compares equal; were it ever not, the answer would only be
// a false "not the same", which callers treat as "compare by value".
func sameBytes[T any](a, b *T) bool {
	n := int(unsafe.Sizeof(*a))
	return unsafe.String((*byte)(unsafe.Pointer(a)), n) == unsafe.String((*byte)(unsafe.Pointer(b)), n)
}

// shared reports whether a and b, of one type, hold the very same values: equal scalars, and
// slices, maps and pointers that point at the same memory. It is the cheap, allocation-free test
// for an element the mutators did not touch, whose copy (scratch.copyOf) shares all of that with
// the original; false only means "compare by value".
func shared(a, b reflect.Value) bool {
	switch a.Kind() {
	case reflect.Struct:
		for i := range a.NumField() {
			if !shared(a.Field(i), b.Field(i)) {
				return false
			}
		}
		return true
	case reflect.Slice:
		return a.Len() == b.Len() && a.IsNil() == b.IsNil() && (a.Len() == 0 || a.Pointer() == b.Pointer())
	case reflect.Pointer, reflect.Map:
		return a.Pointer() == b.Pointer()
	case reflect.String:
		return a.String() == b.String()
	case reflect.Bool:
		return a.Bool() == b.Bool()
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return a.Int() == b.Int()
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return a.Uint() == b.Uint()
	}
	return false
}

// withoutLists is c without the lists diffContainer diffs element by element.
func withoutLists(c *corev1.Container) corev1.Container {
	out := *c
	out.Env, out.VolumeMounts = nil, nil
	return out
}

// diffList diffs two lists keyed by key. Elements are matched in order (mutators never reorder
// what they did not add), each to the first unmatched original of the same key after the previous
// match, so repeated keys (Kubernetes allows two env vars of one name) pair up correctly.
// Operations come in an order that keeps every index right: changes to matched elements at their
// original index, then removals from the highest index down, then insertions in final order.
func diffList[T any](ops *[]jsonpatch.Operation, path string, orig, mut []T, key func(*T) string, elem elemDiff[T]) error {
	switch {
	case len(orig) == 0 && len(mut) == 0:
		return nil
	case len(orig) == 0:
		*ops = append(*ops, jsonpatch.NewOperation("add", path, mut))
		return nil
	case len(mut) == 0:
		*ops = append(*ops, jsonpatch.NewOperation("remove", path, nil))
		return nil
	case same(orig, mut):
		return nil
	}
	next := matcher(orig, key)
	// Lists of up to 64 elements (nearly all) are matched without allocating.
	var matchedBuf [64]int
	var usedBuf [64]bool
	var matched []int
	var used []bool
	if len(mut) > len(matchedBuf) || len(orig) > len(usedBuf) {
		matched, used = make([]int, len(mut)), make([]bool, len(orig))
	} else {
		matched, used = matchedBuf[:len(mut)], usedBuf[:len(orig)]
	}
	last, kept := -1, 0
	for i := range mut {
		if j := last + 1; j < len(orig) && sameBytes(&orig[j], &mut[i]) {
			// An element the mutators left as it was, at the next position: the one its key would
			// find (the first of the key after the last match), with nothing to diff.
			matched[i], used[j], last = j, true, j
			kept++
			continue
		}
		j := next(key(&mut[i]), last)
		matched[i] = j
		if j < 0 {
			continue
		}
		used[j], last = true, j
		kept++
		if err := elem(ops, path, j, &orig[j], &mut[i]); err != nil {
			return err
		}
	}
	for j := len(orig) - 1; j >= 0; j-- {
		if !used[j] {
			*ops = append(*ops, jsonpatch.NewOperation("remove", at(path, j), nil))
		}
	}
	n := kept
	for i := range mut {
		if matched[i] >= 0 {
			continue
		}
		p := path + "/-"
		if i != n {
			p = at(path, i)
		}
		*ops = append(*ops, jsonpatch.NewOperation("add", p, mut[i]))
		n++
	}
	return nil
}

// same reports whether two lists hold identical elements: the common case of a list the mutators
// did not touch, decided without allocating.
func same[T any](orig, mut []T) bool {
	if len(orig) != len(mut) {
		return false
	}
	switch o := any(orig).(type) {
	case []corev1.EnvVar:
		return slices.Equal(o, any(mut).([]corev1.EnvVar))
	case []corev1.VolumeMount:
		return slices.Equal(o, any(mut).([]corev1.VolumeMount))
	case []corev1.Volume:
		return slices.Equal(o, any(mut).([]corev1.Volume))
	}
	return false
}

// matcher returns a lookup of the first index after `after` whose element has key k (-1 if none).
// A linear scan from `after` is right for lists the mutators only insert into and delete from:
// matched elements are found at the next index, so a whole list costs O(n) plus a scan for each of
// the few added elements.
func matcher[T any](list []T, key func(*T) string) func(k string, after int) int {
	return func(k string, after int) int {
		for j := after + 1; j < len(list); j++ {
			if key(&list[j]) == k {
				return j
			}
		}
		return -1
	}
}

// EncodePatch encodes ops as a JSON patch document, byte for byte as encoding/json encodes them
// ({"op","path","value"} with the value left out only when nil): a remove carries no value, every
// other operation carries its value, whatever it is. The document is written directly; only a
// value that is not a string (a volume, an env var, a map) goes through encoding/json.
// jsonpatch.Operation's own MarshalJSON marshals each value separately and encoding/json then
// re-validates and compacts that output.
func EncodePatch(ops []jsonpatch.Operation) ([]byte, error) {
	return appendPatch(make([]byte, 0, 128*len(ops)), ops)
}

// appendPatch appends EncodePatch's document to buf.
func appendPatch(buf []byte, ops []jsonpatch.Operation) ([]byte, error) {
	w := &appendWriter{buf: buf}
	var enc *json.Encoder // for the values that are not strings or booleans, writing into w
	buf = append(buf, '[')
	for i, op := range ops {
		if op.Operation != "remove" && op.Value == nil {
			return nil, fmt.Errorf("patch operation %s %s has no value", op.Operation, op.Path)
		}
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = append(buf, `{"op":`...)
		buf = jsonenc.AppendString(buf, op.Operation)
		buf = append(buf, `,"path":`...)
		buf = jsonenc.AppendString(buf, op.Path)
		if op.Value != nil {
			buf = append(buf, `,"value":`...)
			switch v := op.Value.(type) {
			case string:
				buf = jsonenc.AppendString(buf, v)
			case bool:
				buf = strconv.AppendBool(buf, v)
			default:
				if enc == nil {
					enc = json.NewEncoder(w)
				}
				w.buf = buf
				if err := enc.Encode(v); err != nil {
					return nil, fmt.Errorf("patch operation %s %s: %w", op.Operation, op.Path, err)
				}
				buf = w.buf[:len(w.buf)-1] // Encode ends the value with a newline
			}
		}
		buf = append(buf, '}')
	}
	return append(buf, ']'), nil
}

// appendWriter is an io.Writer appending to buf.
type appendWriter struct{ buf []byte }

func (w *appendWriter) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	return len(p), nil
}
