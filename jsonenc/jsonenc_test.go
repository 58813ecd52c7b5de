package jsonenc

import (
	"encoding/json"
	"strings"
	"testing"
)

func checkString(t *testing.T, s string) {
	t.Helper()
	want, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	if got := AppendString([]byte("x"), s); string(got) != "x"+string(want) {
		t.Fatalf("%q: AppendString writes %s, encoding/json %s", s, got[1:], want)
	}
}

// TestAppendStringIsEncodingJSON: every byte value alone and inside text, every escape class,
// non-ASCII, invalid and truncated UTF-8.
func TestAppendStringIsEncodingJSON(t *testing.T) {
	for b := range 256 {
		checkString(t, string(rune(b)))
		checkString(t, "ab"+string([]byte{byte(b)})+"cd")
	}
	for _, s := range []string{"", "plain", `quo"te`, `back\slash`, "a<b>&c", "\b\f\n\r\t", "nul\x00", "\x7f",
		"café", "line\u2028sep\u2029", "bad\xffutf8", "\xe2\x80", "emoji 🙂", "\ufffd", strings.Repeat("é<", 100)} {
		checkString(t, s)
	}
}

func FuzzAppendString(f *testing.F) {
	for _, s := range []string{"", "a<b", "\u2028", "\xff", `"\`} {
		f.Add(s)
	}
	f.Fuzz(checkString)
}
