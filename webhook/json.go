package webhook

import (
	"encoding/json"

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
