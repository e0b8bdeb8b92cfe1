#!/usr/bin/env bash
# The Debian packages score's tests and glyph benchmarks read: Fashion-MNIST (real 10-class images) and the
# CJK fonts the glyph classes are rendered from (about 1 GB). Run as root on Debian or Ubuntu; idempotent.
set -euo pipefail
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-system-deps.sh: apt-get not found; install Fashion-MNIST and CJK fonts by hand" >&2
  exit 2
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq \
  dataset-fashion-mnist \
  fonts-noto-cjk fonts-arphic-ukai fonts-arphic-uming fonts-arphic-bkai00mp fonts-arphic-bsmi00lp \
  fonts-arphic-gbsn00lp fonts-arphic-gkai00mp fonts-ipafont fonts-ipaexfont fonts-hanazono \
  fonts-wqy-microhei fonts-wqy-zenhei fonts-takao fonts-sawarabi-gothic fonts-sawarabi-mincho \
  fonts-lxgw-wenkai fonts-cwtex-fs fonts-cwtex-heib fonts-cwtex-kai fonts-cwtex-ming fonts-seto \
  fonts-kiloji fonts-horai-umefont fonts-morisawa-bizud-gothic fonts-morisawa-bizud-mincho fonts-klee \
  fonts-aoyagi-kouzan-t fonts-kouzan-mouhitsu fonts-smiley-sans fonts-migmix fonts-motoya-l-cedar \
  fonts-motoya-l-maruberi fonts-cns11643-kai fonts-cns11643-sung >/dev/null
