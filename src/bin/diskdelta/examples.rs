//! The "Examples:" section of every subcommand's `--help` (and so of its
//! man page). `tests/integration/cli.rs` checks that every subcommand has
//! one.

pub const DIFF: &str = "\
Examples:
  diskdelta diff base.img changed.img -o changes.ddelta
  zcat base.img.gz | diskdelta diff - /dev/vg0/snap > changes.ddelta
  diskdelta diff --lvm vg0/snap1 /dev/vg0/snap2 -o changes.ddelta
  diskdelta diff --from-snapshot vm1 /dev/vg0/snap -o changes.ddelta
  ssh host diskdelta signature /backup/base.img | diskdelta diff --signature - /dev/vg0/snap -o tonight.ddelta";

pub const APPLY: &str = "\
Examples:
  diskdelta apply changes.ddelta --base base.img -o restored.img
  diskdelta apply changes.ddelta --in-place /dev/vg0/disk --verify
  diskdelta apply mon.ddelta tue.ddelta wed.ddelta --base base.img -o wed.img
  diskdelta apply changes.ddelta --base <(zcat base.img.gz) | ssh host2 dd of=/dev/vg0/disk bs=4M";

pub const INFO: &str = "\
Examples:
  diskdelta info changes.ddelta
  diskdelta info --json changes.ddelta
  diskdelta info mon.ddelta tue.ddelta wed.ddelta   # does the series connect?";

pub const MERGE: &str = "\
Examples:
  diskdelta merge mon.ddelta tue.ddelta wed.ddelta -o week.ddelta
  diskdelta merge mon.ddelta tue.ddelta wed.ddelta --base base.img -o week.ddelta";

pub const SIGNATURE: &str = "\
Examples:
  diskdelta signature /backup/base.img -o base.sig
  ssh host diskdelta signature /backup/base.img | diskdelta diff --signature - /dev/vg0/snap -o tonight.ddelta
  diskdelta signature --from-snapshot vm1 -o vm1.sig";

pub const HASH: &str = "\
Examples:
  diskdelta hash disk.img /dev/vg0/disk";

pub const SYNC: &str = "\
Examples:
  diskdelta sync /dev/vg0/snap backup@host:/srv/disk.img
  diskdelta sync host1:/dev/sda ./copies/
  diskdelta sync --deploy /dev/vg0/snap newhost:/srv/disk.img   # copies diskdelta there if missing
  diskdelta sync -e 'ssh -c aes128-gcm@openssh.com' disk.img host:/srv/disk.img";

pub const INIT: &str = "\
Examples:
  diskdelta init -r /srv/diskdelta/repo
  diskdelta init -r ssh://backup@vault/srv/diskdelta/repo
  diskdelta init -r s3:https://s3.example.net/backups/host1 --chunk-size 4M";

pub const BACKUP: &str = "\
Examples:
  diskdelta backup /dev/vg0/snap --name vm1
  diskdelta backup root@host1:/dev/sda --sudo root@host2:/dev/sda --name host2.sda
  diskdelta backup --deploy root@newhost:/dev/sda   # copies diskdelta there if missing
  diskdelta backup -r ssh://backup@vault/srv/repo /dev/vg0/root-snap --name host01-root
  diskdelta backup vm1.qcow2 --name vm1 --dirty-bitmap nightly   # reads only what the guest wrote
  diskdelta backup 'nbd+unix:///drive0?socket=/run/vm1.nbd' --name vm1";

pub const IMPORT: &str = "\
Examples:
  diskdelta import vm1-2024-05-01.img --name vm1 --time 2024-05-01";

pub const RESTORE: &str = "\
Examples:
  diskdelta restore vm1 -o vm1.img
  diskdelta restore 3f2a9c --in-place /dev/vg0/disk
  diskdelta restore vm1 | ssh host dd of=/dev/sdb bs=4M
  diskdelta restore vm1 -o vm1.qcow2 --format qcow2";

pub const NBD: &str = "\
Examples:
  diskdelta nbd vm1                      # prints nbd+unix:///vm1?socket=...
  qemu-img convert -f raw 'nbd+unix:///vm1?socket=/run/user/0/diskdelta-nbd-42.sock' -O qcow2 vm1.qcow2
  diskdelta nbd vm1 3f2a9c --listen 127.0.0.1:10809 --cache-size 1G
  diskdelta nbd vm1 --writable --overlay vm1.ovl   # writes go to vm1.ovl
  diskdelta backup --from-overlay vm1.ovl vm1 --name vm1-fixed";

pub const MOUNT: &str = "\
Examples:
  diskdelta mount /mnt/snapshots            # every snapshot; Ctrl-C unmounts
  diskdelta mount /mnt/snapshots vm1 3f2a9c
  mount -o ro,loop /mnt/snapshots/vm1/2026-12-06T02:00:00Z.img /mnt/vm1
  fusermount3 -u /mnt/snapshots";

pub const SNAPSHOTS: &str = "\
Examples:
  diskdelta snapshots
  diskdelta snapshots vm1 --json";

pub const STATUS: &str = "\
Examples:
  diskdelta status -r /srv/diskdelta/repo";

pub const VERIFY: &str = "\
Examples:
  diskdelta verify
  diskdelta verify --read-data -r s3:https://s3.example.net/backups/host1";

pub const GC: &str = "\
Examples:
  diskdelta gc --dry-run
  diskdelta gc";

pub const FORGET: &str = "\
Examples:
  diskdelta forget --keep-daily 7 --keep-weekly 4 --prune
  diskdelta forget 3f2a9c --dry-run";

pub const UNLOCK: &str = "\
Examples:
  diskdelta unlock
  diskdelta unlock --all   # only when no diskdelta is running";

pub const COPY: &str = "\
Examples:
  diskdelta copy --from /srv/backup-repo -r s3:https://s3.example.net/backups/offsite
  diskdelta copy --from ssh://backup@vault/srv/repo vm1";

pub const KEY: &str = "\
Examples:
  diskdelta key list
  diskdelta key add --new-password-file new.pass";

pub const KEY_LIST: &str = "\
Examples:
  diskdelta key list --json";

pub const KEY_ADD: &str = "\
Examples:
  diskdelta key add --new-password-file new.pass";

pub const KEY_REMOVE: &str = "\
Examples:
  diskdelta key remove 8c1e";

pub const KEY_PASSWD: &str = "\
Examples:
  DISKDELTA_NEW_PASSWORD_FILE=new.pass diskdelta key passwd";

pub const IMPORT_DISKDUMP: &str = "\
Examples:
  diskdelta import-diskdump /srv/diskdump -r /srv/diskdelta/repo";

pub const SERVE: &str = "\
Examples:
  command=\"diskdelta serve --repo /srv/repo --append-only\",restrict ssh-ed25519 AAAA... host01
  ssh host diskdelta serve   # what sync and backup HOST:PATH run";

pub const COMPLETIONS: &str = "\
Examples:
  diskdelta completions bash > /etc/bash_completion.d/diskdelta
  diskdelta completions zsh > \"${fpath[1]}/_diskdelta\"
  diskdelta completions fish > ~/.config/fish/completions/diskdelta.fish";

pub const MAN: &str = "\
Examples:
  diskdelta man --dir target/man";
