package jwthelper

import (
	"context"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
)

// checkRequest is what Envoy's ext_authz filter sends: the request's headers in headers (keys
// lower-cased), or, with the filter's encode_raw_headers, in header_map.
func checkRequest(headers map[string]string, raw ...*corev3.HeaderValue) *authv3.CheckRequest {
	h := &authv3.AttributeContext_HttpRequest{Method: "GET", Path: "/orders", Host: "orders.shop.svc", Headers: headers}
	if raw != nil {
		h.HeaderMap = &corev3.HeaderMap{Headers: raw}
	}
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{Http: h}}}
}

// TestExtAuthzHeaderHandling: a request without an Authorization header gets the token of the
// configured audience; one that has an Authorization header, however Envoy encodes it, goes on
// unchanged; without a usable token the request is refused (503), never sent without credentials.
func TestExtAuthzHeaderHandling(t *testing.T) {
	h := newHelper(t, func(o *Options) { o.ExtAuthzAddr, o.ExtAuthzAudience = "127.0.0.1:0", "payments" })
	s := newSigner(t)
	now := time.Now().Truncate(time.Second)
	tok := s.svid(t, "payments", now, now.Add(time.Hour))
	require.NoError(t, h.store("payments", tok))
	other := s.svid(t, "https://api.example.com", now, now.Add(time.Hour))
	require.NoError(t, h.store("https://api.example.com", other))
	e := &extAuthz{h: h}
	check := func(req *authv3.CheckRequest) *authv3.CheckResponse {
		t.Helper()
		resp, err := e.Check(context.Background(), req)
		require.NoError(t, err)
		return resp
	}
	injected := func(t *testing.T, resp *authv3.CheckResponse) {
		t.Helper()
		require.Equal(t, int32(codes.OK), resp.GetStatus().GetCode())
		hs := resp.GetOkResponse().GetHeaders()
		require.Len(t, hs, 1)
		assert.Equal(t, "authorization", hs[0].GetHeader().GetKey())
		assert.Equal(t, "Bearer "+tok.Marshal(), hs[0].GetHeader().GetValue(), "the token of the ext_authz audience, not another")
		assert.Equal(t, corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD, hs[0].GetAppendAction())
	}
	kept := func(t *testing.T, resp *authv3.CheckResponse) {
		t.Helper()
		require.Equal(t, int32(codes.OK), resp.GetStatus().GetCode())
		require.NotNil(t, resp.GetOkResponse(), "allowed")
		assert.Empty(t, resp.GetOkResponse().GetHeaders(), "the application's Authorization header is not overwritten")
		assert.Empty(t, resp.GetOkResponse().GetHeadersToRemove())
	}

	t.Run("no Authorization header: the token is added", func(t *testing.T) {
		injected(t, check(checkRequest(map[string]string{":authority": "orders.shop.svc", "x-request-id": "1"})))
		injected(t, check(checkRequest(nil)))
		injected(t, check(checkRequest(nil, &corev3.HeaderValue{Key: ":authority", RawValue: []byte("orders.shop.svc")})))
		injected(t, check(&authv3.CheckRequest{}))
	})
	t.Run("Authorization set by the application: kept", func(t *testing.T) {
		kept(t, check(checkRequest(map[string]string{"authorization": "Bearer app-chose-this"})))
		kept(t, check(checkRequest(map[string]string{"Authorization": "Basic dXNlcjpwdw=="})))
	})
	t.Run("Authorization in header_map (encode_raw_headers): kept", func(t *testing.T) {
		kept(t, check(checkRequest(nil, &corev3.HeaderValue{Key: "authorization", RawValue: []byte("Bearer app-chose-this")})))
		kept(t, check(checkRequest(nil, &corev3.HeaderValue{Key: "authorization", Value: "Bearer app-chose-this"})))
	})
	t.Run("an empty Authorization header is none", func(t *testing.T) {
		injected(t, check(checkRequest(map[string]string{"authorization": ""})))
	})

	before := testutil.ToFloat64(h.metrics.extAuthz.WithLabelValues("no-token"))
	t.Run("no usable token: refused with 503", func(t *testing.T) {
		past := now.Add(2 * time.Hour)
		h.now = func() time.Time { return past }
		defer func() { h.now = time.Now }()
		resp := check(checkRequest(nil))
		assert.Equal(t, int32(codes.Unavailable), resp.GetStatus().GetCode())
		require.NotNil(t, resp.GetDeniedResponse())
		assert.Equal(t, typev3.StatusCode_ServiceUnavailable, resp.GetDeniedResponse().GetStatus().GetCode())
		assert.Contains(t, resp.GetDeniedResponse().GetBody(), "no valid JWT-SVID for audience payments")
		assert.Nil(t, resp.GetOkResponse())
	})
	assert.Equal(t, before+1, testutil.ToFloat64(h.metrics.extAuthz.WithLabelValues("no-token")))
	assert.Equal(t, 5.0, testutil.ToFloat64(h.metrics.extAuthz.WithLabelValues("injected")))
	assert.Equal(t, 4.0, testutil.ToFloat64(h.metrics.extAuthz.WithLabelValues("kept-existing")))
}
