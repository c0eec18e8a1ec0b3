// Command image writes a single-layer container image as a docker-archive tarball, the format
// `ctr images import` loads: the test node runs fluxmedic from it without a registry.
//
//	image -out fluxmedic.tar -tag fluxmedic.local/fluxmedic:dev -user 65532:65532 \
//	  -entrypoint '["/usr/local/bin/fluxmedic"]' -cmd '["run"]' \
//	  -file ./fluxmedic=/usr/local/bin/fluxmedic:0755 -dir /tmp:1777
package main

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(s string) error { *l = append(*l, s); return nil }

type entry struct {
	path string
	mode int64
	src  string // empty for a directory
}

func parseMode(s string) (int64, error) {
	m, err := strconv.ParseInt(s, 8, 32)
	if err != nil || m < 0 || m > 0o7777 {
		return 0, fmt.Errorf("bad mode %q", s)
	}
	return m, nil
}

func main() {
	var files, dirs, labels list
	out := flag.String("out", "", "docker-archive tarball to write")
	tag := flag.String("tag", "", "image reference, e.g. fluxmedic.local/fluxmedic:dev")
	user := flag.String("user", "", "USER of the image")
	entrypoint := flag.String("entrypoint", "[]", "ENTRYPOINT as a JSON array")
	cmd := flag.String("cmd", "[]", "CMD as a JSON array")
	flag.Var(&files, "file", "SRC=DST:MODE (repeatable)")
	flag.Var(&dirs, "dir", "DST:MODE (repeatable)")
	flag.Var(&labels, "label", "KEY=VALUE, a LABEL of the image (repeatable)")
	flag.Parse()
	if err := run(*out, *tag, *user, *entrypoint, *cmd, files, dirs, labels); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

func run(out, tag, user, entrypoint, cmd string, files, dirs, labels list) error {
	if out == "" || tag == "" {
		return fmt.Errorf("-out and -tag are required")
	}
	ref, err := name.NewTag(tag)
	if err != nil {
		return err
	}
	var ep, args []string
	if err := json.Unmarshal([]byte(entrypoint), &ep); err != nil {
		return fmt.Errorf("-entrypoint: %w", err)
	}
	if err := json.Unmarshal([]byte(cmd), &args); err != nil {
		return fmt.Errorf("-cmd: %w", err)
	}
	imageLabels := map[string]string{}
	for _, l := range labels {
		k, v, ok := strings.Cut(l, "=")
		if !ok || k == "" {
			return fmt.Errorf("-label %q: want KEY=VALUE", l)
		}
		imageLabels[k] = v
	}
	var entries []entry
	for _, d := range dirs {
		p, m, ok := strings.Cut(d, ":")
		mode, err := parseMode(m)
		if !ok || err != nil || !strings.HasPrefix(p, "/") {
			return fmt.Errorf("-dir %q: want /PATH:MODE", d)
		}
		entries = append(entries, entry{path: p, mode: mode})
	}
	for _, f := range files {
		src, rest, ok := strings.Cut(f, "=")
		dst, m, ok2 := strings.Cut(rest, ":")
		mode, err := parseMode(m)
		if !ok || !ok2 || err != nil || !strings.HasPrefix(dst, "/") {
			return fmt.Errorf("-file %q: want SRC=/DST:MODE", f)
		}
		entries = append(entries, entry{path: dst, mode: mode, src: src})
	}
	layer, err := layerTar(entries)
	if err != nil {
		return err
	}
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layer)), nil
	})
	if err != nil {
		return err
	}
	img, err := mutate.AppendLayers(empty.Image, l)
	if err != nil {
		return err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config = v1.Config{
		User:       user,
		Entrypoint: ep,
		Cmd:        args,
		Env:        []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
		Labels:     imageLabels,
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return err
	}
	return tarball.WriteToFile(out, ref, img)
}

// layerTar holds the entries and every parent directory, sorted, with fixed times and owners
// (root-owned files, as COPY without --chown makes them): the same inputs give the same layer.
func layerTar(entries []entry) ([]byte, error) {
	all := map[string]entry{}
	for _, e := range entries {
		for p := parent(e.path); p != "/"; p = parent(p) {
			if _, ok := all[p]; !ok {
				all[p] = entry{path: p, mode: 0o755}
			}
		}
		all[e.path] = e
	}
	paths := make([]string, 0, len(all))
	for p := range all {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	epoch := time.Unix(0, 0)
	for _, p := range paths {
		e := all[p]
		h := &tar.Header{Name: strings.TrimPrefix(p, "/"), Mode: e.mode, ModTime: epoch, Format: tar.FormatPAX}
		if e.src == "" {
			h.Typeflag, h.Name = tar.TypeDir, h.Name+"/"
			if err := tw.WriteHeader(h); err != nil {
				return nil, err
			}
			continue
		}
		data, err := os.ReadFile(e.src)
		if err != nil {
			return nil, err
		}
		h.Typeflag, h.Size = tar.TypeReg, int64(len(data))
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func parent(p string) string {
	i := strings.LastIndex(p, "/")
	if i <= 0 {
		return "/"
	}
	return p[:i]
}
