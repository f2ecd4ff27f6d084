//! One integration-test binary: runs the real `diskdelta` executable in
//! temporary directories. Modules under `tests/integration/`, shared
//! harnesses under `tests/common/`.

#[path = "common/mod.rs"]
mod common;

#[path = "integration/cli.rs"]
mod cli;
#[path = "integration/cli_docs.rs"]
mod cli_docs;
#[path = "integration/deploy.rs"]
mod deploy;
#[path = "integration/encryption.rs"]
mod encryption;
#[path = "integration/errors.rs"]
mod errors;
#[path = "integration/fleet.rs"]
mod fleet;
#[path = "integration/inplace.rs"]
mod inplace;
#[path = "integration/legacy.rs"]
mod legacy;
#[path = "integration/locations.rs"]
mod locations;
#[path = "integration/mount.rs"]
mod mount;
#[path = "integration/moves.rs"]
mod moves;
#[path = "integration/nbd_export.rs"]
mod nbd_export;
#[path = "integration/repo.rs"]
mod repo;
#[path = "integration/repo_import.rs"]
mod repo_import;
#[path = "integration/repo_remote.rs"]
mod repo_remote;
#[path = "integration/s3.rs"]
mod s3;
#[path = "integration/series.rs"]
mod series;
#[path = "integration/sshd_harness.rs"]
mod sshd_harness;
#[path = "integration/sync.rs"]
mod sync;
#[path = "integration/thin.rs"]
mod thin;
#[path = "integration/vm_sources.rs"]
mod vm_sources;
