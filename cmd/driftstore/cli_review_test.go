package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/driftstore/driftstore/index"
	"github.com/driftstore/driftstore/repo"
)

// TestInspectSessionName: `inspect NAME` shows a session's head (README: `driftstore inspect
// chat`), and a tag of the same name still wins.
func TestInspectSessionName(t *testing.T) {
	dir := t.TempDir()
	p, _ := storageRandFile(t, t.TempDir(), "a.bin", 1, 100_000)
	code, out, errs := storageRun(t, dir, "put", p, "--json")
	if code != 0 {
		t.Fatalf("put exit %d: %s", code, errs)
	}
	var put struct{ ID index.ID }
	if err := json.Unmarshal([]byte(out), &put); err != nil || put.ID.IsZero() {
		t.Fatalf("put --json %q: %v", out, err)
	}
	id := put.ID
	r, err := repo.Open(dir, repo.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Index().CompareAndSwapRef(context.Background(), index.RefSession, "chat", index.ID{}, id); err != nil {
		t.Fatal(err)
	}
	r.Close()
	code, out, errs = storageRun(t, dir, "inspect", "chat", "--json")
	if code != 0 || !strings.Contains(out, id.String()) {
		t.Fatalf("inspect chat: exit %d\n%s\n%s", code, out, errs)
	}
	if code, _, errs = storageRun(t, dir, "inspect", "nosuch"); code != 1 || !strings.Contains(errs, "nosuch") {
		t.Fatalf("inspect nosuch: exit %d: %s", code, errs)
	}
}

// TestForkBadNameIsUsage: a bad session name is a usage error (exit 2), as for run and restore.
func TestForkBadNameIsUsage(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{".x", "../x", "a/b"} {
		code, out, errs := storageRun(t, dir, "fork", "--session", name, "--from", "whatever")
		if code != 2 || out != "" || !strings.Contains(errs, "bad ref name") {
			t.Fatalf("fork --session %q: exit %d, stdout %q, stderr %q", name, code, out, errs)
		}
	}
}
