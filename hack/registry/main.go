// Command registry is the test control plane's OCI registry on loopback and its pusher.
//
//	registry serve -addr 127.0.0.1:PORT -auth-dir DIR
//	    go-containerregistry's in-memory registry. A repository whose first path segment has a
//	    file DIR/<segment> holding "user:password" needs that HTTP basic auth; the file is read
//	    on every request, so a test rotates the password by rewriting it. Refusals look like
//	    distribution's (401, WWW-Authenticate: Basic, an UNAUTHORIZED error body).
//	registry push -ref 127.0.0.1:PORT/ns/app:v1 -dir ./manifests [-user u -password p]
//	    pushes the directory as a Flux artifact: one tar+gzip layer, Flux's media types.
package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/subtle"
	"encoding/json"
	"flag"
	"fmt"
	"io/fs"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

const (
	fluxConfig  = "application/vnd.cncf.flux.config.v1+json"
	fluxContent = "application/vnd.cncf.flux.content.v1.tar+gzip"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: registry serve|push [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "serve":
		fl := flag.NewFlagSet("serve", flag.ExitOnError)
		addr := fl.String("addr", "127.0.0.1:5000", "listen address")
		authDir := fl.String("auth-dir", "", "directory of per-namespace user:password files")
		_ = fl.Parse(os.Args[2:])
		err = serve(*addr, *authDir)
	case "push":
		fl := flag.NewFlagSet("push", flag.ExitOnError)
		ref := fl.String("ref", "", "host:port/repository:tag")
		dir := fl.String("dir", "", "directory to push")
		user := fl.String("user", "", "basic auth user")
		password := fl.String("password", "", "basic auth password")
		_ = fl.Parse(os.Args[2:])
		err = push(*ref, *dir, *user, *password)
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "registry:", err)
		os.Exit(1)
	}
}

// repository returns the repository name of a /v2/<name>/(manifests|blobs|tags)/... path.
func repository(path string) string {
	rest := strings.TrimPrefix(path, "/v2/")
	for _, sep := range []string{"/manifests/", "/blobs/", "/tags/"} {
		if i := strings.Index(rest, sep); i > 0 {
			return rest[:i]
		}
	}
	return ""
}

func unauthorized(w http.ResponseWriter, repo string) {
	w.Header().Set("WWW-Authenticate", `Basic realm="fluxmedic-test-registry"`)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusUnauthorized)
	_ = json.NewEncoder(w).Encode(map[string]any{"errors": []any{map[string]any{
		"code": "UNAUTHORIZED", "message": "authentication required",
		"detail": []any{map[string]string{"Type": "repository", "Name": repo, "Action": "pull"}},
	}}})
}

func serve(addr, authDir string) error {
	reg := registry.New(registry.Logger(log.New(os.Stderr, "", log.LstdFlags)))
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, password, hasAuth := r.BasicAuth()
		// The ping: clients learn the Basic scheme here; credentials are checked per repository.
		if r.URL.Path == "/v2/" || r.URL.Path == "/v2" {
			if !hasAuth {
				unauthorized(w, "")
				return
			}
			reg.ServeHTTP(w, r)
			return
		}
		repo := repository(r.URL.Path)
		if authDir != "" && repo != "" {
			segment := strings.SplitN(repo, "/", 2)[0]
			if want, err := os.ReadFile(filepath.Join(authDir, segment)); err == nil {
				got := user + ":" + password
				if !hasAuth || subtle.ConstantTimeCompare([]byte(strings.TrimSpace(string(want))), []byte(got)) != 1 {
					unauthorized(w, repo)
					return
				}
			}
		}
		reg.ServeHTTP(w, r)
	})
	srv := &http.Server{Addr: addr, Handler: h, ReadHeaderTimeout: 10 * time.Second}
	return srv.ListenAndServe()
}

// tarGz packs dir's regular files (sorted, fixed times and modes) as a gzip'd tarball.
func tarGz(dir string) ([]byte, error) {
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		hdr := &tar.Header{Name: filepath.ToSlash(rel), Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		_, err = tw.Write(data)
		return err
	})
	if err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := gz.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func push(ref, dir, user, password string) error {
	if ref == "" || dir == "" {
		return fmt.Errorf("push needs -ref and -dir")
	}
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		return err
	}
	blob, err := tarGz(dir)
	if err != nil {
		return err
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, fluxConfig)
	img, err = mutate.Append(img, mutate.Addendum{Layer: static.NewLayer(blob, fluxContent)})
	if err != nil {
		return err
	}
	auth := authn.Anonymous
	if user != "" {
		auth = &authn.Basic{Username: user, Password: password}
	}
	return remote.Write(r, img, remote.WithAuth(auth))
}
