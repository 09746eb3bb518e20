#!/usr/bin/env bash
# Make this machine ready for lited: apt packages (when root), CPython 3.10,
# the .venv with pinned wheels. Idempotent and quiet when nothing is missing.
#   tools/bootstrap.sh [runtime|test]
# runtime: what the daemon needs; test: also what the test suite needs.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-runtime}

APT_RUNTIME="pkg-config libsystemd-dev"
APT_TEST="$APT_RUNTIME $(tr '\n' ' ' < tools/apt-test.txt)"
apt_list=$APT_RUNTIME
[ "$what" = test ] && apt_list=$APT_TEST
[ "$what" = tools ] && apt_list=""

missing=()
for pkg in $apt_list; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "bootstrap: installing apt packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "bootstrap: missing apt packages; run:" >&2
    echo "  sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

. tools/find_python.sh
if ! py=$(find_python310 "${LITED_PYTHON:-}"); then
  echo "bootstrap: CPython 3.10 not found (paddlelite wheels exist only for CPython <= 3.10 on x86_64);" >&2
  echo "  install it (e.g. pyenv install 3.10.13 or apt-get install python3.10-venv), or set LITED_PYTHON=FILE, and rerun" >&2
  exit 1
fi

if [ "$what" = tools ]; then
  if [ ! -f .venv-tools/.bootstrap ] || [ tools/requirements-tools.txt -nt .venv-tools/.bootstrap ] \
      || [ setup.cfg -nt .venv-tools/.bootstrap ]; then
    echo "bootstrap: creating .venv-tools (model conversion: paddlepaddle, x2paddle, paddle_lite_opt)"
    [ -x .venv-tools/bin/python ] || "$py" -m venv .venv-tools
    .venv-tools/bin/pip install -q --disable-pip-version-check -r tools/requirements-tools.txt 2>&1 \
      | grep -v -e "^WARNING: Location" -e "^$" || true
    # lited itself, for its SDK builder (lited.sdk) and the rules it shares with the daemon
    .venv-tools/bin/pip install -q --disable-pip-version-check --no-deps -e . 2>&1 \
      | grep -v -e "^WARNING: Location" -e "^$" || true
    .venv-tools/bin/python -c "import lited.sdk.builder" || { echo "bootstrap: .venv-tools is incomplete" >&2; exit 1; }
    touch .venv-tools/.bootstrap
  fi
  exit 0
fi

stamp=.venv/.bootstrap-$what
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv with $py"
  "$py" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
fi
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ] || [ tools/bootstrap.sh -nt "$stamp" ]; then
  extras=""
  [ "$what" = test ] && extras="[tests,http,mqtt,paddle_inference,onnxruntime,openvino,dev]"
  echo "bootstrap: installing lited$extras and pinned wheels into .venv"
  .venv/bin/pip install -q --disable-pip-version-check -e ".$extras" 2>&1 | grep -v -e "^WARNING: Location" -e "^$" || true
  .venv/bin/python -c "import lited, paddlelite.lite, numpy, cv2, zmq, msgpack" \
    || { echo "bootstrap: the venv is incomplete" >&2; exit 1; }
  # an extra that drags numpy to 2.x breaks paddlelite's from_numpy silently (models/README)
  .venv/bin/python -c "import numpy, sys; sys.exit(numpy.__version__ != '1.26.4')" \
    || { echo "bootstrap: numpy is not 1.26.4 in .venv (an extra upgraded it)" >&2; exit 1; }
  touch "$stamp"
fi
