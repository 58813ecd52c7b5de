package identity

import (
	"strings"
	"text/template"
	"text/template/parse"
)

// What a spire-controller-manager template (a SPIFFE ID or DNS name template, ours or another
// registration's) reads of the data it is given (templateData): the one judgement of whether an ID
// is known before scheduling and whether it is the same for every pod of a service account.

// templateReads walks t's parse tree and returns the data fields it reads, as dotted paths from the
// data's root ("PodMeta.Namespace"). opaque is true when it reads something the walk cannot name:
// the whole data ({{ . }}), a chained or piped result, or fields relative to a dot that range or
// with moved; the fields it names there are still returned.
func templateReads(t *template.Template) (fields map[string]bool, opaque bool) {
	fields = map[string]bool{}
	if t == nil || t.Tree == nil {
		return fields, true
	}
	var walk func(n parse.Node, moved bool)
	walk = func(n parse.Node, moved bool) {
		switch n := n.(type) {
		case *parse.ListNode:
			if n == nil {
				return
			}
			for _, c := range n.Nodes {
				walk(c, moved)
			}
		case *parse.ActionNode:
			walk(n.Pipe, moved)
		case *parse.PipeNode:
			if n == nil {
				return
			}
			for _, c := range n.Cmds {
				walk(c, moved)
			}
		case *parse.CommandNode:
			for _, a := range n.Args {
				walk(a, moved)
			}
		case *parse.FieldNode:
			fields[strings.Join(n.Ident, ".")] = true
			opaque = opaque || moved
		case *parse.VariableNode:
			// $ is the root; any other variable holds what it was assigned, which the walk does not
			// follow (its fields are still named, in case they are the root's).
			if len(n.Ident) > 1 {
				fields[strings.Join(n.Ident[1:], ".")] = true
			}
			opaque = opaque || n.Ident[0] != "$" || len(n.Ident) == 1
		case *parse.ChainNode:
			walk(n.Node, moved)
			opaque = true
		case *parse.DotNode:
			opaque = true
		case *parse.IfNode:
			walk(n.Pipe, moved)
			walk(n.List, moved)
			walk(n.ElseList, moved)
		case *parse.RangeNode:
			walk(n.Pipe, moved)
			walk(n.List, true)
			walk(n.ElseList, moved)
		case *parse.WithNode:
			walk(n.Pipe, moved)
			walk(n.List, true)
			walk(n.ElseList, moved)
		case *parse.TemplateNode:
			walk(n.Pipe, moved)
			opaque = true
		case *parse.TextNode, *parse.StringNode, *parse.NumberNode, *parse.BoolNode, *parse.NilNode, *parse.IdentifierNode, *parse.CommentNode:
		case nil:
		default:
			opaque = true
		}
	}
	walk(t.Tree.Root, false)
	return fields, opaque
}

// ReadsNode reports whether template t reads the node (NodeMeta, NodeSpec), which is unknown
// before the pod is scheduled: what it renders at admission is not what the pod's entry will hold.
func ReadsNode(t *template.Template) bool {
	fields, _ := templateReads(t)
	for f := range fields {
		if root, _, _ := strings.Cut(f, "."); root == "NodeMeta" || root == "NodeSpec" {
			return true
		}
	}
	return false
}

// namespaceAndSAFields are the fields a template may read and still render the same for every pod
// of a service account.
var namespaceAndSAFields = map[string]bool{
	"TrustDomain": true, "ClusterName": true, "ClusterDomain": true,
	"PodMeta.Namespace": true, "PodSpec.ServiceAccountName": true,
}

// ReadsOnlyNamespaceAndSA reports whether template t reads nothing but the trust domain, the
// cluster's name and domain, the pod's namespace and its service account, so that rendering it for
// a namespace and service account gives the ID of every such pod. Anything the walk cannot follow
// counts as reading more.
func ReadsOnlyNamespaceAndSA(t *template.Template) bool {
	fields, opaque := templateReads(t)
	if opaque {
		return false
	}
	for f := range fields {
		if !namespaceAndSAFields[f] {
			return false
		}
	}
	return true
}
