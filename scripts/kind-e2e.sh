#!/usr/bin/env bash
# End-to-end check of ztun as Istio ambient's node proxy on a real Kubernetes cluster (kind):
# Istio's own charts (base, istiod and istio-cni with the ambient profile, ztunnel with
# deploy/values-ztun.yaml), a client and a server on different worker nodes, then real traffic.
#
# Needs a machine with a running Docker engine, kind, kubectl, helm and istioctl, and network
# access to Istio's chart repository and to the container registries (Istio, agnhost, curl).
#
# Usage: scripts/kind-e2e.sh [--keep] [--name CLUSTER]
#   --keep          leave the cluster running afterwards (delete it with `kind delete cluster`)
#   --name CLUSTER  kind cluster name (default ztun-e2e); it must not exist yet
# Environment: ISTIO_VERSION (Istio charts, default 1.31.1), ZTUN_IMAGE (default: the image
# in deploy/values-ztun.yaml), KIND_NODE_IMAGE (kind's default node image if unset).
# Logs and diagnostics go to target/kind-e2e/.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }

keep=0
cluster=ztun-e2e
while [ $# -gt 0 ]; do
  case "$1" in
    --keep) keep=1 ;;
    --name) cluster="${2:?--name needs a value}"; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "kind-e2e: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

istio_version="${ISTIO_VERSION:-1.31.1}"
values=deploy/values-ztun.yaml
image="${ZTUN_IMAGE:-$(sed -n 's/^image: *//p' "$values")}"
ns=ztun-e2e
trust_domain=cluster.local
client_id="spiffe://$trust_domain/ns/$ns/sa/client"
server_id="spiffe://$trust_domain/ns/$ns/sa/server"
server_url="http://server.$ns.svc.cluster.local:8080"
artifacts="${CARGO_TARGET_DIR:-target}/kind-e2e"
kube_context="kind-$cluster"

total_steps=11
step_no=0
created=0
long_pid=""

step() {
  step_no=$((step_no + 1))
  printf '\n==> [%d/%d] %s\n' "$step_no" "$total_steps" "$*"
}
ok() { printf '    ok: %s\n' "$*"; }
fail() {
  printf '    FAIL: %s\n' "$*" >&2
  exit 1
}

kc() { kubectl --context "$kube_context" "$@"; }

# Runs "$@" every 2 s until it succeeds or $1 seconds have passed.
eventually() {
  local timeout=$1
  shift
  local deadline=$((SECONDS + timeout))
  until "$@"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      return 1
    fi
    sleep 2
  done
}

collect_diagnostics() {
  local dir="$artifacts/diagnostics"
  mkdir -p "$dir"
  kc get pods -A -o wide >"$dir/pods.txt" 2>&1 || true
  kc get events -A --sort-by=.lastTimestamp >"$dir/events.txt" 2>&1 || true
  kc -n istio-system describe daemonset ztunnel >"$dir/ztunnel-ds.txt" 2>&1 || true
  local pod
  for pod in $(kc -n istio-system get pods -l app=ztunnel -o name 2>/dev/null); do
    kc -n istio-system logs "$pod" >"$dir/${pod#pod/}.log" 2>&1 || true
    kc -n istio-system logs "$pod" --previous >"$dir/${pod#pod/}.previous.log" 2>/dev/null || true
  done
  echo "diagnostics written to $dir" >&2
}

cleanup() {
  local rc=$?
  if [ -n "$long_pid" ]; then
    kill "$long_pid" 2>/dev/null || true
  fi
  if [ "$created" -eq 1 ]; then
    if [ "$rc" -ne 0 ]; then
      collect_diagnostics
    fi
    if [ "$keep" -eq 1 ]; then
      echo "keeping cluster $cluster (kubectl context $kube_context); delete it with: kind delete cluster --name $cluster"
    else
      echo "deleting cluster $cluster"
      kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
    fi
  fi
  if [ "$rc" -eq 0 ]; then
    printf '\nkind-e2e: all %d steps passed\n' "$total_steps"
  else
    printf '\nkind-e2e: FAILED at step %d (logs in %s)\n' "$step_no" "$artifacts" >&2
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# One HTTP request from the client pod to the server's Service; prints the status code
# (000 when the connection failed or was refused).
request() {
  kc -n "$ns" exec deploy/client -- \
    curl -sS -o /dev/null -w '%{http_code}' --max-time 5 "$server_url/hostname" 2>/dev/null || true
}
request_succeeds() { [ "$(request)" = 200 ]; }
request_refused() { [ "$(request)" = 000 ]; }

ztun_pod_on() {
  kc -n istio-system get pods -l app=ztunnel --field-selector "spec.nodeName=$1" \
    -o jsonpath='{.items[0].metadata.name}'
}

mkdir -p "$artifacts"

step "checking tools"
for tool in docker kind kubectl helm istioctl; do
  command -v "$tool" >/dev/null 2>&1 || fail "$tool is not installed"
done
docker info >/dev/null 2>&1 || fail "the Docker engine is not reachable (docker info failed)"
if kind get clusters 2>/dev/null | grep -qx "$cluster"; then
  fail "a kind cluster named $cluster already exists; delete it (kind delete cluster --name $cluster) or pass --name"
fi
[ -n "$image" ] || fail "no image: set ZTUN_IMAGE or image: in $values"
ok "Istio $istio_version charts, image $image, istioctl $(istioctl version --remote=false 2>/dev/null | head -n1)"

step "creating kind cluster $cluster (1 control plane, 2 workers)"
kind_args=(--name "$cluster" --wait 5m --config -)
if [ -n "${KIND_NODE_IMAGE:-}" ]; then
  kind_args+=(--image "$KIND_NODE_IMAGE")
fi
created=1
kind create cluster "${kind_args[@]}" <<'EOF'
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
- role: control-plane
- role: worker
- role: worker
EOF
client_node="$cluster-worker"
server_node="$cluster-worker2"
kc label node "$client_node" ztun-e2e/role=client >/dev/null
kc label node "$server_node" ztun-e2e/role=server >/dev/null
ok "client node $client_node, server node $server_node"

step "building $image and loading it into the cluster"
docker build -t "$image" . >"$artifacts/docker-build.log" 2>&1 ||
  { tail -n 40 "$artifacts/docker-build.log" >&2; fail "docker build failed"; }
kind load docker-image "$image" --name "$cluster" >/dev/null
ok "built and loaded (build log: $artifacts/docker-build.log)"

step "installing Istio $istio_version (ambient) with ztun as the ztunnel chart's image"
helm repo add istio https://istio-release.storage.googleapis.com/charts --force-update >/dev/null
helm_common=(--kube-context "$kube_context" -n istio-system --version "$istio_version" --wait --timeout 5m)
helm install istio-base istio/base "${helm_common[@]}" --create-namespace >/dev/null
helm install istiod istio/istiod "${helm_common[@]}" --set profile=ambient >/dev/null
helm install istio-cni istio/cni "${helm_common[@]}" --set profile=ambient >/dev/null
rendered_image=$(helm template ztunnel istio/ztunnel -n istio-system --version "$istio_version" \
  -f "$values" --set image="$image" | sed -n 's/^ *image: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' | head -n1)
[ "$rendered_image" = "$image" ] || fail "the chart renders image '$rendered_image', expected '$image'"
helm install ztunnel istio/ztunnel "${helm_common[@]}" -f "$values" --set image="$image" >/dev/null
kc -n istio-system rollout status daemonset/ztunnel --timeout=5m >/dev/null
ds_image=$(kc -n istio-system get daemonset ztunnel -o jsonpath='{.spec.template.spec.containers[0].image}')
[ "$ds_image" = "$image" ] || fail "DaemonSet ztunnel runs $ds_image, expected $image"
ready=$(kc -n istio-system get daemonset ztunnel -o jsonpath='{.status.numberReady}')
[ "$ready" = 3 ] || fail "$ready of 3 ztun pods are ready"
ok "ztun ready on all 3 nodes (readiness probe :15021/healthz/ready)"

step "deploying client and server in ambient namespace $ns"
kc apply -f deploy/e2e/workloads.yaml >/dev/null
kc -n "$ns" rollout status deployment/server --timeout=5m >/dev/null
kc -n "$ns" rollout status deployment/client --timeout=5m >/dev/null
for app in client server; do
  redirection=$(kc -n "$ns" get pods -l "app=$app" \
    -o jsonpath='{.items[0].metadata.annotations.ambient\.istio\.io/redirection}')
  [ "$redirection" = enabled ] || fail "$app pod is not enrolled by istio-cni (redirection: '$redirection')"
done
client_pod_node=$(kc -n "$ns" get pods -l app=client -o jsonpath='{.items[0].spec.nodeName}')
server_pod_node=$(kc -n "$ns" get pods -l app=server -o jsonpath='{.items[0].spec.nodeName}')
if [ "$client_pod_node" != "$client_node" ] || [ "$server_pod_node" != "$server_node" ]; then
  fail "pods landed on $client_pod_node / $server_pod_node"
fi
ok "client on $client_node, server on $server_node, both captured by istio-cni"

step "HTTP from client to server through both ztuns"
eventually 60 request_succeeds || fail "client → $server_url did not answer 200 (last: $(request))"
ok "GET $server_url/hostname → 200"

step "access logs show both SPIFFE identities and HBONE port 15008"
client_ztun=$(ztun_pod_on "$client_node")
server_ztun=$(ztun_pod_on "$server_node")
outbound_logged() {
  kc -n istio-system logs "$client_ztun" >"$artifacts/$client_ztun.log"
  grep -F "$client_id" "$artifacts/$client_ztun.log" | grep -F "$server_id" | grep -qF ':15008'
}
inbound_logged() {
  kc -n istio-system logs "$server_ztun" >"$artifacts/$server_ztun.log"
  grep -F "$client_id" "$artifacts/$server_ztun.log" | grep -qF "$server_id"
}
eventually 30 outbound_logged ||
  fail "no access log line on $client_ztun with $client_id, $server_id and :15008"
eventually 30 inbound_logged || fail "no access log line on $server_ztun with $client_id and $server_id"
ok "$client_ztun (source): $(grep -F "$client_id" "$artifacts/$client_ztun.log" | grep -F ':15008' | tail -n1)"
ok "$server_ztun (destination): $(grep -F "$server_id" "$artifacts/$server_ztun.log" | grep -F "$client_id" | tail -n1)"

step "destination metrics report mutual TLS"
mtls_metric() {
  kc get --raw "/api/v1/namespaces/istio-system/pods/$server_ztun:15020/proxy/metrics" \
    >"$artifacts/$server_ztun.metrics"
  grep '^istio_tcp_connections_opened_total{' "$artifacts/$server_ztun.metrics" |
    grep 'reporter="destination"' | grep "destination_principal=\"$server_id\"" |
    grep -q 'connection_security_policy="mutual_tls"'
}
eventually 30 mtls_metric ||
  fail "no istio_tcp_connections_opened_total{reporter=\"destination\",connection_security_policy=\"mutual_tls\"} on $server_ztun:15020"
ok "istio_tcp_connections_opened_total{reporter=\"destination\", connection_security_policy=\"mutual_tls\"} present"

step "istioctl ztunnel-config workloads reads ztun's admin API"
workloads_listed() {
  istioctl --context "$kube_context" ztunnel-config workloads >"$artifacts/ztunnel-config-workloads.txt" 2>&1 &&
    grep -qE "^${ns}[[:space:]]+client-[^[:space:]]+[[:space:]].*HBONE" "$artifacts/ztunnel-config-workloads.txt" &&
    grep -qE "^${ns}[[:space:]]+server-[^[:space:]]+[[:space:]].*HBONE" "$artifacts/ztunnel-config-workloads.txt"
}
eventually 30 workloads_listed ||
  fail "istioctl ztunnel-config workloads does not list client and server as HBONE (see $artifacts/ztunnel-config-workloads.txt)"
grep -E "^(NAMESPACE|$ns)[[:space:]]" "$artifacts/ztunnel-config-workloads.txt" | sed 's/^/    /'
ok "client and server listed with protocol HBONE"

step "AuthorizationPolicy DENY blocks the client"
kc apply -f deploy/e2e/deny-client.yaml >/dev/null
eventually 60 request_refused || fail "client still reaches the server with deny-client applied (last: $(request))"
for _ in 1 2 3; do
  request_refused || fail "a request got through while deny-client was applied"
done
ok "4 consecutive requests refused while deny-client is applied"
kc delete -f deploy/e2e/deny-client.yaml >/dev/null
eventually 60 request_succeeds || fail "client still refused after deny-client was removed"
ok "allowed again once the policy is deleted"

step "long-lived connection across a rolling restart of the ztun DaemonSet"
# One curl process sends 2 requests a second over one kept-alive connection; after the old
# ztun on its node drains, curl reconnects through the new one. Every request must answer 200.
kc -n "$ns" exec deploy/client -- curl -sS --rate 2/s --max-time 5 \
  -w '\nRESULT %{http_code} %{num_connects}\n' "$server_url/echo?msg=[1-1200]" \
  >"$artifacts/long-lived.log" 2>"$artifacts/long-lived.err" &
long_pid=$!
sleep 10
kc -n istio-system rollout restart daemonset/ztunnel >/dev/null
kc -n istio-system rollout status daemonset/ztunnel --timeout=10m >/dev/null
old_ztuns_gone() {
  [ "$(kc -n istio-system get pods -l app=ztunnel --no-headers 2>/dev/null | wc -l)" -eq 3 ] &&
    ! kc -n istio-system get pods -l app=ztunnel --no-headers 2>/dev/null | grep -q Terminating
}
eventually 120 old_ztuns_gone || fail "old ztun pods did not terminate"
sleep 10
kill "$long_pid" 2>/dev/null || true
wait "$long_pid" 2>/dev/null || true
long_pid=""
results=$(grep -c '^RESULT ' "$artifacts/long-lived.log" || true)
[ "$results" -ge 40 ] || fail "only $results requests completed during the restart (see $artifacts/long-lived.log)"
failures=$(grep '^RESULT ' "$artifacts/long-lived.log" | grep -vc '^RESULT 200 ' || true)
connections=$(awk '/^RESULT / {n += $3} END {print n + 0}' "$artifacts/long-lived.log")
[ "$failures" -eq 0 ] || fail "$failures of $results requests failed during the restart (see $artifacts/long-lived.log)"
[ "$connections" -lt "$results" ] || fail "curl opened a connection per request: the connection was not long-lived"
ok "$results requests during the restart, all 200, over $connections TCP connection(s)"
eventually 60 request_succeeds || fail "client → server fails after the restart"
ok "new connections go through the new ztun pods"
