# Sourced by scripts/test and scripts/demo: installs what fitha's build, tests and demo need on a
# Debian 12 machine, and does nothing (fast) when everything is already there.
#   Debian packages: etcd-server (real etcd for tests and the demo), util-linux (setpriv),
#                    mount + e2fsprogs (loop devices and scratch ext4 for storage-fault tests),
#                    iproute2 (network namespaces for the fault-injection harness, scripts/harness),
#                    libvirt-daemon-driver-qemu + qemu-system-x86 + binutils (its real-QEMU hosts:
#                    libvirtd with the qemu driver, tiny guests whose kernel binutils assembles),
#                    libvirt0 (libvirt.so.0, opened through bun:ffi) and libvirt-daemon (a private
#                    libvirtd serving libvirt's test driver to several test processes),
#                    systemd (systemd-analyze verify checks the units scripts/install installs;
#                    no running systemd needed).
#   npm packages:    node_modules from package-lock.json (bun, typescript, etcd3, citty, consola).

fitha_apt_packages=(etcd-server util-linux mount e2fsprogs iproute2 libvirt0 libvirt-daemon libvirt-daemon-driver-qemu qemu-system-x86 binutils systemd)

fitha_log() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }

fitha_ensure_apt() {
  local missing=() pkg
  command -v node >/dev/null && command -v npm >/dev/null || missing+=(nodejs npm)
  for pkg in "${fitha_apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    fitha_log "missing Debian packages: ${missing[*]}; run as root, or: sudo apt-get install -y ${missing[*]}"
    return 1
  fi
  fitha_log "installing Debian packages: ${missing[*]}"
  # Installing etcd-server must not start a system-wide etcd on port 2379: tests and the demo
  # start their own. A policy-rc.d that says "no" keeps services down while we install.
  local policy=/usr/sbin/policy-rc.d own_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && own_policy=1
  fi
  local status=0
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; } || status=$?
  [ "$own_policy" -eq 1 ] && rm -f "$policy"
  return "$status"
}

# npm ci wipes node_modules every time, so it runs only when package-lock.json changed since the
# last successful install (a hash stamp inside node_modules).
fitha_ensure_npm() {
  local root=$1 stamp="$1/node_modules/.fitha-lock.sha256" want
  want="$(sha256sum "$root/package-lock.json" | cut -d' ' -f1)"
  if [ -x "$root/node_modules/.bin/bun" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    return 0
  fi
  fitha_log "installing npm packages (npm ci)"
  (cd "$root" && npm ci --no-audit --no-fund --loglevel=error) && echo "$want" >"$stamp"
}

fitha_ensure_deps() {
  fitha_ensure_apt && fitha_ensure_npm "$1"
}
