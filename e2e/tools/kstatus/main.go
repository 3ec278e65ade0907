// Command kstatus prints the status the kstatus library computes for Kubernetes
// objects, so the tests can check AIOS's status as Flux, Helm's --wait and kubectl
// wait read it.
//
// It reads one JSON document on stdin: an object, or a list of objects as
// `kubectl get -o json` prints it (kind List, or a typed list such as DeploymentList,
// whose items may leave out apiVersion and kind). For each object it prints one line:
//
//	<Kind>/<namespace>/<name> <Status> <message>
//
// where Status is InProgress, Current, Failed, Terminating, NotFound or Unknown, the
// namespace is empty for a cluster-scoped object, and the message is on one line. It
// exits 1 with a message on stderr when the input is not such a document, or when the
// status of an object cannot be computed.
//
// With -flux-health-exprs FILE, the status is the one Flux's kustomize-controller
// computes while it waits for the objects, with the healthCheckExprs of the Flux
// Kustomization in FILE (YAML): its own CEL status reader for the kinds they cover
// (Unknown, with the error as message, when an expression cannot be evaluated), kstatus
// for the others.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

func main() {
	fluxExprs := flag.String("flux-health-exprs", "", "a Flux Kustomization (YAML) whose healthCheckExprs compute the status, as Flux does")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: kstatus [-flux-health-exprs kustomization.yaml] < objects.json  (an object or a List, as kubectl get -o json prints them)")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() > 0 {
		flag.Usage()
		os.Exit(2)
	}
	compute := kstatus
	if *fluxExprs != "" {
		flux, err := loadFluxStatus(*fluxExprs)
		if err != nil {
			fail("%v", err)
		}
		compute = func(u *unstructured.Unstructured) (string, string, error) {
			status, message, covered, err := flux(u)
			if !covered && err == nil {
				return kstatus(u)
			}
			return status, message, err
		}
	}
	input, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail("reading stdin: %v", err)
	}
	objects, err := decode(input)
	if err != nil {
		fail("%v", err)
	}
	out := bufio.NewWriter(os.Stdout)
	for _, u := range objects {
		status, message, err := compute(u)
		if err != nil {
			fail("computing the status of %s: %v", id(u), err)
		}
		line := id(u) + " " + status
		if msg := oneLine(message); msg != "" {
			line += " " + msg
		}
		fmt.Fprintln(out, line)
	}
	if err := out.Flush(); err != nil {
		fail("writing stdout: %v", err)
	}
}

// kstatus is the kstatus library's status of u, and its message.
func kstatus(u *unstructured.Unstructured) (string, string, error) {
	res, err := status.Compute(u)
	if err != nil {
		return "", "", err
	}
	return res.Status.String(), res.Message, nil
}

// decode turns the input into the objects it holds: itself, or a list's items.
func decode(input []byte) ([]*unstructured.Unstructured, error) {
	if strings.TrimSpace(string(input)) == "" {
		return nil, fmt.Errorf("no input: expected a Kubernetes object or List as JSON on stdin")
	}
	// This Unmarshal keeps integers as int64, which unstructured's accessors (generation,
	// observedGeneration, replicas) require; encoding/json would make them float64.
	var doc map[string]interface{}
	if err := utiljson.Unmarshal(input, &doc); err != nil {
		return nil, fmt.Errorf("the input is not a JSON object: %v", err)
	}
	if doc == nil {
		return nil, fmt.Errorf("the input is null, not a Kubernetes object")
	}
	top := &unstructured.Unstructured{Object: doc}
	items, isList := doc["items"]
	if !isList || !strings.HasSuffix(top.GetKind(), "List") {
		if err := check(top, "the input"); err != nil {
			return nil, err
		}
		return []*unstructured.Unstructured{top}, nil
	}
	list, ok := items.([]interface{})
	if !ok && items != nil {
		return nil, fmt.Errorf("the %s's items are not an array", top.GetKind())
	}
	// A typed list's items carry neither apiVersion nor kind: they are the list's.
	itemKind := strings.TrimSuffix(top.GetKind(), "List")
	objects := make([]*unstructured.Unstructured, 0, len(list))
	for i, item := range list {
		obj, ok := item.(map[string]interface{})
		if !ok {
			return nil, fmt.Errorf("item %d of the %s is not an object", i, top.GetKind())
		}
		u := &unstructured.Unstructured{Object: obj}
		if u.GetKind() == "" && itemKind != "" {
			u.SetKind(itemKind)
			u.SetAPIVersion(top.GetAPIVersion())
		}
		if err := check(u, fmt.Sprintf("item %d of the %s", i, top.GetKind())); err != nil {
			return nil, err
		}
		objects = append(objects, u)
	}
	return objects, nil
}

// check refuses what is not a Kubernetes object: kstatus would report Current for
// anything without conditions, so a stray document must not get that far.
func check(u *unstructured.Unstructured, what string) error {
	if u.GetAPIVersion() == "" || u.GetKind() == "" {
		return fmt.Errorf("%s is not a Kubernetes object: it has no apiVersion or kind", what)
	}
	if u.GetName() == "" {
		return fmt.Errorf("%s (%s) has no metadata.name", what, u.GetKind())
	}
	if s, found := u.Object["status"]; found && s != nil {
		if _, ok := s.(map[string]interface{}); !ok {
			return fmt.Errorf("%s (%s) has a status that is not an object", what, id(u))
		}
	}
	return nil
}

func id(u *unstructured.Unstructured) string {
	return u.GetKind() + "/" + u.GetNamespace() + "/" + u.GetName()
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "kstatus: "+format+"\n", args...)
	os.Exit(1)
}
