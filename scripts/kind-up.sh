#!/usr/bin/env bash
# Create (or reuse) the kind cluster, install the Traefik ingress controller, build the four
# mlplatform images (make images: the one Dockerfile, once per service) and load them into the
# cluster. Idempotent: run it again at any time.
# Afterwards: helm install mlplatform charts/mlplatform   (or: make deploy)
#
# Ingress NGINX reached end of life in March 2026. Traefik is maintained, implements the
# standard Ingress API (paths, websockets for Streamlit) without controller-specific
# annotations, and ships an official Helm chart we pin below.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLUSTER="${KIND_CLUSTER:-mlplatform}"
TRAEFIK_CHART_VERSION="${TRAEFIK_CHART_VERSION:-37.3.0}" # Traefik Proxy v3.6.0
TRAEFIK_NAMESPACE=traefik # charts/mlplatform: networkPolicy.ingressControllerNamespace
IMAGES=(mlplatform-serving mlplatform-webapp mlplatform-reporter mlplatform-retrainer)

for tool in docker kind kubectl helm make; do
  command -v "$tool" >/dev/null || { echo "kind-up: $tool is not installed" >&2; exit 1; }
done

# The images are tagged with the chart's appVersion (the chart never uses :latest).
TAG="$(awk -F': *' '$1 == "appVersion" { gsub(/"/, "", $2); print $2 }' "$ROOT/charts/mlplatform/Chart.yaml")"
[ -n "$TAG" ] || { echo "kind-up: no appVersion in charts/mlplatform/Chart.yaml" >&2; exit 1; }

echo "==> kind cluster '$CLUSTER'"
if kind get clusters | grep -qx "$CLUSTER"; then
  echo "    exists, reusing it"
else
  kind create cluster --name "$CLUSTER" --config "$ROOT/k8s/kind-config.yaml" --wait 180s
fi
kubectl config use-context "kind-$CLUSTER" >/dev/null

echo "==> Traefik $TRAEFIK_CHART_VERSION (ingress class 'traefik')"
values="$(mktemp)"
trap 'rm -f "$values"' EXIT
cat >"$values" <<'VALUES'
# On kind: listen on the node's ports 80/443 (mapped to 127.0.0.1 by kind-config.yaml).
deployment:
  replicas: 1
ports:
  web:
    hostPort: 80
  websecure:
    hostPort: 443
service:
  type: ClusterIP
nodeSelector:
  ingress-ready: "true"
tolerations:
  - key: node-role.kubernetes.io/control-plane
    operator: Exists
    effect: NoSchedule
ingressClass:
  enabled: true
  isDefaultClass: true
  name: traefik
providers:
  kubernetesIngress:
    enabled: true
  kubernetesCRD:
    enabled: true
gateway:
  enabled: false
VALUES
helm repo add traefik https://traefik.github.io/charts --force-update >/dev/null
helm upgrade --install traefik traefik/traefik \
  --version "$TRAEFIK_CHART_VERSION" \
  --namespace "$TRAEFIK_NAMESPACE" --create-namespace \
  --values "$values" \
  --wait --timeout 5m

echo "==> images ($TAG)"
make -C "$ROOT" images
for image in "${IMAGES[@]}"; do
  docker image inspect "$image:$TAG" >/dev/null 2>&1 || {
    echo "kind-up: $image:$TAG was not built by 'make images'" >&2
    exit 1
  }
  kind load docker-image --name "$CLUSTER" "$image:$TAG"
done

echo
echo "Cluster '$CLUSTER' is ready. Next:"
echo "  helm install mlplatform $ROOT/charts/mlplatform    # or: make deploy"
echo "  then http://localhost/ (web app), http://localhost/api/docs, http://localhost/grafana/"
