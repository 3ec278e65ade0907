// The published modules the Argo CD and Flux CRDs are taken from, each pinned here and
// its checksum in go.sum; gitops-crds.sh (beside this folder) downloads them and copies
// their CRD files. Nothing is built from them, so do not run `go mod tidy` here: it
// would drop these requirements. Argo CD 3.5 is the newest whose module asks for no
// newer Go than 1.26 (3.6 asks for 1.27). helm-controller 1.6.4 is the newest the
// module proxy serves of that module; kustomize- and source-controller 1.9.6 are of the
// same Flux release (all three build on fluxcd/pkg/runtime v0.110.3).
module aios.dev/e2e/tools/gitops-crds

go 1.26.0

require (
	github.com/argoproj/argo-cd/v3 v3.5.8
	github.com/fluxcd/helm-controller v1.6.4
	github.com/fluxcd/kustomize-controller v1.9.6
	github.com/fluxcd/source-controller v1.9.6
)
