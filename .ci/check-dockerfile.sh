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
# check_runtime <Dockerfile> exits non-zero naming the first problem.
check_runtime() (
  fail() { echo "$1: $2"; exit 1; }
  final=$(awk '/^FROM /{n++} n==2' "$1")
  grep -Eq '^FROM [^ ]+@sha256:[0-9a-f]{64}$' <<<"$final" || fail "$1" "runtime base image not pinned by digest"
  user=$(awk '/^USER /{u=$2} END{print u}' <<<"$final")
  case "${user%%:*}" in
    "" | 0 | root) fail "$1" "runtime stage runs as root (USER ${user:-unset})" ;;
  esac
  if grep -Eq '^(COPY|ADD) .*(/etc/gwlbproxy/?|gwlbproxy\.ya?ml)$' <<<"$final"; then
    fail "$1" "a live config is baked into the image"
  fi
  for l in title description version revision licenses source base.name; do
    grep -q "org.opencontainers.image.$l=" <<<"$final" || fail "$1" "OCI label org.opencontainers.image.$l missing"
  done
  run_caps=$(grep -o -- '--cap-add [A-Z_]*' "$1" | awk '{print $2}' | norm)
  [ "$run_caps" = "$unit_caps" ] || fail "$1" "documented --cap-add ($run_caps) differ from the unit's AmbientCapabilities ($unit_caps)"
  echo "$1: runtime stage OK (user $user, pinned base, no live config, OCI labels, --cap-add $run_caps)"
)
norm() { tr ' ,' '\n\n' | sed 's/^cap_//I; s/=.*//' | tr a-z A-Z | grep -v '^$' | sort -u | xargs; }
unit_caps=$(sed -n 's/^AmbientCapabilities=//p' configs/gwlbproxy.service | sed 's/CAP_//g' | norm)
[ -n "$unit_caps" ] || { echo "configs/gwlbproxy.service has no AmbientCapabilities="; exit 1; }
check_runtime Dockerfile

# The checks must reject broken copies, or they prove nothing.
broken() { # broken <name> <sed expression>
  sed "$2" Dockerfile >"$work/Dockerfile.$1"
  if out=$(check_runtime "$work/Dockerfile.$1"); then
    echo "Dockerfile check accepted a broken copy ($1)"; exit 1
  fi
  echo "  rejects $1: ${out#*: }"
}
broken unpinned 's/^\(FROM gcr[^@]*\)@sha256:[0-9a-f]*$/\1/'
broken root 's/^USER .*/USER 0:0/'
broken no-user '/^USER /d'
broken live-config 's|^COPY configs/gwlbproxy.yaml .*|COPY configs/gwlbproxy.yaml /etc/gwlbproxy/gwlbproxy.yaml|'
broken no-label '/org.opencontainers.image.licenses=/d'
broken caps-drift 's/--cap-add NET_RAW //'

if [ "$(id -u)" = 0 ] && command -v getcap >/dev/null; then
  file_caps=$(getcap "$work/out/gwlbproxy" | sed 's/^[^ ]* //; s/=ep$//' | norm)
  echo "Dockerfile: file capabilities of the built binary: $file_caps"
  [ "$file_caps" = "$unit_caps" ] || { echo "binary's file capabilities ($file_caps) differ from the unit's AmbientCapabilities ($unit_caps)"; exit 1; }
  getcap "$work/out/gwlbproxy" | grep -q '=ep$' || { echo "file capabilities lack the effective bit (=ep)"; exit 1; }
else
  echo "Dockerfile: not root or no getcap: file capabilities not checked"
fi
