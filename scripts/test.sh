#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this script):
# formatting, clippy with warnings denied, docs with warnings denied, then
# every test (unit, integration, property, trybuild UI, doc tests).
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "error: $*" >&2; exit 1; }

# CI builds once from a fresh clone: incremental compilation's caches would
# only take disk (several GB over the builds below), so it is off.
export CARGO_INCREMENTAL=0

command -v cargo >/dev/null 2>&1 || fail "cargo is missing: install Rust with rustup (https://rustup.rs)"
for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    command -v rustup >/dev/null 2>&1 || fail "cargo $component is missing and rustup is not there to add it"
    echo "installing the $component component"
    rustup component add "$component"
  fi
done

# What the tests need beyond cargo, installed when missing: the chaos
# suite's partition test runs in a network namespace of its own (unshare,
# ip) and cuts links with iptables; mesh-load's report test uses Chromium;
# the sidecar suite runs HAProxy.
need_pkgs=()
command -v unshare >/dev/null 2>&1 || need_pkgs+=(util-linux)
command -v ip >/dev/null 2>&1 || need_pkgs+=(iproute2)
command -v iptables >/dev/null 2>&1 || need_pkgs+=(iptables)
# mesh-load's report test and the admin page test open HTML in a real
# headless Chromium: apt-get install chromium (below) when it is missing.
[ -x /usr/bin/chromium ] || need_pkgs+=(chromium)
# The sidecar suites (tests/sidecar.rs, sidecar_consul.rs, transport.rs)
# run real HAProxy sidecars (Debian's 2.6): apt-get install haproxy
# (below) when it is missing; they fail, never skip, without it.
[ -x /usr/sbin/haproxy ] || need_pkgs+=(haproxy)
# The container image check builds a FROM scratch image with podman.
command -v podman >/dev/null 2>&1 || need_pkgs+=(podman)
# The module-loop check (scripts/module-loops.py).
command -v python3 >/dev/null 2>&1 || need_pkgs+=(python3)
# The state suites run real PostgreSQL servers, one per test, as the
# postgres user (mesh-testkit's `pg`): apt-get install postgresql (below)
# when its server binaries are missing, without the cluster Debian would
# create and start on port 5432 (nothing uses it).
if [ ! -x "$(pg_config --bindir 2>/dev/null)/initdb" ]; then
  need_pkgs+=(postgresql)
  mkdir -p /etc/postgresql-common
  grep -qs '^create_main_cluster' /etc/postgresql-common/createcluster.conf \
    || echo 'create_main_cluster = false' >> /etc/postgresql-common/createcluster.conf
fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
  command -v apt-get >/dev/null 2>&1 || fail "the tests need ${need_pkgs[*]}: install them (no apt-get here)"
  echo "installing ${need_pkgs[*]} (the tests need them)"
  apt-get update -qq && apt-get install -y -qq "${need_pkgs[@]}" >/dev/null \
    || fail "could not install ${need_pkgs[*]}: the tests need them"
fi

# The README is a landing page; the text lives in the guide (docs/guide/),
# docs/benchmarks.md and CHANGELOG.md. It stays under 300 lines, and every
# relative link of the README, the changelog and docs/ names a file that
# exists (outside code blocks and code spans; anchors are not checked).
echo "== README under 300 lines; relative Markdown links name files that exist"
readme_lines=$(wc -l < README.md)
[ "$readme_lines" -lt 300 ] \
  || fail "README.md has $readme_lines lines: keep it a landing page under 300 (the rest goes in docs/guide/)"
python3 - README.md CHANGELOG.md $(find docs -name '*.md' | sort) <<'PY' \
  || fail "broken relative Markdown links (above): fix the paths, or move the files back"
import os, re, sys
link = re.compile(r'!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)|^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)')
broken = 0
for path in sys.argv[1:]:
    fenced = False
    for n, line in enumerate(open(path, encoding="utf-8"), 1):
        if re.match(r'\s*(```|~~~)', line):
            fenced = not fenced
            continue
        if fenced:
            continue
        for m in link.finditer(re.sub(r'(`+).*?\1', '', line)):
            target = m.group(1) or m.group(2)
            if re.match(r'[a-z][a-z0-9+.-]*:', target, re.I) or target.startswith('#'):
                continue
            file = os.path.normpath(os.path.join(os.path.dirname(path), target.split('#')[0]))
            if not os.path.exists(file):
                print(f"{path}:{n}: {target}: no such file ({file})", file=sys.stderr)
                broken += 1
sys.exit(1 if broken else 0)
PY

# A first Chromium start on a fresh machine can be slow (seen once: over
# 25 s in CI right after the install). Pay it here, once, with a generous
# limit and a clear message, so the page tests measure the page.
echo "== headless Chromium starts and renders a page"
chromium_check="$(mktemp -d)"
echo '<html><body><h1>ok</h1></body></html>' > "$chromium_check/ok.html"
start=$SECONDS
if ! timeout 300 /usr/bin/chromium --headless --no-sandbox --disable-gpu --disable-quic \
    --no-first-run --disable-background-networking --disable-component-update --disable-sync \
    --disable-dev-shm-usage --user-data-dir="$chromium_check/profile" \
    --dump-dom "file://$chromium_check/ok.html" 2>"$chromium_check/stderr" | grep -q '<h1>ok</h1>'; then
  tail -n 20 "$chromium_check/stderr" >&2
  fail "headless Chromium did not render a local page within 300 s"
fi
echo "   rendered in $((SECONDS - start)) s"
rm -rf "$chromium_check"

# One rustls crypto provider per build, never an accidental second: a TLS
# build (feature `tls`, or `consul` or `postgres`, which turn it on) with the default
# provider feature `aws-lc-rs` links aws-lc-rs and not ring, and the
# `--no-default-features --features ring,tls` build ring and not aws-lc-rs.
# The default build (the quickstart's) has no TLS and links neither.
# (aws-lc-sys builds its C with the cc crate and gcc on x86_64 Linux: no
# cmake, no nasm.)
providers() {
  cargo tree --locked -e normal -p mesh --prefix none "$@" \
    | grep -oE '^(aws-lc-rs|ring) ' | sort -u | tr -d ' ' | paste -sd, -
}
echo "== one crypto provider per build (aws-lc-rs by default, ring with --features ring; none without TLS)"
for tls in tls consul postgres full; do
  [ "$(providers --features "$tls")" = "aws-lc-rs" ] \
    || fail "the --features $tls build of mesh links '$(providers --features "$tls")', not exactly aws-lc-rs: some crate turned on another rustls provider"
  [ "$(providers --no-default-features --features "ring,$tls")" = "ring" ] \
    || fail "the --features ring,$tls build of mesh links '$(providers --no-default-features --features "ring,$tls")', not exactly ring"
done
[ -z "$(providers)" ] \
  || fail "the default build of mesh links '$(providers)': the lean default must compile no TLS"
# Nor the Consul adapter's or the sidecars' dependencies. (ractor is in
# every build: the node's long-lived workers are ractor actors.)
heavy="$(cargo tree --locked -e normal -p mesh --prefix none \
  | { grep -oE '^(reqwest|hyper|rustls|tokio-rustls|rustls-webpki|base64) ' || true; } \
  | sort -u | tr -d ' ' | paste -sd, -)"
[ -z "$heavy" ] || fail "the default build of mesh pulls $heavy: keep the default lean (features consul, tls, ...)"

# The combinations users pick, each checked alone (the library only, as a
# dependent crate builds it; `check`, warnings denied): the lean default,
# no features at all, each feature alone, the two providers with TLS, and
# everything; and the hidden `internals` (mesh's own tests and benches)
# alone and with everything, so that what it exposes builds on its own.
# The suites below build with every feature (mesh-testkit turns on `full`
# and `internals`), so only this step sees the lean builds, and the
# builds without `internals` (what users get).
echo "== feature combinations (cargo check -p mesh --lib)"
for features in "" "--no-default-features" \
    "--features tls" "--features consul" "--features sidecar" "--features strong" \
    "--features history" "--features otel" "--features admin" "--features dns" \
    "--features consul,sidecar" "--features consul,strong" \
    "--no-default-features --features ring,tls" "--no-default-features --features ring,consul" \
    "--features full,otel,admin" "--features internals" "--features full,otel,admin,internals"; do
  # shellcheck disable=SC2086 # word splitting of the flags is intended
  out="$(cargo check --locked --quiet -p mesh --lib $features 2>&1)" \
    || { echo "$out" >&2; fail "cargo check -p mesh ${features:-(default)} failed"; }
  if grep -qE '^(warning|error)' <<<"$out"; then
    echo "$out" >&2
    fail "cargo check -p mesh ${features:-(default)} warns"
  fi
  echo "   ok: ${features:-(default)}"
done
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== no import loop between the modules of src/"
python3 scripts/module-loops.py
echo "== cargo clippy (all targets, warnings denied)"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo clippy with the optional features (otel, admin)"
cargo clippy --workspace --all-targets --locked --features otel,admin -- -D warnings
echo "== cargo doc (warnings denied)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet
# A test process that hangs (one was once seen to print its result and
# never exit: issue 24, point 7) fails the run after a limit, first
# printing what each test process's threads were doing, instead of
# holding CI until its own timeout with nothing to go on.
dump_hung() {
  echo "error: '$1' still running after ${2}s: a test process hung; what each was doing:" >&2
  local p t
  for p in $(pgrep -f '/target/debug/deps/' || true); do
    echo "== pid $p: $(tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null)" >&2
    for t in /proc/"$p"/task/*; do
      echo "   thread $(cat "$t/comm" 2>/dev/null): state $(cut -d' ' -f3 "$t/stat" 2>/dev/null), waiting in $(cat "$t/wchan" 2>/dev/null)" >&2
    done
    echo "   children: $(pgrep -P "$p" | tr '\n' ' ')" >&2
    if command -v gdb >/dev/null 2>&1; then
      timeout 120 gdb -p "$p" -batch -ex 'thread apply all bt' 2>&1 | grep -E '^(Thread|#)' | head -300 >&2 || true
    fi
  done
  pkill -f '/target/debug/deps/' || true
}
# guarded LIMIT CMD...: runs CMD; past LIMIT seconds, dump_hung.
guarded() {
  local limit=$1 rc=0
  shift
  ( trap 'kill "$s" 2>/dev/null; exit 0' TERM
    sleep "$limit" >/dev/null 2>&1 & s=$!
    wait "$s"
    dump_hung "$*" "$limit" ) &
  local dog=$!
  "$@" || rc=$?
  kill "$dog" 2>/dev/null || true
  wait "$dog" 2>/dev/null || true
  [ "$rc" -eq 0 ] || fail "'$*' failed (exit $rc)"
}
echo "== cargo test"
guarded 1500 cargo test --workspace --locked
# deploy/'s manifests: what can be validated without a cluster (see
# deploy/README.md), in a virtualenv of pinned validators from PyPI.
echo "== deploy/: Kubernetes schemas, HCL2, compose, mesh-node's variables"
venv=target/deploy-venv
if ! "$venv/bin/python" -c "import kubernetes_validate, hcl2, yaml" >/dev/null 2>&1; then
  rm -rf "$venv"
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || fail "python3 -m venv does not work and there is no apt-get to install python3-venv"
    apt-get install -y -qq python3-venv >/dev/null || fail "could not install python3-venv"
    python3 -m venv "$venv" || fail "python3 -m venv failed"
  fi
  "$venv/bin/pip" install -q kubernetes-validate==1.31.0 python-hcl2==8.1.4 \
    || fail "could not install the manifest validators (kubernetes-validate, python-hcl2) from PyPI"
fi
cargo build --locked -q -p mesh-node
"$venv/bin/python" scripts/validate-deploy.py target/debug/mesh-node
# The container image (Dockerfile): a FROM scratch image around a
# statically linked mesh-node. These machines pull no base image, so the
# binary is built here (release, glibc +crt-static) and copied into the
# image (deploy/image/Dockerfile.prebuilt, a build context holding only the
# binary); podman cannot run containers in this VM, so the image is
# checked without running it: its user, stop signal and files, then the
# binary extracted from it runs mesh-node's suite (PID 1 of its own PID
# namespace, joins, serves, leaves on SIGTERM).
echo "== the container image (FROM scratch, static mesh-node)"
command -v podman >/dev/null 2>&1 || fail "podman is missing: the image check needs it (apt-get install podman)"
RUSTFLAGS="-C target-feature=+crt-static" cargo build --locked --release -q \
  --target x86_64-unknown-linux-gnu -p mesh-node
static_bin=target/x86_64-unknown-linux-gnu/release/mesh-node
ldd "$static_bin" 2>&1 | grep -qE "not a dynamic executable|statically linked" \
  || fail "$static_bin is not statically linked: $(ldd "$static_bin" 2>&1 | head -3)"
image_ctx="$(mktemp -d)"
cp "$static_bin" "$image_ctx/mesh-node"
podman build -q -f deploy/image/Dockerfile.prebuilt -t localhost/mesh-node:ci "$image_ctx" >/dev/null \
  || fail "podman build of deploy/image/Dockerfile.prebuilt failed"
config="$(podman image inspect --format '{{.Config.User}} {{.Config.StopSignal}} {{index .Config.Entrypoint 0}}' localhost/mesh-node:ci)"
[ "$config" = "65532:65532 SIGTERM /mesh-node" ] \
  || fail "the image's user, stop signal or entrypoint is '$config', not '65532:65532 SIGTERM /mesh-node'"
layers="$(podman save localhost/mesh-node:ci | tar -t)" || fail "podman save failed"
echo "   image: user, stop signal and entrypoint as stated; $(echo "$layers" | wc -l) entries saved"
ctr="$(podman create localhost/mesh-node:ci)"
podman cp "$ctr:/mesh-node" "$image_ctx/extracted" || fail "could not copy /mesh-node out of the image"
podman rm -f "$ctr" >/dev/null
cmp -s "$static_bin" "$image_ctx/extracted" || fail "the image's /mesh-node is not the binary built"
MESH_NODE_BIN="$image_ctx/extracted" guarded 600 cargo test --locked -q -p mesh-node --test cli
rm -rf "$image_ctx"
echo "== cargo test --features otel (trace context across nodes)"
guarded 900 cargo test --locked --features otel --lib --test trace
echo "== cargo test --features admin (admin endpoint, page in headless Chromium)"
guarded 900 cargo test --locked --features admin --lib --test admin
# The guide's snippets that need the feature (guarded by a hidden
# cfg(feature = "admin"), so the workspace run above compiles them away).
guarded 600 cargo test --locked --features admin -p mesh --doc
echo "== cargo test with the ring provider (mTLS between nodes, no post-quantum key exchange)"
guarded 900 cargo test --locked --no-default-features --features ring,full --test tls
