package replicate

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/driftstore/driftstore/httpapi/wire"
)

// Live sessions of a daemon (see wire/sessions.go). None of these calls is retried: a turn,
// a checkpoint or a restore is not idempotent.

func sessionPath(name string, suffix string) string {
	return wire.PathSessions + "/" + name + suffix
}

// Sessions lists the daemon's sessions.
func (c *Client) Sessions(ctx context.Context) ([]wire.SessionInfo, error) {
	var out wire.SessionList
	if err := c.getJSON(ctx, wire.PathSessions, &out); err != nil {
		return nil, err
	}
	return out.Sessions, nil
}

// Session describes one session; an *Error with wire.CodeSessionNotFound when there is none.
func (c *Client) Session(ctx context.Context, name string) (*wire.SessionInfo, error) {
	var out wire.SessionInfo
	if err := c.getJSON(ctx, sessionPath(name, ""), &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// CreateSession creates, forks or registers (pending) a session.
func (c *Client) CreateSession(ctx context.Context, req wire.CreateSession) (*wire.SessionInfo, error) {
	var out wire.SessionInfo
	if err := c.sendJSON(ctx, http.MethodPost, wire.PathSessions, req, &out, false); err != nil {
		return nil, err
	}
	return &out, nil
}

// SuspendSession checkpoints the session if it changed and takes it out of the daemon's memory.
func (c *Client) SuspendSession(ctx context.Context, name string) (*wire.SessionInfo, error) {
	resp, err := c.do(ctx, request{method: http.MethodDelete, path: sessionPath(name, "")})
	if err != nil {
		return nil, err
	}
	defer drain(resp)
	var out wire.SessionInfo
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return nil, fmt.Errorf("DELETE session %s: decode answer: %w", name, err)
	}
	return &out, nil
}

// CheckpointSession checkpoints a live session.
func (c *Client) CheckpointSession(ctx context.Context, name string) (*wire.CheckpointSummary, error) {
	var out wire.CheckpointSummary
	if err := c.sendJSON(ctx, http.MethodPost, sessionPath(name, "/checkpoint"), struct{}{}, &out, false); err != nil {
		return nil, err
	}
	return &out, nil
}

// RestoreSession restores the session's head, or checkpoint (ID, prefix or tag) when given,
// into a fresh live instance in the daemon.
func (c *Client) RestoreSession(ctx context.Context, name, checkpoint string) (*wire.RestoreSummary, error) {
	var out wire.RestoreSummary
	if err := c.sendJSON(ctx, http.MethodPost, sessionPath(name, "/restore"), wire.RestoreRequest{Checkpoint: checkpoint}, &out, false); err != nil {
		return nil, err
	}
	return &out, nil
}

// StreamError is an "error" event that ended a generate stream: the turn stopped after some
// tokens and the session went back to its last checkpoint.
type StreamError struct {
	Session string
	Tokens  int // tokens received before the error
	wire.ErrorDetail
}

func (e *StreamError) Error() string {
	return fmt.Sprintf("session %s: generation stopped after %d tokens: %s: %s", e.Session, e.Tokens, e.Code, e.Message)
}

// Generate runs one turn and calls onToken (when set) with each token event as it arrives; an
// error from onToken closes the stream, which cancels the turn on the daemon. It returns the
// turn's summary, an *Error for a request refused before generating, or a *StreamError when
// the turn failed midway.
func (c *Client) Generate(ctx context.Context, name string, req wire.Generate, onToken func(wire.TokenEvent) error) (*wire.TurnSummary, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	resp, err := c.do(ctx, request{method: http.MethodPost, path: sessionPath(name, "/generate"), body: body,
		ctype: "application/json", headers: map[string]string{"Accept": wire.MediaTypeEventStream}})
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, wire.MediaTypeEventStream) {
		return nil, fmt.Errorf("generate %s: answer of type %q, not an event stream", name, ct)
	}
	n := 0
	var sum *wire.TurnSummary
	err = readEvents(resp.Body, func(event string, data []byte) error {
		switch event {
		case wire.EventToken:
			var ev wire.TokenEvent
			if err := json.Unmarshal(data, &ev); err != nil {
				return fmt.Errorf("token event: %w", err)
			}
			n++
			if onToken != nil {
				return onToken(ev)
			}
		case wire.EventDone:
			sum = new(wire.TurnSummary)
			if err := json.Unmarshal(data, sum); err != nil {
				return fmt.Errorf("done event: %w", err)
			}
			return io.EOF
		case wire.EventError:
			var eb wire.ErrorBody
			if err := json.Unmarshal(data, &eb); err != nil {
				return fmt.Errorf("error event: %w", err)
			}
			return &StreamError{Session: name, Tokens: n, ErrorDetail: eb.Error}
		}
		return nil // events of other names are for later versions
	})
	if err != nil && err != io.EOF {
		return nil, err
	}
	if sum == nil {
		return nil, fmt.Errorf("generate %s: stream ended after %d tokens without a summary: %w", name, n, io.ErrUnexpectedEOF)
	}
	return sum, nil
}

// readEvents parses a server-sent event stream, calling fn for each event with its name
// ("message" when none) and data (data lines joined by newlines). An error from fn stops it and
// is returned; so is the reader's (io.EOF becomes nil).
func readEvents(r io.Reader, fn func(event string, data []byte) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	event, data, have := "", []byte(nil), false
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			if have {
				if event == "" {
					event = "message"
				}
				if err := fn(event, data); err != nil {
					return err
				}
			}
			event, data, have = "", nil, false
			continue
		}
		if strings.HasPrefix(line, ":") {
			continue
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "event":
			event, have = value, true
		case "data":
			if data != nil {
				data = append(data, '\n')
			}
			data, have = append(data, value...), true
		}
	}
	return sc.Err()
}
