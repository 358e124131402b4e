#!/usr/bin/env bash
# Install speech_ed into ./.venv (Python packages, pinned in pyproject.toml) and the Debian packages the
# embedded corpus needs. Re-running is cheap: it exits early when nothing changed.
set -euo pipefail
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
DEBS="espeak-ng sox fortunes fortunes-de fortunes-es fortunes-it"

missing_debs() {
  local m=""
  command -v espeak-ng >/dev/null || m="$m espeak-ng"
  command -v sox >/dev/null || m="$m sox"
  [ -e /usr/share/games/fortunes/fortunes ] || m="$m fortunes"
  [ -d /usr/share/games/fortunes/de ] || [ -d /usr/share/games/fortunes-de ] || m="$m fortunes-de"
  [ -d /usr/share/games/fortunes/es ] || [ -d /usr/share/games/fortunes-es ] || m="$m fortunes-es"
  [ -d /usr/share/games/fortunes/it ] || [ -d /usr/share/games/fortunes-it ] || m="$m fortunes-it"
  echo "$m"
}

need=$(missing_debs)
if [ -n "$need" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "install: apt-get install$need"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $DEBS >/dev/null
  else
    echo "install: the embedded corpus needs Debian packages that are missing:$need" >&2
    echo "install: run as root:  apt-get install -y $DEBS" >&2
    echo "install: (continuing: everything except corpus generation works without them)" >&2
  fi
fi

stamp="$VENV/.installed"
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
# torch first, pinned: an unpinned resolve would pull a multi-GB CUDA build. GPU users: install your CUDA
# build of torch==2.13.0 into the venv before running this script; pip then keeps it.
"$VENV/bin/pip" install -q --disable-pip-version-check torch==2.13.0
"$VENV/bin/pip" install -q --disable-pip-version-check -e '.[test]'
touch "$stamp"
echo "install: done ($("$VENV/bin/python" -c 'import torch, lhotse, lightning; print("torch", torch.__version__, "lhotse", lhotse.__version__, "lightning", lightning.__version__)'))"
