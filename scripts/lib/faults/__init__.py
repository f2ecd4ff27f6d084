"""Fault-injection harness for diskdelta (scripts/fault-campaign).

Modules: `main` (CLI, the suite and the random campaign, the table),
`harness` (commands under a timeout, outcome classes), `fixtures` (images,
deltas, repository, diskdump store, a real sshd), `cases` (every fault
kind), `relay` (the corrupting ssh wrapper), `eiofs` (the EIO FUSE file
system), `mounts` (tmpfs and FUSE mounts), `soak` (concurrent backups
racing gc and forget --prune). See docs/RELIABILITY.md.
"""
