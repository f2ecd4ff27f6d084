#!/usr/bin/python3
"""A read-only FUSE file system that fails chosen reads with EIO.

`eiofs.py BACKING MOUNTPOINT` shows every file of BACKING, and also, for a
name `FILE@eio=OFFSET+LENGTH[,OFFSET+LENGTH...]`, FILE's bytes with every
read that touches one of those ranges failing with EIO: the way a disk
with bad sectors behaves. Reads go straight to this process (direct_io),
so the page cache never hides a failure.

Runs under Debian's /usr/bin/python3 with python3-fuse (fuse-python).
"""
import errno
import os
import stat
import sys

import fuse

fuse.fuse_python_api = (0, 2)


def parse(name):
    base, _, rule = name.partition("@eio=")
    ranges = []
    for part in filter(None, rule.split(",")):
        offset, _, length = part.partition("+")
        ranges.append((int(offset), int(length)))
    return base, ranges


class EioFS(fuse.Fuse):
    backing = "."

    def real(self, path):
        base, ranges = parse(path.lstrip("/"))
        if "/" in base or base in ("", ".", ".."):
            return None, []
        return os.path.join(self.backing, base), ranges

    def getattr(self, path):
        st = fuse.Stat()
        if path == "/":
            st.st_mode = stat.S_IFDIR | 0o755
            st.st_nlink = 2
            return st
        real, _ = self.real(path)
        try:
            s = os.stat(real)
        except (OSError, TypeError):
            return -errno.ENOENT
        st.st_mode = stat.S_IFREG | 0o444
        st.st_nlink = 1
        st.st_size = s.st_size
        st.st_mtime = s.st_mtime
        st.st_atime = s.st_atime
        st.st_ctime = s.st_ctime
        return st

    def readdir(self, path, offset):
        for name in [".", ".."] + sorted(os.listdir(self.backing)):
            yield fuse.Direntry(name)

    def open(self, path, flags):
        if flags & (os.O_WRONLY | os.O_RDWR):
            return -errno.EROFS
        real, _ = self.real(path)
        if real is None or not os.path.exists(real):
            return -errno.ENOENT
        return 0

    def read(self, path, size, offset):
        real, ranges = self.real(path)
        for start, length in ranges:
            if offset < start + length and start < offset + size:
                return -errno.EIO
        try:
            with open(real, "rb") as f:
                f.seek(offset)
                return f.read(size)
        except OSError as e:
            return -e.errno


def main():
    backing, mountpoint = sys.argv[1], sys.argv[2]
    server = EioFS(version="eiofs", usage=__doc__, dash_s_do="setsingle")
    server.backing = os.path.abspath(backing)
    server.parse([mountpoint, "-f", "-o", "ro,direct_io,allow_other,fsname=eiofs"],
                 errex=1)
    server.main()


if __name__ == "__main__":
    main()
