package keymgr

// awsproxy_test.go: a fault-injecting reverse proxy on 127.0.0.1 in front of
// local-kms. It answers the first requests with the faults it is given
// (throttling, 5xx, a dropped connection, a slow answer), then with the
// fallback (pass through, unless told to fail forever), and counts every
// request it saw, by KMS operation.

import (
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

type awsFault int

const (
	faultNone         awsFault = iota // pass the request to local-kms
	faultThrottle                     // 400 ThrottlingException, as KMS sends it
	fault500                          // 500 KMSInternalException
	fault503                          // 503 with a plain-text body (not KMS JSON)
	faultDrop                         // hijack the connection and close it unanswered
	faultSlow                         // wait slowDelay, then pass the request on
	faultDenied                       // 400 AccessDeniedException, as KMS sends it
	faultIncorrectKey                 // 400 IncorrectKeyException (local-kms never sends it)
	faultSwapKey                      // pass it on, then answer for another key (KeyId, SourceKeyId := swapKeyID)
)

func (f awsFault) String() string {
	return [...]string{"none", "throttle", "500", "503", "drop", "slow", "denied", "incorrect-key", "swap-key"}[f]
}

type awsProxy struct {
	t      *testing.T
	srv    *httptest.Server
	target *httputil.ReverseProxy

	mu        sync.Mutex
	faults    []awsFault // consumed one per request
	fallback  awsFault   // once faults are used up
	slowDelay time.Duration
	swapKeyID string   // the key ARN faultSwapKey answers for
	seen      []string // X-Amz-Target operation of each request, in order
	bodies    []string // request bodies, in order

	conns atomic.Int64 // connections accepted
}

// newAWSProxy starts a proxy on 127.0.0.1 in front of backend (a
// http://127.0.0.1:port URL); it is closed at the end of the test.
func newAWSProxy(t *testing.T, backend string) *awsProxy {
	t.Helper()
	u, err := url.Parse(backend)
	if err != nil {
		t.Fatalf("parse backend %q: %v", backend, err)
	}
	if u.Hostname() != "127.0.0.1" {
		t.Fatalf("backend %s: the proxy only talks to 127.0.0.1", backend)
	}
	p := &awsProxy{t: t, target: httputil.NewSingleHostReverseProxy(u), slowDelay: time.Second}
	p.target.ErrorLog = nil
	p.srv = httptest.NewUnstartedServer(http.HandlerFunc(p.serve)) // listens on 127.0.0.1
	p.srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			p.conns.Add(1)
		}
	}
	p.srv.Start()
	t.Cleanup(p.srv.Close)
	return p
}

// URL is the proxy's endpoint.
func (p *awsProxy) URL() string { return p.srv.URL }

// inject sets the faults for the next requests and what follows them.
func (p *awsProxy) inject(fallback awsFault, faults ...awsFault) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.faults = append([]awsFault(nil), faults...)
	p.fallback = fallback
	p.seen = nil
	p.bodies = nil
}

// setSwapKey sets the key ARN faultSwapKey answers for.
func (p *awsProxy) setSwapKey(arn string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.swapKeyID = arn
}

func (p *awsProxy) setSlowDelay(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.slowDelay = d
}

// requests is the number of requests seen since the last inject.
func (p *awsProxy) requests() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.seen)
}

// requestsFor counts the requests for one operation ("Decrypt").
func (p *awsProxy) requestsFor(op string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, s := range p.seen {
		if s == op {
			n++
		}
	}
	return n
}

// lastBody is the body of the last request for op, or "".
func (p *awsProxy) lastBody(op string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := len(p.seen) - 1; i >= 0; i-- {
		if p.seen[i] == op {
			return p.bodies[i]
		}
	}
	return ""
}

func (p *awsProxy) next(r *http.Request) (awsFault, time.Duration) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		p.t.Errorf("proxy: read request body: %v", err)
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	p.mu.Lock()
	defer p.mu.Unlock()
	target := r.Header.Get("X-Amz-Target")
	p.seen = append(p.seen, strings.TrimPrefix(target, "TrentService."))
	p.bodies = append(p.bodies, string(body))
	f := p.fallback
	if len(p.faults) > 0 {
		f, p.faults = p.faults[0], p.faults[1:]
	}
	return f, p.slowDelay
}

func (p *awsProxy) serve(w http.ResponseWriter, r *http.Request) {
	f, delay := p.next(r)
	switch f {
	case faultThrottle:
		w.Header().Set("Content-Type", "application/x-amz-json-1.1")
		w.WriteHeader(http.StatusBadRequest)
		_, _ = w.Write([]byte(`{"__type":"ThrottlingException","message":"Rate exceeded"}`))
	case fault500:
		w.Header().Set("Content-Type", "application/x-amz-json-1.1")
		w.WriteHeader(http.StatusInternalServerError)
		_, _ = w.Write([]byte(`{"__type":"KMSInternalException","message":"injected internal failure"}`))
	case faultDenied:
		w.Header().Set("Content-Type", "application/x-amz-json-1.1")
		w.WriteHeader(http.StatusBadRequest)
		_, _ = w.Write([]byte(`{"__type":"AccessDeniedException","Message":"User: arn:aws:sts::111122223333:assumed-role/kmsfs-mount/i-0 is not authorized to perform: kms:Decrypt on this resource because no identity-based policy allows the kms:Decrypt action"}`))
	case faultIncorrectKey:
		w.Header().Set("Content-Type", "application/x-amz-json-1.1")
		w.WriteHeader(http.StatusBadRequest)
		_, _ = w.Write([]byte(`{"__type":"IncorrectKeyException","message":"The key ID in the request does not identify a CMK that can perform this operation."}`))
	case fault503:
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte("service unavailable"))
	case faultDrop:
		hj, ok := w.(http.Hijacker)
		if !ok {
			p.t.Errorf("proxy: response writer cannot hijack")
			return
		}
		conn, _, err := hj.Hijack()
		if err != nil {
			p.t.Errorf("proxy: hijack: %v", err)
			return
		}
		_ = conn.Close()
	case faultSwapKey:
		// An endpoint that answers for another key than the one asked
		// for (a misrouted or impersonating KMS): the real answer, with
		// its key fields rewritten.
		rec := httptest.NewRecorder()
		p.target.ServeHTTP(rec, r)
		body := rec.Body.Bytes()
		var m map[string]any
		if rec.Code == http.StatusOK && json.Unmarshal(body, &m) == nil {
			p.mu.Lock()
			for _, k := range []string{"KeyId", "SourceKeyId"} {
				if _, ok := m[k]; ok {
					m[k] = p.swapKeyID
				}
			}
			p.mu.Unlock()
			var err error
			if body, err = json.Marshal(m); err != nil {
				p.t.Errorf("proxy: marshal the swapped answer: %v", err)
			}
		}
		for k, v := range rec.Header() {
			if k != "Content-Length" && k != "X-Amz-Crc32" {
				w.Header()[k] = v
			}
		}
		w.WriteHeader(rec.Code)
		_, _ = w.Write(body)
	case faultSlow:
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
			return // the client gave up on this attempt
		}
		p.target.ServeHTTP(w, r)
	default:
		p.target.ServeHTTP(w, r)
	}
}
