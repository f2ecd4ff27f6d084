"""The real mechanisms behind out-of-space and read-error faults: small
tmpfs mounts, and the EIO FUSE file system of eiofs.py."""
import os
import subprocess
import time

HERE = os.path.dirname(os.path.abspath(__file__))


class Mounts:
    def __init__(self, work: str, backing: str):
        self.work = work
        self.backing = backing
        self.eio_mnt = os.path.join(work, "eio")
        self.fuse = None
        self.tmpfs_why = self._probe_tmpfs()
        self.eio_why = self._start_eio()

    # tmpfs ------------------------------------------------------------------

    def _probe_tmpfs(self) -> str:
        probe = os.path.join(self.work, "tmpfs-probe")
        os.makedirs(probe, exist_ok=True)
        try:
            self.tmpfs(probe, 1 << 20)
        except OSError as e:
            return f"cannot mount tmpfs: {e}"
        self.umount(probe)
        return ""

    def tmpfs_ok(self) -> bool:
        return not self.tmpfs_why

    def tmpfs(self, path: str, size: int) -> None:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise OSError(r.stderr.strip())

    def grow(self, path: str, size: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", path], check=True)

    def umount(self, path: str) -> None:
        subprocess.run(["umount", "-l", path], capture_output=True)

    # EIO file system -----------------------------------------------------------

    def _start_eio(self) -> str:
        if not os.path.exists("/dev/fuse"):
            return "no /dev/fuse"
        python = "/usr/bin/python3"
        check = subprocess.run([python, "-c", "import fuse"], capture_output=True, text=True)
        if check.returncode != 0:
            return "Debian's python3-fuse is not installed"
        subprocess.run(["umount", "-l", self.eio_mnt], capture_output=True)
        os.makedirs(self.eio_mnt, exist_ok=True)
        self.fuse = subprocess.Popen([python, "-B", os.path.join(HERE, "eiofs.py"),
                                      self.backing, self.eio_mnt],
                                     stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(self.work, "eiofs.log"), "w"))
        for _ in range(100):
            if os.path.ismount(self.eio_mnt):
                return ""
            if self.fuse.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        with open(os.path.join(self.work, "eiofs.log")) as f:
            return "the FUSE file system did not mount: " + f.read().strip()[-300:]

    def eio_ok(self) -> bool:
        return not self.eio_why

    def eio_path(self, name: str, offset: int, length: int) -> str:
        return os.path.join(self.eio_mnt, f"{name}@eio={offset}+{length}")

    def stop(self) -> None:
        if self.fuse is not None:
            subprocess.run(["umount", "-l", self.eio_mnt], capture_output=True)
            self.fuse.kill()
            self.fuse.wait()
            self.fuse = None
