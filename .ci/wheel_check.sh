#!/usr/bin/env bash
# Wheel check: build the wheel, install it into a brand-new virtualenv and run the CLI from
# there, in a directory outside the repository. The editable install that the tests use
# finds every module in the source tree; this catches a module or data file that
# `pip install .` would leave out.
#
# Dependencies are not downloaded again: a .pth file in the new venv lists the site-packages
# of the active venv ($VIRTUAL_ENV, which has torch etc.). A directory named in a .pth file
# is appended to sys.path but its own .pth files (the editable install's finder) are not
# run, so `hybrid` can only come from the wheel; the check asserts that it does.
#
# Usage (CI venv active): bash .ci/wheel_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
: "${VIRTUAL_ENV:?activate the virtualenv that has the dependencies (the CI venv)}"
CI_PY="$VIRTUAL_ENV/bin/python"
unset PYTHONPATH PYTHONHOME HYBRID_ES_URL HYBRID_STORE

WORK=$(mktemp -d "${TMPDIR:-/tmp}/hybrid-wheel-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
SRC="$WORK/src" VENV="$WORK/venv" CWD="$WORK/cwd" LOG="$WORK/step.log"
NEW_PY="$VENV/bin/python"
mkdir -p "$SRC" "$CWD"
cd "$CWD"  # every step runs outside the repository

# step NAME CMD...: run CMD with its output captured; one line when it passes, the tail of
# its output when it fails (and stop).
step() {
  local name=$1 rc=0
  shift
  "$@" >"$LOG" 2>&1 || rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "   FAIL $name (exit $rc)"
    tail -n 40 "$LOG" | sed 's/^/        /'
    exit 1
  fi
  echo "   ok   $name"
}

# A copy of the tracked and new (not ignored) files: building in the working tree would
# write build/ and *.egg-info there, and a stale build/lib can put deleted modules in a wheel.
copy_source() {
  if git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1; then
    git -C "$ROOT" ls-files -z --cached --others --exclude-standard \
      | while IFS= read -r -d '' f; do if [ -e "$ROOT/$f" ]; then printf '%s\0' "$f"; fi; done \
      | tar -C "$ROOT" --null -T - -cf - | tar -C "$SRC" -xf -
  else
    tar -C "$ROOT" --exclude=./.git --exclude=./build --exclude='*.egg-info' --exclude=__pycache__ -cf - . \
      | tar -C "$SRC" -xf -
  fi
}

echo "== wheel check"
SECONDS=0
step "copy the source tree" copy_source
step "build the wheel (pip wheel --no-deps)" \
  "$CI_PY" -m pip wheel -q --no-deps --disable-pip-version-check -w "$WORK/dist" "$SRC"
WHEEL=$(echo "$WORK"/dist/hybrid-*.whl)

# Every .py under each package-dir root, and every package-data file, must be in the wheel;
# nothing outside hybrid/ (tests, bench) may be.
wheel_contents() {
  "$CI_PY" - "$SRC" "$WHEEL" <<'EOF'
import sys, tomllib, zipfile
from pathlib import Path

src, names = Path(sys.argv[1]), set(zipfile.ZipFile(sys.argv[2]).namelist())
cfg = tomllib.loads((src / "pyproject.toml").read_text())["tool"]["setuptools"]
roots = cfg["package-dir"]

def source(pkg):  # package name -> source directory, through package-dir
    top = max((r for r in roots if pkg == r or pkg.startswith(r + ".")), key=len)
    return src / roots[top] / pkg[len(top) + 1 :].replace(".", "/"), pkg.replace(".", "/")

expected = set()
for pkg in roots:
    folder, target = source(pkg)
    expected |= {f"{target}/{p.relative_to(folder).as_posix()}" for p in folder.rglob("*.py")}
for pkg, patterns in cfg.get("package-data", {}).items():
    folder, target = source(pkg)
    found = {f"{target}/{p.name}" for pattern in patterns for p in folder.glob(pattern) if p.is_file()}
    if not found:
        sys.exit(f"package-data of {pkg} {patterns} matches no file in {folder}")
    expected |= found
missing = sorted(expected - names)
stray = sorted(n for n in names if n.split("/")[0] != "hybrid" and ".dist-info/" not in n)
for title, paths in (("missing from the wheel", missing), ("not expected in the wheel", stray)):
    if paths:
        print(title + ":", *paths, sep="\n  ")
if missing or stray:
    sys.exit(1)
print(len(expected), "files expected, all present")
EOF
}
step "wheel has every module and data file, nothing else" wheel_contents

# No pip, setuptools or anything else in the new venv: only the wheel (installed by the CI
# venv's pip), so every dependency resolves to the CI venv.
install_wheel() {
  "$CI_PY" -m venv --without-pip "$VENV" &&
    "$CI_PY" -m pip --python "$NEW_PY" install -q --no-deps --no-index --disable-pip-version-check "$WHEEL"
}
step "fresh venv, wheel installed with --no-deps" install_wheel
NEW_SITE=$("$NEW_PY" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
"$CI_PY" -c 'import sysconfig as s; print(*dict.fromkeys([s.get_path("purelib"), s.get_path("platlib")]), sep="\n")' \
  >"$NEW_SITE/_ci_dependencies.pth"
echo "   ok   dependencies from $VIRTUAL_ENV through a .pth"

where=$("$NEW_PY" -c 'import hybrid; print(hybrid.__file__)')
case $where in
  "$NEW_SITE"/*) echo "   ok   hybrid imported from the new venv ($where)" ;;
  *) echo "   FAIL hybrid imported from $where, not from the new venv's $NEW_SITE"; exit 1 ;;
esac

step "python -c 'import hybrid.training.trainer, hybrid.evaluation.evaluate, hybrid.cli.app'" \
  "$NEW_PY" -c 'import hybrid.training.trainer, hybrid.evaluation.evaluate, hybrid.cli.app'
# Every module of the installed package imports, and from the wheel only.
import_all() {
  "$NEW_PY" - "$NEW_SITE/" <<'EOF'
import importlib, pkgutil, sys
import hybrid

# __main__ modules run the CLI when imported: they are checked by `python -m hybrid.cli --help`.
names = ["hybrid"] + [m.name for m in pkgutil.walk_packages(hybrid.__path__, "hybrid.") if not m.name.endswith("__main__")]
files = {n: getattr(importlib.import_module(n), "__file__", None) or "" for n in names}
elsewhere = {n: f for n, f in files.items() if not f.startswith(sys.argv[1])}
if elsewhere:
    sys.exit(f"imported from outside the new venv: {elsewhere}")
print(len(names), "modules")
EOF
}
step "every hybrid module imports from the wheel" import_all

step "hybrid --help" "$VENV/bin/hybrid" --help
step "python -m hybrid.cli --help" "$NEW_PY" -m hybrid.cli --help
commands=$("$NEW_PY" -c 'import typer.main; from hybrid.cli.app import app; print(*typer.main.get_command(app).commands)')
for expected in index search serve info mine train negatives eval quickstart; do
  case " $commands " in
    *" $expected "*) ;;
    *) echo "   FAIL command '$expected' is not registered (found: $commands)"; exit 1 ;;
  esac
done
for command in $commands; do
  step "hybrid $command --help" "$VENV/bin/hybrid" "$command" --help
done

# The shipped demo corpus, indexed with the real model into an embedded store and searched
# (Java 21+ is found by hybrid itself), with no model download allowed.
quickstart() {
  HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "$VENV/bin/hybrid" quickstart --store "$WORK/store" -q -k 1 || return
  grep -q "documents in index (verified)" "$LOG" && grep -q "why is my bread dense" "$LOG"
}
step "hybrid quickstart --store TMP (index and search the demo corpus)" quickstart

# The server from the wheel over that index: ready, and one hybrid search over HTTP.
serve() {
  local port
  port=$("$NEW_PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  "$VENV/bin/hybrid" serve -i quickstart --store "$WORK/store" --port "$port" --no-access-log &
  local pid=$!
  "$NEW_PY" - "$port" <<'PY'
import json, sys, time, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}"
deadline = time.monotonic() + 120
while True:
    try:
        ready = json.load(urllib.request.urlopen(f"{url}/readyz", timeout=2))
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit("hybrid serve did not become ready")
        time.sleep(0.5)
request = urllib.request.Request(f"{url}/search", data=b'{"query": "why is my bread dense", "k": 1}',
                                 headers={"Content-Type": "application/json"})
body = json.load(urllib.request.urlopen(request, timeout=60))
assert body["version"] == ready["version"] and len(body["hits"]) == 1, body
print("   ", ready["version"], body["hits"][0]["id"])
PY
  local rc=$?
  kill -TERM "$pid"; wait "$pid" || true
  return $rc
}
step "hybrid serve over the quickstart index (readyz, one search over HTTP)" serve
echo "== wheel check passed (${SECONDS}s)"
