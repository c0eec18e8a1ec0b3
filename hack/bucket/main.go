// Command bucket is the test control plane's S3-compatible bucket server on loopback, and a
// writer for it.
//
//	bucket serve -addr 127.0.0.1:PORT -keys-dir DIR
//	    gofakes3 on an in-memory backend (a bucket is created by its first write). A bucket
//	    <name> with a file DIR/<name> holding an access key id answers only requests signed
//	    with that key id, read on every request so a test rotates the key by rewriting the
//	    file; other requests get S3's 403 InvalidAccessKeyId, and each refused request on the
//	    bucket itself (not an object) adds one to DIR/<name>.refused. Signatures are not
//	    verified: what a key rotation changes is the key id.
//	bucket put -endpoint 127.0.0.1:PORT -bucket NAME -key OBJECT -file PATH -access-key ID
//	    writes one object.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: bucket serve|put [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "serve":
		fl := flag.NewFlagSet("serve", flag.ExitOnError)
		addr := fl.String("addr", "127.0.0.1:9000", "listen address")
		keys := fl.String("keys-dir", "", "directory of per-bucket access key ids")
		_ = fl.Parse(os.Args[2:])
		err = serve(*addr, *keys)
	case "put":
		fl := flag.NewFlagSet("put", flag.ExitOnError)
		endpoint := fl.String("endpoint", "", "host:port")
		bucket := fl.String("bucket", "", "bucket name")
		key := fl.String("key", "", "object key")
		file := fl.String("file", "", "file to upload")
		access := fl.String("access-key", "fluxmedic-test", "access key id to sign with")
		_ = fl.Parse(os.Args[2:])
		err = put(*endpoint, *bucket, *key, *file, *access)
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bucket:", err)
		os.Exit(1)
	}
}

var credential = regexp.MustCompile(`Credential=([^/,\s]+)/`)

// accessKey is the key id a request is signed with (header or presigned query).
func accessKey(r *http.Request) string {
	if m := credential.FindStringSubmatch(r.Header.Get("Authorization")); m != nil {
		return m[1]
	}
	if c := r.URL.Query().Get("X-Amz-Credential"); c != "" {
		return strings.SplitN(c, "/", 2)[0]
	}
	return ""
}

func deny(w http.ResponseWriter, bucket string) {
	w.Header().Set("Content-Type", "application/xml")
	w.WriteHeader(http.StatusForbidden)
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?>
<Error><Code>InvalidAccessKeyId</Code><Message>The AWS Access Key Id you provided does not exist in our records.</Message><BucketName>%s</BucketName></Error>`, bucket)
}

var (
	refusals    sync.Mutex
	lastRefusal = map[string]time.Time{}
)

// countRefusal adds one to the number in file; refusals within 300 ms count once (one fetch
// may take several requests; Flux retries 750 ms apart at the soonest).
func countRefusal(file string) {
	refusals.Lock()
	defer refusals.Unlock()
	if time.Since(lastRefusal[file]) < 300*time.Millisecond {
		return
	}
	lastRefusal[file] = time.Now()
	n := 0
	if b, err := os.ReadFile(file); err == nil {
		n, _ = strconv.Atoi(strings.TrimSpace(string(b)))
	}
	_ = os.WriteFile(file, []byte(strconv.Itoa(n+1)), 0o644)
}

func serve(addr, keysDir string) error {
	fake := gofakes3.New(s3mem.New(), gofakes3.WithAutoBucket(true))
	inner := fake.Server()
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		bucket := strings.SplitN(strings.TrimPrefix(r.URL.Path, "/"), "/", 2)[0]
		if keysDir != "" && bucket != "" && !strings.ContainsAny(bucket, `\.`) {
			if want, err := os.ReadFile(filepath.Join(keysDir, bucket)); err == nil &&
				accessKey(r) != strings.TrimSpace(string(want)) {
				if strings.Trim(strings.TrimPrefix(r.URL.Path, "/"+bucket), "/") == "" {
					countRefusal(filepath.Join(keysDir, bucket+".refused"))
				}
				deny(w, bucket)
				return
			}
		}
		inner.ServeHTTP(w, r)
	})
	srv := &http.Server{Addr: addr, Handler: h, ReadHeaderTimeout: 10 * time.Second}
	return srv.ListenAndServe()
}

func put(endpoint, bucket, key, file, access string) error {
	if endpoint == "" || bucket == "" || key == "" || file == "" {
		return fmt.Errorf("put needs -endpoint, -bucket, -key and -file")
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	req, err := http.NewRequest(http.MethodPut, fmt.Sprintf("http://%s/%s/%s", endpoint, bucket, key), bytes.NewReader(data))
	if err != nil {
		return err
	}
	now := time.Now().UTC()
	req.Header.Set("X-Amz-Date", now.Format("20060102T150405Z"))
	req.Header.Set("Authorization", fmt.Sprintf(
		"AWS4-HMAC-SHA256 Credential=%s/%s/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-date, Signature=unchecked",
		access, now.Format("20060102")))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("PUT %s/%s: %s", bucket, key, resp.Status)
	}
	return nil
}
