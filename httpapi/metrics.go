package httpapi

import (
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// metrics is the server's counters, written out in the Prometheus text exposition format
// (version 0.0.4) by hand, so the server needs no client library.
type metrics struct {
	start time.Time

	mu       sync.Mutex                   // guards requests and latency
	requests map[requestKey]uint64        // by route pattern, method and status
	latency  map[string]*latencyHistogram // by route pattern

	bytesIn        atomic.Int64 // request body bytes read
	bytesOut       atomic.Int64 // response body bytes written
	chunksReceived atomic.Int64 // chunks that arrived whole and verified (PUT and upload streams)
	chunksStored   atomic.Int64 // of those, chunks new to this server
	chunksDeduped  atomic.Int64 // of those, chunks the server already had
	chunksRefused  atomic.Int64 // chunks refused for not matching their digest
	chunksSent     atomic.Int64 // chunks served (GET and download streams)
	missingDigests atomic.Int64 // digests asked about in missing-set calls
	inflight       atomic.Int64 // requests being handled now
}

type requestKey struct {
	route, method string
	code          int
}

// latencyBuckets are the histogram's upper bounds in seconds.
var latencyBuckets = []float64{0.001, 0.005, 0.025, 0.1, 0.25, 1, 2.5, 10, 30}

type latencyHistogram struct {
	counts []uint64 // per bucket, not cumulative; the last is +Inf
	sum    float64
	n      uint64
}

func newMetrics() *metrics {
	return &metrics{
		start:    time.Now(),
		requests: make(map[requestKey]uint64),
		latency:  make(map[string]*latencyHistogram),
	}
}

func (m *metrics) observe(route, method string, code int, d time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.requests[requestKey{route, method, code}]++
	h := m.latency[route]
	if h == nil {
		h = &latencyHistogram{counts: make([]uint64, len(latencyBuckets)+1)}
		m.latency[route] = h
	}
	sec := d.Seconds()
	i := sort.SearchFloat64s(latencyBuckets, sec)
	h.counts[i]++
	h.sum += sec
	h.n++
}

// write renders every metric. It takes the lock once, so the request counts are a consistent
// snapshot among themselves.
func (m *metrics) write(w io.Writer) error {
	var b strings.Builder
	counter := func(name, help string, v int64) {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s counter\n%s %d\n", name, help, name, name, v)
	}
	gauge := func(name, help string, v float64) {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s gauge\n%s %s\n", name, help, name, name, formatFloat(v))
	}

	m.mu.Lock()
	keys := make([]requestKey, 0, len(m.requests))
	for k := range m.requests {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		a, c := keys[i], keys[j]
		if a.route != c.route {
			return a.route < c.route
		}
		if a.method != c.method {
			return a.method < c.method
		}
		return a.code < c.code
	})
	b.WriteString("# HELP driftstore_http_requests_total HTTP requests handled, by route, method and status code.\n")
	b.WriteString("# TYPE driftstore_http_requests_total counter\n")
	for _, k := range keys {
		fmt.Fprintf(&b, "driftstore_http_requests_total{route=%s,method=%s,code=\"%d\"} %d\n",
			quoteLabel(k.route), quoteLabel(k.method), k.code, m.requests[k])
	}
	routes := make([]string, 0, len(m.latency))
	for r := range m.latency {
		routes = append(routes, r)
	}
	sort.Strings(routes)
	b.WriteString("# HELP driftstore_http_request_duration_seconds Time to handle a request, by route.\n")
	b.WriteString("# TYPE driftstore_http_request_duration_seconds histogram\n")
	for _, r := range routes {
		h := m.latency[r]
		var cum uint64
		for i, le := range latencyBuckets {
			cum += h.counts[i]
			fmt.Fprintf(&b, "driftstore_http_request_duration_seconds_bucket{route=%s,le=\"%s\"} %d\n", quoteLabel(r), formatFloat(le), cum)
		}
		cum += h.counts[len(latencyBuckets)]
		fmt.Fprintf(&b, "driftstore_http_request_duration_seconds_bucket{route=%s,le=\"+Inf\"} %d\n", quoteLabel(r), cum)
		fmt.Fprintf(&b, "driftstore_http_request_duration_seconds_sum{route=%s} %s\n", quoteLabel(r), formatFloat(h.sum))
		fmt.Fprintf(&b, "driftstore_http_request_duration_seconds_count{route=%s} %d\n", quoteLabel(r), h.n)
	}
	m.mu.Unlock()

	counter("driftstore_http_request_bytes_total", "Request body bytes read.", m.bytesIn.Load())
	counter("driftstore_http_response_bytes_total", "Response body bytes written.", m.bytesOut.Load())
	counter("driftstore_chunks_received_total", "Chunks received whole and verified.", m.chunksReceived.Load())
	counter("driftstore_chunks_stored_total", "Received chunks that were new to this server.", m.chunksStored.Load())
	counter("driftstore_chunks_deduped_total", "Received chunks this server already had.", m.chunksDeduped.Load())
	counter("driftstore_chunks_refused_total", "Received chunks refused because they did not match their digest.", m.chunksRefused.Load())
	counter("driftstore_chunks_sent_total", "Chunks served.", m.chunksSent.Load())
	counter("driftstore_missing_digests_total", "Digests asked about in missing-set calls.", m.missingDigests.Load())
	gauge("driftstore_http_requests_in_flight", "Requests being handled now.", float64(m.inflight.Load()))
	gauge("driftstore_uptime_seconds", "Seconds since the server started.", time.Since(m.start).Seconds())
	_, err := io.WriteString(w, b.String())
	return err
}

// quoteLabel quotes a label value with the escapes the exposition format defines.
func quoteLabel(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)
	return `"` + r.Replace(s) + `"`
}

func formatFloat(f float64) string {
	if math.IsInf(f, 1) {
		return "+Inf"
	}
	return strconv.FormatFloat(f, 'g', -1, 64)
}
