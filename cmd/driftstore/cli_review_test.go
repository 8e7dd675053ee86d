package main

import (
	"context"
	"encoding/json"
	"errors"
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

// TestTokensOutsideVocabIsUsage: a --tokens id outside the vocabulary is a usage error (exit 2)
// found before anything is fed: nothing on stdout, and run creates no session.
func TestTokensOutsideVocabIsUsage(t *testing.T) {
	dir := t.TempDir()
	seedModuleCache(t, dir)
	for _, args := range [][]string{
		{"generate", "--tokens", "1,32000", "-n", "2"},
		{"run", "--session", "s", "--tokens", "1,99999999", "-n", "2"},
	} {
		code, out, errs := storageRun(t, dir, append(args, "--backend", "cpu")...)
		if code != 2 || out != "" || !strings.Contains(errs, "outside the model's vocabulary") {
			t.Fatalf("%v: exit %d, stdout %q, stderr %q", args, code, out, errs)
		}
	}
	r, err := repo.Open(dir, repo.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := r.Index().Ref(index.RefSession, "s"); !errors.Is(err, index.ErrRefNotFound) {
		t.Fatalf("session s after a refused run: %v", err)
	}
}
