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
