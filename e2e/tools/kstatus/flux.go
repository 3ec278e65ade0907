package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/fluxcd/pkg/apis/kustomize"
	"github.com/fluxcd/pkg/runtime/cel"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

// fluxStatus computes an object's status as Flux's kustomize-controller does while it
// waits for what a Kustomization applied (spec.wait, spec.healthChecks): covered by one
// of its healthCheckExprs is true when an expression covers the object's kind; when
// none does, Flux uses kstatus, and so does the caller.
type fluxStatus func(u *unstructured.Unstructured) (status, message string, covered bool, err error)

// loadFluxStatus reads the healthCheckExprs of the first Flux Kustomization in the YAML
// file at path, into the CEL status reader Flux builds from them
// (github.com/fluxcd/pkg/runtime/cel, the version kustomize-controller's release pins).
func loadFluxStatus(path string) (fluxStatus, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	checks, err := healthCheckExprs(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	newReader, err := cel.NewStatusReader(checks)
	if err != nil {
		return nil, fmt.Errorf("%s: Flux refuses its healthCheckExprs: %v", path, err)
	}
	// The CEL reader needs neither a REST mapper nor a cluster for an object in hand.
	reader := newReader(nil)
	return func(u *unstructured.Unstructured) (string, string, bool, error) {
		gk := u.GroupVersionKind().GroupKind()
		if !reader.Supports(gk) {
			return "", "", false, nil
		}
		res, err := reader.ReadStatusForObject(context.Background(), nil, u)
		if err != nil {
			return "", "", true, err
		}
		message := res.Message
		if res.Error != nil {
			message = res.Error.Error()
		}
		return res.Status.String(), message, true, nil
	}, nil
}

// healthCheckExprs finds the first Kustomization of kustomize.toolkit.fluxcd.io among
// the YAML documents of r and returns its spec.healthCheckExprs.
func healthCheckExprs(r io.Reader) ([]kustomize.CustomHealthCheck, error) {
	decoder := utilyaml.NewYAMLOrJSONDecoder(r, 4096)
	for {
		var doc map[string]interface{}
		if err := decoder.Decode(&doc); err == io.EOF {
			return nil, fmt.Errorf("no Flux Kustomization in the file")
		} else if err != nil {
			return nil, fmt.Errorf("not YAML: %v", err)
		}
		u := unstructured.Unstructured{Object: doc}
		if u.GetKind() != "Kustomization" || !strings.HasPrefix(u.GetAPIVersion(), "kustomize.toolkit.fluxcd.io/") {
			continue
		}
		exprs, found, err := unstructured.NestedSlice(doc, "spec", "healthCheckExprs")
		if err != nil || !found || len(exprs) == 0 {
			return nil, fmt.Errorf("Kustomization %s has no spec.healthCheckExprs", u.GetName())
		}
		raw, err := json.Marshal(exprs)
		if err != nil {
			return nil, err
		}
		var checks []kustomize.CustomHealthCheck
		if err := json.Unmarshal(raw, &checks); err != nil {
			return nil, fmt.Errorf("Kustomization %s: spec.healthCheckExprs: %v", u.GetName(), err)
		}
		return checks, nil
	}
}
