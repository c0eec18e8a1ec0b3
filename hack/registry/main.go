// Command registry is the test control plane's OCI registry on loopback and its pusher.
//
//	registry serve -addr 127.0.0.1:PORT -auth-dir DIR
//	    go-containerregistry's in-memory registry. A repository whose first path segment has a
//	    file DIR/<segment> holding "user:password" needs that HTTP basic auth; the file is read
//	    on every request, so a test rotates the password by rewriting it. Refusals look like
//	    distribution's (401, WWW-Authenticate: Basic, an UNAUTHORIZED error body). Each refused
//	    manifest request adds one to DIR/<segment>.refused (how often a client was turned away).
//	registry push -ref 127.0.0.1:PORT/ns/app:v1 -dir ./manifests [-user u -password p]
//	    pushes the directory as a Flux artifact: one tar+gzip layer, Flux's media types.
//	registry push -ref 127.0.0.1:PORT/ns/web:0.1.0 -chart web-0.1.0.tgz -chart-config chart.json ...
//	    pushes a packaged Helm chart as Helm does (its config and layer media types).
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
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

const (
	fluxConfig  = "application/vnd.cncf.flux.config.v1+json"
	fluxContent = "application/vnd.cncf.flux.content.v1.tar+gzip"
	helmConfig  = "application/vnd.cncf.helm.config.v1+json"
	helmContent = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
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
		chart := fl.String("chart", "", "packaged Helm chart (.tgz) to push instead")
		chartConfig := fl.String("chart-config", "", "the chart's config JSON (name, version, apiVersion)")
		user := fl.String("user", "", "basic auth user")
		password := fl.String("password", "", "basic auth password")
		_ = fl.Parse(os.Args[2:])
		err = push(*ref, *dir, *chart, *chartConfig, *user, *password)
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
					if strings.Contains(r.URL.Path, "/manifests/") {
						countRefusal(filepath.Join(authDir, segment+".refused"))
					}
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

func push(ref, dir, chart, chartConfig, user, password string) error {
	if ref == "" || (dir == "") == (chart == "") {
		return fmt.Errorf("push needs -ref and one of -dir or -chart")
	}
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		return err
	}
	var blob, config []byte
	configType, layerType := types.MediaType(fluxConfig), types.MediaType(fluxContent)
	if chart != "" {
		if blob, err = os.ReadFile(chart); err != nil {
			return err
		}
		if config, err = os.ReadFile(chartConfig); err != nil {
			return err
		}
		configType, layerType = helmConfig, helmContent
	} else if blob, err = tarGz(dir); err != nil {
		return err
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, configType)
	img, err = mutate.Append(img, mutate.Addendum{Layer: static.NewLayer(blob, layerType)})
	if err != nil {
		return err
	}
	if config != nil {
		img = rawConfig{Image: img, config: config, mediaType: configType}
	}
	auth := authn.Anonymous
	if user != "" {
		auth = &authn.Basic{Username: user, Password: password}
	}
	return remote.Write(r, img, remote.WithAuth(auth))
}

// rawConfig serves a config blob as given (Helm's chart config is not an image config).
type rawConfig struct {
	v1.Image
	config    []byte
	mediaType types.MediaType
}

func (i rawConfig) RawConfigFile() ([]byte, error) { return i.config, nil }

func (i rawConfig) ConfigName() (v1.Hash, error) {
	h, _, err := v1.SHA256(bytes.NewReader(i.config))
	return h, err
}

func (i rawConfig) Manifest() (*v1.Manifest, error) {
	m, err := i.Image.Manifest()
	if err != nil {
		return nil, err
	}
	m = m.DeepCopy()
	h, err := i.ConfigName()
	if err != nil {
		return nil, err
	}
	m.Config = v1.Descriptor{MediaType: i.mediaType, Size: int64(len(i.config)), Digest: h}
	return m, nil
}

func (i rawConfig) RawManifest() ([]byte, error) {
	m, err := i.Manifest()
	if err != nil {
		return nil, err
	}
	return json.Marshal(m)
}

func (i rawConfig) Digest() (v1.Hash, error) {
	b, err := i.RawManifest()
	if err != nil {
		return v1.Hash{}, err
	}
	h, _, err := v1.SHA256(bytes.NewReader(b))
	return h, err
}
