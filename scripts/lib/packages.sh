# Shared by scripts/setup and scripts/test: installs missing Debian packages,
# running `apt-get update` at most once per call.

# System packages that diskdelta's features, tests and benchmarks use.
DISKDELTA_PACKAGES=(
  util-linux          # losetup, blockdev: loop-device tests
  python3-venv        # the real Python diff-dd in a venv for format tests
  zstd xdelta3 rdiff  # peers in bench/
  time                # /usr/bin/time for peak RSS in bench/
  openssh-server openssh-client  # a real sshd on 127.0.0.1 for remote tests
  sudo                # backup --sudo runs the remote side under sudo
  thin-provisioning-tools  # thin_delta for --thin-metadata/--lvm; thin_restore in tests
  fuse3 python3-fuse  # fusermount3: diskdelta mount; the EIO file system of the fault suite
  musl-tools          # musl-gcc for the static build's C code (scripts/build-static)
  binutils            # strip, readelf: scripts/build-static, scripts/build-deb
  qemu-utils          # qemu-img, qemu-nbd, qemu-io: VM sources, NBD tests
  libnbd-bin          # nbdinfo, nbdcopy, nbdsh: real NBD clients in tests
  python3-libnbd      # libnbd from Python: NBD clients of the export tests
  nbdkit              # a second NBD server for the NBD source tests
  fio                 # random-read latency of the NBD export (bench/run access)
  nbd-client          # the kernel NBD client, where the nbd module exists
  e2fsprogs           # mkfs.ext4 -d: the ext4 image the mount tests loop-mount
)

ensure_packages() {
  local missing=()
  local pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}
