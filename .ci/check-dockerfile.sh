#!/usr/bin/env bash
# docker build cannot run on CI machines (no engine), so check the
# Dockerfile statically: lint it, and run its build stage's RUN steps as
# plain shell in a scratch copy of the tree, the way the builder would.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

lint_dir=/tmp/gwlbproxy-ci-node
if [ ! -x "$lint_dir/node_modules/.bin/dockerfile-utils" ]; then
  mkdir -p "$lint_dir"
  (cd "$lint_dir" && npm install --silent --no-audit --no-fund dockerfile-utils@0.16.3 >/dev/null 2>&1) || true
fi
if [ -x "$lint_dir/node_modules/.bin/dockerfile-utils" ]; then
  out=$("$lint_dir/node_modules/.bin/dockerfile-utils" lint Dockerfile || true)
  if [ -n "$out" ]; then echo "$out"; echo "Dockerfile: lint problems"; exit 1; fi
  echo "Dockerfile: lint clean (dockerfile-utils)"
else
  echo "Dockerfile: dockerfile-utils not installable here, lint skipped"
fi

# Replay the build stage: WORKDIR/COPY/ARG/ENV/RUN until the next FROM.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git ls-files -z | (cd "$root" && xargs -0 cp --parents -t "$work")
mkdir -p "$work/out"
awk '/^FROM /{n++} n==1' Dockerfile | while IFS= read -r line; do
  case "$line" in
    ARG\ *=*) echo "export ${line#ARG }" ;;
    RUN\ *) echo "${line#RUN }" ;;
  esac
done | sed "s#/out/#$work/out/#g" > "$work/build.sh"
echo "Dockerfile: replaying build stage:"; sed 's/^/  /' "$work/build.sh"
(cd "$work" && bash -euo pipefail build.sh)
"$work/out/gwlbproxy" version
grep -q '^COPY --from=build /out/gwlbproxy ' Dockerfile
for f in $(awk '/^COPY [^-]/{print $2}' Dockerfile | sed -n '1,$p'); do
  [ -e "$f" ] || { echo "Dockerfile copies $f, which does not exist"; exit 1; }
done
echo "Dockerfile: build stage OK"

# The runtime stage (issue 16): non-root, pinned base, no live config, OCI
# labels, and the binary's file capabilities equal to what the unit grants
# (AmbientCapabilities=) and what the documented `docker run` adds.
fail() { echo "Dockerfile: $*"; exit 1; }
final=$(awk '/^FROM /{n++} n==2' Dockerfile)
grep -Eq '^FROM [^ ]+@sha256:[0-9a-f]{64}$' <<<"$final" || fail "runtime base image not pinned by digest"
user=$(awk '/^USER /{u=$2} END{print u}' <<<"$final")
case "${user%%:*}" in
  "" | 0 | root) fail "runtime stage runs as root (USER ${user:-unset})" ;;
esac
if grep -Eq '^COPY .*(/etc/gwlbproxy|gwlbproxy\.yaml)$' <<<"$final"; then
  fail "a live config is baked into the image"
fi
for l in title description version revision licenses source base.name; do
  grep -q "org.opencontainers.image.$l=" <<<"$final" || fail "OCI label org.opencontainers.image.$l missing"
done
norm() { tr ' ,' '\n\n' | sed 's/^cap_//I; s/=.*//' | tr a-z A-Z | grep -v '^$' | sort -u | tr '\n' ' '; }
unit_caps=$(sed -n 's/^AmbientCapabilities=//p' configs/gwlbproxy.service | sed 's/CAP_//g' | norm)
run_caps=$(grep -o -- '--cap-add [A-Z_]*' Dockerfile | awk '{print $2}' | norm)
if [ "$(id -u)" = 0 ] && command -v getcap >/dev/null; then
  file_caps=$(getcap "$work/out/gwlbproxy" | sed 's/^[^ ]* //; s/=ep$//' | norm)
  echo "Dockerfile: file capabilities: $file_caps(unit: $unit_caps; docker run: $run_caps)"
  [ "$file_caps" = "$unit_caps" ] || fail "binary's file capabilities ($file_caps) differ from the unit's AmbientCapabilities ($unit_caps)"
  getcap "$work/out/gwlbproxy" | grep -q '=ep$' || fail "file capabilities lack the effective bit (=ep)"
else
  echo "Dockerfile: not root or no getcap: file capabilities not checked"
fi
[ "$run_caps" = "$unit_caps" ] || fail "documented --cap-add ($run_caps) differ from the unit's AmbientCapabilities ($unit_caps)"
echo "Dockerfile: runtime stage OK (user $user, pinned base, no live config, OCI labels)"
