package webhook

import (
	"encoding/json"
	"fmt"

	"gomodules.xyz/jsonpatch/v2"
	kjson "sigs.k8s.io/json"
)

type jsonPatchOp = jsonpatch.Operation

// unmarshal decodes JSON the way the API machinery does: field names match case-sensitively, so a
// key like "Labels" cannot stand in for "labels" and make the webhook see a different pod than the
// API server stores.
func unmarshal(data []byte, v any) error {
	return kjson.UnmarshalCaseSensitivePreserveInts(data, v)
}

func marshal(v any) ([]byte, error) { return json.Marshal(v) }

// patchOp is a JSON patch operation as it goes on the wire. jsonpatch.Operation's own MarshalJSON
// marshals each value separately and encoding/json then re-validates and compacts that output:
// encoding one plain struct slice costs half as much.
type patchOp struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value,omitempty"`
}

// EncodePatch encodes ops as a JSON patch document. A remove carries no value; every other
// operation carries its value, whatever it is.
func EncodePatch(ops []jsonpatch.Operation) ([]byte, error) {
	wire := make([]patchOp, len(ops))
	for i, op := range ops {
		wire[i] = patchOp{Op: op.Operation, Path: op.Path, Value: op.Value}
		if op.Operation != "remove" && op.Value == nil {
			return nil, fmt.Errorf("patch operation %s %s has no value", op.Operation, op.Path)
		}
	}
	return json.Marshal(wire)
}
