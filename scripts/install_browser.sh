#!/usr/bin/env bash
# Installs Debian's Chromium and ChromeDriver for tests/test_browser.py (/usr/bin/chromium,
# /usr/bin/chromedriver), only where missing: safe to run every time. Needs root (or sudo) and apt.
set -euo pipefail

fonts=/usr/share/fonts/truetype/liberation  # readable text in screenshots
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] && [ -d "$fonts" ]; then
  echo "install_browser: chromium and chromedriver already installed: $(/usr/bin/chromium --version 2>/dev/null | head -1)"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "install_browser: need root (or sudo) to apt-get install chromium chromium-driver" >&2; exit 1
  fi
fi

pkgs=()
[ -x /usr/bin/chromium ] || pkgs+=(chromium)
[ -x /usr/bin/chromedriver ] || pkgs+=(chromium-driver)
[ -d "$fonts" ] || pkgs+=(fonts-liberation)
echo "install_browser: installing ${pkgs[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq "${pkgs[@]}" >/dev/null
# Both must come from the same Debian build, or the driver refuses the browser.
echo "install_browser: $(/usr/bin/chromium --version 2>/dev/null | head -1); $(/usr/bin/chromedriver --version | head -1)"
