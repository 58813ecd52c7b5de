package jwthelper

import (
	"context"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
)

// extAuthz is Envoy's ext_authz service in "inject" mode, the job of the spire-tutorials
// envoy-jwt-auth-helper: outbound requests without an Authorization header get
// "Bearer <JWT-SVID>" for the configured audience. An Authorization header the application set is
// never overwritten: the request goes on unchanged. Without a valid token the request is refused
// (503), rather than sent without credentials.
type extAuthz struct {
	authv3.UnimplementedAuthorizationServer
	h *Helper
}

func (h *Helper) extAuthzServer() *grpc.Server {
	srv := grpc.NewServer()
	authv3.RegisterAuthorizationServer(srv, &extAuthz{h: h})
	return srv
}

// Check implements envoy.service.auth.v3.Authorization.
func (e *extAuthz) Check(_ context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	if hasAuthorization(req.GetAttributes().GetRequest().GetHttp()) {
		e.h.metrics.extAuthz.WithLabelValues("kept-existing").Inc()
		return &authv3.CheckResponse{Status: &status.Status{Code: int32(codes.OK)}, HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{}}}, nil
	}
	tok, ok := e.h.Token(e.h.opts.ExtAuthzAudience)
	if !ok {
		e.h.metrics.extAuthz.WithLabelValues("no-token").Inc()
		return &authv3.CheckResponse{
			Status: &status.Status{Code: int32(codes.Unavailable), Message: "no valid JWT-SVID for audience " + e.h.opts.ExtAuthzAudience},
			HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
				Status: &typev3.HttpStatus{Code: typev3.StatusCode_ServiceUnavailable},
				Body:   "spiffe-jwt-helper: no valid JWT-SVID for audience " + e.h.opts.ExtAuthzAudience + "\n",
			}},
		}, nil
	}
	e.h.metrics.extAuthz.WithLabelValues("injected").Inc()
	return &authv3.CheckResponse{
		Status: &status.Status{Code: int32(codes.OK)},
		HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{
			Headers: []*corev3.HeaderValueOption{{
				Header:       &corev3.HeaderValue{Key: "authorization", Value: "Bearer " + tok},
				AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
			}},
		}},
	}, nil
}

// hasAuthorization says whether the request carries a non-empty Authorization header. Envoy sends
// the headers in `headers`, keys lower-cased, or, when the filter sets encode_raw_headers, in
// `header_map` with the value in raw_value; header names are case-insensitive whoever sends them.
// Missing one would overwrite the application's own credentials.
func hasAuthorization(req *authv3.AttributeContext_HttpRequest) bool {
	for k, v := range req.GetHeaders() {
		if v != "" && strings.EqualFold(k, "authorization") {
			return true
		}
	}
	for _, hv := range req.GetHeaderMap().GetHeaders() {
		if strings.EqualFold(hv.GetKey(), "authorization") && (hv.GetValue() != "" || len(hv.GetRawValue()) > 0) {
			return true
		}
	}
	return false
}
