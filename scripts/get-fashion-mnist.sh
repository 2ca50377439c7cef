#!/usr/bin/env bash
# Make Fashion-MNIST available: $L2BN_DATA/fashion-mnist, or Debian's package.
set -euo pipefail
files="train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz"
have() { for f in $files; do [ -f "$1/$f" ] || return 1; done; }
for dir in "${L2BN_DATA:-}/fashion-mnist" "${L2BN_DATA:-}" /usr/share/datasets/fashion-mnist; do
  if [ -n "$dir" ] && have "$dir"; then echo "Fashion-MNIST found in $dir"; exit 0; fi
done
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "Installing Debian's dataset-fashion-mnist ..."
  if (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 ||
      { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; }) &&
     have /usr/share/datasets/fashion-mnist; then
    echo "Fashion-MNIST installed in /usr/share/datasets/fashion-mnist"; exit 0
  fi
fi
l2bn_cmd="$(dirname "$0")/../.venv/bin/l2bn"
if [ -x "$l2bn_cmd" ] && "$l2bn_cmd" data --download fashion-mnist >/dev/null 2>&1; then
  echo "Fashion-MNIST downloaded"; exit 0
fi
cat >&2 <<MSG
Fashion-MNIST was not found and could not be installed.
Looked in: \$L2BN_DATA/fashion-mnist, \$L2BN_DATA, /usr/share/datasets/fashion-mnist
Get it one of these ways:
  - Debian/Ubuntu, as root: apt-get install dataset-fashion-mnist
  - or download the four IDX .gz files ($files)
    from https://github.com/zalandoresearch/fashion-mnist into a folder and
    set L2BN_DATA to its parent, with the files in \$L2BN_DATA/fashion-mnist.
MSG
exit 1
